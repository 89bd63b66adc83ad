"""What every NFSv3 procedure shares: handle resolution against exports, the caller's identity,
permission checks, and the conversion of tree attributes into fattr3 / wcc_data.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from nfsd.exports import Export, Exports
from nfsd.rpc.dispatch import CallContext
from nfsd.vfs.errors import FsError
from nfsd.vfs.handles import HandleCodec
from nfsd.vfs.inodes import ROOT_FID
from nfsd.vfs.tree import Attr, Tree
from xdr.nfs3 import (
    ACCESS3_DELETE,
    ACCESS3_EXECUTE,
    ACCESS3_EXTEND,
    ACCESS3_LOOKUP,
    ACCESS3_MODIFY,
    ACCESS3_READ,
    fattr3,
    ftype3,
    nfs_fh3,
    nfsstat3,
    nfstime3,
    specdata3,
    wcc_attr,
    wcc_data,
)
from xdr.rpc_fast import Credential

MAX_IO = 1024 * 1024  # rtmax and wtmax
MAX_FILE_SIZE = 2**63 - 1  # FSINFO maxfilesize: the largest offset the local files take
# Over UDP a whole reply must fit one datagram (65,507 bytes): 32 KiB of data, as knfsd.
UDP_MAX_IO = 32 * 1024
_UINT32 = 0xFFFFFFFF

READ_BITS = ACCESS3_READ
WRITE_BITS = ACCESS3_MODIFY | ACCESS3_EXTEND
ALL_ACCESS = (
    ACCESS3_READ
    | ACCESS3_LOOKUP
    | ACCESS3_MODIFY
    | ACCESS3_EXTEND
    | ACCESS3_DELETE
    | ACCESS3_EXECUTE
)


def nfstime(ns: int) -> nfstime3:
    seconds, nanos = divmod(ns, 1_000_000_000)
    if seconds < 0:
        return nfstime3(0, 0)
    return nfstime3(min(seconds, _UINT32), nanos)


def time_ns(t: nfstime3) -> int:
    return t.seconds * 1_000_000_000 + min(t.nseconds, 999_999_999)


def max_io(ctx: CallContext) -> int:
    """The largest READ/READDIR payload the call's transport can carry back."""
    return UDP_MAX_IO if ctx.transport == "udp" else MAX_IO


def check_size(size: int | None) -> None:
    """Refuse a file size or end offset beyond MAX_FILE_SIZE (NFS3ERR_FBIG), as knfsd does."""
    if size is not None and size > MAX_FILE_SIZE:
        raise FsError(nfsstat3.NFS3ERR_FBIG)


@dataclass(slots=True)
class Target:
    """A resolved handle: the export it was issued under and the object's fileid."""

    export: Export
    fid: int
    user: Credential


class Nfs3State:
    """The server state the procedures work on."""

    def __init__(
        self, tree: Tree, handles: HandleCodec, exports: Exports, fsid: int, write_verf: bytes
    ) -> None:
        self.tree = tree
        self.handles = handles
        self.exports = exports
        self.fsid = fsid
        self.write_verf = write_verf

    # ---- handles ----

    def resolve(self, ctx: CallContext, fh: nfs_fh3) -> Target:
        export_id, fid = self.handles.decode(fh.data)
        export = self.exports.by_id.get(export_id)
        if export is None:
            raise FsError(nfsstat3.NFS3ERR_STALE, "export removed")
        if not export.options.allows(ctx.client[0]):
            raise FsError(nfsstat3.NFS3ERR_ACCES, "client not allowed")
        if export.area is not None and (fid == ROOT_FID or self.tree.area_of(fid) != export.area):
            raise FsError(nfsstat3.NFS3ERR_BADHANDLE, "not of this export")
        return Target(export, fid, export.options.user(ctx.cred))

    def handle(self, target: Target, fid: int) -> nfs_fh3:
        return nfs_fh3(self.handles.encode(target.export.id, fid))

    def export_root(self, export: Export) -> int:
        return ROOT_FID if export.area is None else self.tree.area_root(export.area)

    def root_handle(self, export: Export) -> bytes:
        return self.handles.encode(export.id, self.export_root(export))

    def writable(self, target: Target) -> None:
        if target.export.options.read_only:
            raise FsError(nfsstat3.NFS3ERR_ROFS)

    # ---- attributes ----

    def fattr(self, a: Attr) -> fattr3:
        return fattr3(
            a.kind,
            a.mode,
            a.nlink,
            a.uid & _UINT32,
            a.gid & _UINT32,
            a.size,
            a.used,
            specdata3(*a.rdev),
            self.fsid,
            a.fileid,
            nfstime(a.atime_ns),
            nfstime(a.mtime_ns),
            nfstime(a.ctime_ns),
        )

    def attr_or_none(self, fid: int) -> Attr | None:
        try:
            return self.tree.getattr(fid)
        except FsError:
            return None

    def post_op(self, fid: int) -> fattr3 | None:
        attr = self.attr_or_none(fid)
        return None if attr is None else self.fattr(attr)

    @staticmethod
    def pre_op(attr: Attr | None) -> wcc_attr | None:
        if attr is None:
            return None
        return wcc_attr(attr.size, nfstime(attr.mtime_ns), nfstime(attr.ctime_ns))

    def wcc(self, before: Attr | None, fid: int | None) -> wcc_data:
        return wcc_data(self.pre_op(before), None if fid is None else self.post_op(fid))


