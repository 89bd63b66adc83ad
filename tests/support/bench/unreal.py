"""The Unreal layer's benchmark: ingest, cached Unreal READ against Real READ, and the server's
memory while more data than its cache may hold passes through the cache.

    scripts/bench-unreal [--quick] [--out DIR] [--workdir DIR] [--rounds N] [--update-readme]

`run_unreal_bench(settings, log)` does, in a directory with room for it all (checked first):

1. **Data**: files in which no two 256 KiB chunks are equal (a random 4 MiB block written again
   and again, each chunk stamped with a file tag and a counter), since the cache stores equal
   chunks once and equal chunks would falsify every figure.
2. **Ingest**: `BlobStore.ingest` of the read file into a fresh store, each round in a fresh
   process (`python -m tests.support.bench.unreal '{"kind": "ingest", ...}'`), beside this
   machine's ceilings for it, measured in their own process: reading the file, BLAKE3 in one
   pass and as ingest hashes (the whole and each chunk), reading and hashing without storing.
3. **Cached Unreal READ against Real READ**: a server run on a *source* state directory hashes
   its files into its index (area `A`: the read file, area `M`: the memory file). A second
   state directory imports `A` (`realize import`) and serves a copy of the same file as a Real
   file in area `R`. A first read through NFS, with the source attached, caches every chunk;
   the server is then restarted *without* the source, so that every later READ of the Unreal
   file can only be served from the cache, and rounds alternate the two files with the main
   bench's READ client (tests/support/bench/client.py: 1, 4 and 16 READs of 1 MiB outstanding).
4. **Memory**: a third state directory imports `M` (a file several times the cache limit
   given with `--cache-max`) and reads it once through NFS while the main bench's sampler
   follows the server's resident memory; the cache's usage afterwards (from the server's
   status file) shows that eviction kept it under its limit.

Every read that is not timed hashes what it gets, in file order, against the file's BLAKE3
(its blob id), so the run also proves the content. The result is a plain dict, written as
unreal.json and unreal.md; `--update-readme` puts a subsection into the README's
"Performance" section (between the bench-unreal markers, added at the section's end when
missing).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from blake3 import blake3

from nfsd.store.blobs import DEFAULT_CHUNK_SIZE
from tests.support.bench import report
from tests.support.bench.run import (
    ClientFailed,
    MemorySampler,
    Metric,
    MiB,
    Target,
    client_env,
    host_facts,
    run_clients,
    wait_until_idle,
)
from tests.support.server import REPO, ServerProcess, start_server

GiB = 1 << 30
CHUNK = DEFAULT_CHUNK_SIZE
BLOCK = 4 * MiB  # the random block the data files repeat, chunk-stamped
READ_FILE = "u.bin"
MEMORY_FILE = "m.bin"
DEFAULT_OUT = REPO / "docs" / "bench"
JOB_TIMEOUT = 900.0  # seconds at most for any one client or child process

INGEST_TARGET = 300.0  # MB/s
RATIO_TARGET = 0.7  # cached Unreal READ / Real READ
RSS_TARGET = 150.0  # MB, peak, while the memory file passes through the cache

README_START = "<!-- bench-unreal:start -->"
README_END = "<!-- bench-unreal:end -->"
README_SECTION = "## Performance"


class BenchUsageError(Exception):
    """Something the bench needs is missing (disk space); printed without a traceback."""


@dataclass
class UnrealSettings:
    """Sizes, counts and durations of one run (`full()` or `quick_run()`)."""

    quick: bool
    rounds: int  # READ rounds, Unreal and Real alternating
    ingest_rounds: int
    read_size: int  # the cached Unreal file, its Real copy and the ingest input
    memory_size: int  # what passes through the cache in the memory pass
    cache_max: int  # the server's cache limit in the memory pass
    transfer_cap: float  # seconds at most for one timed READ transfer
    quiet: float  # seconds the server must be idle before each measurement
    startup_quiet: float  # seconds in a row the server must be idle after it starts
    depths: tuple[int, ...] = (1, 4, 16)
    chunk: int = MiB  # bytes per READ
    first_depth: int = 4  # READs outstanding in the first (fetching) read
    memory_depth: int = 16  # READs outstanding in the memory pass

    @classmethod
    def full(cls) -> UnrealSettings:
        return cls(
            quick=False,
            rounds=3,
            ingest_rounds=5,
            read_size=GiB,
            memory_size=4 * GiB,
            cache_max=GiB,
            transfer_cap=120.0,
            quiet=0.5,
            startup_quiet=3.0,
        )

    @classmethod
    def quick_run(cls) -> UnrealSettings:
        return cls(
            quick=True,
            rounds=1,
            ingest_rounds=2,
            read_size=64 * MiB,
            memory_size=256 * MiB,
            cache_max=64 * MiB,
            transfer_cap=30.0,
            quiet=0.25,
            startup_quiet=1.0,
        )

    def disk_needed(self) -> int:
        """Bytes the run needs at most: the source's files, the Real copy, the cached copy, a
        fresh ingest store, and the memory pass's cache (twice its limit: the blob files of
        evicted chunks are reclaimed in the background), plus a margin."""
        return 4 * self.read_size + self.memory_size + 2 * self.cache_max + 512 * MiB


# ---- what is measured and shown ----


def _reads() -> list[Metric]:
    out = []
    for d in UnrealSettings.depths:
        out += [
            Metric(f"unreal_{d}", f"cached Unreal READ, 1 MiB x {d} outstanding", "MB/s"),
            Metric(f"real_{d}", f"Real READ of the same size, 1 MiB x {d} outstanding", "MB/s"),
            Metric(f"ratio_{d}", f"ratio Unreal / Real, {d} outstanding (per round)", "x",
                   RATIO_TARGET),
        ]  # fmt: skip
    return out


METRICS: list[Metric] = [
    Metric("ingest", "ingest: `BlobStore.ingest` of the file into a fresh store", "MB/s",
           INGEST_TARGET),
    Metric("ingest_cpu", "ingest per CPU-second (RocksDB's threads included)", "MB"),
    *_reads(),
    Metric("first_read", "first Unreal READ of the file, fetching from the source "
           "(1 MiB x 4)", "MB/s"),
    Metric("memory_read", "memory pass: Unreal READ through the full cache, fetching and "
           "evicting (1 MiB x 16)", "MB/s"),
    Metric("rss_start", "server RSS before the memory pass", "MB"),
    Metric("rss_first_half", "server peak RSS, first half of the memory pass", "MB"),
    Metric("rss_second_half", "server peak RSS, second half of the memory pass", "MB"),
    Metric("rss_peak", "server peak RSS (VmHWM), start to end of the memory run", "MB",
           RSS_TARGET, higher_is_better=False),
    Metric("rss_end", "server RSS after the memory pass", "MB"),
    Metric("cache_end", "cache used after the memory pass", "MiB"),
    Metric("rss_cached", "server peak RSS (VmHWM) in the cached-READ rounds", "MB"),
]  # fmt: skip

CEILINGS: list[Metric] = [
    Metric("ceil_read", "file read, 256 KiB reads (page cache)", "MB/s"),
    Metric("ceil_blake3", "BLAKE3, one pass, one thread (in memory)", "MB/s"),
    Metric("ceil_hash", "BLAKE3 as ingest hashes: the whole and each chunk (in memory)", "MB/s"),
    Metric("ceil_read_hash", "read + hash as ingest does, nothing stored", "MB/s"),
    Metric("ceil_write", "file write, 1 MiB writes + fdatasync, on the store's disk", "MB/s"),
]

CHECKS = {
    "first": "first read, fetching from the source",
    "cached": "read from the cache alone, source detached",
    "memory": "memory pass, fetching and evicting",
    "ingest": "ingest's blob id",
    "evicted": "cache under its limit after the memory pass",
}


# ---- data ----


def write_distinct(path: Path, size: int) -> bytes:
    """Write `size` bytes to `path` of which no two 256 KiB chunks are equal (within the file
    and, by the random file tag, across files); returns the BLAKE3 of the content."""
    tag = os.urandom(8)
    block = bytearray(os.urandom(BLOCK))
    hasher = blake3(max_threads=blake3.AUTO)
    counter = 0
    with open(path, "wb") as f:
        written = 0
        while written < size:
            n = min(BLOCK, size - written)
            for offset in range(0, n, CHUNK):
                block[offset : offset + 16] = tag + counter.to_bytes(8, "big")
                counter += 1
            piece = memoryview(block)[:n]
            f.write(piece)
            hasher.update(piece)
            written += n
    return hasher.digest()


def choose_workdir(requested: Path | None, needed: int, log: Callable[[str], None]) -> Path:
    """The first directory with `needed` bytes free: `requested`, else $TMPDIR (or /tmp),
    /var/tmp, the repository's parent."""
    candidates = (
        [requested] if requested else [Path(tempfile.gettempdir()), Path("/var/tmp"), REPO.parent]
    )
    seen = []
    for directory in candidates:
        try:
            free = shutil.disk_usage(directory).free
        except OSError:
            continue
        seen.append(f"{directory} {free / GiB:.1f} GiB free")
        if free >= needed:
            log(f"data in {directory} ({free / GiB:.1f} GiB free, {needed / GiB:.1f} GiB needed)")
            return directory
    raise BenchUsageError(
        f"no directory with {needed / GiB:.1f} GiB free ({'; '.join(seen)}): "
        "pass --workdir, or --quick"
    )


