"""Acting as the caller: what the kernel's own rules give a user once changes are made with
the caller's fsuid, fsgid and groups (nfsd/vfs/acting.py), and what the written-out fallback
must give just the same.

An attacker here is an ordinary user of a client who owns or may write some files: a write
must take setuid away, a chmod cannot make a file setgid for a group one is not in, a hard
link cannot pin another user's setuid program or a file one may not write, and new files
belong to their maker (or to a setgid directory's group). Tests taking `served` run in
process and over the wire; the fast tier runs again with the fallbacks forced.
"""

from __future__ import annotations

import os
import queue
import stat
import sys
import threading
from pathlib import Path

import pytest

from nfsd.vfs import acting
from nfsd.vfs.osapi import FORCED_FALLBACKS
from tests.conftest import Nfs, Served, user
from xdr.nfs3 import (
    NFSPROC3,
    LINK3args,
    MKDIR3args,
    SETATTR3args,
    WRITE3args,
    diropargs3,
    nfsstat3,
    sattr3,
    stable_how,
)

ALICE, BOB = user(1000), user(1001)


async def _give(nfs: Nfs, fh, mode: int, uid: int, gid: int) -> None:
    """As root: the file `fh` given to uid:gid with `mode` (setuid bits included)."""
    await nfs.ok(NFSPROC3.SETATTR, SETATTR3args(fh, sattr3(uid=uid, gid=gid), None))
    await nfs.ok(NFSPROC3.SETATTR, SETATTR3args(fh, sattr3(mode=mode), None))
    assert (await nfs.getattr(fh)).mode == mode


async def _open_dir(nfs: Nfs):
    """A scratch directory anyone may write in."""
    _, d, _ = await nfs.scratch()
    await nfs.ok(NFSPROC3.SETATTR, SETATTR3args(d, sattr3(mode=0o777), None))
    return d


@pytest.mark.parametrize("stable", [stable_how.UNSTABLE, stable_how.FILE_SYNC])
def test_a_write_by_an_ordinary_user_takes_setuid_away(served: Served, stable) -> None:
    async def body(nfs: Nfs) -> None:
        d = await _open_dir(nfs)
        theirs = await nfs.create(d, "theirs")
        await _give(nfs, theirs, 0o6777, 1000, 1000)
        data = b"#!/bin/sh\nexec sh\n"
        await nfs.ok(NFSPROC3.WRITE, WRITE3args(theirs, 0, len(data), stable, data), cred=BOB)
        # setuid gone, and setgid of a group-executable file
        assert (await nfs.getattr(theirs)).mode == 0o777
        own = await nfs.create(d, "own")
        await _give(nfs, own, 0o4755, 1000, 1000)
        await nfs.ok(NFSPROC3.WRITE, WRITE3args(own, 0, 1, stable, b"x"), cred=ALICE)
        assert (await nfs.getattr(own)).mode == 0o755  # the owner's write too, as write(2)
        kept = await nfs.create(d, "kept")
        await _give(nfs, kept, 0o4755, 1000, 1000)
        await nfs.write(kept, b"root keeps it")
        assert (await nfs.getattr(kept)).mode == 0o4755

    served.run(body)


