"""Changes made on the disk of an area while the server runs: the inotify event parser, the
reconciling of one directory against the index, the watcher in-process, and a real server
whose area is changed behind its back (and through NFS, recorded once)."""

from __future__ import annotations

import errno
import os
import re
import shutil
import struct
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import blake3
import pytest
import trio

from nfsd.store.db import Store
from nfsd.store.history import History
from nfsd.store.index import AreaIndex, Entry, Kind, Layer
from nfsd.vfs import watch
from nfsd.vfs.journal import Journal
from nfsd.vfs.names import TEMP_PREFIX
from nfsd.vfs.watch import (
    IN_CREATE,
    IN_ISDIR,
    IN_MOVED_FROM,
    IN_Q_OVERFLOW,
    WATCH_MASK,
    Event,
    Inotify,
    Watcher,
    parse_events,
)
from tests.conftest import Nfs, run_on
from tests.support.renameat2 import Swapper
from tests.support.server import start_server
from tests.test_history import ops

AREA = 1
# Tests of inotify itself; the rescanning that replaces it is tested in every pass.
linux = pytest.mark.skipif(
    sys.platform != "linux" or watch.FORCED_FALLBACKS,
    reason="inotify is Linux's (and REALIZE_FORCE_FALLBACKS leaves it out)",
)
Row = tuple[str, ...]