# ---- child processes: ingest and the ceilings, each in a fresh process ----


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def ingest_job(job: dict[str, Any]) -> dict[str, Any]:
    """`BlobStore.ingest` of a file into a fresh store, as the server's cache is made."""
    from nfsd.store.blobs import BlobStore
    from nfsd.store.db import Store

    store = Store(job["store"])
    try:
        blobs = BlobStore(store)
        with open(job["file"], "rb", buffering=0) as f:
            start, cpu = time.perf_counter(), _cpu()
            blob = blobs.ingest(f)
            seconds, cpu = time.perf_counter() - start, _cpu() - cpu
        size = os.path.getsize(job["file"])
        usage = blobs.usage()
    finally:
        store.close()
    return {
        "bytes": size,
        "seconds": seconds,
        "rate": size / seconds / 1e6,
        "cpu_rate": size / cpu / 1e6,
        "blob": blob.hex(),
        "cached": usage.cached,
    }


def _timed(work: Callable[[], int], at_least: float = 0.5) -> float:
    """MB/s of `work` (which returns the bytes it handled), repeated for `at_least` seconds."""
    done = 0
    start = time.perf_counter()
    while True:
        done += work()
        seconds = time.perf_counter() - start
        if seconds >= at_least:
            return done / seconds / 1e6


