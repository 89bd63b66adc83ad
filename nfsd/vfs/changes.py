"""The merged tree's namespace changes: create, mkdir, symlink, mknod, remove, rmdir, rename
and link, on the local layer (one *at call on one name, made as the caller: see
nfsd/vfs/acting.py) or, for Unreal entries, in the index alone; each with its fileid table
update in one batch, and its report to the journal.

The system call runs on the event loop. Run on a worker thread (tried), it waited for the
file system's journal without stalling others, but two full benchmark runs on the same
machine gave the same small-file rate either way (418 and 434 files/s), so it stays where it
costs no thread hand-off. What does wait is durability: once a change is made, its
directories and the database's log are synced on a worker thread before the reply, so each
change runs in a task of its own (`about_to_wait` first).

A mixin of MergedTree (nfsd/vfs/merged.py), whose resolution and fileid-table helpers it uses.
"""

from __future__ import annotations

import logging
import os
import stat

from nfsd.store.index import Entry, Kind, Layer
from nfsd.vfs.acting import as_caller
from nfsd.vfs.errors import FsError, from_os_error
from nfsd.vfs.inodes import ROOT_FID, Node
from nfsd.vfs.local import attr_from_stat
from nfsd.vfs.names import TEMP_PREFIX, check_new_name, check_old_name
from nfsd.vfs.tree import Attr, Owner
from nfsd.waiting import about_to_wait
from xdr.nfs3 import ftype3, nfsstat3

log = logging.getLogger("realize.tree")
SERVER_IS_ROOT = os.geteuid() == 0

_SPECIAL = {
    ftype3.NF3FIFO: stat.S_IFIFO,
    ftype3.NF3SOCK: stat.S_IFSOCK,
    ftype3.NF3CHR: stat.S_IFCHR,
    ftype3.NF3BLK: stat.S_IFBLK,
}


