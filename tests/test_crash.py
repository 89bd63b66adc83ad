"""Crash safety of the whole server: SIGKILL rounds against `realize run`.

One state directory lives through every round, so whatever damage a kill leaves accumulates.
The server has a Real area (`real`) and an area (`area`) imported from a source state
directory that stays attached, with a cache limit well below the imported content, so reads
of Unreal files fetch, verify and evict chunks all the time.

Each round:

1. start the server on the state (after the previous round's kill); its log must hold no
   traceback;
2. resolve what the kill left open (a CREATE, REMOVE or RENAME whose answer never came, an
   import killed half-way) by looking the names up, then check everything through NFS: the
   listing of every directory is exactly the known names (no leftovers), every file's old
   handle still works and keeps its fileid, and every byte that was acknowledged (a FILE_SYNC
   WRITE answered, or UNSTABLE WRITEs followed by an answered COMMIT) reads back identical,
   Unreal files included (their bytes are known from the source, so no chunk that fails its
   hash can pass);
3. sometimes stop the server (SIGTERM), run `realize import area SOURCE` on the stopped state
   (SIGKILLed at a random moment in most of those rounds), start it again and check;
4. run client workers over NFS, one per area: WRITE (FILE_SYNC, and UNSTABLE + COMMIT),
   CREATE, REMOVE, RENAME (onto existing names too), READ of Unreal files (fetch, verify,
   eviction; several at once too), WRITE to Unreal files (which realizes them first), every
   READ checked, and (at most once a round) `realize import` into the running server; and a
   third worker beside them running `realize mark real|unreal|inherit` on files of both
   areas (content moves between the Real layer and the cache; waited for, or left running);
5. after a random delay (0 to 1.5 s) SIGKILL the server while the workers are busy;
6. every tenth round and at the end, `realize fsck` on the state the kill left: it must find
   no damage (garbage left by interrupted work is allowed, and is what fsck reports as such).

The model keeps, per file, the expected bytes and the ranges a kill may have left unknown (a
write sent but never acknowledged). After a round's check the model takes what the server
served as the truth, so later rounds check it too.

The actions a worker picks from are the lists `REAL_ACTIONS` and `AREA_ACTIONS`: a new kind
of change is one more entry there (see the note above them).

REALIZE_SLOW_TESTS=1 runs 300 rounds instead of 50 (REALIZE_CRASH_ROUNDS=N: N rounds). The
choices are drawn from a seeded generator (the seed is printed, and named in any failure);
REALIZE_CRASH_SEED=N replays the choices of a seed (the timing of the kills stays the
machine's own, so a replay is likely, not certain, to fail the same way).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from nfsd.rpc.client import open_client
from tests.conftest import HOST, OK, ROOT, Nfs, NfsStatusError
from tests.support.server import REPO, ServerProcess, start_server
from tests.support.source import make_source, realize_command, realize_env, run_realize
from xdr.codec import Arm
from xdr.nfs3 import (
    NFSPROC3,
    COMMIT3args,
    CREATE3args,
    GETATTR3args,
    LOOKUP3args,
    READ3args,
    REMOVE3args,
    RENAME3args,
    WRITE3args,
    createmode3,
    diropargs3,
    nfs_fh3,
    nfsstat3,
    sattr3,
    stable_how,
)

pytestmark = pytest.mark.slow

SLOW = os.environ.get("REALIZE_SLOW_TESTS") == "1"
ROUNDS = int(os.environ.get("REALIZE_CRASH_ROUNDS") or (300 if SLOW else 50))
STORY_LINES = 200
FSCK_EVERY = 10
IMPORT_CHANCE = 0.1  # rounds that stop the server and import while it is stopped
KILL_IMPORT_CHANCE = 0.6  # of those, rounds that SIGKILL the import itself
MAX_KILL_DELAY = 1.5
KIB = 1024
MIB = 1024 * KIB
CACHE_MAX = "6M"  # the imported content is 10 MiB: reading all of it evicts
REAL_FILES = (3, 10)  # the Real area's worker keeps between this many files
REAL_SPAN = 256 * KIB  # and writes within the first REAL_SPAN bytes (plus a write)
WRITE_MAX = 32 * KIB
READ_MAX = MIB

# The source's area: distinct pseudo-random content, a partial last chunk in each file.
SOURCE_SIZES = {
    "s0.bin": MIB + 4321,
    "s1.bin": MIB + 512 * KIB + 7,
    "s2.bin": 2 * MIB - 999,
    "s3.bin": 2 * MIB + 300 * KIB + 1,
    "s4.bin": 2 * MIB + 700 * KIB + 11,
    "d/s5.bin": 700 * KIB + 5,
}


def source_content(path: str) -> bytes:
    return random.Random(f"crash-source-{path}").randbytes(SOURCE_SIZES[path])


SOURCE_BY_SIZE = {size: source_content(path) for path, size in SOURCE_SIZES.items()}


# ---- the model ------------------------------------------------------------------------


@dataclass
class FileModel:
    """What one file must hold: `data` where known (zeros in holes), the ranges that a write
    sent but not acknowledged may have changed, and bounds on the size."""

    data: bytearray
    min_size: int
    max_size: int
    unknown: list[tuple[int, int]] = field(default_factory=list)
    fh: nfs_fh3 | None = None
    fileid: int | None = None

    @classmethod
    def of(cls, content: bytes) -> FileModel:
        return cls(bytearray(content), len(content), len(content))

    def sending(self, offset: int, length: int) -> None:
        """A write of these bytes is on its way: until acknowledged they may be old or new."""
        self.unknown.append((offset, offset + length))
        self.max_size = max(self.max_size, offset + length)
        if len(self.data) < self.max_size:
            self.data.extend(bytes(self.max_size - len(self.data)))

    def acknowledged(self, offset: int, payload: bytes) -> None:
        end = offset + len(payload)
        self.data[offset:end] = payload
        self.min_size = max(self.min_size, end)
        kept = []
        for a, b in self.unknown:
            if b <= offset or a >= end:
                kept.append((a, b))
                continue
            if a < offset:
                kept.append((a, offset))
            if b > end:
                kept.append((end, b))
        self.unknown = kept

    def check(self, offset: int, got: bytes | memoryview, size: int | None, what: str) -> None:
        """`got` was read at `offset` of a file of `size` bytes (when the server said)."""
        got = bytes(got)
        if size is not None:
            assert self.min_size <= size <= self.max_size, (
                f"{what}: size {size}, expected {self.min_size}..{self.max_size}"
            )
        end = offset + len(got)
        assert end <= self.max_size, f"{what}: {end} bytes, never written beyond {self.max_size}"
        expected = bytearray(self.data[offset:end])
        for a, b in self.unknown:
            lo, hi = max(a, offset), min(b, end)
            if lo < hi:
                expected[lo - offset : hi - offset] = got[lo - offset : hi - offset]
        if expected != got:
            first = next(i for i in range(len(got)) if got[i] != expected[i])
            raise AssertionError(
                f"{what}: byte {offset + first} is {got[first]:#04x}, expected "
                f"{expected[first]:#04x} (read {offset}..{end}, {self.unknown} unknown)"
            )

    def learn(self, content: bytes) -> None:
        """After a full check: what the server serves now is the truth for later rounds."""
        self.data = bytearray(content)
        self.min_size = self.max_size = len(content)
        self.unknown = []


@dataclass
class Pending:
    """A namespace change sent and not answered: a kill may have left either outcome."""

    op: str  # "create", "remove", "rename"
    path: str
    new_path: str = ""
    model: FileModel | None = None  # the created file's


@dataclass
class AreaModel:
    name: str
    dirs: tuple[str, ...]  # where the worker works ("" is the area's root)
    files: dict[str, FileModel] = field(default_factory=dict)
    pending: Pending | None = None
    maybe: dict[str, FileModel] = field(default_factory=dict)  # an import killed half-way
    serial: int = 0  # for new names, unique across rounds
    root: Path | None = None  # its directory, to tell a lost file from a listing that hid it
    # The last namespace changes and marks, answered or not, for a failure to explain itself.
    story: deque[str] = field(default_factory=lambda: deque(maxlen=STORY_LINES))

    def told(self, line: str) -> None:
        self.story.append(line)

    def about(self, names: set[bytes]) -> list[str]:
        """The lines of the story that name one of `names` (base names)."""
        wanted = {os.fsdecode(n) for n in names}
        return [
            s
            for s in self.story
            if s.startswith("round ") or wanted & {w.rsplit("/", 1)[-1] for w in s.split()}
        ]

    def new_name(self, directory: str) -> str:
        self.serial += 1
        return join(directory, f"n{self.serial}")

    def in_dir(self, directory: str) -> list[str]:
        return sorted(p for p in self.files if parent(p) == directory)


@dataclass
class World:
    """Everything the rounds share."""

    state_dir: Path
    source_dir: Path
    rng: random.Random
    real: AreaModel
    area: AreaModel
    verifiers: set[bytes] = field(default_factory=set)  # of the servers before this one
    verifier: bytes | None = None  # this server's
    done: Counter = field(default_factory=Counter)  # acknowledged actions, by name
    import_time: float = 1.0  # seconds an import takes, measured when one runs to its end
    killed: bool = False  # the server of this round was sent SIGKILL
    imported: bool = False  # an import ran beside this round's server
    seconds: Counter = field(default_factory=Counter)  # time spent, by phase
    mark_errors: set[str] = field(default_factory=set)  # why mark jobs failed

    @contextmanager
    def timed(self, phase: str) -> Iterator[None]:
        began = time.monotonic()
        try:
            yield
        finally:
            self.seconds[phase] += time.monotonic() - began


@dataclass
class Ctx:
    """What an action gets: a connection, its area's model and handles, a generator."""

    nfs: Nfs
    model: AreaModel
    dirs: dict[str, nfs_fh3]
    rng: random.Random
    world: World


