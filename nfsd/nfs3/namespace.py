"""CREATE, MKDIR, SYMLINK, MKNOD, REMOVE, RMDIR, RENAME and LINK: changes to directories.

Each answers wcc_data for the directories it changed, taken just before and after.
"""

from __future__ import annotations

import stat

from nfsd.nfs3.attrs import to_setattr
from nfsd.nfs3.common import (
    Nfs3State,
    Target,
    may_delete_from,
    require,
    require_dir_change,
)
from nfsd.rpc.dispatch import CallContext
from nfsd.vfs.errors import FsError
from nfsd.vfs.real import check_new_name
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
    ftype3,
    nfsstat3,
    sattr3,
)

OK = nfsstat3.NFS3_OK
DEFAULT_FILE_MODE = 0o644
DEFAULT_DIR_MODE = 0o755


def _owner(dir_attr: Attr, target: Target) -> Owner:
    user = target.user
    gid = dir_attr.gid if dir_attr.mode & stat.S_ISGID else user.gid
    return Owner(user.uid, gid)


def _apply_rest(s: Nfs3State, fid: int, attrs: sattr3, owner: Owner) -> None:
    """Apply what creation itself did not: size, times, and an owner other than the caller."""
    changes = to_setattr(attrs)
    changes.mode = None
    if changes.uid == owner.uid:
        changes.uid = None
    if changes.gid == owner.gid:
        changes.gid = None
    if changes != SetAttr():
        s.tree.setattr(fid, changes)


class _DirChange:
    """The directory a creation happens in, with its attributes before the change."""

    @staticmethod
    def open(s: Nfs3State, ctx: CallContext, where, failed: list) -> _DirChange:
        """Like the constructor, but leaves what is known in `failed` for the error reply."""
        change = object.__new__(_DirChange)
        change.s, change.before, change.fid = s, None, None
        failed.append(change)
        change.target = s.resolve(ctx, where.dir)
        change.fid = change.target.fid
        change.before = s.tree.getattr(change.fid)
        require_dir_change(s, change.target)
        return change

    def wcc(self):
        return self.s.wcc(self.before, self.fid)


def _fail_wcc(s: Nfs3State, failed: list):
    if failed:
        return failed[0].wcc()
    return s.wcc(None, None)


async def create(s: Nfs3State, ctx: CallContext, args: CREATE3args) -> Arm:
    failed: list = []
    try:
        d = _DirChange.open(s, ctx, args.where, failed)
        check_new_name(args.where.name)
        owner = _owner(d.before, d.target)
        how = args.how
        if how.tag == createmode3.EXCLUSIVE:
            fid, _ = s.tree.create(
                d.fid, args.where.name, DEFAULT_FILE_MODE, owner, exclusive=True, verifier=how.value
            )
        else:
            attrs: sattr3 = how.value
            to_setattr(attrs)  # refuse what cannot be applied before creating anything
            mode = DEFAULT_FILE_MODE if attrs.mode is None else attrs.mode
            fid, created = s.tree.create(
                d.fid, args.where.name, mode, owner, exclusive=how.tag == createmode3.GUARDED
            )
            if created:
                _apply_rest(s, fid, attrs, owner)
            elif attrs.size is not None:
                existing = s.tree.getattr(fid)
                require(existing, d.target.user, 0o2, owner_override=True)
                s.tree.setattr(fid, SetAttr(size=attrs.size))
        return Arm(OK, CREATE3resok(s.handle(d.target, fid), s.post_op(fid), d.wcc()))
    except FsError as e:
        return Arm(e.status, CREATE3resfail(_fail_wcc(s, failed)))


async def mkdir(s: Nfs3State, ctx: CallContext, args: MKDIR3args) -> Arm:
    failed: list = []
    try:
        d = _DirChange.open(s, ctx, args.where, failed)
        owner = _owner(d.before, d.target)
        attrs = args.attributes
        mode = DEFAULT_DIR_MODE if attrs.mode is None else attrs.mode
        if d.before.mode & stat.S_ISGID:
            mode |= stat.S_ISGID
        fid = s.tree.mkdir(d.fid, args.where.name, mode, owner)
        _apply_rest(s, fid, attrs, owner)
        return Arm(OK, MKDIR3resok(s.handle(d.target, fid), s.post_op(fid), d.wcc()))
    except FsError as e:
        return Arm(e.status, MKDIR3resfail(_fail_wcc(s, failed)))


