"""The 22 NFSv3 procedures on success and on their main error paths, plus what clients rely
on across calls: stable handles and fileids, directory paging, export boundaries, and the
export options (read-only, allowed networks, root squash).

Tests taking `served` run in two tiers: in-process (`[inproc]`, the same programs over
in-memory connections) and over the wire against a server process (`[wire]`). Tests taking
`server` or `make_server` need a process (UDP, restarts, command-line options, large scales).
"""

from __future__ import annotations

import os
import random
import stat
import struct
import time
from pathlib import Path
from typing import Any

import pytest
import trio

from nfsd.rpc.client import encode_args, udp_call
from tests.conftest import HOST, OK, ROOT, ZERO_VERF, Nfs, NfsStatusError, Served, user
from xdr.codec import Arm, decode
from xdr.mount import MOUNT_PROGRAM, MOUNT_V3, MOUNTPROC3, dirpath, mountres3, mountstat3
from xdr.nfs3 import (
    ACCESS3_DELETE,
    ACCESS3_EXECUTE,
    ACCESS3_EXTEND,
    ACCESS3_LOOKUP,
    ACCESS3_MODIFY,
    ACCESS3_READ,
    NFS_PROGRAM,
    NFSPROC3,
    PROCEDURES,
    ACCESS3args,
    COMMIT3args,
    CREATE3args,
    FSINFO3args,
    FSSTAT3args,
    GETATTR3args,
    LINK3args,
    LOOKUP3args,
    MKDIR3args,
    MKNOD3args,
    PATHCONF3args,
    READ3args,
    READDIR3args,
    READDIR3res,
    READDIRPLUS3args,
    READDIRPLUS3res,
    READLINK3args,
    REMOVE3args,
    RENAME3args,
    RMDIR3args,
    SETATTR3args,
    SYMLINK3args,
    WRITE3args,
    createmode3,
    devicedata3,
    diropargs3,
    ftype3,
    nfs_fh3,
    nfsstat3,
    nfstime3,
    sattr3,
    specdata3,
    stable_how,
    symlinkdata3,
    time_how,
)
from xdr.rpc import accept_stat
from xdr.rpc_fast import encode_call

ALL_BITS = (
    ACCESS3_READ
    | ACCESS3_LOOKUP
    | ACCESS3_MODIFY
    | ACCESS3_EXTEND
    | ACCESS3_DELETE
    | ACCESS3_EXECUTE
)
NOBODY = 65534
E = nfsstat3


def where(d: nfs_fh3, name: bytes | str) -> diropargs3:
    return diropargs3(d, name if isinstance(name, bytes) else name.encode())


def pad(n: int) -> int:
    return (n + 3) & ~3


# ---- GETATTR ----