Action = Callable[[Ctx], Awaitable[None]]


def parent(path: str) -> str:
    return path.rpartition("/")[0]


def base(path: str) -> bytes:
    return path.rpartition("/")[2].encode()


def join(directory: str, name: str) -> str:
    return f"{directory}/{name}" if directory else name


# ---- NFS calls ------------------------------------------------------------------------


def require(res: Arm, what: str) -> Any:
    if res.tag != OK:
        raise NfsStatusError(f"{what}: {nfsstat3(res.tag).name}")
    return res.value


async def lookup(nfs: Nfs, dir_fh: nfs_fh3, name: bytes) -> nfs_fh3 | None:
    res = await nfs.call(NFSPROC3.LOOKUP, LOOKUP3args(diropargs3(dir_fh, name)))
    if res.tag == nfsstat3.NFS3ERR_NOENT:
        return None
    return require(res, f"LOOKUP {name!r}").object


async def read(nfs: Nfs, fh: nfs_fh3, offset: int, count: int, what: str) -> Any:
    """READ, waiting out NFS3ERR_JUKEBOX (content still arriving from the source)."""
    for _ in range(600):
        res = await nfs.call(NFSPROC3.READ, READ3args(fh, offset, count))
        if res.tag != nfsstat3.NFS3ERR_JUKEBOX:
            return require(res, f"READ {what} at {offset}")
        await trio.sleep(0.05)  # a client pauses before it retries a JUKEBOX
    raise AssertionError(f"READ {what}: JUKEBOX for 30 s")