def ceilings_job(job: dict[str, Any]) -> dict[str, Any]:
    """This machine's ceilings for ingest: reading the file, hashing, both, and writing as
    much to a new file beside the store (synced: ingest's checkpoints make its bytes durable)."""
    path = job["file"]

    def read() -> int:
        n = 0
        with open(path, "rb", buffering=0) as f:
            while data := f.read(CHUNK):
                n += len(data)
        return n

    def read_hash() -> int:
        n = 0
        whole = blake3()
        with open(path, "rb", buffering=0) as f:
            while data := f.read(CHUNK):
                blake3(data).digest()
                whole.update(data)
                n += len(data)
        whole.digest()
        return n

    with open(path, "rb") as f:
        sample = f.read(256 * MiB)
    view = memoryview(sample)

    def one_pass() -> int:
        blake3(sample).digest()
        return len(sample)

    def as_ingest() -> int:
        whole = blake3()
        for offset in range(0, len(view), CHUNK):
            piece = view[offset : offset + CHUNK]
            blake3(piece).digest()
            whole.update(piece)
        whole.digest()
        return len(view)

    def write() -> float:
        piece = view[:MiB]
        size = os.path.getsize(path)
        target = Path(job["scratch"])
        start = time.perf_counter()
        try:
            with open(target, "wb", buffering=0) as f:
                for _ in range(size // MiB):
                    f.write(piece)
                os.fdatasync(f.fileno())
            return size // MiB * MiB / (time.perf_counter() - start) / 1e6
        finally:
            target.unlink(missing_ok=True)

    read()  # into the page cache, if it is not there yet
    return {
        "ceil_read": _timed(read),
        "ceil_blake3": _timed(one_pass),
        "ceil_hash": _timed(as_ingest),
        "ceil_read_hash": _timed(read_hash),
        "ceil_write": write(),
    }


CHILD_JOBS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "ingest": ingest_job,
    "ceilings": ceilings_job,
}


def run_child(job: dict[str, Any], timeout: float = JOB_TIMEOUT) -> dict[str, Any]:
    command = [sys.executable, "-m", "tests.support.bench.unreal", json.dumps(job)]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, cwd=REPO, env=client_env()
        )
    except subprocess.TimeoutExpired:
        raise ClientFailed(f"{job['kind']} took more than {timeout:.0f} s") from None
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    tail = "\n".join(done.stderr.strip().splitlines()[-15:])
    raise ClientFailed(f"{job['kind']} failed (exit {done.returncode}):\n{tail}")


# ---- the run ----


def rss_parts(pid: int) -> dict[str, float]:
    """A process's resident memory by kind (RssAnon: heap and stacks, RssFile: mapped files),
    in MB."""
    parts = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.startswith("Rss"):
                parts[key] = int(value.split()[0]) * 1024 / 1e6
    return parts