def test_getattr_matches_the_local_file(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, name = await nfs.scratch()
        local = served.areas["a"] / name / "f"
        local.write_bytes(b"hello world")
        os.chmod(local, 0o640)
        fh = await nfs.lookup(d, "f")
        attr = await nfs.getattr(fh)
        st = local.stat()
        assert attr.type == ftype3.NF3REG
        assert (attr.mode, attr.size, attr.nlink, attr.uid) == (0o640, 11, 1, st.st_uid)
        assert attr.mtime.seconds * 10**9 + attr.mtime.nseconds == st.st_mtime_ns
        dattr = await nfs.getattr(d)
        assert dattr.type == ftype3.NF3DIR and dattr.nlink >= 2
        assert dattr.fsid == attr.fsid

    served.run(body)


def test_names_the_server_keeps_for_itself_are_hidden_and_refused(served: Served) -> None:
    """Realize writes realized content under a temporary name first: clients never see such
    a file half written, nor make one."""

    async def body(nfs: Nfs) -> None:
        _, d, name = await nfs.scratch()
        temp = ".realize-tmp-0123456789ab-photo.jpg"
        (served.areas["a"] / name / temp).write_bytes(b"half")
        assert temp.encode() not in await nfs.names(d)
        assert await nfs.status(NFSPROC3.LOOKUP, LOOKUP3args(diropargs3(d, temp.encode()))) == (
            nfsstat3.NFS3ERR_NOENT
        )
        args = CREATE3args(
            diropargs3(d, b".realize-tmp-mine"), Arm(createmode3.GUARDED, sattr3(mode=0o644))
        )
        assert await nfs.status(NFSPROC3.CREATE, args) == nfsstat3.NFS3ERR_ACCES
        await nfs.create(d, ".realize-notes.txt")  # only the exact prefix is kept

    served.run(body)


def test_directories_have_nlink_at_least_two(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        for export in ("/", "/a", "/b"):
            root = await nfs.mount(export)
            attr = await nfs.getattr(root)
            assert attr.type == ftype3.NF3DIR and attr.nlink >= 2, export
        _, d, _ = await nfs.scratch()
        sub = await nfs.mkdir(d, "sub")
        assert (await nfs.getattr(sub)).nlink >= 2
        assert (await nfs.getattr(d)).nlink >= 3

    served.run(body)


# ---- SETATTR ----


def test_setattr_mode_size_and_times(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, name = await nfs.scratch()
        fh = await nfs.create(d, "f")
        local = served.areas["a"] / name / "f"
        await nfs.write(fh, b"0123456789")

        res = await nfs.ok(NFSPROC3.SETATTR, SETATTR3args(fh, sattr3(mode=0o600), None))
        assert res.obj_wcc.after.mode == 0o600
        assert stat.S_IMODE(local.stat().st_mode) == 0o600

        await nfs.ok(NFSPROC3.SETATTR, SETATTR3args(fh, sattr3(size=4), None))
        assert local.read_bytes() == b"0123"
        await nfs.ok(NFSPROC3.SETATTR, SETATTR3args(fh, sattr3(size=8), None))
        assert local.read_bytes() == b"0123\0\0\0\0"
        assert (await nfs.getattr(fh)).size == 8

        when = nfstime3(1_000_000_000, 123_456_789)
        client_time = Arm(time_how.SET_TO_CLIENT_TIME, when)
        await nfs.ok(
            NFSPROC3.SETATTR, SETATTR3args(fh, sattr3(atime=client_time, mtime=client_time), None)
        )
        attr = await nfs.getattr(fh)
        assert attr.mtime == when and attr.atime == when
        assert local.stat().st_mtime_ns == 1_000_000_000_123_456_789

        server_time = Arm(time_how.SET_TO_SERVER_TIME)
        await nfs.ok(NFSPROC3.SETATTR, SETATTR3args(fh, sattr3(mtime=server_time), None))
        attr = await nfs.getattr(fh)
        assert abs(attr.mtime.seconds - time.time()) < 30
        assert attr.atime == when  # left alone

        # SETATTR of a directory's size is refused
        status = await nfs.status(NFSPROC3.SETATTR, SETATTR3args(d, sattr3(size=0), None))
        assert status in (E.NFS3ERR_ISDIR, E.NFS3ERR_INVAL)

    served.run(body)


def test_setattr_guard(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, _ = await nfs.scratch()
        fh = await nfs.create(d, "f", 0o644)
        ctime = (await nfs.getattr(fh)).ctime
        wrong = nfstime3(ctime.seconds - 100, ctime.nseconds)
        res = await nfs.call(NFSPROC3.SETATTR, SETATTR3args(fh, sattr3(mode=0o600), wrong))
        assert res.tag == E.NFS3ERR_NOT_SYNC
        assert (await nfs.getattr(fh)).mode == 0o644
        await nfs.ok(NFSPROC3.SETATTR, SETATTR3args(fh, sattr3(mode=0o600), ctime))
        assert (await nfs.getattr(fh)).mode == 0o600

    served.run(body)


def test_setattr_permissions_of_other_users(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, _ = await nfs.scratch()
        fh = await nfs.create(d, "f", 0o644)
        alice = user(1000)
        status = await nfs.status(
            NFSPROC3.SETATTR, SETATTR3args(fh, sattr3(mode=0o777), None), cred=alice
        )
        assert status == E.NFS3ERR_PERM
        status = await nfs.status(
            NFSPROC3.SETATTR, SETATTR3args(fh, sattr3(uid=1000), None), cred=alice
        )
        assert status == E.NFS3ERR_PERM
        status = await nfs.status(
            NFSPROC3.SETATTR, SETATTR3args(fh, sattr3(size=0), None), cred=alice
        )
        assert status == E.NFS3ERR_ACCES
        # root gives the file away; then the owner may chmod it
        await nfs.ok(NFSPROC3.SETATTR, SETATTR3args(fh, sattr3(uid=1000, gid=1000), None))
        await nfs.ok(NFSPROC3.SETATTR, SETATTR3args(fh, sattr3(mode=0o600), None), cred=alice)
        attr = await nfs.getattr(fh)
        assert (attr.uid, attr.gid, attr.mode) == (1000, 1000, 0o600)

    served.run(body)


# ---- LOOKUP ----


def test_lookup(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        root, d, name = await nfs.scratch()
        fh = await nfs.create(d, "f")
        res = await nfs.ok(NFSPROC3.LOOKUP, LOOKUP3args(where(d, "f")))
        assert res.object == fh
        assert res.obj_attributes.type == ftype3.NF3REG
        assert res.dir_attributes.fileid == (await nfs.getattr(d)).fileid

        res = await nfs.call(NFSPROC3.LOOKUP, LOOKUP3args(where(d, "missing")))
        assert res.tag == E.NFS3ERR_NOENT
        assert res.value.dir_attributes is not None  # clients cache the directory's state
        assert await nfs.status(NFSPROC3.LOOKUP, LOOKUP3args(where(fh, "x"))) == (E.NFS3ERR_NOTDIR)

        assert await nfs.lookup(d, ".") == d
        assert await nfs.lookup(d, "..") == root
        assert await nfs.lookup(root, name) == d
        # ".." at the root of an export stays there
        assert await nfs.lookup(root, "..") == root
        top = await nfs.mount("/")
        assert await nfs.lookup(top, "..") == top

    served.run(body)


def test_lookup_sees_files_made_locally(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, name = await nfs.scratch()
        (served.areas["a"] / name / "local.txt").write_text("made outside")
        fh = await nfs.lookup(d, "local.txt")
        assert bytes((await nfs.read(fh)).data) == b"made outside"

    served.run(body)


# ---- ACCESS ----


def test_access_for_root_and_for_a_user(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, _ = await nfs.scratch()
        secret = await nfs.create(d, "secret", 0o600)
        shared = await nfs.create(d, "shared", 0o644)
        script = await nfs.create(d, "script", 0o755)

        async def access(fh: nfs_fh3, cred=ROOT) -> int:
            res = await nfs.ok(NFSPROC3.ACCESS, ACCESS3args(fh, ALL_BITS), cred=cred)
            assert res.obj_attributes is not None
            return res.access

        rw = ACCESS3_READ | ACCESS3_MODIFY | ACCESS3_EXTEND
        got = await access(secret)
        assert got & rw == rw and not got & ACCESS3_EXECUTE
        assert await access(script) & ACCESS3_EXECUTE
        alice = user(1000)
        assert await access(secret, alice) & (rw | ACCESS3_EXECUTE) == 0
        got = await access(shared, alice)
        assert got & ACCESS3_READ and not got & (ACCESS3_MODIFY | ACCESS3_EXTEND)
        got = await access(script, alice)
        assert got & ACCESS3_EXECUTE and got & ACCESS3_READ and not got & ACCESS3_MODIFY
        got = await access(d, alice)  # a 0755 directory of root
        assert got & ACCESS3_LOOKUP and got & ACCESS3_READ
        assert not got & (ACCESS3_MODIFY | ACCESS3_EXTEND | ACCESS3_DELETE)
        assert await access(d) == ALL_BITS
        # only the bits asked for are answered
        res = await nfs.ok(NFSPROC3.ACCESS, ACCESS3args(secret, ACCESS3_READ))
        assert res.access == ACCESS3_READ

        # the user cannot read or write the 0600 file
        assert (
            await nfs.status(NFSPROC3.READ, READ3args(secret, 0, 10), cred=alice) == E.NFS3ERR_ACCES
        )
        status = await nfs.status(
            NFSPROC3.WRITE,
            WRITE3args(secret, 0, 1, stable_how.FILE_SYNC, b"x"),
            cred=alice,
        )
        assert status == E.NFS3ERR_ACCES

    served.run(body)


# ---- READLINK, READ ----


def test_readlink(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, name = await nfs.scratch()
        target = b"some/where/../else"
        res = await nfs.ok(
            NFSPROC3.SYMLINK, SYMLINK3args(where(d, "ln"), symlinkdata3(sattr3(), target))
        )
        res = await nfs.ok(NFSPROC3.READLINK, READLINK3args(res.obj))
        assert res.data == target
        assert res.symlink_attributes.type == ftype3.NF3LNK
        assert os.readlink(served.areas["a"] / name / "ln") == target.decode()
        fh = await nfs.create(d, "plain")
        assert await nfs.status(NFSPROC3.READLINK, READLINK3args(fh)) == E.NFS3ERR_INVAL

    served.run(body)


def test_read_eof(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, _ = await nfs.scratch()
        fh = await nfs.create(d, "f")
        await nfs.write(fh, b"0123456789")
        for offset, count, data, eof in [
            (0, 10, b"0123456789", True),
            (0, 100, b"0123456789", True),
            (0, 5, b"01234", False),
            (5, 5, b"56789", True),
            (9, 1, b"9", True),
            (10, 5, b"", True),
            (1000, 5, b"", True),
            (0, 0, b"", False),
        ]:
            res = await nfs.read(fh, offset, count)
            assert (bytes(res.data), res.count, res.eof) == (data, len(data), eof), offset
            assert res.file_attributes.size == 10
        empty = await nfs.create(d, "empty")
        res = await nfs.read(empty, 0, 10)
        assert (bytes(res.data), res.eof) == (b"", True)
        assert await nfs.status(NFSPROC3.READ, READ3args(d, 0, 10)) == E.NFS3ERR_ISDIR

    served.run(body)


def test_read_and_write_a_megabyte(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, name = await nfs.scratch()
        fh = await nfs.create(d, "big")
        data = random.Random(1).randbytes(1 << 20)
        res = await nfs.write(fh, data, 0, stable_how.UNSTABLE)
        assert res.count == len(data)
        res = await nfs.read(fh, 0, 1 << 20)
        assert bytes(res.data) == data and res.eof
        assert (served.areas["a"] / name / "big").read_bytes() == data

    served.run(body)


# ---- WRITE, COMMIT ----


def test_write_unstable_then_commit(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, name = await nfs.scratch()
        fh = await nfs.create(d, "f")
        first = await nfs.write(fh, b"hello ", 0, stable_how.UNSTABLE)
        assert first.committed == stable_how.UNSTABLE and first.count == 6
        second = await nfs.write(fh, b"world", 6, stable_how.UNSTABLE)
        assert second.verf == first.verf and len(first.verf) == 8
        assert second.file_wcc.before.size == 6 and second.file_wcc.after.size == 11
        res = await nfs.ok(NFSPROC3.COMMIT, COMMIT3args(fh, 0, 0))
        assert res.verf == first.verf
        assert (served.areas["a"] / name / "f").read_bytes() == b"hello world"
        synced = await nfs.write(fh, b"!", 11, stable_how.FILE_SYNC)
        assert synced.committed == stable_how.FILE_SYNC and synced.verf == first.verf
        assert (served.areas["a"] / name / "f").read_bytes() == b"hello world!"
        # a write with count below the data length writes count bytes
        res = await nfs.ok(NFSPROC3.WRITE, WRITE3args(fh, 0, 1, stable_how.FILE_SYNC, b"HE"))
        assert res.count == 1
        assert (served.areas["a"] / name / "f").read_bytes() == b"Hello world!"
        assert (
            await nfs.status(NFSPROC3.WRITE, WRITE3args(d, 0, 1, stable_how.FILE_SYNC, b"x"))
            == E.NFS3ERR_ISDIR
        )

    served.run(body)


def test_write_verifier_changes_after_a_restart(make_server) -> None:
    srv: Served = make_server()

    async def before(nfs: Nfs) -> tuple[bytes, nfs_fh3]:
        root = await nfs.mount("/a")
        fh = await nfs.create(root, "f")
        res = await nfs.write(fh, b"unstable data", 0, stable_how.UNSTABLE)
        commit = await nfs.ok(NFSPROC3.COMMIT, COMMIT3args(fh, 0, 0))
        assert commit.verf == res.verf
        return res.verf, fh

    verf, fh = srv.run(before)
    srv.restart()

    async def after(nfs: Nfs) -> None:
        res = await nfs.write(fh, b"U", 0, stable_how.UNSTABLE)
        assert res.verf != verf
        commit = await nfs.ok(NFSPROC3.COMMIT, COMMIT3args(fh, 0, 0))
        assert commit.verf == res.verf
        assert bytes((await nfs.read(fh)).data) == b"Unstable data"

    srv.run(after)


# ---- CREATE ----


def test_create_modes(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, name = await nfs.scratch()
        local = served.areas["a"] / name

        fh = await nfs.create(d, "g", 0o640, how=createmode3.GUARDED)
        assert stat.S_IMODE((local / "g").stat().st_mode) == 0o640
        res = await nfs.call(
            NFSPROC3.CREATE, CREATE3args(where(d, "g"), Arm(createmode3.GUARDED, sattr3()))
        )
        assert res.tag == E.NFS3ERR_EXIST
        assert res.value.dir_wcc.after is not None

        # UNCHECKED on an existing file: the same file, contents kept unless a size is given
        await nfs.write(fh, b"keep me")
        again = await nfs.create(d, "g", how=createmode3.UNCHECKED)
        assert again == fh
        assert (local / "g").read_bytes() == b"keep me"
        args = CREATE3args(where(d, "g"), Arm(createmode3.UNCHECKED, sattr3(size=0)))
        assert (await nfs.ok(NFSPROC3.CREATE, args)).obj == fh
        assert (local / "g").read_bytes() == b""

        created = await nfs.ok(
            NFSPROC3.CREATE, CREATE3args(where(d, "u"), Arm(createmode3.UNCHECKED, sattr3()))
        )
        assert created.obj_attributes.type == ftype3.NF3REG
        assert created.dir_wcc.before is not None and created.dir_wcc.after is not None

        # a directory's name cannot be created as a file
        await nfs.mkdir(d, "dir")
        res = await nfs.call(
            NFSPROC3.CREATE, CREATE3args(where(d, "dir"), Arm(createmode3.UNCHECKED, sattr3()))
        )
        assert res.tag in (E.NFS3ERR_EXIST, E.NFS3ERR_ISDIR)

    served.run(body)


def test_create_exclusive(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, name = await nfs.scratch()
        verf = b"verf-001"

        async def exclusive(name: str, verf: bytes) -> Arm:
            args = CREATE3args(where(d, name), Arm(createmode3.EXCLUSIVE, verf))
            return await nfs.call(NFSPROC3.CREATE, args)

        first = await exclusive("x", verf)
        assert first.tag == OK
        fileid = (await nfs.getattr(first.value.obj)).fileid
        # the client then sets the attributes it wanted
        await nfs.ok(NFSPROC3.SETATTR, SETATTR3args(first.value.obj, sattr3(mode=0o600), None))
        again = await exclusive("x", verf)  # a retransmission after the cache forgot it
        assert again.tag == OK and again.value.obj == first.value.obj
        assert (await nfs.getattr(again.value.obj)).fileid == fileid
        assert (await exclusive("x", b"verf-002")).tag == E.NFS3ERR_EXIST
        await nfs.create(d, "plain")
        assert (await exclusive("plain", verf)).tag == E.NFS3ERR_EXIST
        assert (served.areas["a"] / name / "x").exists()

    served.run(body)


# ---- MKDIR, SYMLINK, MKNOD ----


def test_mkdir(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, name = await nfs.scratch()
        res = await nfs.ok(NFSPROC3.MKDIR, MKDIR3args(where(d, "sub"), sattr3(mode=0o750)))
        assert res.obj_attributes.type == ftype3.NF3DIR
        assert res.obj_attributes.mode == 0o750
        assert (served.areas["a"] / name / "sub").is_dir()
        again = await nfs.call(NFSPROC3.MKDIR, MKDIR3args(where(d, "sub"), sattr3()))
        assert again.tag == E.NFS3ERR_EXIST
        inner = await nfs.mkdir(res.obj, "inner")
        assert await nfs.lookup(inner, "..") == res.obj
        for bad in (".", ".."):
            status = await nfs.status(NFSPROC3.MKDIR, MKDIR3args(where(d, bad), sattr3()))
            assert status == E.NFS3ERR_EXIST

    served.run(body)


def test_symlink(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, name = await nfs.scratch()
        res = await nfs.ok(
            NFSPROC3.SYMLINK, SYMLINK3args(where(d, "ln"), symlinkdata3(sattr3(), b"target"))
        )
        assert res.obj_attributes.type == ftype3.NF3LNK
        assert res.obj_attributes.size == len(b"target")
        assert os.readlink(served.areas["a"] / name / "ln") == "target"
        again = await nfs.call(
            NFSPROC3.SYMLINK, SYMLINK3args(where(d, "ln"), symlinkdata3(sattr3(), b"other"))
        )
        assert again.tag == E.NFS3ERR_EXIST

    served.run(body)


def test_mknod(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, name = await nfs.scratch()
        local = served.areas["a"] / name
        for kind, check, fname in [
            (ftype3.NF3FIFO, stat.S_ISFIFO, "fifo"),
            (ftype3.NF3SOCK, stat.S_ISSOCK, "sock"),
        ]:
            res = await nfs.ok(
                NFSPROC3.MKNOD, MKNOD3args(where(d, fname), Arm(kind, sattr3(mode=0o640)))
            )
            assert res.obj_attributes.type == kind
            st = (local / fname).lstat()
            assert check(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o640
        device = Arm(ftype3.NF3CHR, devicedata3(sattr3(mode=0o600), specdata3(1, 3)))
        res = await nfs.call(NFSPROC3.MKNOD, MKNOD3args(where(d, "null"), device))
        if os.geteuid() == 0:
            assert res.tag == OK
            assert res.value.obj_attributes.type == ftype3.NF3CHR
            assert res.value.obj_attributes.rdev == specdata3(1, 3)
            st = (local / "null").lstat()
            assert stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) == 1
        else:
            assert res.tag in (E.NFS3ERR_PERM, E.NFS3ERR_ACCES)
        res = await nfs.call(NFSPROC3.MKNOD, MKNOD3args(where(d, "reg"), Arm(ftype3.NF3REG)))
        assert res.tag == E.NFS3ERR_BADTYPE
        res = await nfs.call(
            NFSPROC3.MKNOD, MKNOD3args(where(d, "fifo"), Arm(ftype3.NF3FIFO, sattr3()))
        )
        assert res.tag == E.NFS3ERR_EXIST
        # an unprivileged user may not make devices
        status = await nfs.status(
            NFSPROC3.MKNOD, MKNOD3args(where(d, "null2"), device), cred=user(1000)
        )
        assert status in (E.NFS3ERR_PERM, E.NFS3ERR_ACCES)

    served.run(body)


# ---- REMOVE, RMDIR ----


def test_remove_and_rmdir(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, name = await nfs.scratch()
        f = await nfs.create(d, "f")
        sub = await nfs.mkdir(d, "sub")
        await nfs.create(sub, "inner")

        assert await nfs.status(NFSPROC3.REMOVE, REMOVE3args(where(d, "sub"))) in (
            E.NFS3ERR_ISDIR,
            E.NFS3ERR_PERM,
            E.NFS3ERR_ACCES,
        )
        assert await nfs.status(NFSPROC3.RMDIR, RMDIR3args(where(d, "f"))) == E.NFS3ERR_NOTDIR
        assert await nfs.status(NFSPROC3.RMDIR, RMDIR3args(where(d, "sub"))) == (E.NFS3ERR_NOTEMPTY)
        assert await nfs.status(NFSPROC3.REMOVE, REMOVE3args(where(d, "nope"))) == (E.NFS3ERR_NOENT)
        for dot in (".", ".."):
            status = await nfs.status(NFSPROC3.RMDIR, RMDIR3args(where(sub, dot)))
            assert status in (E.NFS3ERR_INVAL, E.NFS3ERR_EXIST, E.NFS3ERR_NOTEMPTY), dot

        res = await nfs.ok(NFSPROC3.REMOVE, REMOVE3args(where(d, "f")))
        assert res.dir_wcc.before is not None and res.dir_wcc.after is not None
        assert not (served.areas["a"] / name / "f").exists()
        assert await nfs.status(NFSPROC3.GETATTR, GETATTR3args(f)) == E.NFS3ERR_STALE
        await nfs.remove(sub, "inner")
        await nfs.ok(NFSPROC3.RMDIR, RMDIR3args(where(d, "sub")))
        assert await nfs.names(d) == set()
        assert await nfs.status(NFSPROC3.GETATTR, GETATTR3args(sub)) == E.NFS3ERR_STALE

    served.run(body)


def test_sticky_directory_protects_other_users_files(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, _ = await nfs.scratch()
        await nfs.ok(NFSPROC3.SETATTR, SETATTR3args(d, sattr3(mode=0o1777), None))
        await nfs.create(d, "roots")
        alice = user(1000)
        status = await nfs.status(NFSPROC3.REMOVE, REMOVE3args(where(d, "roots")), cred=alice)
        assert status == E.NFS3ERR_ACCES
        await nfs.create(d, "alices", cred=alice)
        await nfs.ok(NFSPROC3.REMOVE, REMOVE3args(where(d, "alices")), cred=alice)

    served.run(body)


# ---- RENAME ----


def test_rename_file_and_directory(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, name = await nfs.scratch()
        local = served.areas["a"] / name
        f = await nfs.create(d, "f")
        await nfs.write(f, b"content")
        res = await nfs.ok(NFSPROC3.RENAME, RENAME3args(where(d, "f"), where(d, "g")))
        assert res.fromdir_wcc.after is not None and res.todir_wcc.after is not None
        assert not (local / "f").exists() and (local / "g").read_bytes() == b"content"
        assert await nfs.lookup(d, "g") == f
        assert bytes((await nfs.read(f)).data) == b"content"

        top = await nfs.mkdir(d, "top")
        kids = {n: await nfs.create(top, n) for n in ("k1", "k2", "k3")}
        other = await nfs.mkdir(d, "other")
        await nfs.ok(NFSPROC3.RENAME, RENAME3args(where(d, "top"), where(other, "moved")))
        assert (local / "other" / "moved" / "k2").exists()
        moved = await nfs.lookup(other, "moved")
        assert moved == top
        assert await nfs.names(moved) == {n.encode() for n in kids}
        for n, fh in kids.items():
            assert await nfs.lookup(moved, n) == fh
            await nfs.getattr(fh)
        assert await nfs.lookup(moved, "..") == other
        assert await nfs.status(NFSPROC3.LOOKUP, LOOKUP3args(where(d, "top"))) == (E.NFS3ERR_NOENT)
        # renaming onto itself does nothing
        await nfs.ok(NFSPROC3.RENAME, RENAME3args(where(d, "g"), where(d, "g")))
        assert (local / "g").exists()
        # missing source
        status = await nfs.status(NFSPROC3.RENAME, RENAME3args(where(d, "nope"), where(d, "x")))
        assert status == E.NFS3ERR_NOENT
        # a directory into itself
        status = await nfs.status(
            NFSPROC3.RENAME, RENAME3args(where(other, "moved"), where(moved, "loop"))
        )
        assert status == E.NFS3ERR_INVAL
        assert await nfs.lookup(other, "moved") == top

    served.run(body)


def test_rename_over_existing(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, name = await nfs.scratch()
        local = served.areas["a"] / name
        src = await nfs.create(d, "src")
        await nfs.write(src, b"new")
        old = await nfs.create(d, "dst")
        await nfs.write(old, b"old")
        await nfs.ok(NFSPROC3.RENAME, RENAME3args(where(d, "src"), where(d, "dst")))
        assert (local / "dst").read_bytes() == b"new"
        assert await nfs.lookup(d, "dst") == src
        assert await nfs.status(NFSPROC3.GETATTR, GETATTR3args(old)) == E.NFS3ERR_STALE
        assert await nfs.names(d) == {b"dst"}

        # a directory over an empty directory
        a = await nfs.mkdir(d, "da")
        await nfs.create(a, "inside")
        await nfs.mkdir(d, "empty")
        await nfs.ok(NFSPROC3.RENAME, RENAME3args(where(d, "da"), where(d, "empty")))
        assert await nfs.lookup(d, "empty") == a
        assert (local / "empty" / "inside").exists()

        # a directory over a non-empty directory
        b = await nfs.mkdir(d, "db")
        status = await nfs.status(NFSPROC3.RENAME, RENAME3args(where(d, "db"), where(d, "empty")))
        assert status in (E.NFS3ERR_NOTEMPTY, E.NFS3ERR_EXIST)
        assert await nfs.lookup(d, "db") == b
        # a directory over a file, a file over a directory
        status = await nfs.status(NFSPROC3.RENAME, RENAME3args(where(d, "db"), where(d, "dst")))
        assert status == E.NFS3ERR_NOTDIR
        status = await nfs.status(NFSPROC3.RENAME, RENAME3args(where(d, "dst"), where(d, "db")))
        assert status == E.NFS3ERR_ISDIR

    served.run(body)


def test_rename_across_areas_is_xdev(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, da, name = await nfs.scratch("/a")
        _, db, _ = await nfs.scratch("/b")
        await nfs.create(da, "f")
        status = await nfs.status(NFSPROC3.RENAME, RENAME3args(where(da, "f"), where(db, "f")))
        assert status == E.NFS3ERR_XDEV
        # the same through the root export, which holds both areas
        top = await nfs.mount("/")
        a = await nfs.lookup(await nfs.lookup(top, "a"), name)
        b = await nfs.lookup(top, "b")
        status = await nfs.status(NFSPROC3.RENAME, RENAME3args(where(a, "f"), where(b, "f")))
        assert status == E.NFS3ERR_XDEV
        assert await nfs.names(da) == {b"f"}

    served.run(body)


# ---- LINK ----


def test_link_counts(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, name = await nfs.scratch()
        f = await nfs.create(d, "f")
        await nfs.write(f, b"shared")
        sub = await nfs.mkdir(d, "sub")
        res = await nfs.ok(NFSPROC3.LINK, LINK3args(f, where(sub, "g")))
        assert res.file_attributes.nlink == 2
        assert res.linkdir_wcc.after is not None
        assert await nfs.lookup(sub, "g") == f
        assert (served.areas["a"] / name / "sub" / "g").stat().st_nlink == 2
        status = await nfs.status(NFSPROC3.LINK, LINK3args(f, where(sub, "g")))
        assert status == E.NFS3ERR_EXIST
        status = await nfs.status(NFSPROC3.LINK, LINK3args(sub, where(d, "dirlink")))
        assert status in (E.NFS3ERR_ISDIR, E.NFS3ERR_PERM, E.NFS3ERR_INVAL)
        # the first name goes; the handle lives on through the second
        await nfs.remove(d, "f")
        attr = await nfs.getattr(f)
        assert attr.nlink == 1
        assert bytes((await nfs.read(f)).data) == b"shared"
        assert await nfs.lookup(sub, "g") == f
        await nfs.remove(sub, "g")
        assert await nfs.status(NFSPROC3.GETATTR, GETATTR3args(f)) == E.NFS3ERR_STALE

    served.run(body)


def test_link_across_areas_is_xdev(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, da, _ = await nfs.scratch("/a")
        _, db, _ = await nfs.scratch("/b")
        f = await nfs.create(da, "f")
        assert await nfs.status(NFSPROC3.LINK, LINK3args(f, where(db, "f"))) == E.NFS3ERR_XDEV

    served.run(body)


# ---- READDIR, READDIRPLUS ----


def _entry_size(name: bytes) -> int:
    return 4 + 8 + 4 + pad(len(name)) + 8


def _make_names(directory: Path, count: int) -> set[bytes]:
    names = set()
    for i in range(count):
        name = f"entry-{i:05d}-" + "x" * (i % 41)
        (directory / name).touch()
        names.add(name.encode())
    return names


async def _readdir_pages(nfs: Nfs, d: nfs_fh3, count: int, between=None) -> list[bytes]:
    """Every name READDIR gives (in order), checking each reply against `count`."""
    names: list[bytes] = []
    cookie, verf = 0, ZERO_VERF
    previous_len = None
    for _ in range(100_000):
        args = encode_args(READDIR3args, READDIR3args(d, cookie, verf, count))
        _, data = await nfs.rpc.call_raw(NFS_PROGRAM, 3, NFSPROC3.READDIR, args)
        assert len(data) <= count, f"reply of {len(data)} bytes for count {count}"
        res = decode(READDIR3res, data)
        assert res.tag == OK, nfsstat3(res.tag).name
        entries = res.value.reply.entries
        if previous_len is not None and entries:
            # the previous page was filled: this page's first entry would not have fitted
            assert previous_len + _entry_size(entries[0].name) > count
        names += [e.name for e in entries]
        if res.value.reply.eof:
            return names
        assert entries, "an empty page that is not eof"
        previous_len = len(data)
        cookie, verf = entries[-1].cookie, res.value.cookieverf
        if between is not None:
            await between()
    raise AssertionError("READDIR never reached eof")


def test_readdir_pages_a_large_directory_exactly(server: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, name = await nfs.scratch()
        expected = _make_names(server.areas["a"] / name, 5000)
        for count in (1024, 8192):
            names = await _readdir_pages(nfs, d, count)
            assert len(names) == len(set(names)), "duplicates"
            assert set(names) == expected | {b".", b".."}

    server.run(body)


def test_readdirplus_pages_a_large_directory_exactly(server: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, name = await nfs.scratch()
        expected = _make_names(server.areas["a"] / name, 5000)
        fileids: dict[bytes, int] = {}
        maxcount, dircount = 4096, 512
        cookie, verf = 0, ZERO_VERF
        previous: tuple[int, int] | None = None
        pages = 0
        while True:
            args = encode_args(
                READDIRPLUS3args, READDIRPLUS3args(d, cookie, verf, dircount, maxcount)
            )
            _, data = await nfs.rpc.call_raw(NFS_PROGRAM, 3, NFSPROC3.READDIRPLUS, args)
            assert len(data) <= maxcount
            res = decode(READDIRPLUS3res, data)
            assert res.tag == OK
            entries = res.value.reply.entries
            info = sum(_entry_size(e.name) for e in entries)
            assert info <= dircount or len(entries) == 1
            if previous is not None and entries:
                first = entries[0]
                plus = _entry_size(first.name) + 4 + 84 + 4 + 4 + pad(len(first.name_handle.data))
                used, used_info = previous
                assert used + plus > maxcount or used_info + _entry_size(first.name) > dircount
            for e in entries:
                assert e.name not in fileids, f"{e.name!r} twice"
                fileids[e.name] = e.fileid
                assert e.name_attributes is not None and e.name_handle is not None
                assert e.name_attributes.fileid == e.fileid
            pages += 1
            if res.value.reply.eof:
                break
            previous = (len(data), info)
            cookie, verf = entries[-1].cookie, res.value.cookieverf
        assert set(fileids) == expected | {b".", b".."}
        assert pages > 100
        ids = [fid for n, fid in fileids.items() if n not in (b".", b"..")]
        assert len(set(ids)) == len(ids), "fileids are not unique"
        # the handles of entries work and name the same file
        some = sorted(expected)[:3]
        for n in some:
            fh = await nfs.lookup(d, n)
            assert (await nfs.getattr(fh)).fileid == fileids[n]

    server.run(body)


def test_readdir_and_readdirplus_page_at_small_counts(served: Served) -> None:
    """What the large-directory tests check, on fewer entries and smaller pages (so in both
    tiers): every entry once, each page as full as its count allows, working handles."""

    async def body(nfs: Nfs) -> None:
        _, d, name = await nfs.scratch()
        expected = _make_names(served.areas["a"] / name, 400)
        for count in (512, 2048):
            names = await _readdir_pages(nfs, d, count)
            assert len(names) == len(set(names)), "duplicates"
            assert set(names) == expected | {b".", b".."}
        seen: dict[bytes, Any] = {}
        cookie, verf, pages = 0, ZERO_VERF, 0
        while True:
            args = READDIRPLUS3args(d, cookie, verf, 256, 2048)
            res = await nfs.ok(NFSPROC3.READDIRPLUS, args)
            for e in res.reply.entries:
                assert e.name not in seen, f"{e.name!r} twice"
                seen[e.name] = e
            pages += 1
            if res.reply.eof:
                break
            cookie, verf = res.reply.entries[-1].cookie, res.cookieverf
        assert set(seen) == expected | {b".", b".."}
        assert pages > 10
        entry = seen[sorted(expected)[0]]
        assert entry.name_handle is not None and entry.name_attributes is not None
        assert (await nfs.getattr(entry.name_handle)).fileid == entry.fileid

    served.run(body)


def test_readdir_while_the_directory_changes(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, name = await nfs.scratch()
        local = served.areas["a"] / name
        original = _make_names(local, 800)
        rng = random.Random(7)
        deleted: set[bytes] = set()
        added: set[bytes] = set()
        counter = iter(range(10**6))

        async def churn() -> None:
            for victim in rng.sample(sorted(original - deleted), 4):
                if rng.random() < 0.5:
                    await nfs.remove(d, victim)
                else:
                    os.unlink(local / victim.decode())
                deleted.add(victim)
            for _ in range(4):
                new = f"new-{next(counter)}".encode()
                if rng.random() < 0.5:
                    await nfs.create(d, new)
                else:
                    (local / new.decode()).touch()
                added.add(new)

        names = await _readdir_pages(nfs, d, 1024, churn)
        assert len(names) == len(set(names)), "an entry was listed twice"
        survivors = original - deleted
        assert survivors <= set(names), f"missing: {sorted(survivors - set(names))[:5]}"
        assert set(names) <= original | added | {b".", b".."}
        assert len(deleted) > 100
        # a fresh listing shows exactly what is there
        assert await nfs.names(d) == survivors | added

    served.run(body)


def test_local_changes_show_in_the_next_listing(served: Served) -> None:
    """A file made in the area directory right after a listing is in the next listing."""

    async def body(nfs: Nfs) -> None:
        _, d, name = await nfs.scratch()
        local = served.areas["a"] / name
        expected: set[bytes] = set()
        for i in range(60):
            assert await nfs.names(d) == expected
            (local / f"n{i}").touch()
            expected.add(f"n{i}".encode())
            assert await nfs.names(d) == expected, f"after creating n{i}"
            if i % 3 == 0:
                os.unlink(local / f"n{i}")
                expected.discard(f"n{i}".encode())

    served.run(body)


def test_readdir_resumes_after_a_restart(make_server) -> None:
    srv: Served = make_server()
    expected = _make_names(srv.areas["a"], 300)

    async def first(nfs: Nfs):
        root = await nfs.mount("/a")
        res = await nfs.ok(NFSPROC3.READDIR, READDIR3args(root, 0, ZERO_VERF, 2048))
        assert not res.reply.eof
        resplus = await nfs.ok(
            NFSPROC3.READDIRPLUS, READDIRPLUS3args(root, 0, ZERO_VERF, 1024, 4096)
        )
        assert not resplus.reply.eof
        return root, res, resplus

    root, page, pageplus = srv.run(first)
    srv.restart()

    async def rest(nfs: Nfs) -> None:
        for start, proc in ((page, NFSPROC3.READDIR), (pageplus, NFSPROC3.READDIRPLUS)):
            names = [e.name for e in start.reply.entries]
            cookie, verf = start.reply.entries[-1].cookie, start.cookieverf
            while True:
                if proc == NFSPROC3.READDIR:
                    args = READDIR3args(root, cookie, verf, 2048)
                else:
                    args = READDIRPLUS3args(root, cookie, verf, 1024, 4096)
                res = await nfs.call(proc, args)
                assert res.tag == OK, nfsstat3(res.tag).name  # never BAD_COOKIE
                names += [e.name for e in res.value.reply.entries]
                if res.value.reply.eof:
                    break
                cookie = res.value.reply.entries[-1].cookie
                verf = res.value.cookieverf
            assert len(names) == len(set(names))
            assert set(names) == expected | {b".", b".."}

    srv.run(rest)


def test_readdir_too_small(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, _ = await nfs.scratch()
        status = await nfs.status(NFSPROC3.READDIR, READDIR3args(d, 0, ZERO_VERF, 40))
        assert status == E.NFS3ERR_TOOSMALL
        status = await nfs.status(NFSPROC3.READDIRPLUS, READDIRPLUS3args(d, 0, ZERO_VERF, 40, 100))
        assert status == E.NFS3ERR_TOOSMALL
        f = await nfs.create(d, "f")
        status = await nfs.status(NFSPROC3.READDIR, READDIR3args(f, 0, ZERO_VERF, 4096))
        assert status == E.NFS3ERR_NOTDIR
        # an empty directory: ".", ".." and eof in one small reply
        e = await nfs.mkdir(d, "empty")
        res = await nfs.ok(NFSPROC3.READDIR, READDIR3args(e, 0, ZERO_VERF, 200))
        assert [x.name for x in res.reply.entries] == [b".", b".."] and res.reply.eof

    served.run(body)


def test_readdir_dot_entries_and_fileids(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        root, d, name = await nfs.scratch()
        f = await nfs.create(d, "f")
        entries = {e.name: e.fileid for e in await nfs.readdir_all(d)}
        assert entries[b"."] == (await nfs.getattr(d)).fileid
        assert entries[b".."] == (await nfs.getattr(root)).fileid
        assert entries[b"f"] == (await nfs.getattr(f)).fileid
        # at the export root, ".." is the root itself
        top = {e.name: e.fileid for e in await nfs.readdir_all(root)}
        assert top[b".."] == top[b"."] == (await nfs.getattr(root)).fileid
        assert name.encode() in top

    served.run(body)


# ---- FSSTAT, FSINFO, PATHCONF ----


def test_fsstat_fsinfo_pathconf(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        for export in ("/a", "/"):
            root = await nfs.mount(export)
            st = await nfs.ok(NFSPROC3.FSSTAT, FSSTAT3args(root))
            assert st.tbytes > 0 and st.abytes <= st.fbytes <= st.tbytes
            assert st.afiles <= st.ffiles <= st.tfiles
            info = await nfs.ok(NFSPROC3.FSINFO, FSINFO3args(root))
            assert info.rtmax == info.wtmax == 1 << 20
            assert info.dtpref >= 64 * 1024
            assert info.rtpref <= info.rtmax and info.wtpref <= info.wtmax
            assert info.maxfilesize >= 2**40
            assert info.obj_attributes is not None
            pc = await nfs.ok(NFSPROC3.PATHCONF, PATHCONF3args(root))
            assert pc.name_max == 255 and pc.no_trunc and pc.case_preserving
            assert pc.linkmax >= 1

    served.run(body)


# ---- handles ----


def test_handles_survive_renames(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, _ = await nfs.scratch()
        parent = await nfs.mkdir(d, "parent")
        child = await nfs.mkdir(parent, "child")
        f = await nfs.create(child, "f")
        await nfs.write(f, b"data")
        fileid = (await nfs.getattr(f)).fileid
        await nfs.ok(NFSPROC3.RENAME, RENAME3args(where(child, "f"), where(child, "f2")))
        await nfs.ok(NFSPROC3.RENAME, RENAME3args(where(d, "parent"), where(d, "renamed")))
        await nfs.ok(NFSPROC3.RENAME, RENAME3args(where(parent, "child"), where(d, "up")))
        assert (await nfs.getattr(f)).fileid == fileid
        assert bytes((await nfs.read(f)).data) == b"data"
        assert await nfs.lookup(await nfs.lookup(d, "up"), "f2") == f
        await nfs.write(f, b"DATA")
        assert await nfs.names(parent) == set()

    served.run(body)


def test_handles_survive_local_renames(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, name = await nfs.scratch()
        local = served.areas["a"] / name
        sub = await nfs.mkdir(d, "sub")
        f = await nfs.create(sub, "f")
        await nfs.write(f, b"local")
        os.rename(local / "sub", local / "sub2")
        # the client finds the directory again by name, and the old handle of the file
        sub2 = await nfs.lookup(d, "sub2")
        assert await nfs.lookup(sub2, "f") == f
        assert bytes((await nfs.read(f)).data) == b"local"

    served.run(body)


def test_handles_survive_a_restart(make_server) -> None:
    srv: Served = make_server()

    async def before(nfs: Nfs):
        root = await nfs.mount("/a")
        d = await nfs.mkdir(root, "d")
        f = await nfs.create(d, "f")
        await nfs.write(f, b"persisted")
        ids = {"d": (await nfs.getattr(d)).fileid, "f": (await nfs.getattr(f)).fileid}
        return root, d, f, ids

    root, d, f, ids = srv.run(before)
    (srv.areas["a"] / "late").touch()  # made while the server was running
    srv.restart()

    async def after(nfs: Nfs) -> None:
        assert await nfs.mount("/a") == root
        assert (await nfs.getattr(d)).fileid == ids["d"]
        assert (await nfs.getattr(f)).fileid == ids["f"]
        assert bytes((await nfs.read(f)).data) == b"persisted"
        assert await nfs.lookup(root, "d") == d
        assert await nfs.lookup(d, "f") == f
        await nfs.lookup(root, "late")

    srv.run(after)
    srv.restart()
    srv.run(after)


def test_stale_and_bad_handles(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, name = await nfs.scratch()
        f = await nfs.create(d, "f")
        await nfs.remove(d, "f")
        for proc, args in [
            (NFSPROC3.GETATTR, GETATTR3args(f)),
            (NFSPROC3.READ, READ3args(f, 0, 10)),
            (NFSPROC3.WRITE, WRITE3args(f, 0, 1, stable_how.FILE_SYNC, b"x")),
            (NFSPROC3.SETATTR, SETATTR3args(f, sattr3(mode=0o600), None)),
            (NFSPROC3.ACCESS, ACCESS3args(f, ACCESS3_READ)),
        ]:
            assert await nfs.status(proc, args) == E.NFS3ERR_STALE, proc.name
        # a file deleted locally is stale too, as is one replaced by another file
        g = await nfs.create(d, "g")
        os.unlink(served.areas["a"] / name / "g")
        assert await nfs.status(NFSPROC3.GETATTR, GETATTR3args(g)) == E.NFS3ERR_STALE
        h = await nfs.create(d, "h")
        await nfs.read(h)
        (served.areas["a"] / name / "h.new").write_bytes(b"other")
        os.replace(served.areas["a"] / name / "h.new", served.areas["a"] / name / "h")
        assert await nfs.status(NFSPROC3.READ, READ3args(h, 0, 10)) == E.NFS3ERR_STALE
        assert bytes((await nfs.read(await nfs.lookup(d, "h"))).data) == b"other"

        good = (await nfs.lookup(d, "h")).data
        for i in range(len(good)):
            flipped = bytearray(good)
            flipped[i] ^= 0x01
            status = await nfs.status(NFSPROC3.GETATTR, GETATTR3args(nfs_fh3(bytes(flipped))))
            assert status == E.NFS3ERR_BADHANDLE, i
        for bad in (b"", good[:-4], good + b"\0\0\0\0", b"\0" * 64, b"\0" * len(good)):
            status = await nfs.status(NFSPROC3.GETATTR, GETATTR3args(nfs_fh3(bad)))
            assert status == E.NFS3ERR_BADHANDLE, bad

    served.run(body)


def test_handles_do_not_cross_exports(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        root_a = await nfs.mount("/a")
        root_b = await nfs.mount("/b")
        _, db, _ = await nfs.scratch("/b")
        fb = await nfs.create(db, "secret")
        # rewrite the export id of b's handle to a's: the MAC no longer matches
        forged = bytearray(fb.data)
        forged[2:4] = root_a.data[2:4]
        assert root_a.data[2:4] != root_b.data[2:4]
        status = await nfs.status(NFSPROC3.GETATTR, GETATTR3args(nfs_fh3(bytes(forged))))
        assert status == E.NFS3ERR_BADHANDLE
        # ".." from a's root stays in a
        assert await nfs.lookup(root_a, "..") == root_a
        assert await nfs.lookup(await nfs.lookup(root_a, ".."), "..") == root_a
        assert b"b" not in await nfs.names(await nfs.lookup(root_a, ".."))
        # b's files are not reachable by name from a
        status = await nfs.status(NFSPROC3.LOOKUP, LOOKUP3args(where(root_a, "b")))
        assert status == E.NFS3ERR_NOENT

    served.run(body)


def test_root_export_lists_the_areas(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        top = await nfs.mount("/")
        names = {e.name for e in await nfs.readdir_all(top)}
        assert names == {b".", b"..", b"a", b"b"}
        a = await nfs.lookup(top, "a")
        assert (await nfs.getattr(a)).fileid == (await nfs.getattr(await nfs.mount("/a"))).fileid
        assert await nfs.lookup(a, "..") == top
        status = await nfs.status(NFSPROC3.LOOKUP, LOOKUP3args(where(top, "c")))
        assert status == E.NFS3ERR_NOENT
        # the virtual root holds only areas: nothing can be made in it
        res = await nfs.call(
            NFSPROC3.CREATE, CREATE3args(where(top, "x"), Arm(createmode3.GUARDED, sattr3()))
        )
        assert res.tag in (E.NFS3ERR_ACCES, E.NFS3ERR_ROFS, E.NFS3ERR_PERM)
        status = await nfs.status(NFSPROC3.MKDIR, MKDIR3args(where(top, "x"), sattr3()))
        assert status in (E.NFS3ERR_ACCES, E.NFS3ERR_ROFS, E.NFS3ERR_PERM)
        status = await nfs.status(NFSPROC3.RMDIR, RMDIR3args(where(top, "a")))
        assert status in (E.NFS3ERR_ACCES, E.NFS3ERR_ROFS, E.NFS3ERR_PERM)
        status = await nfs.status(NFSPROC3.RENAME, RENAME3args(where(top, "a"), where(top, "z")))
        assert status in (E.NFS3ERR_ACCES, E.NFS3ERR_ROFS, E.NFS3ERR_PERM)
        assert served.areas["a"].is_dir()
        # READDIRPLUS of the root gives working handles
        res = await nfs.ok(NFSPROC3.READDIRPLUS, READDIRPLUS3args(top, 0, ZERO_VERF, 4096, 8192))
        by_name = {e.name: e for e in res.reply.entries}
        assert await nfs.getattr(by_name[b"b"].name_handle)

    served.run(body)


# ---- names ----


def test_invalid_names(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, name = await nfs.scratch()
        for bad in (b"a/b", b"/", b"x\0y", b""):
            status = await nfs.status(NFSPROC3.LOOKUP, LOOKUP3args(where(d, bad)))
            assert status in (E.NFS3ERR_INVAL, E.NFS3ERR_NOENT, E.NFS3ERR_ACCES), bad
            res = await nfs.call(
                NFSPROC3.CREATE, CREATE3args(where(d, bad), Arm(createmode3.GUARDED, sattr3()))
            )
            assert res.tag == E.NFS3ERR_INVAL, bad
            status = await nfs.status(NFSPROC3.MKDIR, MKDIR3args(where(d, bad), sattr3()))
            assert status == E.NFS3ERR_INVAL, bad
        long = b"n" * 256
        status = await nfs.status(NFSPROC3.LOOKUP, LOOKUP3args(where(d, long)))
        assert status == E.NFS3ERR_NAMETOOLONG
        res = await nfs.call(
            NFSPROC3.CREATE, CREATE3args(where(d, long), Arm(createmode3.GUARDED, sattr3()))
        )
        assert res.tag == E.NFS3ERR_NAMETOOLONG
        longest = b"n" * 255
        fh = await nfs.create(d, longest)
        assert await nfs.lookup(d, longest) == fh
        assert await nfs.names(d) == {longest}
        # names are bytes: not UTF-8 is fine
        odd = b"caf\xe9 \xff"
        fh = await nfs.create(d, odd)
        assert odd in await nfs.names(d)
        assert os.path.exists(os.fsencode(served.areas["a"] / name) + b"/" + odd)
        # a slash in the target of a RENAME is refused too
        status = await nfs.status(NFSPROC3.RENAME, RENAME3args(where(d, odd), where(d, b"x/y")))
        assert status == E.NFS3ERR_INVAL
        assert await nfs.lookup(d, odd) == fh

    served.run(body)


def test_symlinks_do_not_lead_out_of_the_export(served: Served, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"outside secret")
    os.chmod(outside, 0o644)

    async def body(nfs: Nfs) -> None:
        root, d, name = await nfs.scratch()
        local = served.areas["a"] / name
        os.symlink("/etc", local / "etc")
        os.symlink(str(outside), local / "out")
        os.symlink("../../../../../../..", local / "up")
        etc = await nfs.lookup(d, "etc")
        assert (await nfs.getattr(etc)).type == ftype3.NF3LNK
        assert (await nfs.ok(NFSPROC3.READLINK, READLINK3args(etc))).data == b"/etc"
        for link in ("etc", "up"):
            fh = await nfs.lookup(d, link)
            status = await nfs.status(NFSPROC3.LOOKUP, LOOKUP3args(where(fh, "passwd")))
            assert status == E.NFS3ERR_NOTDIR
            status = await nfs.status(NFSPROC3.READDIR, READDIR3args(fh, 0, ZERO_VERF, 4096))
            assert status == E.NFS3ERR_NOTDIR
            status = await nfs.status(
                NFSPROC3.CREATE, CREATE3args(where(fh, "x"), Arm(0, sattr3()))
            )
            assert status == E.NFS3ERR_NOTDIR
        out = await nfs.lookup(d, "out")
        assert await nfs.status(NFSPROC3.READ, READ3args(out, 0, 100)) == E.NFS3ERR_INVAL
        status = await nfs.status(NFSPROC3.WRITE, WRITE3args(out, 0, 1, stable_how.FILE_SYNC, b"X"))
        assert status == E.NFS3ERR_INVAL
        await nfs.call(NFSPROC3.SETATTR, SETATTR3args(out, sattr3(mode=0o777), None))
        await nfs.call(NFSPROC3.SETATTR, SETATTR3args(out, sattr3(size=0), None))
        # CREATE UNCHECKED over the link must not open the file it points to
        res = await nfs.call(
            NFSPROC3.CREATE,
            CREATE3args(where(d, "out"), Arm(createmode3.UNCHECKED, sattr3(size=0))),
        )
        assert res.tag != OK
        assert outside.read_bytes() == b"outside secret"
        assert stat.S_IMODE(outside.stat().st_mode) == 0o644
        # LINK of the symlink links the symlink, not its target
        await nfs.ok(NFSPROC3.LINK, LINK3args(out, where(d, "out2")))
        assert (local / "out2").is_symlink()
        # ".." never leaves the export
        here = d
        for _ in range(5):
            here = await nfs.lookup(here, "..")
        assert here == root

    served.run(body)


# ---- fileids ----


def test_fileids_unique_and_stable(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, name = await nfs.scratch()
        _make_names(served.areas["a"] / name, 200)
        first = {e.name: e.fileid for e in await nfs.readdir_all(d, 2048)}
        second = {e.name: e.fileid for e in await nfs.readdir_all(d, 4096)}
        assert first == second
        ids = [v for k, v in first.items() if k not in (b".", b"..")]
        assert len(ids) == len(set(ids)) == 200
        for n in list(first)[2:12]:
            assert (await nfs.getattr(await nfs.lookup(d, n))).fileid == first[n]
        # another area's fileids do not collide with these
        _, db, _ = await nfs.scratch("/b")
        other = (await nfs.getattr(await nfs.create(db, "x"))).fileid
        assert other not in ids

    served.run(body)


# ---- export options ----


def test_read_only_export(make_server) -> None:
    srv: Served = make_server(["--read-only"])
    (srv.areas["a"] / "d").mkdir()
    (srv.areas["a"] / "f").write_bytes(b"frozen")

    async def body(nfs: Nfs) -> None:
        root = await nfs.mount("/a")
        f = await nfs.lookup(root, "f")
        assert bytes((await nfs.read(f)).data) == b"frozen"
        assert await nfs.names(root) == {b"d", b"f"}
        refused = [
            (NFSPROC3.SETATTR, SETATTR3args(f, sattr3(mode=0o600), None)),
            (NFSPROC3.WRITE, WRITE3args(f, 0, 1, stable_how.FILE_SYNC, b"x")),
            (NFSPROC3.CREATE, CREATE3args(where(root, "n"), Arm(createmode3.UNCHECKED, sattr3()))),
            (NFSPROC3.MKDIR, MKDIR3args(where(root, "n"), sattr3())),
            (NFSPROC3.SYMLINK, SYMLINK3args(where(root, "n"), symlinkdata3(sattr3(), b"t"))),
            (NFSPROC3.MKNOD, MKNOD3args(where(root, "n"), Arm(ftype3.NF3FIFO, sattr3()))),
            (NFSPROC3.REMOVE, REMOVE3args(where(root, "f"))),
            (NFSPROC3.RMDIR, RMDIR3args(where(root, "d"))),
            (NFSPROC3.RENAME, RENAME3args(where(root, "f"), where(root, "g"))),
            (NFSPROC3.LINK, LINK3args(f, where(root, "g"))),
        ]
        for proc, args in refused:
            assert await nfs.status(proc, args) == E.NFS3ERR_ROFS, proc.name
        access = await nfs.ok(NFSPROC3.ACCESS, ACCESS3args(f, ALL_BITS))
        assert access.access & ACCESS3_READ
        assert not access.access & (ACCESS3_MODIFY | ACCESS3_EXTEND | ACCESS3_DELETE)
        assert (srv.areas["a"] / "f").read_bytes() == b"frozen"
        assert sorted(p.name for p in srv.areas["a"].iterdir()) == ["d", "f"]

    srv.run(body)


def test_allow_list_refuses_other_clients(make_server) -> None:
    srv: Served = make_server()

    async def before(nfs: Nfs) -> nfs_fh3:
        return await nfs.mount("/a")

    root = srv.run(before)
    srv.extra = ["--allow", "10.9.9.0/24"]
    srv.restart()

    async def after() -> None:
        # Over TCP the connection is closed at accept, before any call is read.
        for port in (srv.port, srv.process.mount_port):
            stream = await trio.open_tcp_stream(HOST, port)
            with trio.fail_after(10):
                try:
                    call = encode_call(1, NFS_PROGRAM, 3, NFSPROC3.NULL)
                    await stream.send_all(struct.pack(">I", 0x80000000 | len(call)) + call)
                    assert await stream.receive_some(1 << 16) == b""
                except trio.BrokenResourceError:
                    pass  # closed before the call was even taken
            await stream.aclose()
        # Over UDP, where nothing is accepted, MNT and every call refuse.
        for export in (b"/", b"/a"):
            _, body = await udp_call(
                HOST, srv.process.mount_port, MOUNT_PROGRAM, MOUNT_V3, MOUNTPROC3.MNT,
                encode_args(dirpath, export), cred=ROOT,
            )  # fmt: skip
            assert decode(mountres3, body).tag == mountstat3.MNT3ERR_ACCES
        # a handle obtained before does not help
        for proc, args in (
            (NFSPROC3.GETATTR, GETATTR3args(root)),
            (NFSPROC3.READDIR, READDIR3args(root, 0, ZERO_VERF, 4096)),
        ):
            _, args_type, res_type = PROCEDURES[proc]
            _, body = await udp_call(
                HOST, srv.port, NFS_PROGRAM, 3, proc, encode_args(args_type, args), cred=ROOT
            )
            assert decode(res_type, body).tag == E.NFS3ERR_ACCES

    srv.run(after, connect=False)


def test_root_squash(make_server) -> None:
    srv: Served = make_server(["--root-squash"])
    secret = srv.areas["a"] / "secret"
    secret.write_bytes(b"root only")
    os.chmod(secret, 0o600)
    os.chmod(srv.areas["a"], 0o777)

    async def body(nfs: Nfs) -> None:
        root = await nfs.mount("/a")
        res = await nfs.ok(
            NFSPROC3.CREATE,
            CREATE3args(where(root, "made"), Arm(createmode3.GUARDED, sattr3(mode=0o644))),
        )
        assert (res.obj_attributes.uid, res.obj_attributes.gid) == (NOBODY, NOBODY)
        st = (srv.areas["a"] / "made").stat()
        if os.geteuid() == 0:
            assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
        fh = await nfs.lookup(root, "secret")
        assert await nfs.status(NFSPROC3.READ, READ3args(fh, 0, 10)) == E.NFS3ERR_ACCES
        status = await nfs.status(NFSPROC3.SETATTR, SETATTR3args(fh, sattr3(mode=0o666), None))
        assert status == E.NFS3ERR_PERM

    srv.run(body)


def test_auth_none_is_nobody(served: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, _ = await nfs.scratch()
        await nfs.ok(NFSPROC3.SETATTR, SETATTR3args(d, sattr3(mode=0o777), None))
        async with served.connect(cred=None) as anonymous:
            fh = await anonymous.create(d, "anon")
            assert (await anonymous.getattr(fh)).uid == NOBODY
            secret = await nfs.create(d, "secret", 0o600)
            status = await anonymous.status(NFSPROC3.READ, READ3args(secret, 0, 1))
            assert status == E.NFS3ERR_ACCES

    served.run(body)


def test_nfs_status_error_helper_reports_status(served: Served) -> None:
    """The helper used everywhere above fails loudly on an unexpected status."""

    async def body(nfs: Nfs) -> None:
        _, d, _ = await nfs.scratch()
        with pytest.raises(NfsStatusError, match="NOENT"):
            await nfs.lookup(d, "missing")

    served.run(body)


# ---- over UDP ----


def test_udp_replies_fit_a_datagram(server: Served) -> None:
    """Over UDP the sizes offered and the replies given fit one datagram, so a UDP client
    that believes FSINFO never waits forever on a reply too large to send."""

    async def udp(proc: NFSPROC3, args) -> Arm:
        _, args_type, res_type = PROCEDURES[proc]
        reply, data = await udp_call(
            HOST, server.port, NFS_PROGRAM, 3, proc, encode_args(args_type, args), cred=ROOT
        )
        assert reply.stat == accept_stat.SUCCESS
        return decode(res_type, data)

    async def body(nfs: Nfs) -> None:
        _, d, name = await nfs.scratch()
        content = random.Random(3).randbytes(300_000)
        (server.areas["a"] / name / "big").write_bytes(content)
        _make_names(server.areas["a"] / name, 3000)
        big = await nfs.lookup(d, "big")
        info = (await udp(NFSPROC3.FSINFO, FSINFO3args(d))).value
        assert 8192 <= info.rtmax <= 60_000 and 8192 <= info.wtmax <= 60_000
        assert info.rtpref <= info.rtmax and info.dtpref <= 60_000
        got = b""
        while True:
            res = (await udp(NFSPROC3.READ, READ3args(big, len(got), 1 << 20))).value
            assert 0 < res.count <= info.rtmax or res.eof
            got += bytes(res.data)
            if res.eof:
                break
        assert got == content
        res = await udp(NFSPROC3.READDIR, READDIR3args(d, 0, ZERO_VERF, 1 << 20))
        assert res.tag == OK and not res.value.reply.eof and res.value.reply.entries
        res = await udp(NFSPROC3.READDIRPLUS, READDIRPLUS3args(d, 0, ZERO_VERF, 1 << 20, 1 << 20))
        assert res.tag == OK and not res.value.reply.eof and res.value.reply.entries
        # over TCP the same calls are as large as asked
        tcp = await nfs.ok(NFSPROC3.READ, READ3args(big, 0, 1 << 20))
        assert tcp.count == len(content)

    server.run(body)


def test_concurrent_writes_to_one_file(served: Served) -> None:
    """Clients write a file as many WRITEs in flight at once, in any order."""

    async def body(nfs: Nfs) -> None:
        _, d, name = await nfs.scratch()
        fh = await nfs.create(d, "f")
        block = 64 * 1024
        blocks = [random.Random(i).randbytes(block) for i in range(48)]
        verfs: set[bytes] = set()

        async def write(i: int) -> None:
            res = await nfs.write(fh, blocks[i], i * block, stable_how.UNSTABLE)
            assert res.count == block
            verfs.add(res.verf)

        order = list(range(len(blocks)))
        random.Random(5).shuffle(order)
        async with trio.open_nursery() as nursery:
            for i in order:
                nursery.start_soon(write, i)
        commit = await nfs.ok(NFSPROC3.COMMIT, COMMIT3args(fh, 0, 0))
        assert verfs == {commit.verf}
        expected = b"".join(blocks)
        assert (served.areas["a"] / name / "f").read_bytes() == expected
        got = b""
        while True:
            res = await nfs.read(fh, len(got), 256 * 1024)
            got += bytes(res.data)
            if res.eof:
                break
        assert got == expected

    served.run(body)


def test_removed_area_handles_are_stale(make_server) -> None:
    srv: Served = make_server()

    async def before(nfs: Nfs):
        root_b = await nfs.mount("/b")
        f = await nfs.create(root_b, "f")
        await nfs.write(f, b"in b")
        return root_b, f, await nfs.mount("/a")

    root_b, f, root_a = srv.run(before)
    areas = dict(srv.areas)
    srv.areas = {"a": areas["a"]}
    srv.restart()

    async def without_b(nfs: Nfs) -> None:
        assert (await nfs.mnt("/b")).tag == mountstat3.MNT3ERR_NOENT
        for fh in (root_b, f):
            assert await nfs.status(NFSPROC3.GETATTR, GETATTR3args(fh)) == E.NFS3ERR_STALE
        assert await nfs.names(await nfs.mount("/")) == {b"a"}
        assert await nfs.mount("/a") == root_a

    srv.run(without_b)
    srv.areas = areas
    srv.restart()

    async def with_b_again(nfs: Nfs) -> None:
        assert await nfs.mount("/b") == root_b
        assert bytes((await nfs.read(f)).data) == b"in b"

    srv.run(with_b_again)