async def write(
    ctx: Ctx, model: FileModel, path: str, offset: int, payload: bytes, stable: stable_how
) -> None:
    model.sending(offset, len(payload))
    args = WRITE3args(model.fh, offset, len(payload), stable, payload)
    res = require(await ctx.nfs.call(NFSPROC3.WRITE, args), f"WRITE {path}")
    assert res.count == len(payload), f"WRITE {path}: {res.count} of {len(payload)} bytes"
    if stable == stable_how.FILE_SYNC:
        assert res.committed == stable_how.FILE_SYNC, f"WRITE {path}: {res.committed}"
    note_verifier(ctx.world, res.verf)


def note_verifier(world: World, verf: bytes) -> None:
    if world.verifier is None:
        assert verf not in world.verifiers, "the write verifier did not change at a restart"
        world.verifier = verf
    assert verf == world.verifier, "the write verifier changed while the server ran"


async def read_whole(nfs: Nfs, fh: nfs_fh3, what: str) -> tuple[bytes, int]:
    """All of a file, and the size GETATTR gave before reading."""
    size = (await nfs.getattr(fh)).size
    data = bytearray()
    while True:
        res = await read(nfs, fh, len(data), READ_MAX, what)
        data += res.data
        if res.eof or not res.data:
            return bytes(data), size


# ---- actions ----------------------------------------------------------------------------


def pick_file(ctx: Ctx) -> tuple[str, FileModel] | None:
    if not ctx.model.files:
        return None
    path = ctx.rng.choice(sorted(ctx.model.files))
    return path, ctx.model.files[path]


def write_offset(ctx: Ctx, model: FileModel) -> int:
    limit = model.min_size if ctx.model.name != "real" else min(model.min_size, REAL_SPAN)
    return ctx.rng.randint(0, limit)


async def act_read(ctx: Ctx) -> None:
    """READ a random range of a file (an Unreal one: fetched, verified, evicted later)."""
    picked = pick_file(ctx)
    if picked is None:
        return
    path, model = picked
    offset = ctx.rng.randint(0, model.min_size)
    count = ctx.rng.randint(1, READ_MAX)
    res = await read(ctx.nfs, model.fh, offset, count, path)
    size = res.file_attributes.size if res.file_attributes is not None else None
    if size is not None:
        assert len(res.data) == max(0, min(count, size - offset)), f"READ {path}: short"
        assert res.eof == (offset + len(res.data) >= size), f"READ {path}: eof {res.eof}"
    model.check(offset, res.data, size, f"READ {path}")


