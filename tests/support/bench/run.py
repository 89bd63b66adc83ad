"""The benchmark run: two servers on identical data, every workload against both, in rounds.

`run_bench(settings)` makes the data once (a large file, a directory of many empty files, a
tree of directories and files for the metadata walk) and copies it, starts Realize (`realize
run`, tests/support/server.py) on one copy and nfs-ganesha (FSAL VFS, tests/support/ganesha.py)
on the other, then for each round runs every workload against both servers one after the other,
the order alternating from round to round. Client workloads run in their own processes
(tests/support/bench/client.py, or libnfs's `nfs-cp`), so each server is the only thing in its
process. Measuring starts once both servers are idle after their start, and every measurement
first waits until both are idle again, so background work (Realize scans and hashes its areas
at start and hashes files that rest after writes) is not charged to whichever workload happens
to run next. A sampler thread follows both servers' resident memory all along. The result is a
plain dict (see `report.py` for its use).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tests.support.ganesha import GaneshaServer
from tests.support.server import REPO, ServerProcess, start_server

HOST = "127.0.0.1"
BIG = "big.bin"
LISTED = "listed"
ENTRY_FORMAT = "entry-%06d"
TREE = "tree"
MiB = 1 << 20
STARTUP_QUIET = 3.0  # seconds in a row a server must be idle before the first measurement


@dataclass
class Settings:
    """Sizes, counts and durations of one run (`full()` or `quick()`)."""

    quick: bool
    rounds: int
    file_size: int  # the sequential read/write file
    chunk: int  # bytes per READ/WRITE call of the package's client
    dir_entries: int  # the listed directory
    small_files: int  # files created and removed
    small_file_size: int
    small_file_workers: int  # files in flight at once
    rate_seconds: float  # each ops/s measurement
    listing_seconds: float  # each listing measurement (at least one whole listing)
    tcp_bytes: int  # the loopback TCP ceiling
    transfer_cap: float  # seconds at most for one sequential transfer
    quiet: float = 0.5  # seconds both servers must be idle before each measurement
    listing_count: int = 65536  # READDIR count, READDIRPLUS dircount and maxcount
    lookup_names: int = 1000  # distinct names LOOKUP cycles through
    # the walked tree: `tree_fanout` subdirectories per directory down to `tree_depth` levels
    # below its top, `tree_files` empty files in every directory (10, 3, 17: 19,997 entries)
    tree_fanout: int = 10
    tree_depth: int = 3
    tree_files: int = 17

    def tree_counts(self) -> tuple[int, int]:
        """(directories, files) below the walked tree's top."""
        directories = sum(self.tree_fanout**level for level in range(1, self.tree_depth + 1))
        return directories, (directories + 1) * self.tree_files

    @classmethod
    def full(cls) -> Settings:
        return cls(
            quick=False,
            rounds=3,
            file_size=1 << 30,
            chunk=MiB,
            dir_entries=20_000,
            small_files=5_000,
            small_file_size=4096,
            small_file_workers=16,
            rate_seconds=2.5,
            listing_seconds=2.5,
            tcp_bytes=2 << 30,
            transfer_cap=90.0,
        )

    @classmethod
    def quick_run(cls) -> Settings:
        return cls(
            quick=True,
            rounds=1,
            file_size=16 * MiB,
            chunk=MiB,
            dir_entries=2_000,
            small_files=500,
            small_file_size=4096,
            small_file_workers=16,
            rate_seconds=1.0,
            listing_seconds=1.0,
            tcp_bytes=256 * MiB,
            transfer_cap=30.0,
            quiet=0.25,
            lookup_names=500,
            tree_fanout=3,
            tree_depth=2,
            tree_files=5,
        )


# ---- what is measured and shown ----


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    target: float | None = None  # ratio realize/ganesha to reach (or the RSS bound in MB)
    higher_is_better: bool = True
    ceiling: str | None = None  # key of the machine ceiling this figure is bounded by


def _rates(kind: str, label: str, target_16: float | None) -> list[Metric]:
    return [
        Metric(
            f"{kind}_{procs}x{depth}",
            f"{label}, {procs} process{'es' if procs > 1 else ''} x {depth} outstanding",
            "ops/s",
            target_16 if depth == 16 else None,
            ceiling=f"null_{procs}x{depth}",
        )
        for procs in (1, 2)
        for depth in (1, 16)
    ]


