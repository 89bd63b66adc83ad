"""The server never acts outside an export, however a local user swaps names under it.

The server runs as root; a local user who can write inside an area may replace a directory
by a symlink to anywhere between the server's check of a name and its use of that name.
Here a thread swaps the area's directory `d` with a symlink `s` to an outside directory
(renameat2 RENAME_EXCHANGE: atomic, so `d` is at every instant either the real directory or
the link) while a client, holding handles taken while `d` was real and looking `d` up again
at times, runs every namespace and attribute change, listings and reads through it.

Calls may fail while a name is swapped (STALE, NOENT, NOTDIR, ...). What must never happen:
anything outside the export changed (names, modes, owners, sizes, link counts, contents),
or a reply that lists an outside name, carries an outside object's attributes, or returns
an outside file's content. After every call the outside directory is compared with its last
state, so a failure names the operation that escaped and the round it did so in.

A test of the wire tier (not the slow one), bounded by ROUNDS rounds and TIME_LIMIT seconds,
whichever comes first.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import OK, ZERO_VERF, Nfs, Served
from tests.support.renameat2 import Swapper, exchange
from xdr.codec import Arm
from xdr.nfs3 import (
    NFSPROC3,
    CREATE3args,
    GETATTR3args,
    LINK3args,
    LOOKUP3args,
    MKDIR3args,
    READ3args,
    READDIR3args,
    READDIRPLUS3args,
    REMOVE3args,
    RENAME3args,
    RMDIR3args,
    SETATTR3args,
    SYMLINK3args,
    createmode3,
    diropargs3,
    fattr3,
    ftype3,
    nfs_fh3,
    nfsstat3,
    sattr3,
    symlinkdata3,
)

pytestmark = [
    pytest.mark.wire,
    pytest.mark.skipif(
        sys.platform != "linux" or os.geteuid() != 0,
        reason="needs Linux's renameat2 and root, to own the outside files as another user",
    ),
]

ROUNDS = 300
TIME_LIMIT = 40.0
SENTINEL_UID, SENTINEL_GID = 4242, 4243
SENTINEL_MODE = 0o600
SENTINEL_PREFIX = b"SENTINEL "
# Names in `d` that the outside directory holds too: a call that follows the swapped link
# finds a victim of the same name there.
SHARED = ("f", "r", "m")
# Names only the outside directory holds: no listing of `d` may ever show them.
OUTSIDE_ONLY = ("secret-ledger", "secret-keys")
# An empty directory outside, the victim of an RMDIR of the same name.
OUTSIDE_DIR = "rd"
INSIDE_CONTENT = b"inside, served\n"

FACTS = ("mode", "uid", "gid", "size", "nlink", "inode", "mtime", "ctime", "content")
Snapshot = dict[str, tuple[Any, ...]]


def facts(st: os.stat_result) -> tuple[Any, ...]:
    """What a change could alter about an object, in FACTS' order (all but the access time,
    which a listing changes; content is added by `snapshot`)."""
    return (
        stat.filemode(st.st_mode),
        st.st_uid,
        st.st_gid,
        st.st_size,
        st.st_nlink,
        st.st_ino,
        st.st_mtime_ns,
        st.st_ctime_ns,
    )


def glance(top: Path) -> Snapshot:
    """The directory and its entries' facts: cheap enough to take after every call.

    Any change of a name or of what an entry holds moves a time or a count seen here."""
    state = {".": facts(os.lstat(top))}
    with os.scandir(top) as entries:
        for entry in entries:
            state[entry.name] = facts(entry.stat(follow_symlinks=False))
    return state


def snapshot(top: Path) -> Snapshot:
    """The whole tree's facts with each file's content and link's target, by path."""
    state: Snapshot = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in [".", *dirnames, *filenames]:
            path = os.path.join(dirpath, name) if name != "." else dirpath
            st = os.lstat(path)
            content: bytes | str | None = None
            if stat.S_ISREG(st.st_mode):
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
                try:
                    content = os.read(fd, 1 << 16)
                finally:
                    os.close(fd)
            elif stat.S_ISLNK(st.st_mode):
                content = os.readlink(path)
            state[os.path.relpath(path, top)] = (*facts(st), content)
    return state