async def act_read_whole(ctx: Ctx) -> None:
    picked = pick_file(ctx)
    if picked is None:
        return
    path, model = picked
    data, size = await read_whole(ctx.nfs, model.fh, path)
    model.check(0, data, size, f"READ all of {path}")


async def act_read_parallel(ctx: Ctx) -> None:
    """Several READs of different files at once: fetches and evictions interleave."""
    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(act_read, ctx)


async def act_write(ctx: Ctx) -> None:
    """A FILE_SYNC WRITE (to an Unreal file: realizes it first)."""
    picked = pick_file(ctx)
    if picked is None:
        return
    path, model = picked
    offset = write_offset(ctx, model)
    payload = ctx.rng.randbytes(ctx.rng.randint(1, WRITE_MAX))
    await write(ctx, model, path, offset, payload, stable_how.FILE_SYNC)
    model.acknowledged(offset, payload)


async def act_write_unstable(ctx: Ctx) -> None:
    """UNSTABLE WRITEs to one file, then COMMIT: acknowledged only once COMMIT answers."""
    picked = pick_file(ctx)
    if picked is None:
        return
    path, model = picked
    written = []
    for _ in range(ctx.rng.randint(1, 6)):
        offset = write_offset(ctx, model)
        payload = ctx.rng.randbytes(ctx.rng.randint(1, WRITE_MAX))
        await write(ctx, model, path, offset, payload, stable_how.UNSTABLE)
        written.append((offset, payload))
    res = require(
        await ctx.nfs.call(NFSPROC3.COMMIT, COMMIT3args(model.fh, 0, 0)), f"COMMIT {path}"
    )
    note_verifier(ctx.world, res.verf)
    for offset, payload in written:
        model.acknowledged(offset, payload)


async def act_create(ctx: Ctx) -> None:
    """CREATE a new file, then give it content with a FILE_SYNC WRITE."""
    directory = ctx.rng.choice(ctx.model.dirs)
    path = ctx.model.new_name(directory)
    model = FileModel.of(b"")
    ctx.model.pending = Pending("create", path, model=model)
    ctx.model.told(f"create {path}")
    how = Arm(createmode3.GUARDED, sattr3(mode=0o644))
    args = CREATE3args(diropargs3(ctx.dirs[directory], base(path)), how)
    res = require(await ctx.nfs.call(NFSPROC3.CREATE, args), f"CREATE {path}")
    assert res.obj is not None and res.obj_attributes is not None, "CREATE without handle"
    model.fh, model.fileid = res.obj, res.obj_attributes.fileid
    ctx.model.files[path] = model
    ctx.model.pending = None
    ctx.model.told(f"created {path} fileid {model.fileid}")
    payload = ctx.rng.randbytes(ctx.rng.randint(0, 2 * WRITE_MAX))
    if payload:
        await write(ctx, model, path, 0, payload, stable_how.FILE_SYNC)
        model.acknowledged(0, payload)


async def act_remove(ctx: Ctx) -> None:
    picked = pick_file(ctx)
    if picked is None:
        return
    path, _ = picked
    ctx.model.pending = Pending("remove", path)
    ctx.model.told(f"remove {path}")
    args = REMOVE3args(diropargs3(ctx.dirs[parent(path)], base(path)))
    require(await ctx.nfs.call(NFSPROC3.REMOVE, args), f"REMOVE {path}")
    del ctx.model.files[path]
    ctx.model.pending = None
    ctx.model.told(f"removed {path}")


async def act_rename(ctx: Ctx) -> None:
    """RENAME within a directory, to a new name or onto another file (which it replaces)."""
    picked = pick_file(ctx)
    if picked is None:
        return
    path, _ = picked
    directory = parent(path)
    others = [p for p in ctx.model.in_dir(directory) if p != path]
    if others and ctx.rng.random() < 0.4:
        target = ctx.rng.choice(others)
    else:
        target = ctx.model.new_name(directory)
    ctx.model.pending = Pending("rename", path, target)
    ctx.model.told(f"rename {path} -> {target}")
    fh = ctx.dirs[directory]
    args = RENAME3args(diropargs3(fh, base(path)), diropargs3(fh, base(target)))
    require(await ctx.nfs.call(NFSPROC3.RENAME, args), f"RENAME {path} -> {target}")
    ctx.model.files[target] = ctx.model.files.pop(path)
    ctx.model.pending = None
    ctx.model.told(f"renamed {path} -> {target}")