METRICS: list[Metric] = [
    Metric("cp_read", "sequential read, nfs-cp (libnfs)", "MB/s", 1.0, ceiling="tcp"),
    Metric("cp_write", "sequential write, nfs-cp (libnfs)", "MB/s", 1.0, ceiling="tcp"),
    *[
        Metric(f"read_{d}", f"sequential read, own client, 1 MiB x {d} outstanding", "MB/s",
               1.0, ceiling="tcp")
        for d in (1, 4, 16)
    ],
    *[
        Metric(f"write_{d}", f"sequential write + COMMIT, own client, 1 MiB x {d} outstanding",
               "MB/s", 1.0, ceiling="tcp")
        for d in (1, 4, 16)
    ],
    *_rates("getattr", "GETATTR", 1.0),
    *_rates("lookup", "LOOKUP", 1.0),
    Metric("readdirplus", "READDIRPLUS of the large directory", "entries/s", 0.5),
    Metric("readdir", "READDIR of the large directory", "entries/s"),
    Metric("walk", "metadata walk: READDIRPLUS + GETATTR each, 1 outstanding", "entries/s"),
    Metric("small_create", "small files: CREATE + WRITE 4 KiB + COMMIT", "files/s", 0.5),
    Metric("small_remove", "small files: REMOVE", "files/s"),
    Metric("rss", "server peak resident memory (VmHWM)", "MB", 150.0, higher_is_better=False),
]  # fmt: skip

CEILINGS: list[Metric] = [
    Metric("tcp", "loopback TCP, two Python processes, 1 MiB sends", "MB/s"),
    Metric("null_raw", "RPC NULL, blocking-socket client, 1 outstanding", "calls/s"),
    *[
        Metric(
            f"null_{procs}x{depth}",
            f"RPC NULL, own client, {procs} process{'es' if procs > 1 else ''} x {depth}"
            " outstanding",
            "calls/s",
        )
        for procs in (1, 2)
        for depth in (1, 16)
    ],
]


# ---- the servers ----