def differences(before: Snapshot, after: Snapshot) -> list[str]:
    """What changed between two snapshots or glances, one line per path."""
    lines = [f"new {p} ({after[p][0]}, uid {after[p][1]})" for p in sorted(after - before.keys())]
    lines += [f"gone {p}" for p in sorted(before.keys() - after.keys())]
    for p in sorted(before.keys() & after.keys()):
        changed = [
            what if what.endswith("time") else f"{what} {old!r:.40}->{new!r:.40}"
            for what, old, new in zip(FACTS, before[p], after[p], strict=False)
            if old != new
        ]
        if changed:
            lines.append(f"changed {p}: {', '.join(changed)}")
    return lines


def fattrs(value: Any) -> Iterator[fattr3]:
    """Every fattr3 inside a decoded reply."""
    if isinstance(value, fattr3):
        yield value
    elif isinstance(value, list | tuple):  # Arm is a tuple
        for item in value:
            yield from fattrs(item)
    elif dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            yield from fattrs(getattr(value, f.name))


def make_outside(outside: Path) -> None:
    outside.mkdir()
    for i, name in enumerate((*SHARED, *OUTSIDE_ONLY)):
        path = outside / name
        path.write_bytes(SENTINEL_PREFIX + name.encode() + b" " + b"x" * (1000 + i))
        os.chmod(path, SENTINEL_MODE)
        os.chown(path, SENTINEL_UID, SENTINEL_GID)
    (outside / OUTSIDE_DIR).mkdir(0o700)
    os.chown(outside / OUTSIDE_DIR, SENTINEL_UID, SENTINEL_GID)
    os.chmod(outside, 0o750)
    os.chown(outside, SENTINEL_UID, SENTINEL_GID)


def make_area(area: Path, outside: Path) -> None:
    d = area / "d"
    d.mkdir(0o755)
    for name in SHARED:
        (d / name).write_bytes(INSIDE_CONTENT)
        os.chmod(d / name, 0o644)
    (area / "s").symlink_to(outside, target_is_directory=True)


@dataclass
class Finding:
    """Calls of one label that escaped (or leaked): when first, how often, some examples."""

    first_round: int
    first_call: int
    times: int = 0
    what: list[str] = field(default_factory=list)