async def control(ctx: Ctx, *args: str) -> subprocess.CompletedProcess:
    """Run the control command beside the running server; ConnectionError when the server
    was killed meanwhile (the command then fails: it cannot reach it)."""
    done = await trio.run_process(
        realize_command(ctx.world.state_dir, *args),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        cwd=REPO,
        env=realize_env(),
    )
    if done.returncode != 0 and ctx.world.killed:
        raise ConnectionError(f"the server was killed during realize {args[0]}")
    return done


async def act_import(ctx: Ctx) -> None:
    """`realize import` while the server runs: the source's paths missing here (removed or
    renamed away) come back as Unreal files."""
    absent = absent_source_files(ctx.model)
    if not absent or ctx.world.imported:
        return
    ctx.world.imported = True  # once a round: it takes long, and the area waits for it
    ctx.model.maybe.update(absent)
    ctx.model.told(f"import beside the server: {' '.join(sorted(absent))}")
    done = await control(ctx, "import", ctx.model.name, str(ctx.world.source_dir))
    out = done.stdout.decode()
    assert done.returncode == 0, f"import failed ({done.returncode}):\n{out}{done.stderr!r}"
    assert f"realize: {len(absent)} files (" in out, (out, sorted(absent))
    ctx.model.maybe.clear()
    ctx.model.files.update(absent)
    ctx.world.done["import beside the server"] += 1
    for path, file in absent.items():
        fh = await lookup(ctx.nfs, ctx.dirs[parent(path)], base(path))
        assert fh is not None, f"imported {path} is not there"
        file.fileid, file.fh = (await ctx.nfs.getattr(fh)).fileid, fh


async def act_mark(ctx: Ctx) -> None:
    """`realize mark real|unreal|inherit` on a file: its content moves between the Real
    layer and the cache (or stays), and must read the same. Run by its own worker, beside
    the NFS workers (it changes neither content nor names); the command waits for the job
    or not (then the job runs on beside the next calls). `unreal` only for content a source
    holds or small files, which the cache keeps pinned as the only copy: the cache limit is
    small. A mark of a file that a worker renamed or removed meanwhile may fail, and so may a
    job on a file being written (it does not wait long for it to rest)."""
    await trio.sleep(ctx.rng.uniform(0, 0.3))  # a random moment among the workers' calls
    picked = pick_file(ctx)
    if picked is None:
        return
    path, model = picked
    marks = ["real", "inherit"]
    if not model.unknown and (
        model.min_size <= 128 * KIB or SOURCE_BY_SIZE.get(model.min_size) == model.data
    ):
        marks.append("unreal")
    mark = ctx.rng.choice(marks)
    wait = ctx.rng.random() < 0.3
    args = ["mark", mark, f"{ctx.model.name}/{path}"] + ([] if wait else ["--no-wait"])
    ctx.model.told(f"mark {mark} {path}{'' if wait else ' --no-wait'}")
    done = await control(ctx, *args)
    ctx.model.told(f"marked {mark} {path}: exit {done.returncode}")
    if done.returncode == 0:
        return
    pending = ctx.model.pending
    moved = ctx.model.files.get(path) is not model or (
        pending is not None and path in (pending.path, pending.new_path)
    )
    busy = wait and done.returncode == 1 and b"could not follow" in done.stderr
    assert moved or busy, f"realize {' '.join(args)} ({done.returncode}):\n{done.stderr!r}"
    ctx.world.done[f"mark failed ({'moved' if moved else 'busy'})"] += 1
    if busy:
        ctx.world.mark_errors.add(done.stderr.decode(errors="replace").strip())


async def marker(port: int, world: World, rng: random.Random) -> None:
    """Mark files of both areas, beside the NFS workers, until the server goes away."""
    running = "connecting"
    try:
        async with open_client(HOST, port, ROOT) as rpc:
            nfs = Nfs(rpc)
            contexts = [
                Ctx(nfs, model, await area_dirs(nfs, model), rng, world)
                for model in (world.real, world.area)
            ]
            while True:
                ctx = rng.choice(contexts)
                running = f"{ctx.model.name}:act_mark"
                await act_mark(ctx)
                world.done[running] += 1
    except OSError:
        pass
    world.done[f"{running} killed"] += 1


def absent_source_files(model: AreaModel) -> dict[str, FileModel]:
    """What an import brings: the source's paths that are not here."""
    return {p: FileModel.of(source_content(p)) for p in SOURCE_SIZES if p not in model.files}


