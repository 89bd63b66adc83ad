"""What every NFSv3 procedure shares: handle resolution against exports, the caller's identity,
permission checks, and the conversion of tree attributes into fattr3 / wcc_data.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from nfsd.exports import Export, Exports
from nfsd.rpc.dispatch import CallContext
from nfsd.vfs import acting
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
    FATTR3_CODEC,
    WCC_ATTR_CODEC,
    ftype3,
    nfs_fh3,
    nfsstat3,
    nfstime3,
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


def _seconds(ns: int) -> tuple[int, int]:
    """An nfstime3's (seconds, nseconds): times before 1970 as 0, after 2106 as its last."""
    seconds, nanos = divmod(ns, 1_000_000_000)
    if seconds < 0:
        return 0, 0
    if seconds > _UINT32:
        return _UINT32, nanos
    return seconds, nanos


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
        options = export.options
        if not options.allows(ctx.client[0]):
            raise FsError(nfsstat3.NFS3ERR_ACCES, "client not allowed")
        if not options.port_allowed(ctx.client, ctx.owner):
            raise FsError(nfsstat3.NFS3ERR_ACCES, "not from a reserved port (secure)")
        if export.area is not None and (fid == ROOT_FID or self.tree.area_of(fid) != export.area):
            raise FsError(nfsstat3.NFS3ERR_BADHANDLE, "not of this export")
        user = options.user(ctx.cred, ctx.owner)
        # The tree's changes act as this user until the call ends (nfsd/vfs/acting.py).
        acting.act_for(user.uid, user.gid, user.gids)
        return Target(export, fid, user)

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

    def fattr(self, a: Attr) -> bytes:
        """The fattr3 of `a`, encoded (it packs wherever an fattr3 does, in one struct call:
        READDIRPLUS makes thousands)."""
        at, ans = divmod(a.atime_ns, 1_000_000_000)
        mt, mns = divmod(a.mtime_ns, 1_000_000_000)
        ct, cns = divmod(a.ctime_ns, 1_000_000_000)
        if not (0 <= at <= _UINT32 and 0 <= mt <= _UINT32 and 0 <= ct <= _UINT32):
            (at, ans), (mt, mns), (ct, cns) = map(_seconds, (a.atime_ns, a.mtime_ns, a.ctime_ns))
        major, minor = a.rdev
        return FATTR3_CODEC.pack(
            a.kind,
            a.mode,
            a.nlink,
            a.uid & _UINT32,
            a.gid & _UINT32,
            a.size,
            a.used,
            major,
            minor,
            self.fsid,
            a.fileid,
            at,
            ans,
            mt,
            mns,
            ct,
            cns,
        )

    def attr_or_none(self, fid: int) -> Attr | None:
        try:
            return self.tree.getattr(fid)
        except FsError:
            return None

    def post_op(self, fid: int) -> bytes | None:
        attr = self.attr_or_none(fid)
        return None if attr is None else self.fattr(attr)

    def attrs(self, attr: Attr | None, fid: int) -> bytes | None:
        """The post-op attributes the tree gave (`attr`), or asked for when it gave none."""
        return self.fattr(attr) if attr is not None else self.post_op(fid)

    @staticmethod
    def pre_op(attr: Attr | None) -> bytes | None:
        """The wcc_attr of `attr`, encoded."""
        if attr is None:
            return None
        return WCC_ATTR_CODEC.pack(attr.size, *_seconds(attr.mtime_ns), *_seconds(attr.ctime_ns))

    def wcc(self, before: Attr | None, fid: int | None, after: Attr | None = None) -> wcc_data:
        """Attributes before and after a change; `after` as the tree gave them, if it did."""
        if after is not None:
            return wcc_data(self.pre_op(before), self.fattr(after))
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
