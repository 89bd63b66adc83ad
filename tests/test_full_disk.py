"""A full disk is the clients' NOSPC, never the server's end: with the state directory and an
area on a small tmpfs filled through NFS, the server answers NFS3ERR_NOSPC, keeps serving
GETATTR and READ while its status loop runs on the full disk, and takes writes again once
space is freed. Needs root (it mounts a tmpfs)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from nfsd.store.db import Store
from nfsd.store.index import AreaIndex
from tests.conftest import OK, Nfs, run_on
from tests.support.server import REPO, ServerProcess
from xdr.codec import Arm
from xdr.nfs3 import (
    NFSPROC3,
    CREATE3args,
    WRITE3args,
    createmode3,
    diropargs3,
    nfsstat3,
    sattr3,
    stable_how,
)

DISK_SIZE = "2m"
PAGE = 4096


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted after the test."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_SIZE},mode=0700", "tmpfs", str(disk)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=True)


def start_on(areas: dict[str, Path], state_dir: Path, log_path: Path) -> ServerProcess:
    """`realize run` with its log off the full disk, so what it logs there is all kept."""
    state_dir.mkdir()
    config = {"areas": {name: str(p) for name, p in areas.items()}, "server": {}}
    (state_dir / "config.json").write_text(json.dumps(config))
    command = [sys.executable, "-m", "nfsd.cli", "--state-dir", str(state_dir), "run"]
    command += ["--port", "0", "--portmap", "off", "--rest", "0"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            info = json.loads((state_dir / "server.json").read_text())
            if info["pid"] == process.pid:
                return ServerProcess(
                    process, state_dir, info["nfs_port"], info["mount_port"], log_path
                )
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        if process.poll() is not None:
            break
        time.sleep(0.05)
    process.kill()
    process.wait()
    raise RuntimeError(f"server did not start:\n{log_path.read_text(errors='replace')}")


async def fill(nfs: Nfs, fh, chunk: int) -> tuple[int, nfsstat3]:
    """WRITE `chunk` bytes at a time at the end of `fh` until a call fails: the size reached
    and the failing status."""
    offset = (await nfs.getattr(fh)).size
    for _ in range(100_000):
        args = WRITE3args(fh, offset, chunk, stable_how.FILE_SYNC, b"x" * chunk)
        res = await nfs.call(NFSPROC3.WRITE, args)
        if res.tag != OK:
            return offset, nfsstat3(res.tag)
        offset += res.value.count
    raise AssertionError("the disk never filled")


def serve_small_disk(small_disk: Path, log_dir: Path) -> ServerProcess:
    """A server whose state directory and area `area` are both on the small disk."""
    area = small_disk / "area"
    area.mkdir()
    return start_on({"area": area}, small_disk / "state", log_dir / "server.log")


async def fill_disk(nfs: Nfs, fh) -> None:
    """Fill the disk through WRITEs to `fh`, to its last page."""
    for chunk in (64 * 1024, PAGE):
        _, status = await fill(nfs, fh, chunk)
        assert status == nfsstat3.NFS3ERR_NOSPC


def test_full_disk_is_nospc_and_the_server_keeps_serving(small_disk: Path, tmp_path: Path):
    server = serve_small_disk(small_disk, tmp_path)
    state_dir = server.state_dir
    runtime = state_dir / "server.json"
    try:

        async def body(nfs: Nfs) -> None:
            root = await nfs.mount(b"/area")
            keep = await nfs.create(root, "keep")
            await nfs.write(keep, b"kept")
            await fill_disk(nfs, await nfs.create(root, "big"))
            assert os.statvfs(small_disk).f_bavail == 0

            # Several status ticks (every 2 s) on the full disk, the journal hashing `big`.
            deadline = trio.current_time() + 5
            while trio.current_time() < deadline:
                assert (await nfs.getattr(keep)).size == 4
                assert (await nfs.read(keep)).data == b"kept"
                assert server.process.poll() is None, server.log()
                await trio.sleep(0.2)  # a client's pace, not synchronisation

            await nfs.remove(root, "big")
            await nfs.write(await nfs.create(root, "after"), b"y" * 65536)
            assert (await nfs.read(await nfs.lookup(root, "after"))).data == b"y" * 65536

        run_on(server.nfs_port, body)
        # The status loop writes the runtime file again once there is room.
        written = runtime.stat().st_mtime_ns
        deadline = time.monotonic() + 10
        while runtime.stat().st_mtime_ns == written:
            assert time.monotonic() < deadline, "server.json was not rewritten after the fill"
            assert server.process.poll() is None, server.log()
            time.sleep(0.1)
        assert json.loads(runtime.read_text())["pid"] == server.process.pid
        assert not list(state_dir.glob("*.tmp")), "a failed write left its temporary file"
    finally:
        code = server.stop()
    log = server.log()
    assert code == 0, log
    assert "Traceback" not in log, log


def test_full_disk_under_the_index_is_nospc_and_heals(small_disk: Path, tmp_path: Path):
    """Names made on the full disk need room in the index too: NOSPC while it is full (RocksDB
    then refuses every write until its database is reopened), and once room is freed the
    index takes changes again, without a restart and with every acknowledged change kept."""
    server = serve_small_disk(small_disk, tmp_path)
    made: list[bytes] = []
    how = createmode3.GUARDED
    try:

        async def body(nfs: Nfs) -> None:
            root = await nfs.mount(b"/area")
            keep = await nfs.create(root, "keep")
            await nfs.write(keep, b"kept")
            await fill_disk(nfs, await nfs.create(root, "big"))
            for i in range(10_000):
                name = f"name-{i}".encode()
                args = CREATE3args(diropargs3(root, name), Arm(how, sattr3(mode=0o644)))
                status = await nfs.status(NFSPROC3.CREATE, args)
                if status != OK:
                    break
                made.append(name)
            assert status == nfsstat3.NFS3ERR_NOSPC
            # The store has failed a write: reads go on, and writes stay NOSPC while it is full.
            assert (await nfs.read(keep)).data == b"kept"
            again = CREATE3args(diropargs3(root, b"still-full"), Arm(how, sattr3(mode=0o644)))
            assert await nfs.status(NFSPROC3.CREATE, again) == nfsstat3.NFS3ERR_NOSPC

            refused = f"name-{len(made)}"
            assert not (small_disk / "area" / refused).exists(), "a refused CREATE left its file"
            assert not (small_disk / "area" / "still-full").exists()

            await nfs.remove(root, "big")
            await nfs.write(await nfs.create(root, "after"), b"y" * 65536)
            assert (await nfs.read(await nfs.lookup(root, "after"))).data == b"y" * 65536
            for name in made:
                await nfs.lookup(root, name)
            # The client's retry of the refused CREATE (GUARDED) is not EXIST.
            await nfs.create(root, refused)

        run_on(server.nfs_port, body)
        assert server.process.poll() is None, server.log()
    finally:
        server.stop()
    log = server.log()
    assert "Traceback" not in log, log
    assert "takes writes again" in log, log
    # What was acknowledged is in the index as the server left it.
    store = Store(server.state_dir / "db", read_only=True)
    try:
        area = int.from_bytes(store.family("meta")[b"area:area"][:4], "big")
        index = AreaIndex(store)
        for name in [*made, b"keep", b"after"]:
            assert index.get(area, name) is not None, name
        assert index.get(area, b"big") is None
    finally:
        store.close()


def test_the_store_heals_once_the_disk_has_room(small_disk: Path):
    """The store alone: a family handed out before the failure reads through it and works
    after the reopen; writes are ENOSPC until room is freed, then taken, nothing lost."""
    store = Store(small_disk / "db")
    try:
        entries = store.family("entries")
        filler = small_disk / "filler"
        with open(filler, "wb", buffering=0) as f:
            with pytest.raises(OSError) as full:
                for _ in range(10_000):
                    f.write(b"x" * PAGE)
            assert full.value.errno == errno.ENOSPC
        written: list[bytes] = []
        with pytest.raises(OSError) as failed:
            for i in range(100_000):
                entries[b"k%d" % i] = b"v" * 100
                written.append(b"k%d" % i)
        assert failed.value.errno == errno.ENOSPC
        assert all(entries.get(key) is not None for key in written)
        with pytest.raises(OSError) as still:
            entries[b"still-full"] = b"v"
        assert still.value.errno == errno.ENOSPC
        filler.unlink()
        entries[b"after"] = b"v"  # a first write after the room was freed is taken
        assert entries[b"after"] == b"v"
        assert all(entries.get(key) is not None for key in written)
    finally:
        store.close()
    reopened = Store(small_disk / "db", read_only=True)
    try:
        assert all(reopened.family("entries").get(key) for key in [*written, b"after"])
    finally:
        reopened.close()