@dataclass
class Race:
    """The client side: the calls of each round, and what they revealed."""

    nfs: Nfs
    root: nfs_fh3
    dir: nfs_fh3 | None
    file: nfs_fh3 | None
    outside: Path
    last: Snapshot
    round: int = 0
    calls: int = 0
    failed_calls: int = 0
    escapes: dict[str, Finding] = field(default_factory=dict)
    leaks: dict[str, Finding] = field(default_factory=dict)

    def _note(self, table: dict[str, Finding], label: str, what: list[str]) -> None:
        found = table.setdefault(label, Finding(self.round, self.calls))
        found.times += 1
        found.what = (found.what + what)[:4]

    async def call(self, label: str, proc: NFSPROC3, args: Any) -> Arm:
        res = await self.nfs.call(proc, args)
        self.calls += 1
        if res.tag != OK:
            self.failed_calls += 1
        leaked = [
            f"attributes of uid {a.uid} (mode {a.mode:o}, size {a.size})"
            for a in fattrs(res)
            if a.uid == SENTINEL_UID
        ]
        if res.tag == OK and proc in (NFSPROC3.READDIR, NFSPROC3.READDIRPLUS):
            names = {e.name.decode(errors="replace") for e in res.value.reply.entries}
            leaked += [f"listed {n}" for n in sorted(names & set(OUTSIDE_ONLY))]
        if res.tag == OK and proc == NFSPROC3.READ:
            data = bytes(res.value.data)
            if data.startswith(SENTINEL_PREFIX):
                leaked.append(f"read {data[:24]!r}")
        if leaked:
            self._note(self.leaks, label, leaked)
        now = glance(self.outside)
        if now != self.last:
            self._note(self.escapes, label, differences(self.last, now))
            self.last = now
        return res

    async def find_dir(self) -> nfs_fh3 | None:
        """A handle of the real directory, under whichever name holds it now."""
        for name in (b"d", b"s") * 4:
            res = await self.call("LOOKUP d", NFSPROC3.LOOKUP, lookup(self.root, name))
            if res.tag == OK and kind(res.value.obj_attributes) == ftype3.NF3DIR:
                return res.value.object
        return None

    async def find_file(self, d: nfs_fh3) -> nfs_fh3 | None:
        """A handle of d/f, the inside one."""
        for _ in range(8):
            res = await self.call("LOOKUP f", NFSPROC3.LOOKUP, lookup(d, b"f"))
            attrs = res.value.obj_attributes if res.tag == OK else None
            if attrs is not None and attrs.type == ftype3.NF3REG and attrs.uid == 0:
                return res.value.object
        return None

    async def one_round(self) -> None:
        if self.dir is None or self.round % 10 == 9:
            self.dir = await self.find_dir()
        if self.dir is None:
            return
        d = self.dir
        if self.file is None:
            self.file = await self.find_file(d)
        mode, dir_mode = (0o640, 0o775) if self.round % 2 else (0o644, 0o755)
        statuses: list[nfsstat3] = []

        async def run(label: str, proc: NFSPROC3, args: Any) -> Arm:
            res = await self.call(label, proc, args)
            statuses.append(nfsstat3(res.tag))
            return res

        looked = await run("LOOKUP f", NFSPROC3.LOOKUP, lookup(d, b"f"))
        if looked.tag == OK:
            fh = looked.value.object
            await run("READ of looked-up f", NFSPROC3.READ, READ3args(fh, 0, 4096))
            await run("SETATTR mode of looked-up f", NFSPROC3.SETATTR, chmod(fh, mode))
        if self.file is not None:
            f = self.file
            await run("SETATTR mode of f", NFSPROC3.SETATTR, chmod(f, mode))
            size = sattr3(size=len(INSIDE_CONTENT))
            await run("SETATTR size of f", NFSPROC3.SETATTR, SETATTR3args(f, size, None))
            read = await run("READ of f", NFSPROC3.READ, READ3args(f, 0, 4096))
            await run("LINK f to d/l", NFSPROC3.LINK, LINK3args(f, where(d, b"l")))
            await run("REMOVE d/l", NFSPROC3.REMOVE, REMOVE3args(where(d, b"l")))
            if read.tag == nfsstat3.NFS3ERR_STALE:
                self.file = None  # perhaps for good (the name went elsewhere): look again
        await run("SETATTR mode of d", NFSPROC3.SETATTR, chmod(d, dir_mode))
        await run("CREATE d/c", NFSPROC3.CREATE, create(d, b"c"))
        await run("REMOVE d/c", NFSPROC3.REMOVE, REMOVE3args(where(d, b"c")))
        await run("CREATE d/r", NFSPROC3.CREATE, create(d, b"r"))
        await run("REMOVE d/r", NFSPROC3.REMOVE, REMOVE3args(where(d, b"r")))
        await run("RENAME d/m to d/m2", NFSPROC3.RENAME, rename(d, b"m", d, b"m2"))
        await run("RENAME d/m2 to d/m", NFSPROC3.RENAME, rename(d, b"m2", d, b"m"))
        area = self.root
        await run("RENAME d/m to area/moved", NFSPROC3.RENAME, rename(d, b"m", area, b"moved"))
        await run("RENAME area/moved to d/m", NFSPROC3.RENAME, rename(area, b"moved", d, b"m"))
        for name in (b"nd", OUTSIDE_DIR.encode()):
            label = name.decode()
            await run(f"MKDIR d/{label}", NFSPROC3.MKDIR, MKDIR3args(where(d, name), sattr3()))
            await run(f"RMDIR d/{label}", NFSPROC3.RMDIR, RMDIR3args(where(d, name)))
        link = SYMLINK3args(where(d, b"sl"), symlinkdata3(sattr3(), b"target"))
        await run("SYMLINK d/sl", NFSPROC3.SYMLINK, link)
        await run("REMOVE d/sl", NFSPROC3.REMOVE, REMOVE3args(where(d, b"sl")))
        plus = READDIRPLUS3args(d, 0, ZERO_VERF, 8192, 65536)
        await run("READDIRPLUS d", NFSPROC3.READDIRPLUS, plus)
        await run("READDIR d", NFSPROC3.READDIR, READDIR3args(d, 0, ZERO_VERF, 8192))
        if statuses.count(nfsstat3.NFS3ERR_STALE) > len(statuses) // 2:
            self.dir = None  # the handle's name went to the symlink for good: look again

    def report(self, elapsed: float, swaps: int) -> str:
        lines = [
            f"{self.round} rounds, {self.calls} calls ({self.failed_calls} failed),"
            f" {swaps} swaps, {elapsed:.1f} s"
        ]
        for title, table in (("escaped the export", self.escapes), ("leaked", self.leaks)):
            for label, e in sorted(table.items(), key=lambda kv: kv[1].first_call):
                lines.append(
                    f"{label} {title}: first in round {e.first_round + 1} (call {e.first_call}),"
                    f" {e.times} times; e.g. {'; '.join(e.what)}"
                )
        return "\n".join(lines)


