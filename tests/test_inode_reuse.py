"""Handles name one file for ever: an attacker who deletes a file behind the server's back
(not through NFS) and makes the file system give its inode number to a new file must not
reach the new file through the old handle, nor through the fileid table's record of the old
one. Also: a rename or a hard link keeps the handle, and handles recorded before files had
identities keep working (a file older than the table) or are cleanly STALE.

ext4 (and xfs) give a freed inode number to the next file made nearby; tmpfs hands out new
ones, and there the reuse tests skip, saying so."""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from nfsd.vfs import osapi
from tests.support.inproc import InProcessServer, make_dispatcher, server_umask
from tests.test_inproc_nfs3 import Direct
from xdr.nfs3 import (
    NFSPROC3,
    GETATTR3args,
    LOOKUP3args,
    READ3args,
    SETATTR3args,
    WRITE3args,
    diropargs3,
    nfs_fh3,
    nfsstat3,
    sattr3,
    stable_how,
)

pytestmark = pytest.mark.inproc

_TRIES = 500
SECRET = b"the victim's own words"
ATTACK = b"the attacker's planted bytes"


def run(base: Path, body: Any) -> Any:
    inproc = make_dispatcher(base, ("a",))

    async def main() -> Any:
        with trio.fail_after(30):
            return await body(Direct(inproc), inproc)

    try:
        with server_umask():
            return trio.run(main)
    finally:
        inproc.close()


def take_inode(directory: Path, ino: int, name: str) -> Path | None:
    """Make files in `directory` until one at `name` has inode number `ino` (as an attacker
    would); the misses are kept, so the allocator moves on. None when none did."""
    target = directory / name
    for attempt in range(_TRIES):
        target.write_bytes(ATTACK)
        if target.stat().st_ino == ino:
            return target
        target.rename(directory / f"miss-{attempt}")
    return None


def require_identities(path: Path) -> None:
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if osapi.identity(fd, os.fsencode(path.name), path.stat().st_dev) == b"":
            pytest.skip("no file identity on this platform path: (dev, ino) alone name files")
    finally:
        os.close(fd)


async def lookup(nfs: Direct, directory: nfs_fh3, name: bytes) -> nfs_fh3:
    return (await nfs.ok(NFSPROC3.LOOKUP, LOOKUP3args(diropargs3(directory, name)))).object


async def assert_stale_everywhere(nfs: Direct, handle: nfs_fh3, planted: Path) -> None:
    """GETATTR, READ, SETATTR and WRITE of `handle` are STALE and leave `planted` alone."""
    before = planted.stat()
    status, value = await nfs.status_and_value(NFSPROC3.GETATTR, GETATTR3args(handle))
    assert status == nfsstat3.NFS3ERR_STALE
    status, value = await nfs.status_and_value(NFSPROC3.READ, READ3args(handle, 0, 4096))
    assert status == nfsstat3.NFS3ERR_STALE
    assert ATTACK not in repr(value).encode()
    assert value.file_attributes is None, "the new file's attributes leaked"
    args = SETATTR3args(handle, sattr3(mode=0o777), None)
    status, _ = await nfs.status_and_value(NFSPROC3.SETATTR, args)
    assert status == nfsstat3.NFS3ERR_STALE
    write = WRITE3args(handle, 0, len(SECRET), stable_how.FILE_SYNC, SECRET)
    status, _ = await nfs.status_and_value(NFSPROC3.WRITE, write)
    assert status == nfsstat3.NFS3ERR_STALE
    after = planted.stat()
    assert (after.st_mode, after.st_size) == (before.st_mode, before.st_size)
    assert planted.read_bytes() == ATTACK