# ---- permissions ----


def in_group(user: Credential, gid: int) -> bool:
    return user.gid == gid or gid in user.gids


def mode_bits(attr: Attr, user: Credential) -> int:
    """The rwx bits (as 4/2/1) that apply to `user` for `attr`."""
    if user.uid == attr.uid:
        return (attr.mode >> 6) & 7
    if in_group(user, attr.gid):
        return (attr.mode >> 3) & 7
    return attr.mode & 7


def access_bits(attr: Attr, user: Credential, read_only: bool) -> int:
    """ACCESS3 bits granted to `user` on an object with `attr`."""
    if user.uid == 0:
        granted = ALL_ACCESS
        if attr.kind != ftype3.NF3DIR and not attr.mode & 0o111:
            granted &= ~ACCESS3_EXECUTE
    else:
        rwx = mode_bits(attr, user)
        granted = 0
        if rwx & 4:
            granted |= ACCESS3_READ
        if attr.kind == ftype3.NF3DIR:
            if rwx & 1:
                granted |= ACCESS3_LOOKUP
                if rwx & 2:
                    granted |= ACCESS3_MODIFY | ACCESS3_EXTEND | ACCESS3_DELETE
        else:
            if rwx & 2:
                granted |= ACCESS3_MODIFY | ACCESS3_EXTEND
            if rwx & 1:
                granted |= ACCESS3_EXECUTE
    if read_only:
        granted &= ~(ACCESS3_MODIFY | ACCESS3_EXTEND | ACCESS3_DELETE)
    return granted


def require(attr: Attr, user: Credential, rwx: int, *, owner_override: bool = False) -> None:
    """Refuse with NFS3ERR_ACCES unless `user` has all of `rwx` (4/2/1) on `attr`.

    With owner_override the owner may read and write its file whatever the mode, as local
    processes can through a descriptor opened before a chmod (what knfsd does too).
    """
    if user.uid == 0:
        return
    if owner_override and user.uid == attr.uid:
        return
    if mode_bits(attr, user) & rwx != rwx:
        raise FsError(nfsstat3.NFS3ERR_ACCES)


def require_dir_change(state: Nfs3State, target: Target) -> Attr:
    """Check that `target` is a writable directory the user may change; return its attrs."""
    state.writable(target)
    attr = state.tree.getattr(target.fid)
    if attr.kind != ftype3.NF3DIR:
        raise FsError(nfsstat3.NFS3ERR_NOTDIR)
    require(attr, target.user, 0o3)
    return attr


def may_delete_from(dir_attr: Attr, victim: Attr, user: Credential) -> None:
    """The sticky bit: in such a directory only the owners (or root) may delete."""
    if dir_attr.mode & stat.S_ISVTX and user.uid not in (0, dir_attr.uid, victim.uid):
        raise FsError(nfsstat3.NFS3ERR_ACCES)


SERVER_EUID = os.geteuid()
