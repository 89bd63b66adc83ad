"""LOOKUP, READLINK, READDIR and READDIRPLUS: finding names.

Directory replies are filled up to the client's `count` (READDIR) or `dircount`/`maxcount`
(READDIRPLUS) by the exact XDR sizes of what they hold. A listing of thousands of entries
lets other calls in every few milliseconds. Cookies come from the tree and stay
valid whatever happens to the directory, so the cookie verifier is never checked and
NFS3ERR_BAD_COOKIE is never answered (macOS resumes with old verifiers).
"""

from __future__ import annotations

from nfsd.nfs3.common import Nfs3State, Target, max_io, require
from nfsd.nfs3.failure import Learnt, first_attrs, procedure
from nfsd.rpc.dispatch import CallContext, RawReply
from nfsd.vfs.errors import FsError
from nfsd.vfs.tree import Attr
from nfsd.waiting import Pause
from xdr.codec import Arm
from xdr.nfs3 import (
    FATTR3_SIZE,
    NFS3_COOKIEVERFSIZE,
    LOOKUP3args,
    LOOKUP3resfail,
    READDIR3args,
    READDIR3resfail,
    ReaddirEntry,
    READDIRPLUS3args,
    READDIRPLUS3resfail,
    ReaddirplusEntry,
    READLINK3args,
    READLINK3resfail,
    READLINK3resok,
    encode_lookup3res_ok,
    encode_readdir3res_ok,
    encode_readdirplus3res_ok,
    ftype3,
    nfsstat3,
)

OK = nfsstat3.NFS3_OK
COOKIEVERF = bytes(NFS3_COOKIEVERFSIZE)

# XDR sizes: status, post_op_attr with fattr3, cookieverf, end of list, eof.
_READDIR_FIXED = 4 + (4 + FATTR3_SIZE) + NFS3_COOKIEVERFSIZE + 4 + 4
# An entry: value-follows, fileid, name length + padded name, cookie.
_ENTRY_FIXED = 4 + 8 + 4 + 8
# READDIRPLUS adds post_op_attr (4 + fattr3) and post_op_fh3 (4 + 4 + handle).
_PLUS_EXTRA = (4 + FATTR3_SIZE) + (4 + 4)


def _padded(n: int) -> int:
    return (n + 3) & ~3


def _dir_target(s: Nfs3State, ctx: CallContext, fh, learnt: Learnt) -> tuple[Target, Attr]:
    """The directory `fh` names and its attributes. Only from here on does a failure reply
    carry the directory's attributes (a NOTDIR one carries none)."""
    target = s.resolve(ctx, fh)
    attr = s.tree.getattr(target.fid)
    if attr.kind != ftype3.NF3DIR:
        raise FsError(nfsstat3.NFS3ERR_NOTDIR)
    learnt.fid = target.fid
    return target, attr


@procedure(first_attrs(LOOKUP3resfail))
def lookup(s: Nfs3State, ctx: CallContext, args: LOOKUP3args, learnt: Learnt) -> RawReply:
    target, dir_attr = _dir_target(s, ctx, args.what.dir, learnt)
    dir_fid = target.fid
    require(dir_attr, target.user, 0o1)
    name = args.what.name
    if name == b".." and dir_fid == s.export_root(target.export):
        fid, attr = dir_fid, dir_attr  # never above the export's root
    else:
        fid, attr = s.tree.lookup(dir_fid, name)
    handle = s.handles.encode(target.export.id, fid)
    reply = encode_lookup3res_ok(handle, s.attrs(attr, fid), s.fattr(dir_attr))
    return RawReply([reply])


@procedure(first_attrs(READLINK3resfail))
def readlink(s: Nfs3State, ctx: CallContext, args: READLINK3args, learnt: Learnt) -> Arm:
    target = s.resolve(ctx, args.symlink)
    learnt.fid = fid = target.fid
    return Arm(OK, READLINK3resok(s.post_op(fid), s.tree.readlink(fid)))


@procedure(first_attrs(READDIR3resfail))
async def readdir(
    s: Nfs3State, ctx: CallContext, args: READDIR3args, learnt: Learnt
) -> Arm | RawReply:
    target, dir_attr = _dir_target(s, ctx, args.dir, learnt)
    require(dir_attr, target.user, 0o4)
    budget = min(args.count, max_io(ctx)) - _READDIR_FIXED
    entries: list[ReaddirEntry] = []
    eof = True
    at_export_root = target.fid == s.export_root(target.export)
    pause = Pause()
    for entry in s.tree.readdir(target.fid, args.cookie):
        await pause.now_and_then()
        name = entry.name
        size = _ENTRY_FIXED + ((len(name) + 3) & ~3)
        if size > budget:
            eof = False
            break
        budget -= size
        fileid = target.fid if name == b".." and at_export_root else entry.fileid
        entries.append((fileid, name, entry.cookie))
    if not entries and not eof:
        raise FsError(nfsstat3.NFS3ERR_TOOSMALL)
    return RawReply([encode_readdir3res_ok(s.fattr(dir_attr), COOKIEVERF, entries, eof)])


@procedure(first_attrs(READDIRPLUS3resfail))
async def readdirplus(
    s: Nfs3State, ctx: CallContext, args: READDIRPLUS3args, learnt: Learnt
) -> Arm | RawReply:
    target, dir_attr = _dir_target(s, ctx, args.dir, learnt)
    require(dir_attr, target.user, 0o4)
    budget = min(args.maxcount, max_io(ctx)) - _READDIR_FIXED
    dir_budget = args.dircount
    entries: list[ReaddirplusEntry] = []
    eof = True
    export_id = target.export.id
    encode_handle, fattr = s.handles.encode, s.fattr
    at_export_root = target.fid == s.export_root(target.export)
    pause = Pause()
    for entry, attr in s.tree.readdirplus(target.fid, args.cookie):
        await pause.now_and_then()
        name, fileid = entry.name, entry.fileid
        if name == b".." and at_export_root:
            fileid, attr = target.fid, dir_attr  # never above the export's root
        handle = encode_handle(export_id, fileid)
        info = _ENTRY_FIXED + ((len(name) + 3) & ~3)
        size = info + _PLUS_EXTRA + ((len(handle) + 3) & ~3)
        if size > budget or (entries and info > dir_budget):
            eof = False
            break
        budget -= size
        dir_budget -= info
        if attr is None:
            attr = s.attr_or_none(fileid)  # "." and "..", and what the listing could not stat
        if attr is None:
            entries.append((fileid, name, entry.cookie, None, None))
        else:
            entries.append((fileid, name, entry.cookie, fattr(attr), handle))
    if not entries and not eof:
        raise FsError(nfsstat3.NFS3ERR_TOOSMALL)
    return RawReply([encode_readdirplus3res_ok(fattr(dir_attr), COOKIEVERF, entries, eof)])
