"""A FIFO renamed over a resting file freezes nothing. A local user writes a file in an area,
then, while it rests (before `--rest` passes and the journal hashes it), renames a FIFO over
it. Opened without O_NONBLOCK, the FIFO would block the opener until a writer came: on the
event loop, every client and SIGTERM with it. Against a real server process, the test checks
that other clients keep getting answers, that the journal leaves the FIFO unhashed, and that
SIGTERM still stops the server at once. And whatever size the event loop saw, a file bigger
than a small one is hashed in a worker thread.

Two ways the FIFO reaches the journal: with inotify, the watcher reconciles the rename (while
the file still waits to be hashed); without it (REALIZE_FORCE_FALLBACKS=1, areas polled once
a minute), nothing reconciles meanwhile and the hasher itself meets the FIFO where the file
was.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
from pathlib import Path

import blake3
import pytest
import trio

import nfsd.vfs.journal as journal_module
from nfsd.store.db import Store
from nfsd.store.index import AreaIndex, Entry, Kind
from nfsd.vfs.journal import Journal
from tests.conftest import Nfs, Served
from xdr.nfs3 import NFSPROC3, READ3args, ftype3, nfsstat3

REST = 2.0  # seconds: long enough to rename the FIFO in while the file rests
ANSWER_WITHIN = 2.0  # seconds any one GETATTR may take
STOP_WITHIN = 5.0  # seconds SIGTERM may take
BIG = 1 << 20  # above the size the journal hashes on the event loop


def _entry(state_dir: Path, path: bytes) -> Entry | None:
    """The index entry of `path` in area `a`, read beside the running server."""
    store = Store(state_dir / "db", read_only=True)
    try:
        area = int.from_bytes(store.family("meta")[b"area:a"][:4], "big")
        return AreaIndex(store).get(area, path)
    finally:
        store.close()


async def _wait_for_entry(state_dir: Path, path: bytes, done, timeout: float = 20.0) -> Entry:
    """Poll the index until `path`'s entry satisfies `done`."""
    with trio.fail_after(timeout):
        while True:
            entry = await trio.to_thread.run_sync(_entry, state_dir, path)
            if entry is not None and done(entry):
                return entry
            await trio.sleep(0.05)


async def _keep_asking(nfs: Nfs, fh, stop: trio.Event, answered: list[float]) -> None:
    """GETATTR after GETATTR until `stop`, each answered within ANSWER_WITHIN."""
    while not stop.is_set():
        started = trio.current_time()
        with trio.fail_after(ANSWER_WITHIN):
            await nfs.getattr(fh)
        answered.append(trio.current_time() - started)
        await trio.sleep(0.02)  # a client's pace, not synchronisation


def _fifo_over(area: Path, name: str) -> None:
    """What the attacker does: a FIFO made elsewhere in the area, renamed over the file."""
    fifo = area / "fifo-elsewhere"
    os.mkfifo(fifo)
    os.rename(fifo, area / name)


@pytest.mark.wire
@pytest.mark.parametrize("watching", ["inotify", "fallbacks"])
def test_a_fifo_renamed_over_a_resting_file_freezes_nothing(
    make_server, monkeypatch: pytest.MonkeyPatch, watching: str
) -> None:
    extra = ["--rest", str(REST)]
    if watching == "fallbacks":
        monkeypatch.setenv("REALIZE_FORCE_FALLBACKS", "1")
        # The fallbacks do not ask who owns a loopback socket: the test client is a stranger.
        extra += ["--insecure", "--no-root-squash"]
    srv: Served = make_server(extra=extra, areas=("a",))
    area, state_dir = srv.areas["a"], srv.state_dir
    answered: list[float] = []

    async def body(nfs: Nfs) -> None:
        root = await nfs.mount(b"/a")
        if watching == "inotify":
            (area / "resting").write_bytes(b"r" * BIG)  # a local program, seen by the watcher
            await _wait_for_entry(state_dir, b"resting", lambda e: e.kind == Kind.FILE)
        else:
            await nfs.write(await nfs.create(root, "resting"), b"r" * BIG)
        # Still resting: not hashed yet.
        assert not (await trio.to_thread.run_sync(_entry, state_dir, b"resting")).blob
        _fifo_over(area, "resting")
        # Written after the FIFO came: once it is hashed, the hasher has been past the FIFO.
        control = await nfs.create(root, "control")
        await nfs.write(control, b"c" * BIG)

        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_keep_asking, nfs, root, stop, answered)
            await _wait_for_entry(state_dir, b"control", lambda e: bool(e.blob))
            # The FIFO as a client sees it: a FIFO, whose READ is refused, not waited on.
            fifo = await nfs.lookup(root, "resting")
            assert (await nfs.getattr(fifo)).type == ftype3.NF3FIFO
            with trio.fail_after(ANSWER_WITHIN):
                refused = await nfs.status(NFSPROC3.READ, READ3args(fifo, 0, 4096))
            assert refused != nfsstat3.NFS3_OK
            stop.set()

    srv.run(body)
    assert answered, "no GETATTR was answered"

    srv.process.process.send_signal(signal.SIGTERM)
    try:
        code = srv.process.process.wait(STOP_WITHIN)
    except subprocess.TimeoutExpired:
        pytest.fail(f"SIGTERM did not stop the server within {STOP_WITHIN} s:\n{srv.log()}")
    assert code == 0, srv.log()
    log = srv.log()
    assert "Traceback" not in log, log
    # Recorded as what it is, or left out; never hashed as if it were the file.
    entry = _entry(state_dir, b"resting")
    assert entry is None or entry.kind != Kind.FILE or not entry.blob, entry
    assert (area / "resting").is_fifo()


class _SaysSmall:
    """A stat of a file that looks small (as it was when opened, before it grew)."""

    st_size = 10

    def __init__(self, real: os.stat_result) -> None:
        self._real = real

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)


@pytest.mark.inproc
def test_a_file_that_grew_after_it_was_looked_at_is_hashed_in_a_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever size the event loop saw, it reads no more than a small file's worth of any
    file: the rest is hashed in a worker thread."""
    area = tmp_path / "area"
    area.mkdir()
    content = os.urandom(4 * BIG)
    (area / "growing").write_bytes(content)
    store = Store(tmp_path / "db")
    journal = Journal(store, {1: os.fsencode(area)}, rest=0.0)
    loop_thread = threading.current_thread()
    real_fstat, real_hash_fd = os.fstat, journal_module.hash_fd
    hashed_on: list[threading.Thread] = []

    def fstat(fd: int) -> object:
        st = real_fstat(fd)
        on_loop = threading.current_thread() is loop_thread
        return _SaysSmall(st) if on_loop and st.st_size == len(content) else st

    def hash_fd(*args: object) -> tuple[bytes, os.stat_result]:
        hashed_on.append(threading.current_thread())
        return real_hash_fd(*args)

    monkeypatch.setattr(os, "fstat", fstat)
    monkeypatch.setattr(journal_module, "hash_fd", hash_fd)
    journal.written(1, b"growing")
    try:
        assert trio.run(journal.settle) == 1
    finally:
        monkeypatch.undo()
    try:
        assert hashed_on and loop_thread not in hashed_on
        entry = AreaIndex(store).get(1, b"growing")
        assert entry is not None and entry.blob == blake3.blake3(content).digest()
        assert entry.size == len(content)
    finally:
        store.close()