def raw_event(wd: int, mask: int, cookie: int = 0, name: bytes = b"") -> bytes:
    """As the kernel writes it: the name NUL-terminated and padded to 16 bytes."""
    field = name.ljust((len(name) // 16 + 1) * 16, b"\0") if name else b""
    return struct.pack("=iIII", wd, mask, cookie, len(field)) + field


def rows_of(store: Store, area: int = AREA) -> list[Row]:
    rows: list[Row] = []
    for _, change in History(store).since(area):
        row: Row = (change.op.name.lower(), change.path.decode())
        if change.new_path:
            row += (change.new_path.decode(),)
        rows.append(row)
    return rows


def index_paths(store: Store, area: int = AREA) -> dict[str, Entry]:
    return {p.decode(): e for p, e in AreaIndex(store).walk(area)}


def disk_paths(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# ---- the event parser ----


@pytest.mark.inproc
def test_events_are_parsed_with_names_unpadded_and_a_truncated_tail_left_out():
    data = (
        raw_event(1, IN_CREATE, name=b"a.txt")
        + raw_event(2, IN_MOVED_FROM, 77, b"sixteen-bytes-xx")  # 16 bytes: 32 with padding
        + raw_event(-1, IN_Q_OVERFLOW)  # no name at all
        + raw_event(3, IN_CREATE | IN_ISDIR, name=b"dir")
    )
    assert parse_events(data) == [
        Event(1, IN_CREATE, 0, b"a.txt"),
        Event(2, IN_MOVED_FROM, 77, b"sixteen-bytes-xx"),
        Event(-1, IN_Q_OVERFLOW, 0, b""),
        Event(3, IN_CREATE | IN_ISDIR, 0, b"dir"),
    ]
    whole = raw_event(4, IN_CREATE, name=b"x")
    assert parse_events(whole + raw_event(5, IN_CREATE, name=b"y")[:20]) == [
        Event(4, IN_CREATE, 0, b"x")
    ]
    assert parse_events(whole[:10]) == []
    assert parse_events(b"") == []


# ---- reconciling against the index, in-process ----


def journal_for(tmp_path: Path, rest: float = 0.0) -> tuple[Path, Store, Journal]:
    area = tmp_path / "area"
    area.mkdir(exist_ok=True)
    store = Store(tmp_path / "db")
    return area, store, Journal(store, {AREA: os.fsencode(area)}, rest=rest)


def run(body: Callable[[], Awaitable[None]], timeout: float = 15) -> None:
    async def main() -> None:
        with trio.fail_after(timeout):
            await body()

    trio.run(main)


@pytest.mark.inproc
def test_a_directory_reconciled_records_what_changed_outside_and_nothing_twice(tmp_path):
    area, store, journal = journal_for(tmp_path)
    (area / "d").mkdir()
    (area / "d" / "old.txt").write_text("old")
    (area / "d" / "same.txt").write_text("same")

    async def body() -> None:
        await journal.scan(AREA)
        await journal.settle()
        assert sorted(rows_of(store)) == [
            ("create", "d/old.txt"),
            ("create", "d/same.txt"),
            ("mkdir", "d"),
        ]
        (area / "d" / "old.txt").unlink()
        (area / "d" / "new.txt").write_text("new")
        os.makedirs(area / "d" / "x" / "y")
        (area / "d" / "x" / "y" / "f").write_text("deep")
        os.chmod(area / "d" / "same.txt", 0o600)
        # Made through NFS: the tree reports it as it happens.
        made = area / "d" / "nfs.txt"
        made.write_text("through nfs")
        journal.created(AREA, b"d/nfs.txt", os.lstat(made))
        appeared = await journal.scan(AREA, below=b"d", deep=False, soon=False)
        assert appeared == [b"d/x"]
        await journal.settle()
        assert sorted(rows_of(store)[3:]) == [
            ("create", "d/new.txt"),
            ("create", "d/nfs.txt"),
            ("create", "d/x/y/f"),
            ("delete", "d/old.txt"),
            ("mkdir", "d/x"),
            ("mkdir", "d/x/y"),
            ("setattr", "d/same.txt"),
        ]
        before = rows_of(store)
        await journal.scan(AREA, below=b"d", deep=False, soon=False)
        await journal.scan(AREA, soon=False)
        await journal.settle()
        assert rows_of(store) == before
        assert set(index_paths(store)) == disk_paths(area)

    run(body)
    store.close()


@pytest.mark.inproc
def test_a_file_written_through_nfs_keeps_resting_from_its_last_write(tmp_path):
    area, store, journal = journal_for(tmp_path, rest=30)
    path = area / "slow.bin"
    path.write_bytes(b"x")
    journal.created(AREA, b"slow.bin", os.lstat(path))
    marked = journal.dirty[(AREA, b"slow.bin")]

    async def body() -> None:
        await journal.scan(AREA, soon=False)  # the NFS writer reported it: no new mark
        assert journal.dirty[(AREA, b"slow.bin")] == marked
        await trio.sleep(0.05)  # time passes (more than a timestamp tick) before the write
        with open(path, "ab") as f:  # written outside since: rests from now
            f.write(b"more")
        await journal.scan(AREA, soon=False)
        assert journal.dirty[(AREA, b"slow.bin")] > marked

    run(body)
    store.close()


@pytest.mark.inproc
def test_a_write_the_journal_was_not_told_of_yet_rests_before_it_is_hashed(tmp_path):
    """A file marked long ago and written again just now, its event still on its way (a busy
    watcher): the settle that comes first hashes nothing; the file is recorded once it has
    rested after that write, with what that write left."""
    area, store, journal = journal_for(tmp_path, rest=0.5)
    path = area / "growing.bin"
    path.write_bytes(b"first piece")
    journal.created(AREA, b"growing.bin", os.lstat(path))
    journal.dirty[(AREA, b"growing.bin")] -= 10  # the mark rested long ago

    async def body() -> None:
        with open(path, "ab") as f:
            f.write(b", second piece")
        assert await journal.settle() == 0
        assert rows_of(store) == []
        await trio.sleep(0.6)
        assert await journal.settle() == 1
        entry = AreaIndex(store).get(AREA, b"growing.bin")
        assert entry is not None and entry.blob == blake3.blake3(path.read_bytes()).digest()

    run(body)
    store.close()


@pytest.mark.inproc
def test_the_start_scan_recovers_from_an_interrupted_unrealize_and_realize(tmp_path):
    """A crash between recording a file as Unreal and unlinking it leaves both: the file on
    the disk wins. A crash while realizing leaves a temporary file: removed at the next start,
    while one being written now is left alone."""
    area, store, journal = journal_for(tmp_path)
    content = b"still here"
    (area / "moved.txt").write_bytes(content)
    (area / "edited.txt").write_bytes(b"edited after")
    stale = area / (TEMP_PREFIX.decode() + "0123456789ab-big.bin")
    stale.write_bytes(b"half")
    os.utime(stale, (1, 1))
    index = AreaIndex(store)
    st = os.lstat(area / "moved.txt")
    blob = blake3.blake3(content).digest()
    batch = store.batch()
    index.put(
        batch,
        AREA,
        b"moved.txt",
        Entry(Kind.FILE, Layer.UNREAL, 0o644, st.st_size, st.st_mtime_ns, blob),
    )
    index.put(batch, AREA, b"edited.txt", Entry(Kind.FILE, Layer.UNREAL, 0o644, 3, 1, b"o" * 32))
    batch.commit()

    async def body() -> None:
        current = area / (TEMP_PREFIX.decode() + "ba9876543210-new.bin")
        current.write_bytes(b"being written")
        await journal.scan(AREA)
        await journal.settle()
        assert not stale.exists() and current.exists()
        entries = index_paths(store)
        assert set(entries) == {"moved.txt", "edited.txt"}  # temporaries are not files
        assert entries["moved.txt"].layer == Layer.REAL and entries["moved.txt"].blob == blob
        assert entries["edited.txt"].layer == Layer.REAL
        assert entries["edited.txt"].blob == blake3.blake3(b"edited after").digest()
        assert rows_of(store) == [("change", "edited.txt")]  # moved.txt: the same content

    run(body)
    store.close()


@pytest.mark.inproc
def test_unreal_entries_survive_their_real_directory_going(tmp_path):
    area, store, journal = journal_for(tmp_path)
    (area / "d" / "sub").mkdir(parents=True)
    (area / "d" / "local.txt").write_text("here")
    (area / "d" / "sub" / "also.txt").write_text("here too")
    (area / "plain").mkdir()
    (area / "plain" / "f").write_text("f")
    index = AreaIndex(store)

    async def body() -> None:
        await journal.scan(AREA)
        await journal.settle()
        batch = store.batch()
        remote = Entry(Kind.FILE, Layer.UNREAL, 0o644, 5, 1, b"b" * 32)
        index.put(batch, AREA, b"d/remote.txt", remote)
        index.put(batch, AREA, b"cloud.txt", remote)
        batch.commit()
        before = len(rows_of(store))
        shutil.rmtree(area / "d")
        shutil.rmtree(area / "plain")
        await journal.scan(AREA, soon=False)
        assert sorted(rows_of(store)[before:]) == [
            ("delete", "d/local.txt"),
            ("rmdir", "d/sub"),
            ("rmdir", "plain"),  # nothing Unreal below: one RMDIR for all of it
        ]
        assert index.get(AREA, b"d").layer == Layer.UNREAL
        assert index.get(AREA, b"d/remote.txt") == remote
        assert index.get(AREA, b"cloud.txt") == remote
        assert set(index_paths(store)) == {"d", "d/remote.txt", "cloud.txt"}
        (area / "d").mkdir()  # made again on the disk: Real again, and not a new MKDIR
        await journal.scan(AREA, deep=False, soon=False)
        assert index.get(AREA, b"d").layer == Layer.REAL
        assert len(rows_of(store)) == before + 3

    run(body)
    store.close()


# ---- the watcher, in-process ----


async def until(check: Callable[[], bool], timeout: float = 8.0) -> None:
    with trio.fail_after(timeout):
        while not check():
            await trio.sleep(0.02)


@pytest.mark.inproc
@linux
def test_the_watcher_follows_new_moved_and_removed_directories(tmp_path):
    area, store, journal = journal_for(tmp_path)
    state = area / ".state"
    state.mkdir()
    hidden = {os.fsencode(state)}

    async def body() -> None:
        watcher = Watcher(journal, hidden, quiet=0.05, latest=0.3)
        await watcher.open()
        assert watcher.watches == 1  # the area's root, not the hidden state directory
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watcher.run)
                nursery.start_soon(journal.run, 0.02)
                await journal.scan(AREA, hidden)
                # Files in directories that exist before their watch does.
                os.makedirs(area / "a" / "b" / "c")
                for rel in ("a/1", "a/b/2", "a/b/c/3"):
                    (area / rel).write_text(rel)
                (state / "db.log").write_text("never recorded")
                await until(lambda: len(rows_of(store)) == 6)
                assert watcher.watches == 4
                os.rename(area / "a" / "b", area / "moved")
                await until(lambda: len(rows_of(store)) == 10)
                (area / "moved" / "c" / "late").write_text("seen in its new place")
                await until(lambda: ("create", "moved/c/late") in rows_of(store))
                os.rename(area / "a" / "1", area / "one")
                await until(lambda: ("rename", "a/1", "one") in rows_of(store))
                # An editor's save: a new file written beside, then renamed over the old.
                (area / "one.new").write_text("saved again")
                os.rename(area / "one.new", area / "one")
                await until(lambda: ("change", "one") in rows_of(store))
                shutil.rmtree(area / "moved")
                await until(lambda: ("rmdir", "moved") in rows_of(store))
                await until(lambda: watcher.watches == 2)
                nursery.cancel_scope.cancel()
        finally:
            watcher.close()
        rows = rows_of(store)
        assert sorted(rows[:6]) == [
            ("create", "a/1"),
            ("create", "a/b/2"),
            ("create", "a/b/c/3"),
            ("mkdir", "a"),
            ("mkdir", "a/b"),
            ("mkdir", "a/b/c"),
        ]
        # A move outside NFS is seen as one (inotify pairs its two events): the directory's
        # rename, then each announced path below it, as a rename through NFS is recorded.
        assert rows[6:10] == [
            ("rename", "a/b", "moved"),
            ("rename", "a/b/2", "moved/2"),
            ("rename", "a/b/c", "moved/c"),
            ("rename", "a/b/c/3", "moved/c/3"),
        ]
        assert rows[10:] == [
            ("create", "moved/c/late"),
            ("rename", "a/1", "one"),
            ("change", "one"),
            ("rmdir", "moved"),
        ]
        entries = index_paths(store)
        assert set(entries) == {"a", "one"}
        assert entries["one"].blob == blake3.blake3(b"saved again").digest()

    run(body)
    store.close()


@pytest.mark.inproc
@linux
def test_an_overflow_rescans_and_rewatches_the_area(tmp_path):
    area, store, journal = journal_for(tmp_path)

    async def body() -> None:
        watcher = Watcher(journal)
        await watcher.open()
        try:
            await journal.scan(AREA)
            os.makedirs(area / "lost" / "inner")
            (area / "lost" / "inner" / "f").write_text("f")
            assert watcher.inotify is not None
            watcher.inotify.read()  # the events are lost, as in an overflow
            await watcher._handle(Event(-1, IN_Q_OVERFLOW, 0, b""))
            await watcher.reconcile(watcher._pending, watcher._rescan)
            await journal.settle()
            assert watcher.watches == 3  # the directories made meanwhile are watched
        finally:
            watcher.close()
        assert sorted(rows_of(store)) == [
            ("create", "lost/inner/f"),
            ("mkdir", "lost"),
            ("mkdir", "lost/inner"),
        ]

    run(body)
    store.close()


@pytest.mark.inproc
@linux
def test_an_area_beyond_the_watch_limit_is_rescanned_periodically(tmp_path, monkeypatch):
    area, store, journal = journal_for(tmp_path)
    (area / "sub").mkdir()
    real_add = Inotify.add
    added: list[bytes] = []

    def add(self: Inotify, path: bytes, mask: int = WATCH_MASK) -> int:
        if added:  # the root's watch was the last: fs.inotify.max_user_watches is reached
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        added.append(path)
        return real_add(self, path, mask)

    monkeypatch.setattr(Inotify, "add", add)

    async def body() -> None:
        watcher = Watcher(journal, quiet=0.05, poll=0.2)
        await watcher.open()
        assert watcher.polled == {AREA}
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watcher.run)
                nursery.start_soon(journal.run, 0.02)
                await journal.scan(AREA)
                (area / "sub" / "unwatched.txt").write_text("found by a rescan")
                await until(lambda: ("create", "sub/unwatched.txt") in rows_of(store))
                nursery.cancel_scope.cancel()
        finally:
            watcher.close()

    run(body)
    store.close()


@pytest.mark.inproc
def test_without_inotify_the_areas_are_rescanned_periodically(tmp_path, monkeypatch):
    monkeypatch.setattr(watch, "FORCED_FALLBACKS", True)  # as on a system without inotify
    area, store, journal = journal_for(tmp_path)
    (area / "sub").mkdir()

    async def body() -> None:
        watcher = Watcher(journal, quiet=0.05, poll=0.2)
        await watcher.open()
        assert watcher.inotify is None and watcher.polled == {AREA}
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watcher.run)
                nursery.start_soon(journal.run, 0.02)
                await journal.scan(AREA)
                (area / "sub" / "new.txt").write_text("found by a rescan")
                os.rename(area / "sub", area / "moved")
                await until(lambda: ("create", "moved/new.txt") in rows_of(store))
                assert ("rmdir", "sub") in rows_of(store)  # moved outside NFS: gone, made
                nursery.cancel_scope.cancel()
        finally:
            watcher.close()

    run(body)
    store.close()