async def symlink(s: Nfs3State, ctx: CallContext, args: SYMLINK3args) -> Arm:
    failed: list = []
    try:
        d = _DirChange.open(s, ctx, args.where, failed)
        owner = _owner(d.before, d.target)
        fid = s.tree.symlink(d.fid, args.where.name, args.symlink.symlink_data, owner)
        return Arm(OK, SYMLINK3resok(s.handle(d.target, fid), s.post_op(fid), d.wcc()))
    except FsError as e:
        return Arm(e.status, SYMLINK3resfail(_fail_wcc(s, failed)))


async def mknod(s: Nfs3State, ctx: CallContext, args: MKNOD3args) -> Arm:
    failed: list = []
    try:
        d = _DirChange.open(s, ctx, args.where, failed)
        kind = args.what.tag
        if kind in (ftype3.NF3CHR, ftype3.NF3BLK):
            attrs, spec = args.what.value.dev_attributes, args.what.value.spec
            rdev = (spec.specdata1, spec.specdata2)
        elif kind in (ftype3.NF3SOCK, ftype3.NF3FIFO):
            attrs, rdev = args.what.value, (0, 0)
        else:
            raise FsError(nfsstat3.NFS3ERR_BADTYPE)
        owner = _owner(d.before, d.target)
        mode = DEFAULT_FILE_MODE if attrs.mode is None else attrs.mode
        fid = s.tree.mknod(d.fid, args.where.name, kind, mode, owner, rdev)
        _apply_rest(s, fid, attrs, owner)
        return Arm(OK, MKNOD3resok(s.handle(d.target, fid), s.post_op(fid), d.wcc()))
    except FsError as e:
        return Arm(e.status, MKNOD3resfail(_fail_wcc(s, failed)))


def _check_delete(s: Nfs3State, d: _DirChange, name: bytes) -> None:
    if d.before.mode & stat.S_ISVTX and name not in (b".", b".."):
        victim = s.tree.getattr(s.tree.lookup(d.fid, name))
        may_delete_from(d.before, victim, d.target.user)


async def remove(s: Nfs3State, ctx: CallContext, args: REMOVE3args) -> Arm:
    failed: list = []
    try:
        d = _DirChange.open(s, ctx, args.object, failed)
        _check_delete(s, d, args.object.name)
        s.tree.remove(d.fid, args.object.name)
        return Arm(OK, REMOVE3resok(d.wcc()))
    except FsError as e:
        return Arm(e.status, REMOVE3resfail(_fail_wcc(s, failed)))


async def rmdir(s: Nfs3State, ctx: CallContext, args: RMDIR3args) -> Arm:
    failed: list = []
    try:
        d = _DirChange.open(s, ctx, args.object, failed)
        _check_delete(s, d, args.object.name)
        s.tree.rmdir(d.fid, args.object.name)
        return Arm(OK, RMDIR3resok(d.wcc()))
    except FsError as e:
        return Arm(e.status, RMDIR3resfail(_fail_wcc(s, failed)))


async def rename(s: Nfs3State, ctx: CallContext, args: RENAME3args) -> Arm:
    failed: list = []
    try:
        src = _DirChange.open(s, ctx, args.from_, failed)
        dst = _DirChange.open(s, ctx, args.to, failed)
        if src.target.export.id != dst.target.export.id:
            raise FsError(nfsstat3.NFS3ERR_XDEV)
        _check_delete(s, src, args.from_.name)
        if dst.before.mode & stat.S_ISVTX:
            try:
                _check_delete(s, dst, args.to.name)
            except FsError as e:
                if e.status != nfsstat3.NFS3ERR_NOENT:
                    raise
        s.tree.rename(src.fid, args.from_.name, dst.fid, args.to.name)
        return Arm(OK, RENAME3resok(src.wcc(), dst.wcc()))
    except FsError as e:
        from_wcc = failed[0].wcc() if failed else s.wcc(None, None)
        to_wcc = failed[1].wcc() if len(failed) > 1 else s.wcc(None, None)
        return Arm(e.status, RENAME3resfail(from_wcc, to_wcc))


async def link(s: Nfs3State, ctx: CallContext, args: LINK3args) -> Arm:
    failed: list = []
    fid = None
    try:
        target = s.resolve(ctx, args.file)
        fid = target.fid
        d = _DirChange.open(s, ctx, args.link, failed)
        if d.target.export.id != target.export.id:
            raise FsError(nfsstat3.NFS3ERR_XDEV)
        await s.tree.prepare_change(fid)  # a second name needs the content here
        s.tree.link(fid, d.fid, args.link.name)
        return Arm(OK, LINK3resok(s.post_op(fid), d.wcc()))
    except FsError as e:
        return Arm(
            e.status, LINK3resfail(None if fid is None else s.post_op(fid), _fail_wcc(s, failed))
        )