async def act_real_namespace(ctx: Ctx) -> None:
    """Keep the Real area between REAL_FILES files: create, remove or rename."""
    count = len(ctx.model.files)
    if count < REAL_FILES[0]:
        await act_create(ctx)
    elif count > REAL_FILES[1]:
        await act_remove(ctx)
    else:
        await ctx.rng.choice([act_create, act_remove, act_rename])(ctx)


# (weight, action). An action records in the model what may have happened before it sends a
# call (`FileModel.sending`, `AreaModel.pending` or `.maybe`) and what did once the server
# answered (`FileModel.acknowledged`, the model's names); the checks after each kill do the
# rest. An action that changes neither content nor names (like `act_mark`, which runs in a
# worker of its own, `marker`) only makes its call. A control command run while the server
# is killed raises ConnectionError (`control`).
REAL_ACTIONS: list[tuple[int, Action]] = [
    (25, act_write),
    (20, act_write_unstable),
    (20, act_read),
    (5, act_read_whole),
    (15, act_real_namespace),
    (5, act_rename),
]
AREA_ACTIONS: list[tuple[int, Action]] = [
    (30, act_read),
    (10, act_read_whole),
    (10, act_read_parallel),
    (8, act_write),
    (4, act_write_unstable),
    (5, act_create),
    (5, act_rename),
    (6, act_remove),
    (2, act_import),
]


async def worker(
    port: int,
    world: World,
    model: AreaModel,
    actions: list[tuple[int, Action]],
    rng: random.Random,
) -> None:
    """Run actions until the server goes away. `world.done` counts the actions completed
    ("area:act_write") and the ones the kill cut short ("area:act_write killed")."""
    weights = [w for w, _ in actions]
    running = "connecting"
    try:
        async with open_client(HOST, port, ROOT) as rpc:
            nfs = Nfs(rpc)
            dirs = await area_dirs(nfs, model)
            ctx = Ctx(nfs, model, dirs, rng, world)
            while True:
                (action,) = rng.choices([a for _, a in actions], weights)
                running = action.__name__
                await action(ctx)
                world.done[f"{model.name}:{running}"] += 1
    except OSError:  # ConnectionError included: killed while we were talking
        pass
    except BaseExceptionGroup as group:  # from the parallel READs
        _, rest = group.split(OSError)
        if rest is not None:
            raise rest from None
    world.done[f"{model.name}:{running} killed"] += 1


async def area_dirs(nfs: Nfs, model: AreaModel) -> dict[str, nfs_fh3]:
    dirs = {"": await nfs.mount(f"/{model.name}")}
    for directory in model.dirs:
        if directory:
            found = await lookup(nfs, dirs[parent(directory)], base(directory))
            assert found is not None, f"directory {model.name}/{directory} is gone"
            dirs[directory] = found
    return dirs


# ---- checks after a kill ------------------------------------------------------------------


async def resolve(nfs: Nfs, model: AreaModel, dirs: dict[str, nfs_fh3]) -> None:
    """Settle what a kill left open by looking the names up."""

    async def exists(path: str) -> bool:
        return await lookup(nfs, dirs[parent(path)], base(path)) is not None

    pending, model.pending = model.pending, None
    if pending is not None:
        model.told(f"unanswered {pending.op} {pending.path} {pending.new_path}".rstrip())
        if pending.op == "create" and await exists(pending.path):
            assert pending.model is not None
            model.files[pending.path] = pending.model
        elif pending.op == "remove" and not await exists(pending.path):
            del model.files[pending.path]
        elif pending.op == "rename" and not await exists(pending.path):
            model.files[pending.new_path] = model.files.pop(pending.path)
    maybe, model.maybe = model.maybe, {}
    for path, file in maybe.items():
        if await exists(path):
            model.files[path] = file


async def explain(nfs: Nfs, model: AreaModel, dir_fh: nfs_fh3, names: set[bytes]) -> str:
    """What LOOKUP says of `names` (of the directory `dir_fh`), and the story told of them."""
    found = {os.fsdecode(n): await lookup(nfs, dir_fh, n) is not None for n in sorted(names)}
    root = model.root
    disk = sorted(os.fsdecode(n) for n in names if root and any(root.rglob(os.fsdecode(n))))
    story = "\n".join(model.about(names))
    return f"LOOKUP finds {found}; on the disk (anywhere): {disk}; what happened:\n{story}"