def where(d: nfs_fh3, name: bytes) -> diropargs3:
    return diropargs3(d, name)


def lookup(d: nfs_fh3, name: bytes) -> LOOKUP3args:
    return LOOKUP3args(diropargs3(d, name))


def chmod(fh: nfs_fh3, mode: int) -> SETATTR3args:
    return SETATTR3args(fh, sattr3(mode=mode), None)


def create(d: nfs_fh3, name: bytes) -> CREATE3args:
    return CREATE3args(where(d, name), Arm(createmode3.UNCHECKED, sattr3(mode=0o644)))


def rename(d1: nfs_fh3, n1: bytes, d2: nfs_fh3, n2: bytes) -> RENAME3args:
    return RENAME3args(where(d1, n1), where(d2, n2))


def kind(attrs: fattr3 | None) -> ftype3 | None:
    return attrs.type if attrs is not None else None


def test_swapping_a_directory_for_a_symlink_never_reaches_outside(
    make_server: Callable[..., Served], tmp_path: Path
) -> None:
    served = make_server(areas=("a",))
    area = served.areas["a"]
    outside = tmp_path / "outside"
    make_outside(outside)
    make_area(area, outside)
    exchange(area / "d", area / "s")  # the machine can swap names (and swaps them back)
    exchange(area / "d", area / "s")
    original = snapshot(outside)
    handles: dict[str, nfs_fh3] = {}

    async def take_handles(nfs: Nfs) -> None:
        handles["root"] = await nfs.mount(b"/a")
        handles["d"] = await nfs.lookup(handles["root"], b"d")
        handles["f"] = await nfs.lookup(handles["d"], b"f")

    served.run(take_handles)
    race: Race | None = None

    async def body(nfs: Nfs) -> None:
        nonlocal race
        race = Race(nfs, handles["root"], handles["d"], handles["f"], outside, glance(outside))
        deadline = time.monotonic() + TIME_LIMIT
        while race.round < ROUNDS and time.monotonic() < deadline:
            await race.one_round()
            race.round += 1

    start = time.monotonic()
    with Swapper(area / "d", area / "s") as swapper:
        served.run(body, timeout=TIME_LIMIT + 30)
    elapsed = time.monotonic() - start
    assert race is not None
    summary = race.report(elapsed, swapper.swaps)
    print(summary)

    changed = differences(original, snapshot(outside))
    escaped = bool(race.escapes or changed)
    assert not escaped, "calls acted outside the export:\n" + "\n".join([summary, *changed])
    leaked = bool(race.leaks)
    assert not leaked, "replies showed what is outside the export:\n" + summary
    # The race was run: names were swapped under calls, and some calls failed for it.
    assert swapper.swaps > 1000 and race.round >= 20 and race.failed_calls > 0, summary

    async def still_answers(nfs: Nfs) -> None:
        res = await nfs.call(NFSPROC3.GETATTR, GETATTR3args(handles["root"]))
        assert res.tag == OK, nfsstat3(res.tag).name

    assert served.alive(), served.log()
    served.run(still_answers)
    served.stop()  # and its log holds no traceback