def test_truncation_by_an_ordinary_user_takes_setuid_away(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        d = await _open_dir(nfs)
        fh = await nfs.create(d, "f")
        await nfs.write(fh, b"content")
        await _give(nfs, fh, 0o4777, 1000, 1000)
        await nfs.ok(NFSPROC3.SETATTR, SETATTR3args(fh, sattr3(size=0), None), cred=BOB)
        attr = await nfs.getattr(fh)
        assert (attr.size, attr.mode) == (0, 0o777)

    served.run(body)


def test_setgid_only_for_a_group_of_the_caller(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        d = await _open_dir(nfs)
        foreign = await nfs.create(d, "foreign")
        await _give(nfs, foreign, 0o755, 1000, 0)  # alice's file, in root's group
        await nfs.ok(NFSPROC3.SETATTR, SETATTR3args(foreign, sattr3(mode=0o2755), None), cred=ALICE)
        assert (await nfs.getattr(foreign)).mode == 0o755  # silently left out, as chmod(2)
        mine = await nfs.create(d, "mine")
        await _give(nfs, mine, 0o755, 1000, 1000)
        await nfs.ok(NFSPROC3.SETATTR, SETATTR3args(mine, sattr3(mode=0o2755), None), cred=ALICE)
        assert (await nfs.getattr(mine)).mode == 0o2755

    served.run(body)


def test_hard_links_to_other_users_files_are_protected(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        d = await _open_dir(nfs)

        async def link(fh, name: str, cred) -> nfsstat3:
            args = LINK3args(fh, diropargs3(d, name.encode()))
            return await nfs.status(NFSPROC3.LINK, args, cred=cred)

        readable = await nfs.create(d, "readable", 0o644)  # root's, alice may only read it
        assert await link(readable, "r-link", ALICE) == nfsstat3.NFS3ERR_PERM
        shared = await nfs.create(d, "shared", 0o666)
        assert await link(shared, "s-link", ALICE) == nfsstat3.NFS3_OK
        program = await nfs.create(d, "program", 0o4777)
        assert (await nfs.getattr(program)).mode == 0o4777
        assert await link(program, "p-link", ALICE) == nfsstat3.NFS3ERR_PERM
        own = await nfs.create(d, "own", 0o4700)
        await _give(nfs, own, 0o4700, 1000, 1000)
        assert await link(own, "o-link", ALICE) == nfsstat3.NFS3_OK  # one's own: always
        assert await nfs.names(d) == {b"readable", b"shared", b"s-link", b"program", b"own",
                                      b"o-link"}  # fmt: skip

    served.run(body)


def test_new_objects_belong_to_their_maker_and_a_setgid_directory_group(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        d = await _open_dir(nfs)
        group_dir = await nfs.mkdir(d, "group", 0o777)
        await _give(nfs, group_dir, 0o2777, 0, 50)
        made = await nfs.create(group_dir, "f", 0o640, cred=ALICE)
        attr = await nfs.getattr(made)
        assert (attr.uid, attr.gid, attr.mode) == (1000, 50, 0o640)
        args = MKDIR3args(diropargs3(group_dir, b"sub"), sattr3(mode=0o755))
        sub = (await nfs.ok(NFSPROC3.MKDIR, args, cred=ALICE)).obj
        attr = await nfs.getattr(sub)
        assert (attr.uid, attr.gid, attr.mode) == (1000, 50, 0o2755)
        plain = await nfs.create(d, "plain", cred=BOB)
        attr = await nfs.getattr(plain)
        assert (attr.uid, attr.gid) == (1001, 1001)

    served.run(body)


# ---- the seam itself ----


@pytest.mark.inproc
def test_the_kernel_acts_where_it_can_and_the_fallback_is_forced_by_the_switch() -> None:
    linux_root = sys.platform.startswith("linux") and os.geteuid() == 0
    assert (linux_root and not FORCED_FALLBACKS) == acting.KERNEL_ACTS


@pytest.mark.inproc
@pytest.mark.skipif(not acting.KERNEL_ACTS, reason="the kernel acts only on Linux, as root")
def test_a_block_acts_as_the_caller_on_its_thread_alone(tmp_path: Path) -> None:
    """As alice, a block cannot create in root's directory while another thread still can,
    and the thread is the server again when the block ends."""
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o755)
    dir_fd = os.open(locked, os.O_RDONLY | os.O_DIRECTORY)
    inside, outside = queue.Queue(), queue.Queue()

    def server_thread() -> None:
        inside.get()  # alice's block is open on the main thread
        fd = os.open("by-server", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=dir_fd)
        os.close(fd)
        outside.put(True)

    other = threading.Thread(target=server_thread)
    other.start()  # before the switch: a thread inherits its creator's credentials
    acting.act_for(1000, 1000, [1000])
    try:
        with acting.as_caller() as switched:
            assert switched
            with pytest.raises(PermissionError):
                os.open("by-alice", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=dir_fd)
            inside.put(True)
            assert outside.get(timeout=10)
        fd = os.open("after", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=dir_fd)
        os.close(fd)
        attempt = acting.bound(
            lambda: os.open("by-worker", os.O_CREAT | os.O_WRONLY, 0o600, dir_fd=dir_fd)
        )
    finally:
        acting.act_as_server()
        other.join()
    failures: list[BaseException] = []

    def worker() -> None:  # a worker thread, where the call's context does not reach
        try:
            os.close(attempt())
        except OSError as e:
            failures.append(e)

    thread = threading.Thread(target=worker)
    thread.start()
    thread.join()
    assert len(failures) == 1 and isinstance(failures[0], PermissionError)
    assert sorted(os.listdir(locked)) == ["after", "by-server"]
    assert os.stat(locked / "by-server").st_uid == 0
    os.close(dir_fd)


@pytest.mark.inproc
def test_without_a_caller_nothing_is_switched(tmp_path: Path) -> None:
    acting.act_as_server()
    with acting.as_caller() as switched:
        assert not switched
        (tmp_path / "f").write_bytes(b"")
    assert stat.S_ISREG(os.stat(tmp_path / "f").st_mode)