async def check_area(nfs: Nfs, model: AreaModel) -> None:
    """Everything the model knows of an area, as the server serves it after a restart."""
    dirs = await area_dirs(nfs, model)
    # Old handles first, before a LOOKUP could mend anything: they survive a restart (but
    # not the files a change left open might have removed or replaced).
    p = model.pending
    for path, file in sorted(model.files.items()):
        if file.fh is None or (p is not None and path in (p.path, p.new_path)):
            continue
        res = await nfs.call(NFSPROC3.GETATTR, GETATTR3args(file.fh))
        attr = require(res, f"GETATTR {model.name}/{path} by its handle from before").obj_attributes
        assert attr.fileid == file.fileid, f"{model.name}/{path}: fileid changed"
    await resolve(nfs, model, dirs)
    for directory in model.dirs:
        expected = {base(p) for p in model.in_dir(directory)}
        expected |= {base(d) for d in model.dirs if d and parent(d) == directory}
        names = await nfs.names(dirs[directory])
        assert names == expected, (
            f"{model.name}/{directory}: listed {sorted(names - expected)} unknown, "
            f"{sorted(expected - names)} missing; "
            + await explain(nfs, model, dirs[directory], names ^ expected)
        )
    for path, file in sorted(model.files.items()):
        what = f"{model.name}/{path}"
        fh = await lookup(nfs, dirs[parent(path)], base(path))
        assert fh is not None, f"{what} is gone"
        attr = await nfs.getattr(fh)
        if file.fileid is not None:
            assert attr.fileid == file.fileid, f"{what}: fileid {attr.fileid}, was {file.fileid}"
        file.fh, file.fileid = fh, attr.fileid
        data, size = await read_whole(nfs, fh, what)
        file.check(0, data, size, f"{what} after the kill")
        assert len(data) == size, f"{what}: read {len(data)} of {size} bytes"
        file.learn(data)


def check_all(server: ServerProcess, world: World) -> None:
    async def body() -> None:
        with trio.fail_after(120):
            async with open_client(HOST, server.nfs_port, ROOT) as rpc:
                nfs = Nfs(rpc)
                for model in (world.real, world.area):
                    await check_area(nfs, model)

    try:
        trio.run(body)
    except OSError as e:  # nothing kills this server: it died, or closed the connection
        try:
            status = server.process.wait(5)
        except subprocess.TimeoutExpired:
            status = "still running"
        tail = server.log()[-3000:]
        raise AssertionError(
            f"the check lost the server ({e}; exit status {status}):\n{tail}"
        ) from e


# ---- rounds -----------------------------------------------------------------------------


class Servers:
    """Starts and kills the server under test, reading each run's part of the log."""

    def __init__(self, areas: dict[str, Path], state_dir: Path, source_dir: Path) -> None:
        self.areas = areas
        self.state_dir = state_dir
        self.source_dir = source_dir
        self.server: ServerProcess | None = None
        self.log_offset = 0
        self.starts: list[float] = []

    def start(self) -> ServerProcess:
        began = time.monotonic()
        self.server = start_server(
            self.areas,
            self.state_dir,
            sources=[self.source_dir],
            extra=["--cache-max", CACHE_MAX, "--cache-free", "1%", "--rest", "0.3"],
        )
        self.starts.append(time.monotonic() - began)
        return self.server

    def stop(self, sig: int) -> int:
        assert self.server is not None
        code = self.server.stop(sig)
        self.server = None
        self.check_log()
        return code

    def check_log(self) -> None:
        text = (self.state_dir / "test-server.log").read_text(errors="replace")
        fresh, self.log_offset = text[self.log_offset :], len(text)
        for sign in ("Traceback", "Fatal Python error"):
            assert sign not in fresh, f"the server's log has a {sign!r}:\n{fresh[-6000:]}"


def run_import(world: World, kill: bool) -> bool:
    """`realize import area SOURCE` on the stopped server's state; True when it completed.
    With `kill`, SIGKILL it at a random moment of its usual run time."""
    absent = absent_source_files(world.area)
    world.area.told(f"import while stopped: {' '.join(sorted(absent))}")
    command = realize_command(world.state_dir, "import", "area", str(world.source_dir))
    began = time.monotonic()
    child = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=realize_env(),
    )
    if kill:
        try:
            child.wait(world.rng.uniform(0.0, 1.2) * world.import_time)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGKILL)
    out, err = child.communicate(timeout=120)
    if child.returncode == -signal.SIGKILL:
        world.area.maybe.update(absent)
        world.done["import while stopped, killed"] += 1
        return False
    assert child.returncode == 0, f"import failed ({child.returncode}):\n{out}{err}"
    assert f"realize: {len(absent)} files (" in out, (out, sorted(absent))
    world.area.files.update(absent)
    world.done["import while stopped"] += 1
    if not kill:
        world.import_time = time.monotonic() - began
    return True