@pytest.mark.parametrize("new_name", ["victim", "elsewhere"])
def test_a_handle_of_a_deleted_file_is_stale_when_its_inode_is_reused(
    tmp_path: Path, new_name: str
) -> None:
    """The reused inode at the same name (the table's record then matches name, dev and ino),
    or at another name (the table's record of that inode would be moved to it)."""

    async def body(nfs: Direct, inproc: InProcessServer) -> None:
        area = inproc.areas["a"]
        victim = area / "victim"
        victim.write_bytes(SECRET)
        require_identities(victim)
        root = await nfs.mount(b"/a")
        handle = await lookup(nfs, root, b"victim")
        attrs = (await nfs.ok(NFSPROC3.GETATTR, GETATTR3args(handle))).obj_attributes
        ino = victim.stat().st_ino

        os.unlink(victim)  # behind the server's back
        planted = take_inode(area, ino, new_name)
        if planted is None:
            pytest.skip(f"this file system gave inode {ino} to none of {_TRIES} new files")
        os.chmod(planted, 0o600)

        await assert_stale_everywhere(nfs, handle, planted)
        # The planted file is reachable by its name, as a file of its own.
        fresh = await lookup(nfs, root, os.fsencode(new_name))
        assert fresh != handle
        fresh_attrs = (await nfs.ok(NFSPROC3.GETATTR, GETATTR3args(fresh))).obj_attributes
        assert fresh_attrs.fileid != attrs.fileid
        data = (await nfs.ok(NFSPROC3.READ, READ3args(fresh, 0, 4096))).data
        assert bytes(data) == ATTACK
        # ...and the old handle stays STALE once the table knows the new file.
        await assert_stale_everywhere(nfs, handle, planted)

    run(tmp_path, body)


def test_a_handle_of_a_deleted_directory_is_stale_when_its_inode_is_reused(
    tmp_path: Path,
) -> None:
    async def body(nfs: Direct, inproc: InProcessServer) -> None:
        area = inproc.areas["a"]
        (area / "d").mkdir()
        require_identities(area / "d")
        root = await nfs.mount(b"/a")
        handle = await lookup(nfs, root, b"d")
        ino = (area / "d").stat().st_ino
        os.rmdir(area / "d")
        for attempt in range(_TRIES):
            (area / "d").mkdir()
            if (area / "d").stat().st_ino == ino:
                break
            (area / "d").rename(area / f"miss-{attempt}")
        else:
            pytest.skip(f"this file system gave inode {ino} to none of {_TRIES} directories")
        (area / "d" / "inside").write_bytes(ATTACK)
        status, _ = await nfs.status_and_value(NFSPROC3.GETATTR, GETATTR3args(handle))
        assert status == nfsstat3.NFS3ERR_STALE
        args = LOOKUP3args(diropargs3(handle, b"inside"))
        status, _ = await nfs.status_and_value(NFSPROC3.LOOKUP, args)
        assert status == nfsstat3.NFS3ERR_STALE
        assert await lookup(nfs, root, b"d") != handle

    run(tmp_path, body)


def test_a_handle_of_a_deleted_file_is_stale_after_a_restart_too(tmp_path: Path) -> None:
    async def before(nfs: Direct, inproc: InProcessServer) -> tuple[nfs_fh3, int]:
        victim = inproc.areas["a"] / "victim"
        victim.write_bytes(SECRET)
        require_identities(victim)
        handle = await lookup(nfs, await nfs.mount(b"/a"), b"victim")
        return handle, victim.stat().st_ino

    handle, ino = run(tmp_path, before)
    area = tmp_path / "areas" / "a"
    os.unlink(area / "victim")
    planted = take_inode(area, ino, "victim")
    if planted is None:
        pytest.skip(f"this file system gave inode {ino} to none of {_TRIES} new files")

    async def after(nfs: Direct, inproc: InProcessServer) -> None:
        await assert_stale_everywhere(nfs, handle, planted)

    run(tmp_path, after)


