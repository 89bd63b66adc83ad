"""NFSv3 in-process through the dispatcher alone (no transport), on servers built and rebuilt
on one state directory: what a client relies on across a restart (handles, fileids, data, a
new write verifier) and a read-only export. The procedures one by one run in both tiers in
tests/test_nfs3.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import trio

from nfsd.exports import ExportOptions
from tests.conftest import ROOT
from tests.support.inproc import InProcessServer, make_dispatcher, server_umask
from xdr.codec import Arm
from xdr.mount import MOUNT_PROGRAM, MOUNT_V3, MOUNTPROC3, dirpath, mountres3, mountstat3
from xdr.nfs3 import (
    NFS_PROGRAM,
    NFS_V3,
    NFSPROC3,
    PROCEDURES,
    COMMIT3args,
    CREATE3args,
    GETATTR3args,
    LOOKUP3args,
    MKDIR3args,
    READ3args,
    REMOVE3args,
    RENAME3args,
    SETATTR3args,
    WRITE3args,
    createmode3,
    diropargs3,
    nfs_fh3,
    nfsstat3,
    sattr3,
    stable_how,
)

pytestmark = pytest.mark.inproc


class Direct:
    """NFSv3 and MNT calls handed straight to one in-process server's dispatcher."""

    def __init__(self, inproc: InProcessServer) -> None:
        self.inproc = inproc

    async def status_and_value(self, proc: NFSPROC3, args: Any) -> tuple[nfsstat3, Any]:
        _, args_type, res_type = PROCEDURES[proc]
        res = await self.inproc.call(
            NFS_PROGRAM, NFS_V3, proc, args_type, args, res_type, cred=ROOT
        )
        return nfsstat3(res.tag), res.value

    async def ok(self, proc: NFSPROC3, args: Any) -> Any:
        status, value = await self.status_and_value(proc, args)
        assert status == nfsstat3.NFS3_OK, f"{proc.name}: {status.name}"
        return value

    async def mount(self, path: bytes) -> nfs_fh3:
        res = await self.inproc.call(
            MOUNT_PROGRAM, MOUNT_V3, MOUNTPROC3.MNT, dirpath, path, mountres3, cred=ROOT
        )
        assert res.tag == mountstat3.MNT3_OK
        return nfs_fh3(res.value.fhandle)


def run_on(base: Path, body: Any, options: ExportOptions | None = None) -> Any:
    """Build a server on `base` (again: a restart), run `await body(Direct)`, close it."""
    inproc = make_dispatcher(base, ("a", "b"), options=options)

    async def main() -> Any:
        with trio.fail_after(30):
            return await body(Direct(inproc))

    try:
        with server_umask():
            return trio.run(main)
    finally:
        inproc.close()


def test_handles_fileids_and_data_survive_a_restart_with_a_new_write_verifier(
    tmp_path: Path,
) -> None:
    async def before(nfs: Direct) -> tuple[Any, ...]:
        root = await nfs.mount(b"/a")
        d = (await nfs.ok(NFSPROC3.MKDIR, MKDIR3args(diropargs3(root, b"d"), sattr3()))).obj
        how = Arm(createmode3.GUARDED, sattr3(mode=0o600))
        f = (await nfs.ok(NFSPROC3.CREATE, CREATE3args(diropargs3(d, b"f"), how))).obj
        write = await nfs.ok(NFSPROC3.WRITE, WRITE3args(f, 0, 5, stable_how.UNSTABLE, b"kept!"))
        commit = await nfs.ok(NFSPROC3.COMMIT, COMMIT3args(f, 0, 0))
        assert commit.verf == write.verf
        # a rename keeps the handle: the client's open file goes on
        await nfs.ok(NFSPROC3.RENAME, RENAME3args(diropargs3(d, b"f"), diropargs3(d, b"g")))
        fileid = (await nfs.ok(NFSPROC3.GETATTR, GETATTR3args(f))).obj_attributes.fileid
        return root, d, f, fileid, write.verf

    root, d, f, fileid, verf = run_on(tmp_path, before)

    async def after(nfs: Direct) -> None:
        assert await nfs.mount(b"/a") == root
        assert (await nfs.ok(NFSPROC3.LOOKUP, LOOKUP3args(diropargs3(d, b"g")))).object == f
        attrs = (await nfs.ok(NFSPROC3.GETATTR, GETATTR3args(f))).obj_attributes
        assert (attrs.fileid, attrs.mode, attrs.size) == (fileid, 0o600, 5)
        assert bytes((await nfs.ok(NFSPROC3.READ, READ3args(f, 0, 100))).data) == b"kept!"
        write = await nfs.ok(NFSPROC3.WRITE, WRITE3args(f, 0, 1, stable_how.UNSTABLE, b"K"))
        assert write.verf != verf, "a restart must tell clients to resend uncommitted writes"
        await nfs.ok(NFSPROC3.REMOVE, REMOVE3args(diropargs3(d, b"g")))

    run_on(tmp_path, after)

    async def removed(nfs: Direct) -> None:
        status, _ = await nfs.status_and_value(NFSPROC3.GETATTR, GETATTR3args(f))
        assert status == nfsstat3.NFS3ERR_STALE

    run_on(tmp_path, removed)


def test_a_read_only_export_refuses_changes_and_serves_reads(tmp_path: Path) -> None:
    area = tmp_path / "areas" / "a"
    area.mkdir(parents=True)
    (area / "f").write_bytes(b"frozen")

    async def body(nfs: Direct) -> None:
        root = await nfs.mount(b"/a")
        f = (await nfs.ok(NFSPROC3.LOOKUP, LOOKUP3args(diropargs3(root, b"f")))).object
        assert bytes((await nfs.ok(NFSPROC3.READ, READ3args(f, 0, 100))).data) == b"frozen"
        refused = [
            (NFSPROC3.WRITE, WRITE3args(f, 0, 1, stable_how.FILE_SYNC, b"x")),
            (NFSPROC3.SETATTR, SETATTR3args(f, sattr3(size=0), None)),
            (NFSPROC3.REMOVE, REMOVE3args(diropargs3(root, b"f"))),
            (NFSPROC3.MKDIR, MKDIR3args(diropargs3(root, b"n"), sattr3())),
        ]
        for proc, args in refused:
            status, _ = await nfs.status_and_value(proc, args)
            assert status == nfsstat3.NFS3ERR_ROFS, proc.name

    run_on(tmp_path, body, ExportOptions(read_only=True))
    assert (area / "f").read_bytes() == b"frozen"
    assert sorted(p.name for p in area.iterdir()) == ["f"]
