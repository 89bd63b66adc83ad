"""READ, WRITE and COMMIT."""

from __future__ import annotations

from nfsd.nfs3.common import MAX_FILE_SIZE, Nfs3State, check_size, max_io, require
from nfsd.nfs3.failure import Learnt, first_attrs, first_wcc, procedure
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


@procedure(first_attrs(READ3resfail))
async def read(s: Nfs3State, ctx: CallContext, args: READ3args, learnt: Learnt) -> Arm | RawReply:
    target, attr = learnt.first_object(s, ctx, args.file)
    fid = target.fid
    _regular(attr)
    require(attr, target.user, 0o4, owner_override=True)
    # Nothing lies beyond MAX_FILE_SIZE: a read there is empty, with eof.
    count = min(args.count, max_io(ctx), max(0, MAX_FILE_SIZE - args.offset))
    got = await s.tree.read(fid, args.offset, count)
    result = READ3resok(s.attrs(got.attr, fid), len(got.data), got.eof, got.data)
    return RawReply(encode_read3res_ok(result))


@procedure(first_wcc(WRITE3resfail))
async def write(s: Nfs3State, ctx: CallContext, args: WRITE3args, learnt: Learnt) -> Arm:
    target, before = learnt.first_object(s, ctx, args.file)
    fid = target.fid
    s.writable(target)
    _regular(before)
    require(before, target.user, 0o2, owner_override=True)
    data = args.data[: args.count] if args.count < len(args.data) else args.data
    check_size(args.offset + len(data))
    await s.tree.prepare_change(fid)
    committed, after = await s.tree.write(fid, args.offset, data, args.stable)
    return Arm(OK, WRITE3resok(s.wcc(before, fid, after), len(data), committed, s.write_verf))


@procedure(first_wcc(COMMIT3resfail))
async def commit(s: Nfs3State, ctx: CallContext, args: COMMIT3args, learnt: Learnt) -> Arm:
    target, before = learnt.first_object(s, ctx, args.file)
    fid = target.fid
    _regular(before)
    after = await s.tree.commit(fid)
    return Arm(OK, COMMIT3resok(s.wcc(before, fid, after), s.write_verf))
