"""CREATE, MKDIR, SYMLINK, MKNOD, REMOVE, RMDIR, RENAME and LINK: changes to directories.

Each answers wcc_data for the directories it changed, taken just before and after.
"""

from __future__ import annotations

import stat
from collections.abc import Awaitable, Callable

from nfsd.nfs3.attrs import to_setattr
from nfsd.nfs3.common import (
    Nfs3State,
    Target,
    in_group,
    may_delete_from,
    require,
    require_dir_change,
)
from nfsd.nfs3.failure import Learnt, first_wcc, procedure
from nfsd.rpc.dispatch import CallContext
from nfsd.vfs.errors import FsError
from nfsd.vfs.names import check_new_name
from nfsd.vfs.tree import Attr, Owner, SetAttr
from xdr.codec import Arm
from xdr.nfs3 import (
    CREATE3args,
    CREATE3resfail,
    CREATE3resok,
    LINK3args,
    LINK3resfail,
    LINK3resok,
    MKDIR3args,
    MKDIR3resfail,
    MKDIR3resok,
    MKNOD3args,
    MKNOD3resfail,
    MKNOD3resok,
    REMOVE3args,
    REMOVE3resfail,
    REMOVE3resok,
    RENAME3args,
    RENAME3resfail,
    RENAME3resok,
    RMDIR3args,
    RMDIR3resfail,
    RMDIR3resok,
    SYMLINK3args,
    SYMLINK3resfail,
    SYMLINK3resok,
    createmode3,
    diropargs3,
    ftype3,
    nfs_fh3,
    nfsstat3,
    sattr3,
    wcc_data,
)

OK = nfsstat3.NFS3_OK
DEFAULT_FILE_MODE = 0o644
DEFAULT_DIR_MODE = 0o755


def _owner(dir_attr: Attr, target: Target) -> Owner:
    user = target.user
    gid = dir_attr.gid if dir_attr.mode & stat.S_ISGID else user.gid
    return Owner(user.uid, gid)


def _check_claims(attrs: sattr3, user, owner: Owner) -> None:
    """Before anything is made: only root may give a new object to another user, or to a
    group the caller is not in (as chown(2) says; the server itself runs as root)."""
    if user.uid == 0:
        return
    if attrs.uid is not None and attrs.uid != user.uid:
        raise FsError(nfsstat3.NFS3ERR_PERM, "only root gives files away")
    if attrs.gid is not None and attrs.gid != owner.gid and not in_group(user, attrs.gid):
        raise FsError(nfsstat3.NFS3ERR_PERM, "not a group of the caller")


def _apply_rest(s: Nfs3State, fid: int, attr: Attr, attrs: sattr3, owner: Owner) -> Attr | None:
    """Apply what creation itself did not: size, times, and an owner other than the caller.
    The attributes after (`attr`, those of the new object, when nothing was left to do)."""
    changes = to_setattr(attrs)
    changes.mode = None
    if changes.uid == owner.uid:
        changes.uid = None
    if changes.gid == owner.gid:
        changes.gid = None
    if changes != SetAttr():
        return s.tree.setattr(fid, changes)
    return attr


class _DirChange:
    """The directory a change happens in, with its attributes before the change."""

    __slots__ = ("before", "fid", "target")

    def __init__(self, target: Target, before: Attr) -> None:
        self.target = target
        self.fid = target.fid
        self.before = before

    def wcc(self, s: Nfs3State) -> wcc_data:
        return s.wcc(self.before, self.fid)


_Learn = Callable[[Nfs3State, CallContext, nfs_fh3], tuple[Target, Attr]]


def _dir_change(s: Nfs3State, ctx: CallContext, where: diropargs3, learn: _Learn) -> _DirChange:
    """The directory `where` names, checked for a change by the caller; `learn` is the call's
    Learnt.first_object or .second_object, which keeps what is found for the failure reply."""
    target, before = learn(s, ctx, where.dir)
    require_dir_change(s, target)
    return _DirChange(target, before)


