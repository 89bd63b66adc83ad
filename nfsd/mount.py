"""The MOUNT program (100005), versions 1 and 3: all six procedures.

MNT hands out the root handle of an export and offers AUTH_SYS and AUTH_NONE; DUMP lists who
mounted what (kept in memory, bounded); EXPORT lists the exports for `showmount -e`.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import Any

from nfsd.exports import Export, Exports
from nfsd.nfs3.common import Nfs3State
from nfsd.rpc.dispatch import CallContext, Procedure, Program
from nfsd.vfs.errors import FsError
from xdr.codec import Arm
from xdr.mount import (
    MNTNAMLEN,
    MOUNT_PROGRAM,
    MOUNT_V1,
    MOUNT_V3,
    MOUNTPROC3,
    PROCEDURES,
    PROCEDURES_V1,
    exportnode,
    groupnode,
    mountbody,
    mountres3_ok,
    mountstat3,
)
from xdr.nfs3 import ftype3, nfsstat3
from xdr.rpc import auth_flavor

log = logging.getLogger("realize.mount")
_MOUNT_STATUS = {
    nfsstat3.NFS3ERR_NOENT: mountstat3.MNT3ERR_NOENT,
    nfsstat3.NFS3ERR_NOTDIR: mountstat3.MNT3ERR_NOTDIR,
    nfsstat3.NFS3ERR_ACCES: mountstat3.MNT3ERR_ACCES,
    nfsstat3.NFS3ERR_NAMETOOLONG: mountstat3.MNT3ERR_NAMETOOLONG,
    nfsstat3.NFS3ERR_IO: mountstat3.MNT3ERR_IO,
}
MAX_MOUNT_RECORDS = 4096


class MountService:
    def __init__(self, state: Nfs3State, exports: Exports) -> None:
        self.state = state
        self.exports = exports
        self.mounts: OrderedDict[tuple[str, bytes], None] = OrderedDict()

    def _export_of(self, path: bytes) -> tuple[Export | None, list[bytes]]:
        """The export a MNT path names, and the directory names below its root.

        "/area/photos/2024" mounts directory photos/2024 of export "/area", as Linux knfsd and
        nfs-ganesha allow: libnfs URLs (nfs-cp nfs://host/area/dir/file) always mount the
        URL's directory. The longest export path that is a whole-component prefix wins.
        """
        parts = [p for p in path.split(b"/") if p and p != b"."]
        for n in range(len(parts), -1, -1):
            export = self.exports.find("/" + os.fsdecode(b"/".join(parts[:n])))
            if export is not None:
                return export, parts[n:]
        return None, []

    def _walk(self, export: Export, names: list[bytes]) -> int:
        """The fileid of directory `names` below the export's root (no "..", no symlinks)."""
        fid = self.state.export_root(export)
        for name in names:
            if name == b"..":
                raise FsError(nfsstat3.NFS3ERR_ACCES, "no .. in a mount path")
            fid = self.state.tree.lookup(fid, name)[0]
            if self.state.tree.getattr(fid).kind != ftype3.NF3DIR:
                raise FsError(nfsstat3.NFS3ERR_NOTDIR)
        return fid

    def _find(self, ctx: CallContext, path: bytes) -> tuple[mountstat3, bytes]:
        export, below = self._export_of(path)
        if export is None:
            return mountstat3.MNT3ERR_NOENT, b""
        if not export.options.allows(ctx.client[0]):
            log.warning("refused mount of %s by %s", export.path, ctx.client[0])
            return mountstat3.MNT3ERR_ACCES, b""
        if not export.options.port_allowed(ctx.client, ctx.owner):
            # Refused here, at MNT, never later: a client mounted then refused loops forever.
            log.warning(
                "refused mount of %s by %s: port %d is not reserved (secure; see --insecure)",
                export.path,
                ctx.client[0],
                ctx.client[1],
            )
            return mountstat3.MNT3ERR_ACCES, b""
        try:
            fid = self._walk(export, below)
        except FsError as e:
            status = _MOUNT_STATUS.get(e.status, mountstat3.MNT3ERR_NOENT)
            return status, b""
        self.mounts[(ctx.client[0], path)] = None
        self.mounts.move_to_end((ctx.client[0], path))
        while len(self.mounts) > MAX_MOUNT_RECORDS:
            self.mounts.popitem(last=False)
        log.info("%s mounted %s", ctx.client[0], os.fsdecode(path) if below else export.path)
        return mountstat3.MNT3_OK, self.state.handles.encode(export.id, fid)

    async def null(self, ctx: CallContext, args: Any) -> None:
        return None

    async def mnt3(self, ctx: CallContext, path: bytes) -> Arm:
        status, handle = self._find(ctx, path)
        if status != mountstat3.MNT3_OK:
            return Arm(status)
        return Arm(status, mountres3_ok(handle, [auth_flavor.AUTH_SYS, auth_flavor.AUTH_NONE]))

    async def mnt1(self, ctx: CallContext, path: bytes) -> Arm:
        status, handle = self._find(ctx, path)
        return Arm(int(status), handle if status == mountstat3.MNT3_OK else None)

    async def dump(self, ctx: CallContext, args: Any) -> list[mountbody]:
        return [mountbody(host.encode()[:MNTNAMLEN], path) for host, path in self.mounts]

    async def umnt(self, ctx: CallContext, path: bytes) -> None:
        self.mounts.pop((ctx.client[0], path), None)

    async def umntall(self, ctx: CallContext, args: Any) -> None:
        for key in [k for k in self.mounts if k[0] == ctx.client[0]]:
            del self.mounts[key]

    async def export(self, ctx: CallContext, args: Any) -> list[exportnode]:
        nodes = []
        for export in self.exports:
            networks = export.options.allowed or ["*"]
            groups = [groupnode(str(n).encode()) for n in networks]
            nodes.append(exportnode(export.path.encode(), groups))
        return nodes

    def program(self) -> Program:
        def table(procedures: dict, mnt: Any) -> dict[int, Procedure]:
            handlers = {
                MOUNTPROC3.NULL: self.null,
                MOUNTPROC3.MNT: mnt,
                MOUNTPROC3.DUMP: self.dump,
                MOUNTPROC3.UMNT: self.umnt,
                MOUNTPROC3.UMNTALL: self.umntall,
                MOUNTPROC3.EXPORT: self.export,
            }
            return {
                number: Procedure(name, args, res, handlers[number])
                for number, (name, args, res) in procedures.items()
            }

        return Program(
            MOUNT_PROGRAM,
            "MOUNT",
            {MOUNT_V1: table(PROCEDURES_V1, self.mnt1), MOUNT_V3: table(PROCEDURES, self.mnt3)},
        )
