"""READ, WRITE and COMMIT."""

from __future__ import annotations

from nfsd.nfs3.common import MAX_FILE_SIZE, Nfs3State, check_size, max_io, require
from nfsd.rpc.dispatch import CallContext, RawReply
from nfsd.vfs.errors import FsError
from xdr.codec import Arm
from xdr.nfs3 import (
    COMMIT3args,
    COMMIT3resfail,
    COMMIT3resok,
    READ3args,
    READ3resfail,
    READ3resok,
    WRITE3args,
    WRITE3resfail,
    WRITE3resok,
    encode_read3res_ok,
    ftype3,
    nfsstat3,
)

OK = nfsstat3.NFS3_OK


def _regular(attr) -> None:
    if attr.kind == ftype3.NF3DIR:
        raise FsError(nfsstat3.NFS3ERR_ISDIR)
    if attr.kind != ftype3.NF3REG:
        raise FsError(nfsstat3.NFS3ERR_INVAL)


async def read(s: Nfs3State, ctx: CallContext, args: READ3args) -> Arm | RawReply:
    fid = None
    try:
        target = s.resolve(ctx, args.file)
        fid = target.fid
        attr = s.tree.getattr(fid)
        _regular(attr)
        require(attr, target.user, 0o4, owner_override=True)
        # Nothing lies beyond MAX_FILE_SIZE: a read there is empty, with eof.
        count = min(args.count, max_io(ctx), max(0, MAX_FILE_SIZE - args.offset))
        data, eof = await s.tree.read(fid, args.offset, count)
        return RawReply(encode_read3res_ok(READ3resok(s.post_op(fid), len(data), eof, data)))
    except FsError as e:
        return Arm(e.status, READ3resfail(None if fid is None else s.post_op(fid)))


async def write(s: Nfs3State, ctx: CallContext, args: WRITE3args) -> Arm:
    before = None
    fid = None
    try:
        target = s.resolve(ctx, args.file)
        fid = target.fid
        before = s.tree.getattr(fid)
        s.writable(target)
        _regular(before)
        require(before, target.user, 0o2, owner_override=True)
        data = args.data[: args.count] if args.count < len(args.data) else args.data
        check_size(args.offset + len(data))
        await s.tree.prepare_change(fid)
        committed = await s.tree.write(fid, args.offset, data, args.stable)
        return Arm(OK, WRITE3resok(s.wcc(before, fid), len(data), committed, s.write_verf))
    except FsError as e:
        return Arm(e.status, WRITE3resfail(s.wcc(before, fid)))


async def commit(s: Nfs3State, ctx: CallContext, args: COMMIT3args) -> Arm:
    before = None
    fid = None
    try:
        target = s.resolve(ctx, args.file)
        fid = target.fid
        before = s.tree.getattr(fid)
        _regular(before)
        await s.tree.commit(fid)
        return Arm(OK, COMMIT3resok(s.wcc(before, fid), s.write_verf))
    except FsError as e:
        return Arm(e.status, COMMIT3resfail(s.wcc(before, fid)))