def test_a_renamed_or_hard_linked_file_keeps_its_handle(tmp_path: Path) -> None:
    async def body(nfs: Direct, inproc: InProcessServer) -> None:
        area = inproc.areas["a"]
        (area / "d").mkdir()
        (area / "d" / "f").write_bytes(SECRET)
        root = await nfs.mount(b"/a")
        d = await lookup(nfs, root, b"d")
        f = await lookup(nfs, d, b"f")
        os.rename(area / "d", area / "e")  # both moved behind the server's back
        os.rename(area / "e" / "f", area / "g")
        os.link(area / "g", area / "e" / "h")
        assert await lookup(nfs, root, b"g") == f
        assert await lookup(nfs, await lookup(nfs, root, b"e"), b"h") == f
        assert bytes((await nfs.ok(NFSPROC3.READ, READ3args(f, 0, 100))).data) == SECRET
        assert await lookup(nfs, root, b"e") == d

    run(tmp_path, body)


def _forget_identities(base: Path, created_ns: int | None = None) -> None:
    """Leave the fileid table as a server from before identities did: no `G` records (see
    nfsd/vfs/inodes.py); the store made at `created_ns` when given."""

    async def tamper(nfs: Direct, inproc: InProcessServer) -> None:
        store = inproc.server.tree.store
        batch = store.batch()
        for key in list(store.family("inodes").keys(from_key=b"G")):
            if not key.startswith(b"G"):
                break
            batch.delete("inodes", bytes(key))
        if created_ns is not None:
            batch.put("meta", b"created-ns", struct.pack(">Q", created_ns))
        batch.commit()

    run(base, tamper)


async def _handles(nfs: Direct, names: tuple[bytes, ...]) -> tuple[nfs_fh3, ...]:
    root = await nfs.mount(b"/a")
    return tuple([root] + [await lookup(nfs, root, name) for name in names])


def test_handles_recorded_before_identities_are_stale_for_files_born_since(
    tmp_path: Path,
) -> None:
    """A file born after the table was made may have taken a deleted file's inode number:
    its old handle is STALE, cleanly, and a LOOKUP gives the file a new one."""

    async def before(nfs: Direct, inproc: InProcessServer) -> tuple[nfs_fh3, ...]:
        (inproc.areas["a"] / "young").write_bytes(b"young")
        return await _handles(nfs, (b"young",))

    root, young = run(tmp_path, before)
    _forget_identities(tmp_path)

    async def after(nfs: Direct, inproc: InProcessServer) -> None:
        status, _ = await nfs.status_and_value(NFSPROC3.GETATTR, GETATTR3args(young))
        assert status == nfsstat3.NFS3ERR_STALE
        fresh = await lookup(nfs, root, b"young")
        assert fresh != young
        assert bytes((await nfs.ok(NFSPROC3.READ, READ3args(fresh, 0, 10))).data) == b"young"

    run(tmp_path, after)


def test_handles_recorded_before_identities_keep_working_for_older_files(
    tmp_path: Path,
) -> None:
    """A file born before the table can be no other than the one recorded."""
    area = tmp_path / "areas" / "a"
    (area / "d").mkdir(parents=True)
    (area / "d" / "old").write_bytes(b"old")
    if _birth(area / "d" / "old") is None:
        pytest.skip("the file system keeps no birth times")

    async def before(nfs: Direct, inproc: InProcessServer) -> tuple[nfs_fh3, ...]:
        _, d = await _handles(nfs, (b"d",))
        return d, await lookup(nfs, d, b"old")

    d, old = run(tmp_path, before)
    # As if the store had been made after the files (in a test, they are made together).
    _forget_identities(tmp_path, time.time_ns() + 10 * 1_000_000_000)

    async def after(nfs: Direct, inproc: InProcessServer) -> None:
        assert bytes((await nfs.ok(NFSPROC3.READ, READ3args(old, 0, 10))).data) == b"old"
        assert await lookup(nfs, d, b"old") == old
        attrs = (await nfs.ok(NFSPROC3.GETATTR, GETATTR3args(old))).obj_attributes
        node = inproc.server.tree.inodes.node(attrs.fileid)
        assert node is not None and node.identity, "seen once, its identity is recorded"

    run(tmp_path, after)


def _birth(path: Path) -> int | None:
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return osapi.birth_ns(fd, os.fsencode(path.name))
    finally:
        os.close(fd)