def fsck(state_dir: Path) -> str:
    done = run_realize(state_dir, "fsck")
    assert done.returncode == 0, f"realize fsck found damage:\n{done.stdout}{done.stderr}"
    assert "every Unreal file has its manifest" in done.stdout, done.stdout
    return done.stdout


def one_round(n: int, world: World, servers: Servers) -> None:
    """Start, check, (import while stopped), work, SIGKILL, (fsck)."""
    rng = world.rng
    for model in (world.real, world.area):
        model.told(f"round {n}")
    with world.timed("start"):
        server = servers.start()
    servers.check_log()
    world.verifier = None
    world.killed = world.imported = False
    with world.timed("check"):
        check_all(server, world)
    if rng.random() < IMPORT_CHANCE:
        with world.timed("import while stopped"):
            assert servers.stop(signal.SIGTERM) == 0
            run_import(world, kill=rng.random() < KILL_IMPORT_CHANCE)
            server = servers.start()
            check_all(server, world)
    delay = rng.uniform(0, MAX_KILL_DELAY)
    seeds = (rng.getrandbits(32), rng.getrandbits(32), rng.getrandbits(32))

    async def body() -> None:
        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    worker,
                    server.nfs_port,
                    world,
                    world.real,
                    REAL_ACTIONS,
                    random.Random(seeds[0]),
                )
                nursery.start_soon(
                    worker,
                    server.nfs_port,
                    world,
                    world.area,
                    AREA_ACTIONS,
                    random.Random(seeds[1]),
                )
                nursery.start_soon(marker, server.nfs_port, world, random.Random(seeds[2]))
                await trio.sleep(delay)  # the round's random moment to kill the server
                world.killed = True
                server.process.send_signal(signal.SIGKILL)

    with world.timed("work"):
        trio.run(body)
    tail = server.log()[-3000:]
    code = servers.stop(signal.SIGKILL)
    assert code == -signal.SIGKILL, f"the server ended before the kill ({code}):\n{tail}"
    if world.verifier is not None:
        world.verifiers.add(world.verifier)
    if n % FSCK_EVERY == FSCK_EVERY - 1:
        with world.timed("fsck"):
            fsck(world.state_dir)


def test_sigkill_rounds_lose_nothing_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONFAULTHANDLER", "1")  # a crash of the server leaves its stacks
    seed = int(os.environ.get("REALIZE_CRASH_SEED") or random.randrange(1 << 32))
    print(f"REALIZE_CRASH_SEED={seed}")
    began = time.monotonic()
    contents = {p: source_content(p) for p in SOURCE_SIZES}
    source_dir = make_source(tmp_path, contents)
    areas = {"area": tmp_path / "area", "real": tmp_path / "real"}
    for path in areas.values():
        path.mkdir()
    state_dir = tmp_path / "state"
    servers = Servers(areas, state_dir, source_dir)
    world = World(
        state_dir,
        source_dir,
        random.Random(seed),
        AreaModel("real", ("",), root=areas["real"]),
        AreaModel("area", ("", "d"), root=areas["area"]),
    )
    # The first import (of everything) writes the config and the area's fileids: run a server
    # once, then import with it stopped.
    servers.start()
    assert servers.stop(signal.SIGTERM) == 0
    assert run_import(world, kill=False)
    setup = time.monotonic() - began
    round_ = -1
    try:
        for round_ in range(ROUNDS):
            one_round(round_, world, servers)
        servers.start()
        check_all(servers.server, world)
        assert servers.stop(signal.SIGTERM) == 0
        report = fsck(state_dir)
    except BaseException as e:
        e.add_note(f"REALIZE_CRASH_SEED={seed}, round {round_}, {dict(world.done)}")
        if servers.server is not None:
            servers.server.stop(signal.SIGKILL)
        raise
    print(
        f"{ROUNDS} rounds in {time.monotonic() - began:.1f} s (setup {setup:.1f} s, server "
        f"start {min(servers.starts):.2f}..{max(servers.starts):.2f} s); done: "
        f"{dict(sorted(world.done.items()))}\n"
        f"seconds: { {k: round(v, 1) for k, v in world.seconds.items()} }\n{report}"
    )
    for error in sorted(world.mark_errors):
        print(f"a mark job failed: {error}")
    acknowledged = sum(v for k, v in world.done.items() if "write" in k and "killed" not in k)
    assert acknowledged > ROUNDS, world.done  # the workers did real work before the kills