@procedure(first_wcc(CREATE3resfail))
async def create(s: Nfs3State, ctx: CallContext, args: CREATE3args, learnt: Learnt) -> Arm:
    d = _dir_change(s, ctx, args.where, learnt.first_object)
    check_new_name(args.where.name)
    owner = _owner(d.before, d.target)
    how = args.how
    after: Attr | None
    if how.tag == createmode3.EXCLUSIVE:
        fid, after, _ = await s.tree.create(
            d.fid, args.where.name, DEFAULT_FILE_MODE, owner, exclusive=True, verifier=how.value
        )
    else:
        attrs: sattr3 = how.value
        to_setattr(attrs)  # refuse what cannot be applied before creating anything
        _check_claims(attrs, d.target.user, owner)
        mode = DEFAULT_FILE_MODE if attrs.mode is None else attrs.mode
        fid, after, created = await s.tree.create(
            d.fid, args.where.name, mode, owner, exclusive=how.tag == createmode3.GUARDED
        )
        if created:
            after = _apply_rest(s, fid, after, attrs, owner)
        elif attrs.size is not None:
            require(after, d.target.user, 0o2, owner_override=True)
            after = s.tree.setattr(fid, SetAttr(size=attrs.size))
    return Arm(OK, CREATE3resok(s.handle(d.target, fid), s.attrs(after, fid), d.wcc(s)))


@procedure(first_wcc(MKDIR3resfail))
async def mkdir(s: Nfs3State, ctx: CallContext, args: MKDIR3args, learnt: Learnt) -> Arm:
    d = _dir_change(s, ctx, args.where, learnt.first_object)
    owner = _owner(d.before, d.target)
    attrs = args.attributes
    _check_claims(attrs, d.target.user, owner)
    mode = DEFAULT_DIR_MODE if attrs.mode is None else attrs.mode
    if d.before.mode & stat.S_ISGID:
        mode |= stat.S_ISGID
    fid, after = await s.tree.mkdir(d.fid, args.where.name, mode, owner)
    after = _apply_rest(s, fid, after, attrs, owner)
    return Arm(OK, MKDIR3resok(s.handle(d.target, fid), s.attrs(after, fid), d.wcc(s)))


@procedure(first_wcc(SYMLINK3resfail))
async def symlink(s: Nfs3State, ctx: CallContext, args: SYMLINK3args, learnt: Learnt) -> Arm:
    d = _dir_change(s, ctx, args.where, learnt.first_object)
    owner = _owner(d.before, d.target)
    fid, after = await s.tree.symlink(d.fid, args.where.name, args.symlink.symlink_data, owner)
    return Arm(OK, SYMLINK3resok(s.handle(d.target, fid), s.fattr(after), d.wcc(s)))


@procedure(first_wcc(MKNOD3resfail))
async def mknod(s: Nfs3State, ctx: CallContext, args: MKNOD3args, learnt: Learnt) -> Arm:
    d = _dir_change(s, ctx, args.where, learnt.first_object)
    kind = args.what.tag
    if kind in (ftype3.NF3CHR, ftype3.NF3BLK):
        attrs, spec = args.what.value.dev_attributes, args.what.value.spec
        rdev = (spec.specdata1, spec.specdata2)
    elif kind in (ftype3.NF3SOCK, ftype3.NF3FIFO):
        attrs, rdev = args.what.value, (0, 0)
    else:
        raise FsError(nfsstat3.NFS3ERR_BADTYPE)
    owner = _owner(d.before, d.target)
    _check_claims(attrs, d.target.user, owner)
    if kind in (ftype3.NF3CHR, ftype3.NF3BLK) and d.target.user.uid != 0:
        raise FsError(nfsstat3.NFS3ERR_PERM, "only root makes device nodes")  # as mknod(2)
    mode = DEFAULT_FILE_MODE if attrs.mode is None else attrs.mode
    fid, after = await s.tree.mknod(d.fid, args.where.name, kind, mode, owner, rdev)
    after = _apply_rest(s, fid, after, attrs, owner)
    return Arm(OK, MKNOD3resok(s.handle(d.target, fid), s.attrs(after, fid), d.wcc(s)))