# ---- a real server ----


def wait_rows(state: Path, done: Callable[[list[Row]], bool], timeout: float = 15.0) -> list[Row]:
    deadline = time.monotonic() + timeout
    while True:
        rows = ops(state)
        if done(rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


@linux
def test_a_running_server_records_changes_made_behind_its_back(tmp_path):
    area, state = tmp_path / "area", tmp_path / "state"
    area.mkdir()
    (area / "old.txt").write_text("old")
    (area / "moveme.txt").write_text("move me")
    (area / "gone.txt").write_text("bye")
    (area / "keep.txt").write_text("keep")
    (area / "olddir" / "inner").mkdir(parents=True)
    (area / "olddir" / "inner" / "f").write_text("f")
    server = start_server({"area": area}, state, extra=["--rest", "0.2"])
    try:
        start = wait_rows(state, lambda rows: len(rows) >= 7)
        assert len(start) == 7, start
        # Behind the server's back.
        (area / "new.txt").write_text("hello")
        with open(area / "old.txt", "a") as f:
            f.write(", and more")
        os.makedirs(area / "deep" / "b" / "c")
        (area / "deep" / "b" / "c" / "f1").write_text("1")
        (area / "deep" / "b" / "f2").write_text("2")
        (area / "deep" / "f3").write_text("3")
        os.rename(area / "moveme.txt", area / "moved.txt")
        (area / "gone.txt").unlink()
        shutil.rmtree(area / "olddir")
        os.chmod(area / "keep.txt", 0o600)
        os.symlink("new.txt", area / "link")

        # And through NFS, which the tree reports itself.
        async def body(nfs: Nfs) -> None:
            root = await nfs.mount(b"/area")
            fh = await nfs.create(root, "nfs.txt")
            await nfs.write(fh, b"through nfs")
            await nfs.mkdir(root, "nfsdir")

        run_on(server.nfs_port, body)
        expected = sorted(
            [
                ("change", "old.txt"),
                ("create", "deep/b/c/f1"),
                ("create", "deep/b/f2"),
                ("create", "deep/f3"),
                ("create", "new.txt"),
                ("create", "nfs.txt"),
                ("delete", "gone.txt"),
                ("mkdir", "deep"),
                ("mkdir", "deep/b"),
                ("mkdir", "deep/b/c"),
                ("mkdir", "nfsdir"),
                ("rename", "moveme.txt", "moved.txt"),  # one change, as through NFS
                ("rmdir", "olddir"),
                ("setattr", "keep.txt"),
                ("symlink", "link", "new.txt"),
            ]
        )
        rows = wait_rows(state, lambda rows: len(rows) >= 7 + len(expected))
        assert sorted(rows[7:]) == expected, rows[7:]
        time.sleep(1.5)  # longer than a debounce, a rest and a settle: nothing comes twice
        assert sorted(ops(state)[7:]) == expected
    finally:
        server.stop()
    log = server.log()
    assert "Traceback" not in log, log
    store = Store(state / "db", read_only=True)
    try:
        raw = store.family("meta")[b"area:area"]
        entries = index_paths(store, int.from_bytes(raw[:4], "big"))
    finally:
        store.close()
    assert set(entries) == disk_paths(area)
    assert all(e.blob for e in entries.values() if e.kind == Kind.FILE)


def _watched_inodes(inotify: Inotify) -> set[int]:
    """The inodes an inotify instance watches, as the kernel lists them in fdinfo."""
    text = Path(f"/proc/self/fdinfo/{inotify.fd}").read_text()
    return {int(m, 16) for m in re.findall(r"^inotify wd:\S+ ino:([0-9a-f]+)", text, re.M)}


@pytest.mark.inproc
@linux
@pytest.mark.skipif(os.geteuid() != 0, reason="renameat2 races are run as root, as CI does")
def test_a_directory_swapped_for_a_symlink_never_gets_a_watch_outside(tmp_path):
    """While a thread swaps `area/d` between a directory and a symlink to an outside tree of
    the same shape, the watcher adds the area's tree again and again: no inode outside is
    ever watched (by path, `d/x/y` would be looked up through the symlink)."""
    area, store, journal = journal_for(tmp_path)
    outside = tmp_path / "outside"
    for top in (area / "d", outside):
        (top / "x" / "y").mkdir(parents=True)
    (tmp_path / "link").symlink_to(outside)
    outside_inodes = {os.stat(p).st_ino for p in (outside, outside / "x", outside / "x" / "y")}
    inotify = Inotify()
    rounds = 0
    try:
        with Swapper(area / "d", tmp_path / "link") as swapper:
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                added, _ = watch._add_tree(inotify, journal.disk, AREA, b"", set())
                assert not _watched_inodes(inotify) & outside_inodes, f"round {rounds}"
                for wd, _ in added:
                    inotify.remove(wd)
                rounds += 1
        assert rounds >= 50 and swapper.swaps >= 50
    finally:
        inotify.close()
        store.close()