def realize(state: Path, *args: str, timeout: float = 600) -> str:
    """Run the control command on a state directory; its output."""
    done = subprocess.run(
        [sys.executable, "-m", "nfsd.cli", "--state-dir", str(state), *args],
        capture_output=True, text=True, cwd=REPO, env=client_env(), timeout=timeout,
    )  # fmt: skip
    if done.returncode != 0:
        raise ClientFailed(f"realize {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


@dataclass
class UnrealBench:
    settings: UnrealSettings
    log: Callable[[str], None]
    base: Path
    values: dict[str, list[float]] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    ids: dict[str, bytes] = field(default_factory=dict)  # file name -> BLAKE3 (blob id)
    servers: list[ServerProcess] = field(default_factory=list)

    def record(self, key: str, value: float) -> None:
        self.values.setdefault(key, []).append(value)

    def check(self, key: str, ok: bool, what: str = "") -> None:
        self.checks[key] = self.checks.get(key, True) and ok
        if not ok:
            self.errors.append(f"{CHECKS[key]}: wrong {what or 'content'}")

    # -- servers --

    def start(
        self, areas: dict[str, Path], state: Path, *, sources: list[Path] | None = None,
        extra: list[str] | None = None,
    ) -> tuple[ServerProcess, int]:  # fmt: skip
        server = start_server(areas, state, sources=sources, extra=extra, timeout=120)
        self.servers.append(server)
        return server, server.process.pid

    def stop(self, server: ServerProcess, what: str) -> None:
        server.stop()
        self.servers.remove(server)
        if "Traceback" in server.log():
            self.errors.append(f"the {what} server logged a traceback:\n{server.log()[-3000:]}")

    def settle(self, pid: int, quiet: float, timeout: float = 60.0) -> None:
        waited, idle = wait_until_idle([pid], quiet=quiet, timeout=timeout)
        if not idle:
            self.log(f"  (server still busy after {waited:.0f} s; measuring anyway)")

    def read(
        self, server: ServerProcess, export: str, name: str, size: int, depth: int,
        *, digest: bool = False, cap: float | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        target = Target("realize", self.base, export, server.nfs_port, server.mount_port,
                        server.process.pid)  # fmt: skip
        job = {
            "kind": "read", "server": target.server(), "timeout": JOB_TIMEOUT, "file": name,
            "outstanding": depth, "size": size, "chunk": self.settings.chunk,
            "time_cap": cap or self.settings.transfer_cap, "digest": digest,
        }  # fmt: skip
        [result] = run_clients([job], timeout=JOB_TIMEOUT)
        if not result["complete"]:
            self.log(f"  (read of {name} x {depth} cut at {result['bytes'] // MiB} MiB by the "
                     f"{job['time_cap']:.0f} s cap)")  # fmt: skip
        return result

    def verified(self, key: str, result: dict[str, Any], name: str, size: int) -> None:
        ok = result["complete"] and result.get("blake3") == self.ids[name].hex()
        self.check(key, ok, f"content of {name} ({result['bytes']} of {size} bytes read)")

    # -- the steps --

    def make_data(self) -> None:
        s = self.settings
        self.log(f"writing {s.read_size // MiB} MiB and {s.memory_size // MiB} MiB of data")
        for area, name, size in (("A", READ_FILE, s.read_size), ("M", MEMORY_FILE, s.memory_size)):
            directory = self.base / f"source-{area}"
            directory.mkdir()
            self.ids[name] = write_distinct(directory / name, size)
        (self.base / "real").mkdir()
        shutil.copyfile(self.base / "source-A" / READ_FILE, self.base / "real" / READ_FILE)
        os.sync()  # so that writing them back does not slow what is measured next

    def ingest(self) -> None:
        s = self.settings
        path = self.base / "source-A" / READ_FILE
        for r in range(s.ingest_rounds):
            scratch = self.base / "write-ceiling.bin"
            ceilings = run_child({"kind": "ceilings", "file": str(path), "scratch": str(scratch)})
            for key, value in ceilings.items():
                self.record(key, value)
            store = self.base / f"ingest-{r}"
            try:
                result = run_child({"kind": "ingest", "file": str(path), "store": str(store)})
            finally:
                shutil.rmtree(store, ignore_errors=True)
            self.check("ingest", result["blob"] == self.ids[READ_FILE].hex(), "blob id")
            self.record("ingest", result["rate"])
            self.record("ingest_cpu", result["cpu_rate"])
            self.log(f"  ingest round {r + 1}/{s.ingest_rounds}: {result['rate']:.0f} MB/s "
                     f"({result['cpu_rate']:.0f} MB per CPU-s); read + hash ceiling "
                     f"{ceilings['ceil_read_hash']:.0f} MB/s")  # fmt: skip

    def make_source(self) -> Path:
        """The source state directory: a server run on it hashes both files into its index."""
        s = self.settings
        state = self.base / "source-state"
        areas = {"A": self.base / "source-A", "M": self.base / "source-M"}
        server, _ = self.start(areas, state, extra=["--rest", "0.1"])
        try:
            deadline = time.monotonic() + 120 + (s.read_size + s.memory_size) / 20e6
            for area, name in (("A", READ_FILE), ("M", MEMORY_FILE)):
                while f"blob {self.ids[name].hex()[:16]}" not in realize(state, "history", area):
                    if time.monotonic() > deadline:
                        raise ClientFailed(f"the source server never hashed {area}/{name}")
                    time.sleep(0.5)
        finally:
            self.stop(server, "source")
        return state

    def importing(self, name: str, areas: dict[str, Path], area: str, source: Path) -> Path:
        """A state directory whose `area` lists the source's files of that area (Unreal)."""
        state = self.base / f"{name}-state"
        state.mkdir()
        config = {"areas": {a: str(p) for a, p in areas.items()}}
        (state / "config.json").write_text(json.dumps(config))
        self.log(f"  {realize(state, 'import', area, str(source)).splitlines()[0]}")
        return state

    def cached_reads(self, source: Path) -> None:
        s = self.settings
        (self.base / "read-A").mkdir()
        areas = {"A": self.base / "read-A", "R": self.base / "real"}
        state = self.importing("read", areas, "A", source)
        cache = ["--cache-max", str(2 * s.read_size)]
        server, pid = self.start(areas, state, sources=[source], extra=cache)
        try:
            self.settle(pid, s.startup_quiet, timeout=300)
            first = self.read(server, "/A", READ_FILE, s.read_size, s.first_depth, digest=True,
                              cap=JOB_TIMEOUT - 60)  # fmt: skip
            self.verified("first", first, READ_FILE, s.read_size)
            self.record("first_read", first["rate"])
            self.notes["first_read_jukebox"] = first["jukebox"]
            self.log(f"  first read (from the source): {first['rate']:.0f} MB/s, "
                     f"{first['jukebox']} JUKEBOX answers")  # fmt: skip
        finally:
            self.stop(server, "first-read")

        # Without the source, an Unreal READ can only be served from the cache.
        server, pid = self.start(areas, state, extra=cache)
        sampler = MemorySampler({"realize": pid})
        sampler.start()
        try:
            self.settle(pid, s.startup_quiet, timeout=300)
            order = ["unreal", "real"]
            for r in range(1, s.rounds + 1):
                for depth in s.depths:
                    rates = {}
                    for which in order:
                        self.settle(pid, s.quiet)
                        export = "/A" if which == "unreal" else "/R"
                        result = self.read(server, export, READ_FILE, s.read_size, depth)
                        rates[which] = result["rate"]
                        self.record(f"{which}_{depth}", result["rate"])
                    self.record(f"ratio_{depth}", rates["unreal"] / rates["real"])
                    self.log(f"  round {r}/{s.rounds} x {depth:>2}: unreal "
                             f"{rates['unreal']:6.0f} MB/s, real {rates['real']:6.0f} MB/s, "
                             f"ratio {rates['unreal'] / rates['real']:.2f}")  # fmt: skip
                order.reverse()
            self.settle(pid, s.quiet)
            again = self.read(server, "/A", READ_FILE, s.read_size, 4, digest=True)
            self.verified("cached", again, READ_FILE, s.read_size)
        finally:
            self.record("rss_cached", max(sampler.stop().values()) / 1e6)
            self.stop(server, "cached-read")
        shutil.rmtree(state, ignore_errors=True)  # room for the memory pass

    def memory(self, source: Path) -> None:
        s = self.settings
        (self.base / "mem-M").mkdir()
        areas = {"M": self.base / "mem-M"}
        state = self.importing("mem", areas, "M", source)
        server, pid = self.start(areas, state, sources=[source],
                                 extra=["--cache-max", str(s.cache_max)])  # fmt: skip
        sampler = MemorySampler({"realize": pid}, keep_series=True)
        sampler.start()
        try:
            self.settle(pid, s.startup_quiet, timeout=300)
            self.record("rss_start", sampler.sample()["realize"] / 1e6)
            began = time.monotonic()
            result = self.read(server, "/M", MEMORY_FILE, s.memory_size, s.memory_depth,
                               digest=True, cap=JOB_TIMEOUT - 60)  # fmt: skip
            ended = time.monotonic()
            self.verified("memory", result, MEMORY_FILE, s.memory_size)
            self.record("memory_read", result["rate"])
            self.notes["memory_jukebox"] = result["jukebox"]
            self.record("rss_end", sampler.sample()["realize"] / 1e6)
            self.notes["rss_end_parts_mb"] = rss_parts(pid)
            time.sleep(2.5)  # the server rewrites its status file every 2 s
            cache = json.loads((state / "server.json").read_text())["cache"]
            self.record("cache_end", cache["cached"] / MiB)
            self.notes["cache_limit_mib"] = s.cache_max / MiB
            self.check("evicted", cache["cached"] <= s.cache_max, "cache usage (over its limit)")
        finally:
            peak = sampler.stop()["realize"]
            self.stop(server, "memory")
        self.record("rss_peak", peak / 1e6)
        assert sampler.series is not None
        middle = (began + ended) / 2
        halves = ([], [])
        for at, rss in sampler.series:
            if began <= at <= ended and "realize" in rss:
                halves[at > middle].append(rss["realize"])
        for key, half in zip(("rss_first_half", "rss_second_half"), halves, strict=True):
            if half:
                self.record(key, max(half) / 1e6)
        self.notes["rss_series"] = [
            [round(at - began, 1), round(rss["realize"] / 1e6, 1)]
            for at, rss in sampler.series[:: max(1, len(sampler.series) // 300)]
            if "realize" in rss
        ]
        self.log(f"  memory pass: {result['rate']:.0f} MB/s, RSS {self.values['rss_start'][0]:.0f}"
                 f" MB at start, peak {peak / 1e6:.0f} MB; cache {cache['cached'] / MiB:.0f} MiB "
                 f"of {s.cache_max / MiB:.0f} MiB")  # fmt: skip

    def step(self, name: str, work: Callable[[], Any]) -> Any:
        start = time.monotonic()
        self.log(f"{name}")
        try:
            return work()
        finally:
            self.log(f"  ({name}: {time.monotonic() - start:.0f} s)")


def run_unreal_bench(
    settings: UnrealSettings, log: Callable[[str], None], workdir: Path | None = None
) -> dict[str, Any]:
    """Run everything; the raw results as a JSON-able dict."""
    started = time.monotonic()
    load = os.getloadavg()[0]
    for where in (Path(tempfile.gettempdir()), *([workdir] if workdir else [])):
        with contextlib.suppress(OSError):
            log(f"df {where}: {shutil.disk_usage(where).free / GiB:.1f} GiB free")
    parent = choose_workdir(workdir, settings.disk_needed(), log)
    base = Path(tempfile.mkdtemp(prefix="realize-bench-unreal-", dir=parent))
    bench = UnrealBench(settings, log, base)
    try:
        bench.step("data", bench.make_data)
        bench.step("ingest and its ceilings", bench.ingest)
        source = bench.step("source: a server hashes its files", bench.make_source)
        bench.step("cached Unreal READ against Real READ", lambda: bench.cached_reads(source))
        bench.step("memory pass", lambda: bench.memory(source))
    except Exception as e:
        bench.errors.append(f"{type(e).__name__}: {e}")
        log(f"FAILED: {e}")
    finally:
        for server in list(bench.servers):
            bench.stop(server, "leftover")
        shutil.rmtree(base, ignore_errors=True)
    for key in CHECKS:
        bench.checks.setdefault(key, False)
    return {
        "settings": asdict(settings),
        "machine": {**host_facts(), "load": [round(load, 1), round(os.getloadavg()[0], 1)]},
        "seconds": time.monotonic() - started,
        "metrics": [asdict(m) for m in METRICS],
        "ceilings": [asdict(m) for m in CEILINGS],
        "values": bench.values,
        "checks": bench.checks,
        "notes": bench.notes,
        "errors": bench.errors,
    }


# ---- the report ----


def _size(n: float) -> str:
    return f"{n / GiB:g} GiB" if n >= GiB else f"{n / MiB:g} MiB"


def met(metric: dict[str, Any], values: dict[str, list[float]]) -> bool | None:
    """Whether a metric's target is met by its median (None: no target)."""
    stats = report.summarize(values.get(metric["key"]))
    if metric["target"] is None:
        return None
    if stats is None:
        return False
    if metric["higher_is_better"]:
        return stats[0] >= metric["target"]
    return stats[0] <= metric["target"]


def target_text(metric: dict[str, Any]) -> str:
    if metric["target"] is None:
        return "—"
    return f"{'≥' if metric['higher_is_better'] else '≤'} {metric['target']:g} {metric['unit']}"


def verdicts(results: dict[str, Any]) -> list[str]:
    """One line per target of the issue: what it is, the figure, met or not."""
    s, values = results["settings"], results["values"]
    by_key = {m["key"]: m for m in results["metrics"]}

    def median(key: str) -> str:
        stats = report.summarize(values.get(key))
        return report.fmt(stats[0] if stats else None)

    def word(ok: bool | None) -> str:
        return "met" if ok else "**not met**"

    ratios = [(d, met(by_key[f"ratio_{d}"], values)) for d in s["depths"]]
    ratio_text = ", ".join(f"{median(f'ratio_{d}')} at {d} outstanding" for d, _ in ratios)
    return [
        f"- cached Unreal READ ≥ {RATIO_TARGET:g} x Real READ: {ratio_text} — "
        + ("met at every depth" if all(ok for _, ok in ratios) else
           "**not met** at " + ", ".join(str(d) for d, ok in ratios if not ok)
           + " outstanding"),
        f"- ingest (hash + store) ≥ {INGEST_TARGET:g} MB/s: {median('ingest')} MB/s — "
        f"{word(met(by_key['ingest'], values))}",
        f"- server peak RSS ≤ {RSS_TARGET:g} MB while {_size(s['memory_size'])} pass through a "
        f"{_size(s['cache_max'])} cache: {median('rss_peak')} MB — "
        f"{word(met(by_key['rss_peak'], values))}",
    ]  # fmt: skip


def body(results: dict[str, Any], command: str) -> str:
    """The report without its title: what ran, the targets, the figures, the ceilings."""
    s, machine, values = results["settings"], results["machine"], results["values"]
    load = machine.get("load") or ["?", "?"]
    lines = [
        f"`{command}` — {machine['date']}, {machine['cores']} cores ({machine['cpu']}), "
        f"Linux {machine['kernel']}, Python {machine['python']}; load average {load[0]} at the "
        f"start, {load[1]} at the end (other jobs share this machine). {s['rounds']} round(s) "
        f"of READs (Unreal and Real alternating), {s['ingest_rounds']} ingest rounds; run took "
        f"{results['seconds'] / 60:.1f} min.",
        "",
        f"Data: files in which no two 256 KiB chunks are equal. Ingest and the READ comparison "
        f"use a {_size(s['read_size'])} file; the memory pass reads a "
        f"{_size(s['memory_size'])} Unreal file through a cache limited to "
        f"{_size(s['cache_max'])} (`--cache-max`). READs come from the main bench's client "
        "(`nfsd.rpc.client`, in its own process, 1 MiB per READ) over loopback. The cached "
        "Unreal file is read after the server restarted *without* its source, so every byte "
        "comes from the blob cache (each chunk re-hashed as it is loaded); the Real file is a "
        "copy of it in another area of the same server. Ingest runs `BlobStore.ingest` on the "
        "file (in the page cache) into a fresh store, in a fresh process each round. "
        "MB = 10^6 bytes, MiB = 2^20.",
        "",
        "Targets:",
        "",
        *verdicts(results),
        "",
        "| figure | unit | median | min-max | runs | target | met? |",
        "| --- | --- | ---: | ---: | ---: | --- | --- |",
    ]
    for m in results["metrics"]:
        stats = report.summarize(values.get(m["key"]))
        ok = met(m, values)
        lines.append(
            f"| {m['label']} | {m['unit']} | {report.fmt(stats[0] if stats else None)} "
            f"| {report.span(stats)} | {len(values.get(m['key'], []))} | {target_text(m)} "
            f"| {'—' if ok is None else ('yes' if ok else '**no**')} |"
        )
    checks = results["checks"]
    lines += [
        "",
        "Content verified (BLAKE3 of everything read, in file order, against the blob id): "
        + "; ".join(f"{CHECKS[k]} {'yes' if checks.get(k) else '**NO**'}" for k in CHECKS)
        + ".",
        "",
        "Ceilings of this machine for ingest, measured in the same run (one process, the "
        "file in the page cache):",
        "",
        "| ceiling | unit | median | min-max |",
        "| --- | --- | ---: | ---: |",
    ]
    for c in results["ceilings"]:
        stats = report.summarize(values.get(c["key"]))
        lines.append(f"| {c['label']} | {c['unit']} | {report.fmt(stats[0] if stats else None)} "
                     f"| {report.span(stats)} |")  # fmt: skip
    if results["errors"]:
        lines += ["", "Errors:", ""] + [f"- {e.splitlines()[0]}" for e in results["errors"]]
    return "\n".join(lines) + "\n"


def markdown(results: dict[str, Any], command: str) -> str:
    return "# The Unreal layer: ingest, cached READ, memory\n\n" + body(results, command)


README_INTRO = (
    "`scripts/bench-unreal` measures the Unreal layer alone: `BlobStore.ingest` (hash + "
    "store) against this machine's hashing and reading ceilings; READ of a fully cached "
    "Unreal file against READ of the same file in the Real layer of the same server, with "
    "the same client; and the server's resident memory while a file several times the cache "
    "limit passes through the cache (fetched from an attached source, verified, stored, "
    "evicted). Every untimed read is checked by its BLAKE3. It writes `unreal.md` and "
    "`unreal.json` to `--out` (default `docs/bench/`); `--update-readme` puts the table "
    "below. `scripts/bench-unreal --quick` (small sizes, about half a minute) is the smoke "
    "test in the suite (`tests/test_bench_unreal.py`)."
)


def readme_section(results: dict[str, Any], command: str) -> str:
    intro = textwrap.fill(README_INTRO, width=95, break_on_hyphens=False)
    return f"### The Unreal layer\n\n{intro}\n\nLatest run: {body(results, command)}"


def update_readme(readme: Path, section: str) -> bool:
    """Put `section` between the bench-unreal markers of the README's "Performance"
    section; False when there is no such section."""
    return report.put_subsection(readme, (README_START, README_END), README_SECTION, section)


def write(results: dict[str, Any], out: Path, command: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "unreal.json").write_text(json.dumps(results, indent=1) + "\n")
    (out / "unreal.md").write_text(markdown(results, command))


# ---- the command line ----


def log(message: str) -> None:
    print(f"bench-unreal: {message}", flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench-unreal",
        description="The Unreal layer: ingest, cached Unreal READ against Real READ, memory.",
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="small sizes (64 MiB read, 256 MiB through a 64 MiB cache), one round: checks "
             "the harness (about 30 s)",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})"
    )
    parser.add_argument(
        "--workdir", type=Path,
        help="where the data goes (default: the first of $TMPDIR, /var/tmp, the repository's "
             "parent with room for it)",
    )  # fmt: skip
    parser.add_argument("--rounds", type=int, help="READ rounds (default 3, or 1 with --quick)")
    parser.add_argument(
        "--read-mib", type=int, help="the read and ingest file (default 1024, or 64 with --quick)"
    )
    parser.add_argument(
        "--memory-mib", type=int,
        help="what the memory pass reads (default 4096, or 256 with --quick)",
    )  # fmt: skip
    parser.add_argument(
        "--cache-mib", type=int,
        help="the cache limit in the memory pass (default 1024, or 64 with --quick)",
    )  # fmt: skip
    parser.add_argument(
        "--update-readme", action="store_true",
        help="put the results into README.md (a subsection of Performance)",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = UnrealSettings.quick_run() if args.quick else UnrealSettings.full()
    if args.rounds:
        settings.rounds = args.rounds
    for option, attribute in (("read_mib", "read_size"), ("memory_mib", "memory_size"),
                              ("cache_mib", "cache_max")):  # fmt: skip
        if getattr(args, option):
            setattr(settings, attribute, getattr(args, option) * MiB)
    try:
        results = run_unreal_bench(settings, log, args.workdir)
    except BenchUsageError as e:
        print(f"scripts/bench-unreal: {e}", file=sys.stderr)
        return 2
    shown = ["scripts/bench-unreal"] + (["--quick"] if args.quick else [])
    for option in ("rounds", "read_mib", "memory_mib", "cache_mib"):
        if getattr(args, option):
            shown += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    out = args.out.resolve()
    if out != DEFAULT_OUT.resolve():
        shown += ["--out", str(args.out)]
    command = shlex.join(shown)
    write(results, out, command)
    print()
    print((out / "unreal.md").read_text())
    if args.update_readme:
        if update_readme(REPO / "README.md", readme_section(results, command)):
            log("README.md updated")
        else:
            log(f"README.md has no {README_SECTION!r} section")
    log(f"wrote {out}/unreal.md, unreal.json in {results['seconds']:.0f} s")
    for error in results["errors"]:
        print(f"scripts/bench-unreal: {error}", file=sys.stderr)
    return 1 if results["errors"] else 0


def child_main(argv: list[str]) -> int:
    job = json.loads(argv[1])
    print("RESULT " + json.dumps(CHILD_JOBS[job["kind"]](job)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(child_main(sys.argv))