@dataclass
class Target:
    """One server under test and where its copy of the data is."""

    name: str
    root: Path  # its copy of the data, on this machine
    export: str  # the MNT path
    nfs_port: int
    mount_port: int
    pid: int

    def server(self) -> dict[str, Any]:
        return {
            "host": HOST,
            "nfs_port": self.nfs_port,
            "mount_port": self.mount_port,
            "export": self.export,
        }

    def url(self, name: str) -> str:
        return (
            f"nfs://{HOST}{self.export}/{name}?version=3"
            f"&nfsport={self.nfs_port}&mountport={self.mount_port}"
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _ganesha_pid(ganesha: GaneshaServer) -> int:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            return int(ganesha.pid_path.read_text().split()[0])
        time.sleep(0.1)
    assert ganesha.proc is not None
    return ganesha.proc.pid


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def wait_until_idle(
    pids: list[int],
    *,
    quiet: float = 0.5,
    window: float = 0.25,
    busy: float = 0.08,
    timeout: float = 60.0,
) -> tuple[float, bool]:
    """Wait until every process has used under `busy` of a core in each `window` for `quiet`
    seconds in a row: background work a server started (a scan at start, hashing what a
    workload wrote) is not charged to the next measurement. (seconds waited, idle reached)."""
    start = time.monotonic()
    calm = 0.0
    while calm < quiet:
        if time.monotonic() - start > timeout:
            return time.monotonic() - start, False
        try:
            before = [cpu_seconds(pid) for pid in pids]
            time.sleep(window)
            used = [cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
        except OSError:  # a server is gone: the measurement will say so
            return time.monotonic() - start, False
        calm = calm + window if max(used) < busy * window else 0.0
    return time.monotonic() - start, True


class MemorySampler(threading.Thread):
    """Samples VmRSS and VmHWM of some processes until stopped; keeps the peaks (bytes) and,
    with `keep_series`, every sample: (monotonic time, {name: VmRSS bytes})."""

    def __init__(
        self, pids: dict[str, int], interval: float = 0.2, keep_series: bool = False
    ) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.interval = interval
        self.peak_rss = dict.fromkeys(pids, 0)
        self.hwm = dict.fromkeys(pids, 0)
        self.series: list[tuple[float, dict[str, int]]] | None = [] if keep_series else None
        self._stop_event = threading.Event()

    def sample(self) -> dict[str, int]:
        """One sample; VmRSS of each process still there (bytes)."""
        now = time.monotonic()
        rss: dict[str, int] = {}
        for name, pid in self.pids.items():
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    key, _, value = line.partition(":")
                    if key in ("VmRSS", "VmHWM"):
                        kib = int(value.split()[0])
                        table = self.peak_rss if key == "VmRSS" else self.hwm
                        table[name] = max(table[name], kib * 1024)
                        if key == "VmRSS":
                            rss[name] = kib * 1024
        if self.series is not None:
            self.series.append((now, rss))
        return rss

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.sample()

    def stop(self) -> dict[str, int]:
        self._stop_event.set()
        self.join()
        self.sample()
        return {name: max(self.peak_rss[name], self.hwm[name]) for name in self.pids}


# ---- data ----


def make_tree(top: Path, fanout: int, depth: int, files: int) -> None:
    """`files` empty files in `top` and `fanout` subdirectories, each such a tree `depth` - 1
    levels deep."""
    top.mkdir()
    for i in range(files):
        os.close(os.open(top / f"file-{i:03d}", os.O_CREAT | os.O_WRONLY, 0o644))
    if depth > 0:
        for i in range(fanout):
            make_tree(top / f"dir-{i:02d}", fanout, depth - 1, files)


def make_data(root: Path, settings: Settings, log: Callable[[str], None]) -> None:
    """The reference copy: a random file, a directory of empty files and the walked tree."""
    root.mkdir(parents=True)
    directories, files = settings.tree_counts()
    log(f"writing {settings.file_size // MiB} MiB of random data, "
        f"{settings.dir_entries} directory entries and a tree of {directories} directories "
        f"and {files} files in {root}")  # fmt: skip
    with open(root / BIG, "wb") as f:
        left = settings.file_size
        while left:
            chunk = os.urandom(min(left, 4 * MiB))
            f.write(chunk)
            left -= len(chunk)
    listed = root / LISTED
    listed.mkdir()
    for i in range(settings.dir_entries):
        os.close(os.open(listed / (ENTRY_FORMAT % i), os.O_CREAT | os.O_WRONLY, 0o644))
    make_tree(root / TREE, settings.tree_fanout, settings.tree_depth, settings.tree_files)
    os.chmod(root, 0o777)


def copy_data(source: Path, target: Path) -> None:
    target.mkdir(parents=True)
    shutil.copyfile(source / BIG, target / BIG)
    (target / LISTED).mkdir()
    for name in os.listdir(source / LISTED):
        os.close(os.open(target / LISTED / name, os.O_CREAT | os.O_WRONLY, 0o644))
    shutil.copytree(source / TREE, target / TREE)
    os.chmod(target, 0o777)


# ---- client processes ----


class ClientFailed(RuntimeError):
    pass


def _client_command(job: dict[str, Any]) -> list[str]:
    return [sys.executable, "-m", "tests.support.bench.client", json.dumps(job)]


def client_env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{path}" if path else str(REPO))


def run_clients(jobs: list[dict[str, Any]], timeout: float) -> list[dict[str, Any]]:
    """Start one client process per job, start them together, and collect their results."""
    with contextlib.ExitStack() as stack:
        errs = [stack.enter_context(tempfile.TemporaryFile(mode="w+")) for _ in jobs]
        return _run_clients(jobs, timeout, [], errs)


def _run_clients(
    jobs: list[dict[str, Any]],
    timeout: float,
    procs: list[subprocess.Popen[str]],
    errs: list[Any],
) -> list[dict[str, Any]]:
    timer: threading.Timer | None = None
    try:
        for job, err in zip(jobs, errs, strict=True):
            procs.append(
                subprocess.Popen(
                    _client_command(job), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                    stderr=err, text=True, cwd=REPO, env=client_env(),
                )
            )  # fmt: skip
        timer = threading.Timer(timeout, lambda: [p.kill() for p in procs])
        timer.start()

        def failure(i: int, what: str) -> ClientFailed:
            procs[i].kill()
            procs[i].wait()
            errs[i].seek(0)
            tail = "\n".join(errs[i].read().strip().splitlines()[-15:])
            return ClientFailed(f"client {jobs[i]['kind']} {what}:\n{tail}")

        for i, p in enumerate(procs):
            assert p.stdout is not None
            if p.stdout.readline().strip() != "READY":
                raise failure(i, "did not get ready")
        start_at = time.time() + 0.05
        for p in procs:
            assert p.stdin is not None
            p.stdin.write(f"{start_at!r}\n")
            p.stdin.flush()
        results = []
        for i, p in enumerate(procs):
            assert p.stdout is not None
            line = p.stdout.readline()
            if not line.startswith("RESULT "):
                raise failure(i, "failed")
            results.append(json.loads(line[len("RESULT ") :]))
            p.wait()
        return results
    finally:
        if timer is not None:
            timer.cancel()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def tcp_ceiling(size: int, timeout: float) -> float:
    """MB/s of one TCP stream between two Python processes on loopback."""
    recv_job = {"kind": "tcp_recv", "size": size}
    receiver = subprocess.Popen(
        _client_command(recv_job), stdout=subprocess.PIPE, text=True, cwd=REPO, env=client_env()
    )
    try:
        assert receiver.stdout is not None
        port = int(receiver.stdout.readline().split()[1])
        subprocess.run(
            _client_command({"kind": "tcp_send", "size": size, "port": port}),
            check=True, stdout=subprocess.DEVNULL, cwd=REPO, env=client_env(), timeout=timeout,
        )  # fmt: skip
        line = receiver.stdout.readline()
        if not line.startswith("RESULT "):
            raise ClientFailed("tcp receiver failed")
        return float(json.loads(line[len("RESULT ") :])["rate"])
    finally:
        receiver.kill()
        receiver.wait()


# ---- the run ----


@dataclass
class Bench:
    settings: Settings
    log: Callable[[str], None]
    targets: dict[str, Target] = field(default_factory=dict)
    values: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    base: Path = Path()
    local_source: Path = Path()
    idle_wait: float = 0.0  # seconds spent waiting for the servers to be idle

    def record(self, key: str, server: str, value: float) -> None:
        self.values.setdefault(key, {}).setdefault(server, []).append(value)

    def job(self, target: Target, kind: str, **kw: Any) -> dict[str, Any]:
        return {"kind": kind, "server": target.server(), "timeout": 900, **kw}

    def quiesce(self) -> None:
        """Let both servers finish background work before the next measurement."""
        pids = [t.pid for t in self.targets.values()]
        waited, idle = wait_until_idle(pids, quiet=self.settings.quiet)
        self.idle_wait += waited
        if not idle:
            self.log(f"  (servers still busy after {waited:.0f} s; measuring anyway)")

    def clients(self, target: Target, kind: str, procs: int = 1, **kw: Any) -> list[dict]:
        jobs = [self.job(target, kind, proc_index=i, **kw) for i in range(procs)]
        self.quiesce()
        return run_clients(jobs, timeout=900)

    # -- workloads: each measures one server and records its figures --

    def nfs_cp(self, target: Target, tag: str) -> None:
        nfs_cp = shutil.which("nfs-cp") or "nfs-cp"
        size = self.settings.file_size
        copy = self.local_source.with_name(f"copy-{tag}.bin")
        for key, source, dest, check in (
            ("cp_read", target.url(BIG), str(copy), copy),
            ("cp_write", str(self.local_source), target.url(f"cp-{tag}.bin"),
             target.root / f"cp-{tag}.bin"),
        ):  # fmt: skip
            self.quiesce()
            start = time.perf_counter()
            proc = subprocess.run(
                [nfs_cp, source, dest], capture_output=True, text=True, timeout=900
            )
            seconds = time.perf_counter() - start
            if proc.returncode != 0:
                raise ClientFailed(f"nfs-cp {source} {dest}: {proc.stderr.strip()}")
            if check is not None:
                written = check.stat().st_size
                check.unlink()
                if written != size:
                    raise ClientFailed(f"nfs-cp copied {written} bytes of {size}")
            self.record(key, target.name, size / seconds / 1e6)

    def sequential(self, target: Target, tag: str) -> None:
        s = self.settings
        for depth in (1, 4, 16):
            for kind in ("read", "write"):
                [result] = self.clients(
                    target, kind, outstanding=depth, size=s.file_size, chunk=s.chunk,
                    time_cap=s.transfer_cap, file=BIG, name=f"w-{tag}-{depth}.bin",
                )  # fmt: skip
                if not result["complete"]:
                    self.log(f"  ({kind} x {depth} cut at {result['bytes'] // MiB} MiB "
                             f"by the {s.transfer_cap:.0f} s cap)")  # fmt: skip
                self.record(f"{kind}_{depth}", target.name, result["rate"])

    def rates(self, target: Target, tag: str) -> None:
        s = self.settings
        for kind in ("null", "getattr", "lookup"):
            for procs in (1, 2):
                for depth in (1, 16):
                    results = self.clients(
                        target, kind, procs, outstanding=depth, duration=s.rate_seconds,
                        file=BIG, dir=LISTED, names=min(s.lookup_names, s.dir_entries),
                        name_format=ENTRY_FORMAT,
                    )  # fmt: skip
                    self.record(f"{kind}_{procs}x{depth}", target.name,
                                sum(r["rate"] for r in results))  # fmt: skip
        [raw] = self.clients(target, "null_raw", duration=s.rate_seconds)
        self.record("null_raw", target.name, raw["rate"])

    def listings(self, target: Target, tag: str) -> None:
        s = self.settings
        for kind in ("readdirplus", "readdir"):
            [result] = self.clients(
                target, kind, dir=LISTED, duration=s.listing_seconds, count=s.listing_count,
                expect=s.dir_entries,
            )  # fmt: skip
            self.record(kind, target.name, result["rate"])

    def walk(self, target: Target, tag: str) -> None:
        """One walk of the tree by one blocking client (client.py's `walk`)."""
        s = self.settings
        [result] = self.clients(
            target, "walk", dir=TREE, count=s.listing_count, expect=sum(s.tree_counts())
        )
        self.record("walk", target.name, result["rate"])
        self.record("walk_seconds", target.name, result["seconds"])
        self.record("walk_calls", target.name, result["calls"])

    def small_files(self, target: Target, tag: str) -> None:
        s = self.settings
        [result] = self.clients(
            target, "smallfiles", dir=f"small-{tag}", count=s.small_files,
            file_size=s.small_file_size, outstanding=s.small_file_workers,
            time_cap=s.transfer_cap,
        )  # fmt: skip
        self.record("small_create", target.name, result["create_rate"])
        self.record("small_remove", target.name, result["remove_rate"])

    def warm_up(self, target: Target) -> None:
        """One listing of the large directory and one walk of the tree, untimed, so both
        servers know their entries before the first round."""
        s = self.settings
        self.clients(
            target, "readdirplus", dir=LISTED, duration=0, count=s.listing_count,
            expect=s.dir_entries,
        )  # fmt: skip
        self.clients(target, "walk", dir=TREE, count=s.listing_count, expect=sum(s.tree_counts()))

    WORKLOADS: tuple[str, ...] = (
        "nfs_cp", "sequential", "rates", "listings", "walk", "small_files",
    )  # fmt: skip

    def measure(self, workload: str, target: Target, tag: str) -> None:
        start = time.monotonic()
        try:
            getattr(self, workload)(target, tag)
        except Exception as e:
            self.errors.append(f"{workload} against {target.name} ({tag}): {e}")
            self.log(f"  {workload} against {target.name} FAILED: {e}")
            return
        self.log(f"  {workload:<12} {target.name:<8} {time.monotonic() - start:6.1f} s")

    def run_rounds(self) -> None:
        order = list(self.targets)
        for target in self.targets.values():
            self.warm_up(target)
        for r in range(1, self.settings.rounds + 1):
            self.log(f"round {r}/{self.settings.rounds}: order {' then '.join(order)}")
            try:
                self.record("tcp", "machine", tcp_ceiling(self.settings.tcp_bytes, 300))
            except Exception as e:
                self.errors.append(f"loopback TCP ceiling: {e}")
            for workload in self.WORKLOADS:
                for name in order:
                    self.measure(workload, self.targets[name], f"r{r}-{name}")
            order.reverse()


def host_facts() -> dict[str, Any]:
    """Date, CPU, cores, kernel and Python of this machine."""
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def machine_facts() -> dict[str, Any]:
    def version(command: list[str]) -> str:
        with contextlib.suppress(Exception):
            out = subprocess.run(command, capture_output=True, text=True, timeout=10)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        return "?"

    def package(name: str) -> str:
        return version(["dpkg-query", "-W", "-f=${Version}", name])

    return {
        **host_facts(),
        "nfs-ganesha": package("nfs-ganesha"),
        "libnfs-utils": package("libnfs-utils"),
        "commit": version(["git", "-C", str(REPO), "describe", "--always", "--dirty"]),
    }


def run_bench(
    settings: Settings,
    log: Callable[[str], None],
    workdir: Path | None = None,
    in_namespace: bool = False,
) -> dict[str, Any]:
    """Run everything; the raw results as a JSON-able dict."""
    started = time.monotonic()
    base = Path(tempfile.mkdtemp(prefix="realize-bench-", dir=workdir))
    bench = Bench(settings, log, base=base)
    realize: ServerProcess | None = None
    ganesha: GaneshaServer | None = None
    sampler: MemorySampler | None = None
    peaks: dict[str, int] = {}
    startup: dict[str, float] = {}
    try:
        make_data(base / "realize-data", settings, log)
        copy_data(base / "realize-data", base / "ganesha-data")
        (base / "local").mkdir()
        bench.local_source = base / "local" / "source.bin"
        shutil.copyfile(base / "realize-data" / BIG, bench.local_source)

        realize = start_server({"bench": base / "realize-data"}, base / "realize-state")
        ports = {} if in_namespace else {
            "nfs_port": _free_port(), "mount_port": _free_port(),
            "nlm_port": _free_port(), "rquota_port": _free_port(),
        }  # fmt: skip
        ganesha = GaneshaServer(base / "ganesha-data", workdir=base / "ganesha", **ports)
        ganesha.start()
        bench.targets = {
            "realize": Target("realize", base / "realize-data", "/bench", realize.nfs_port,
                              realize.mount_port, realize.process.pid),
            "ganesha": Target("ganesha", ganesha.export, str(ganesha.export),
                              ganesha.nfs_port, ganesha.mount_port, _ganesha_pid(ganesha)),
        }  # fmt: skip
        log("servers: " + ", ".join(
            f"{t.name} pid {t.pid} port {t.nfs_port}" for t in bench.targets.values()
        ))  # fmt: skip
        sampler = MemorySampler({t.name: t.pid for t in bench.targets.values()})
        sampler.start()
        for t in bench.targets.values():
            waited, idle = wait_until_idle([t.pid], quiet=STARTUP_QUIET, timeout=900)
            startup[t.name] = round(max(0.0, waited - STARTUP_QUIET), 1)
            log(f"{t.name} busy {startup[t.name]:g} s after start" + ("" if idle else " (gave up)"))
        bench.run_rounds()
        peaks = sampler.stop()
        sampler = None
        for name, peak in peaks.items():
            bench.record("rss", name, peak / 1e6)
    finally:
        if sampler is not None:
            sampler.stop()
        if ganesha is not None:
            ganesha.close()
        if realize is not None:
            realize.stop()
            if "Traceback" in realize.log():
                bench.errors.append("the Realize server logged a traceback:\n" + realize.log())
        shutil.rmtree(base, ignore_errors=True)

    return {
        "settings": asdict(settings),
        "machine": machine_facts(),
        "seconds": time.monotonic() - started,
        "metrics": [asdict(m) for m in METRICS],
        "ceilings": [asdict(m) for m in CEILINGS],
        "values": bench.values,
        "errors": bench.errors,
        "startup_busy_seconds": startup,
        "idle_wait_seconds": round(bench.idle_wait, 1),
    }
