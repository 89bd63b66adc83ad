"""GETATTR, SETATTR and ACCESS."""

from __future__ import annotations

import stat

from nfsd.nfs3.common import Nfs3State, access_bits, check_size, in_group, require, time_ns
from nfsd.nfs3.failure import Learnt, first_wcc, no_attrs, procedure
from nfsd.rpc.dispatch import CallContext, RawReply
from nfsd.vfs.errors import FsError
from nfsd.vfs.tree import SERVER_TIME, SetAttr
from xdr.codec import Arm
from xdr.nfs3 import (
    ACCESS3args,
    ACCESS3resfail,
    GETATTR3args,
    SETATTR3args,
    SETATTR3resfail,
    SETATTR3resok,
    encode_access3res_ok,
    encode_getattr3res_ok,
    ftype3,
    nfsstat3,
    sattr3,
    time_how,
)

OK = nfsstat3.NFS3_OK


@procedure(None)
def getattr_(s: Nfs3State, ctx: CallContext, args: GETATTR3args, learnt: Learnt) -> RawReply:
    target = s.resolve(ctx, args.object)
    return RawReply([encode_getattr3res_ok(s.fattr(s.tree.getattr(target.fid)))])


def to_setattr(attrs: sattr3) -> SetAttr:
    """The tree's form of an sattr3; NFS3ERR_FBIG for a size no file can have."""
    check_size(attrs.size)

    def when(arm: Arm) -> int | None:
        if arm.tag == time_how.SET_TO_SERVER_TIME:
            return SERVER_TIME
        if arm.tag == time_how.SET_TO_CLIENT_TIME:
            return time_ns(arm.value)
        return None

    return SetAttr(
        attrs.mode, attrs.uid, attrs.gid, attrs.size, when(attrs.atime), when(attrs.mtime)
    )


def check_setattr(attr, user, changes: SetAttr) -> None:
    """POSIX rules for who may change what (root may do anything); `changes` loses what
    chmod(2) would silently leave out."""
    if user.uid == 0:
        return
    owner = user.uid == attr.uid
    if changes.uid is not None and changes.uid != attr.uid:
        raise FsError(nfsstat3.NFS3ERR_PERM)
    if (
        changes.gid is not None
        and changes.gid != attr.gid
        and not (owner and in_group(user, changes.gid))
    ):
        raise FsError(nfsstat3.NFS3ERR_PERM)
    if changes.mode is not None and not owner:
        raise FsError(nfsstat3.NFS3ERR_PERM)
    if changes.size is not None:
        require(attr, user, 0o2, owner_override=True)
    for t in (changes.atime_ns, changes.mtime_ns):
        if t is None:
            continue
        if t == SERVER_TIME:
            if not owner:
                require(attr, user, 0o2)
        elif not owner:
            raise FsError(nfsstat3.NFS3ERR_PERM)
    group = attr.gid if changes.gid is None else changes.gid
    if changes.mode is not None and changes.mode & stat.S_ISGID and not in_group(user, group):
        # chmod(2): setgid is silently dropped for a group the caller is not in (where the
        # kernel acts as the caller, it does the same).
        changes.mode &= ~stat.S_ISGID


@procedure(first_wcc(SETATTR3resfail))
async def setattr_(s: Nfs3State, ctx: CallContext, args: SETATTR3args, learnt: Learnt) -> Arm:
    target, before = learnt.first_object(s, ctx, args.object)
    fid = target.fid
    s.writable(target)
    if args.guard is not None and time_ns(args.guard) != before.ctime_ns:
        raise FsError(nfsstat3.NFS3ERR_NOT_SYNC)
    changes = to_setattr(args.new_attributes)
    if changes.size is not None and before.kind == ftype3.NF3DIR:
        raise FsError(nfsstat3.NFS3ERR_ISDIR)
    check_setattr(before, target.user, changes)
    await s.tree.prepare_change(fid)
    after = s.tree.setattr(fid, changes)
    return Arm(OK, SETATTR3resok(s.wcc(before, fid, after)))


@procedure(no_attrs(ACCESS3resfail))
def access(s: Nfs3State, ctx: CallContext, args: ACCESS3args, learnt: Learnt) -> RawReply:
    target = s.resolve(ctx, args.object)
    attr = s.tree.getattr(target.fid)
    granted = access_bits(attr, target.user, target.export.options.read_only)
    return RawReply([encode_access3res_ok(s.fattr(attr), granted & args.access)])