def _create_file(dir_fd: int, name: bytes, mode: int, owner: Owner) -> os.stat_result:
    """A new regular file `name` (O_EXCL), made as the caller (the kernel gives it its owner)
    or else given to `owner`; its stat."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    with as_caller() as kernel_owns:
        fd = os.open(name, flags, mode, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not kernel_owns and SERVER_IS_ROOT and (st.st_uid, st.st_gid) != (owner.uid, owner.gid):
            os.fchown(fd, owner.uid, owner.gid)  # (which takes setuid away)
            st = os.fstat(fd)
        return st
    finally:
        os.close(fd)


def _make_owned(dir_fd: int, name: bytes, owner: Owner, make) -> os.stat_result:
    """`make(dir_fd, name)` as the caller, or else the new object then given to `owner`
    (never following it); its lstat."""
    with as_caller() as kernel_owns:
        make(dir_fd, name)
    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    if not kernel_owns and SERVER_IS_ROOT and (st.st_uid, st.st_gid) != (owner.uid, owner.gid):
        os.chown(name, owner.uid, owner.gid, dir_fd=dir_fd, follow_symlinks=False)
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    return st


class NamespaceChanges:
    """Namespace changes of MergedTree (see the module docstring)."""

    async def _durable(self, *dir_fids: int) -> None:
        """What NFS promises of a namespace change once answered, as knfsd's commit_metadata
        does: it survives a power cut. The changed directories, then the database's log,
        are synced on a worker thread, grouped with concurrent changes (nfsd/vfs/durable.py)."""
        try:
            await self._sync_group.sync(dir_fids)
        except OSError as e:
            raise from_os_error(e) from None

    def _created(self, dir_fid: int, name: bytes, st: os.stat_result, target: bytes = b"") -> int:
        self._listings.forget(dir_fid)
        fid = self._register(dir_fid, name, st)
        area, rel = self._child_path(dir_fid, name)
        if stat.S_ISREG(st.st_mode):
            self.journal.created(area, rel, st)
        else:
            self.journal.made(area, rel, st, target)
        return fid

    def _held_dir(self, dir_fid: int) -> int:
        """A descriptor of the writable directory that the caller owns (and closes): the
        cache may close its own while a change is under way."""
        return os.dup(self._writable_dir(dir_fid))

    async def create(
        self,
        dir_fid: int,
        name: bytes,
        mode: int,
        owner: Owner,
        *,
        exclusive: bool,
        verifier: bytes | None = None,
    ) -> tuple[int, Attr, bool]:
        check_new_name(name)
        about_to_wait()
        dir_fd = self._held_dir(dir_fid)
        try:
            try:
                st = _create_file(dir_fd, name, mode & 0o7777, owner)
            except FileExistsError:
                if verifier is not None:
                    # EXCLUSIVE: a retransmission of our own create finds its verifier.
                    fid, attr = self.lookup(dir_fid, name)
                    if self.inodes.verifier(fid) != verifier:
                        raise FsError(nfsstat3.NFS3ERR_EXIST) from None
                    return fid, attr or self.getattr(fid), False
                if exclusive:
                    raise FsError(nfsstat3.NFS3ERR_EXIST) from None
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                if self.local.is_hidden(st):
                    raise FsError(nfsstat3.NFS3ERR_ACCES, "hidden") from None
                if stat.S_ISDIR(st.st_mode):
                    raise FsError(nfsstat3.NFS3ERR_ISDIR) from None
                if not stat.S_ISREG(st.st_mode):
                    raise FsError(nfsstat3.NFS3ERR_EXIST, "not a regular file") from None
                fid = self._created(dir_fid, name, st)
                return fid, attr_from_stat(st, fid), False
        except OSError as e:
            raise from_os_error(e) from None
        finally:
            os.close(dir_fd)
        try:
            fid = self._created(dir_fid, name, st)
            if verifier is not None:
                batch = self.store.batch()
                self.inodes.put_verifier(batch, fid, verifier)
                batch.commit()
        except (OSError, FsError):
            self._undo_make(dir_fid, name, st)
            raise
        await self._durable(dir_fid)
        return fid, attr_from_stat(st, fid), True

    async def _make(
        self, dir_fid: int, name: bytes, owner: Owner, make, target: bytes = b""
    ) -> tuple[int, Attr]:
        """Run `make(dir_fd, name)` (mkdir, symlink or mknod) on a worker thread, give it to
        `owner`, and register it."""
        about_to_wait()
        dir_fd = self._held_dir(dir_fid)
        try:
            st = _make_owned(dir_fd, name, owner, make)
        except OSError as e:
            raise from_os_error(e) from None
        finally:
            os.close(dir_fd)
        try:
            fid = self._created(dir_fid, name, st, target)
        except (OSError, FsError):
            self._undo_make(dir_fid, name, st)
            raise
        await self._durable(dir_fid)
        return fid, attr_from_stat(st, fid)

    def _undo_make(self, dir_fid: int, name: bytes, st: os.stat_result) -> None:
        """A new object the tables could not take (a full disk): taken away again, so a
        failed CREATE or MKDIR leaves nothing behind and its retry is not EXIST."""
        try:
            dir_fd = self._held_dir(dir_fid)
        except FsError:
            return
        try:
            now = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino):
                remove = os.rmdir if stat.S_ISDIR(st.st_mode) else os.unlink
                remove(name, dir_fd=dir_fd)
        except OSError as e:
            log.warning("could not take back %r after a failed change: %s", name, e)
        finally:
            os.close(dir_fd)

    async def mkdir(self, dir_fid: int, name: bytes, mode: int, owner: Owner) -> tuple[int, Attr]:
        check_new_name(name)
        mode &= 0o7777
        return await self._make(dir_fid, name, owner, lambda fd, n: os.mkdir(n, mode, dir_fd=fd))

    async def symlink(
        self, dir_fid: int, name: bytes, target: bytes, owner: Owner
    ) -> tuple[int, Attr]:
        check_new_name(name)
        if not target or b"\0" in target:
            raise FsError(nfsstat3.NFS3ERR_INVAL, "bad symlink target")
        return await self._make(
            dir_fid, name, owner, lambda fd, n: os.symlink(target, n, dir_fd=fd), target
        )

    async def mknod(
        self,
        dir_fid: int,
        name: bytes,
        kind: ftype3,
        mode: int,
        owner: Owner,
        rdev: tuple[int, int] = (0, 0),
    ) -> tuple[int, Attr]:
        check_new_name(name)
        type_bits = _SPECIAL.get(kind)
        if type_bits is None:
            raise FsError(nfsstat3.NFS3ERR_BADTYPE)
        try:
            device = os.makedev(*rdev) if kind in (ftype3.NF3CHR, ftype3.NF3BLK) else 0
        except (OverflowError, ValueError):
            raise FsError(nfsstat3.NFS3ERR_INVAL, "device number out of range") from None
        bits = type_bits | (mode & 0o7777)
        return await self._make(
            dir_fid, name, owner, lambda fd, n: os.mknod(n, bits, device, dir_fd=fd)
        )

    def _child_or_none(self, dir_fd: int, name: bytes) -> os.stat_result | None:
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise from_os_error(e) from None
        return st

    async def _unlink(self, dir_fid: int, name: bytes, directory: bool) -> None:
        check_old_name(name)
        dir_fd = self._held_dir(dir_fid)
        try:
            st = self._child_or_none(dir_fd, name)
            if st is not None and self.local.is_hidden(st):
                raise FsError(nfsstat3.NFS3ERR_NOENT, "hidden")
            if st is None or name.startswith(TEMP_PREFIX):
                if st is None and self._unreal_child(dir_fid, name) is not None:
                    self._forget_unreal(dir_fid, name, directory)
                    return
                raise FsError(nfsstat3.NFS3ERR_NOENT)
            if directory and not stat.S_ISDIR(st.st_mode):
                raise FsError(nfsstat3.NFS3ERR_NOTDIR)
            if not directory and stat.S_ISDIR(st.st_mode):
                raise FsError(nfsstat3.NFS3ERR_ISDIR)
            if directory:
                self._check_no_unreal_below(dir_fid, name)
            try:
                remove = os.rmdir if directory else os.unlink
                with as_caller():
                    remove(name, dir_fd=dir_fd)
            except OSError as e:
                raise from_os_error(e) from None
        finally:
            os.close(dir_fd)
        self._listings.forget(dir_fid)
        node = self._known_child(dir_fid, name, st)
        if node is not None and not directory and st.st_nlink <= 1:
            # The space is freed now, before the index is told: on a full disk it needs it.
            self.fds.invalidate(node.fid)
        self.journal.removed(*self._child_path(dir_fid, name))
        batch = self.store.batch()
        if node is not None:
            self.inodes.drop_link(batch, node.fid, dir_fid, name)
            remaining = 0 if directory else st.st_nlink - 1
            self._forget_link(batch, node, dir_fid, name, remaining)
        else:
            fid = self.inodes.child(dir_fid, name)
            if fid is not None:
                self.inodes.drop_link(batch, fid, dir_fid, name)
        batch.commit()

    def _check_removable(self, area: int, path: bytes, entry: Entry | None, as_dir: bool) -> None:
        """Whether an Unreal entry may go by RMDIR (`as_dir`), REMOVE, or be replaced by a
        RENAME of a directory (`as_dir`) or not: as rmdir, unlink and rename(2) decide."""
        is_dir = entry is not None and entry.kind == Kind.DIR
        if as_dir and not is_dir:
            raise FsError(nfsstat3.NFS3ERR_NOTDIR)
        if not as_dir and is_dir:
            raise FsError(nfsstat3.NFS3ERR_ISDIR)
        if is_dir and next(self.journal.index.children(area, path), None) is not None:
            raise FsError(nfsstat3.NFS3ERR_NOTEMPTY)

    def _check_no_unreal_below(self, dir_fid: int, name: bytes) -> None:
        """A Real directory the disk says is empty may still list Unreal entries: RMDIR of
        it, or a RENAME of a directory over it, is NOTEMPTY then, as it is for any client
        reading the directory (rename(2) or rmdir(2) on the disk would drop them unsaid)."""
        area, path = self._child_path(dir_fid, name)
        for _, child in self.journal.index.children(area, path):
            if child.layer == Layer.UNREAL:
                raise FsError(nfsstat3.NFS3ERR_NOTEMPTY, "it lists files other peers have")

    def _forget_unreal(self, dir_fid: int, name: bytes, directory: bool) -> None:
        """Remove an Unreal entry: only the index and the fileid table know it."""
        fid = self._unreal_child(dir_fid, name)
        assert fid is not None
        area, rel = self._child_path(dir_fid, name)
        self._check_removable(area, rel, self.journal.index.get(area, rel), directory)
        self.journal.removed(area, rel)
        self._index_generation += 1
        self._listings.forget(dir_fid)
        batch = self.store.batch()
        self.inodes.drop_node(batch, self._node(fid))
        batch.commit()

    async def remove(self, dir_fid: int, name: bytes) -> None:
        about_to_wait()
        await self._unlink(dir_fid, name, directory=False)
        await self._durable(dir_fid)

    async def rmdir(self, dir_fid: int, name: bytes) -> None:
        about_to_wait()
        await self._unlink(dir_fid, name, directory=True)
        self.local.forget_dirs()
        await self._durable(dir_fid)

    async def rename(self, from_dir: int, from_name: bytes, to_dir: int, to_name: bytes) -> None:
        check_old_name(from_name)
        check_old_name(to_name)
        check_new_name(to_name)
        if from_name.startswith(TEMP_PREFIX):
            raise FsError(nfsstat3.NFS3ERR_NOENT)
        if ROOT_FID in (from_dir, to_dir):
            raise FsError(nfsstat3.NFS3ERR_ACCES, "the root holds only areas")
        if self._node(from_dir).area != self._node(to_dir).area:
            raise FsError(nfsstat3.NFS3ERR_XDEV, "areas are separate")
        about_to_wait()
        src_fd = self._held_dir(from_dir)
        try:
            dst_fd = self._held_dir(to_dir)
            try:
                await self._rename_in(src_fd, dst_fd, from_dir, from_name, to_dir, to_name)
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)
        await self._durable(from_dir, to_dir)

    async def _rename_in(
        self,
        src_fd: int,
        dst_fd: int,
        from_dir: int,
        from_name: bytes,
        to_dir: int,
        to_name: bytes,
    ) -> None:
        src = self._child_or_none(src_fd, from_name)
        if src is not None and self.local.is_hidden(src):
            raise FsError(nfsstat3.NFS3ERR_NOENT, "hidden")
        if src is None:
            unreal = self._unreal_child(from_dir, from_name)
            if unreal is None:
                raise FsError(nfsstat3.NFS3ERR_NOENT)
            await self._rename_unreal(unreal, from_dir, from_name, to_dir, to_name)
            return
        fid = self._register(from_dir, from_name, src)
        dst = self._child_or_none(dst_fd, to_name)
        if dst is not None and self.local.is_hidden(dst):
            raise FsError(nfsstat3.NFS3ERR_ACCES, "hidden")
        if dst is not None and dst.st_ino == src.st_ino and dst.st_dev == src.st_dev:
            return  # two names of one file: POSIX says rename does nothing
        if dst is None:
            # Nothing on the disk there, but an Unreal entry may be: rename(2)'s rules hold
            # for it too (a directory over a non-empty one would drop its entries unsaid).
            area, to_rel = self._child_path(to_dir, to_name)
            target = self.journal.index.get(area, to_rel)
            if target is not None and target.layer == Layer.UNREAL:
                self._check_removable(area, to_rel, target, stat.S_ISDIR(src.st_mode))
        elif stat.S_ISDIR(dst.st_mode) and stat.S_ISDIR(src.st_mode):
            self._check_no_unreal_below(to_dir, to_name)
        try:
            with as_caller():
                os.rename(from_name, to_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        except OSError as e:
            raise from_os_error(e) from None
        # Known after the wait: what the kernel replaced is what held the name when it did.
        replaced = self._known_child(to_dir, to_name, dst) if dst is not None else None
        if stat.S_ISDIR(src.st_mode):
            self.local.forget_dirs()  # held descriptors below it stay right, but be plain
        self._listings.forget(from_dir)
        self._listings.forget(to_dir)
        area, old_rel = self._child_path(from_dir, from_name)
        self.journal.renamed(area, old_rel, self._child_path(to_dir, to_name)[1])
        batch = self.store.batch()
        stale_target = self.inodes.child(to_dir, to_name)
        if replaced is not None and dst is not None:
            self.inodes.drop_link(batch, replaced.fid, to_dir, to_name)
            remaining = 0 if stat.S_ISDIR(dst.st_mode) else dst.st_nlink - 1
            self._forget_link(batch, replaced, to_dir, to_name, remaining)
        elif stale_target is not None:
            self.inodes.drop_link(batch, stale_target, to_dir, to_name)
        node = self._node(fid)
        self.inodes.drop_link(batch, fid, from_dir, from_name)
        self.inodes.add_link(batch, fid, to_dir, to_name)
        if (node.parent, node.name) == (from_dir, from_name) or not self._primary_holds(node):
            self.inodes.put_node(batch, Node(fid, to_dir, node.area, node.dev, node.ino, to_name))
        batch.commit()

    async def _rename_unreal(
        self, fid: int, from_dir: int, from_name: bytes, to_dir: int, to_name: bytes
    ) -> None:
        """Rename an Unreal entry: the index moves, nothing on the disk but what it replaces."""
        if (from_dir, from_name) == (to_dir, to_name):
            return  # onto itself: nothing to do, as rename(2)
        area, old_rel = self._child_path(from_dir, from_name)
        new_rel = self._child_path(to_dir, to_name)[1]
        entry = self.journal.index.get(area, old_rel)
        if (
            entry is not None
            and entry.kind == Kind.DIR
            and (new_rel + b"/").startswith(old_rel + b"/")
        ):
            raise FsError(nfsstat3.NFS3ERR_INVAL, "a directory cannot move into itself")
        existing = self.local.child_stat(to_dir, to_name)
        if existing is not None:
            await self._unlink(to_dir, to_name, directory=stat.S_ISDIR(existing.st_mode))
        batch = self.store.batch()
        replaced = self._unreal_child(to_dir, to_name)
        if replaced is not None:
            target = self.journal.index.get(area, new_rel)
            if target is not None:
                moving_dir = entry is not None and entry.kind == Kind.DIR
                self._check_removable(area, new_rel, target, moving_dir)
            self.inodes.drop_node(batch, self._node(replaced))
        # The replaced entry, the move and the fileid table in one batch: a crash leaves the
        # old names or the new.
        self.journal.renamed(area, old_rel, new_rel, batch)
        self.inodes.drop_link(batch, fid, from_dir, from_name)
        self.inodes.add_link(batch, fid, to_dir, to_name)
        self.inodes.put_node(batch, Node(fid, to_dir, area, 0, 0, to_name))
        batch.commit()
        self._index_generation += 1
        self._listings.forget(from_dir)
        self._listings.forget(to_dir)

    async def link(self, fid: int, dir_fid: int, name: bytes) -> Attr | None:
        check_new_name(name)
        node, st = self._real_node(fid)
        if stat.S_ISDIR(st.st_mode):
            raise FsError(nfsstat3.NFS3ERR_ISDIR, "no hard links to directories")
        if dir_fid == ROOT_FID:
            raise FsError(nfsstat3.NFS3ERR_ACCES, "the root holds only areas")
        if node.area != self._node(dir_fid).area:
            raise FsError(nfsstat3.NFS3ERR_XDEV, "areas are separate")
        about_to_wait()
        dir_fd = self._held_dir(dir_fid)
        try:
            with self.local.pin(node) as pinned, as_caller():
                pinned.link_as(dir_fd, name)
        except OSError as e:
            raise from_os_error(e) from None
        finally:
            os.close(dir_fd)
        self._listings.forget(dir_fid)
        batch = self.store.batch()
        self.inodes.add_link(batch, fid, dir_fid, name)
        batch.commit()
        area, existing = self.area_path(fid)
        self.journal.linked(area, existing, self._child_path(dir_fid, name)[1])
        await self._durable(dir_fid)
        return self._attr_or_none(fid)