def _check_delete(s: Nfs3State, d: _DirChange, name: bytes) -> None:
    if d.before.mode & stat.S_ISVTX and name not in (b".", b".."):
        fid, victim = s.tree.lookup(d.fid, name)
        may_delete_from(d.before, victim or s.tree.getattr(fid), d.target.user)


async def _delete(
    s: Nfs3State,
    ctx: CallContext,
    what: diropargs3,
    learnt: Learnt,
    delete: Callable[[int, bytes], Awaitable[None]],
) -> wcc_data:
    """REMOVE or RMDIR (`delete`) of `what`; the directory's wcc_data."""
    d = _dir_change(s, ctx, what, learnt.first_object)
    _check_delete(s, d, what.name)
    await delete(d.fid, what.name)
    return d.wcc(s)


@procedure(first_wcc(REMOVE3resfail))
async def remove(s: Nfs3State, ctx: CallContext, args: REMOVE3args, learnt: Learnt) -> Arm:
    return Arm(OK, REMOVE3resok(await _delete(s, ctx, args.object, learnt, s.tree.remove)))


@procedure(first_wcc(RMDIR3resfail))
async def rmdir(s: Nfs3State, ctx: CallContext, args: RMDIR3args, learnt: Learnt) -> Arm:
    return Arm(OK, RMDIR3resok(await _delete(s, ctx, args.object, learnt, s.tree.rmdir)))


@procedure(lambda s, learnt: RENAME3resfail(learnt.wcc(s), learnt.second_wcc(s)))
async def rename(s: Nfs3State, ctx: CallContext, args: RENAME3args, learnt: Learnt) -> Arm:
    src = _dir_change(s, ctx, args.from_, learnt.first_object)
    dst = _dir_change(s, ctx, args.to, learnt.second_object)
    if src.target.export.id != dst.target.export.id:
        raise FsError(nfsstat3.NFS3ERR_XDEV)
    _check_delete(s, src, args.from_.name)
    if dst.before.mode & stat.S_ISVTX:
        try:
            _check_delete(s, dst, args.to.name)
        except FsError as e:
            if e.status != nfsstat3.NFS3ERR_NOENT:
                raise
    await s.tree.rename(src.fid, args.from_.name, dst.fid, args.to.name)
    return Arm(OK, RENAME3resok(src.wcc(s), dst.wcc(s)))


def _check_hardlink(attr: Attr, user) -> None:
    """protected_hardlinks (Linux's default): only the owner, or someone who may read and
    write it, links a file, and nobody but its owner a setuid or setgid-executable one, so
    that a hard link cannot keep a vulnerable setuid program alive after an upgrade."""
    if user.uid in (0, attr.uid):
        return
    setgid_exec = attr.mode & stat.S_ISGID and attr.mode & stat.S_IXGRP
    if attr.kind != ftype3.NF3REG or attr.mode & stat.S_ISUID or setgid_exec:
        raise FsError(nfsstat3.NFS3ERR_PERM, "protected_hardlinks")
    try:
        require(attr, user, 0o6)
    except FsError:
        raise FsError(nfsstat3.NFS3ERR_PERM, "protected_hardlinks") from None


@procedure(lambda s, learnt: LINK3resfail(learnt.attrs(s), learnt.second_wcc(s)))
async def link(s: Nfs3State, ctx: CallContext, args: LINK3args, learnt: Learnt) -> Arm:
    target = s.resolve(ctx, args.file)
    learnt.fid = fid = target.fid
    d = _dir_change(s, ctx, args.link, learnt.second_object)
    if d.target.export.id != target.export.id:
        raise FsError(nfsstat3.NFS3ERR_XDEV)
    _check_hardlink(s.tree.getattr(fid), target.user)
    await s.tree.prepare_change(fid)  # a second name needs the content here
    after = await s.tree.link(fid, d.fid, args.link.name)
    return Arm(OK, LINK3resok(s.attrs(after, fid), d.wcc(s)))
