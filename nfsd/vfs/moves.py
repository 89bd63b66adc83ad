"""The merged tree's moves between its layers: realize (an Unreal file written as a Real one,
keeping its fileid; an Unreal directory made on the disk to put something in it), each with
the owner, group and mode the index kept (nfsd/vfs/unreal.py `ownership`), and unrealize (a
Real file's content moved into the blob cache, verified, then the file removed once the
index holds it, synced, with the file's owner, group and mode).

A mixin of MergedTree (nfsd/vfs/merged.py), whose resolution and fileid-table helpers it uses.
"""

from __future__ import annotations

import logging
import os
import stat

import trio

from nfsd.store.index import Kind, Layer
from nfsd.vfs.errors import FsError, from_os_error
from nfsd.vfs.inodes import Node
from nfsd.vfs.journal import entry_of
from nfsd.vfs.unreal import Progress, give_ownership, ownership
from nfsd.waiting import about_to_wait
from xdr.nfs3 import nfsstat3

log = logging.getLogger("realize.tree")

_OWN_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
REALIZE_ATTEMPTS = 3  # a file moved or changed while realized is realized again, this often


class LayerMoves:
    """Moves of MergedTree between the local and the Unreal layer (see the module docstring)."""

    def _materialize_dir(self, fid: int) -> None:
        """Make an Unreal directory (and its Unreal parents) real, to put something in it."""
        node = self._node(fid)
        entry = self._unreal_entry(node)
        if entry is None:
            return
        if entry.kind != Kind.DIR:
            raise FsError(nfsstat3.NFS3ERR_NOTDIR)
        self._materialize_dir(node.parent)
        parent_fd = self.local.dir_fd(node.parent)
        try:
            # Made by the server, private until it has its owner and then its mode.
            os.mkdir(node.name, 0o700, dir_fd=parent_fd)
            fd = os.open(node.name, _OWN_DIR_FLAGS, dir_fd=parent_fd)
            try:
                st = os.fstat(fd)
                if st.st_uid != os.geteuid():  # another's directory renamed in meanwhile
                    raise FsError(nfsstat3.NFS3ERR_IO, "the directory changed while made")
                give_ownership(fd, *ownership(entry, *self._area_owner(node.area)))
                st = os.fstat(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise from_os_error(e) from None
        area, rel = self.area_path(fid)
        batch = self.store.batch()
        self.inodes.put_node(batch, Node(fid, node.parent, area, st.st_dev, st.st_ino, node.name))
        entry.layer = Layer.REAL
        entry.mode, entry.uid, entry.gid = stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid
        self.journal.index.put(batch, area, rel, entry)
        batch.commit()
        self._listings.forget(node.parent)

    async def prepare_change(self, fid: int, progress: Progress | None = None) -> None:
        """Realize an Unreal file before it is written, truncated or its attributes set
        (and when it is marked `real`: then `progress` hears of every chunk written)."""
        while fid in self._realizing:  # one realization per file; later callers find it done
            about_to_wait()
            await self._realizing[fid].wait()
        node = self._node(fid)
        entry = self._unreal_entry(node)
        if entry is None:
            return
        if entry.kind == Kind.DIR:
            self._materialize_dir(fid)
            return
        if entry.kind != Kind.FILE or self.unreal is None:
            raise FsError(nfsstat3.NFS3ERR_NOTSUPP, "cannot change this Unreal object")
        about_to_wait()  # realizing fetches and writes the whole file
        done = self._realizing[fid] = trio.Event()
        try:
            # A rename, a remove or a new version may come while the content is fetched: the
            # file is then realized again where it went (its chunks are cached by then).
            for _ in range(REALIZE_ATTEMPTS):
                if await self._realize_once(fid, progress):
                    return
            raise FsError(nfsstat3.NFS3ERR_JUKEBOX, "it kept changing while it was realized")
        finally:
            del self._realizing[fid]
            done.set()

    async def _realize_once(self, fid: int, progress: Progress | None) -> bool:
        """Write the Unreal file `fid` as a Real one where it is now; False when it moved or
        changed before its content could take its place (nothing is left on the disk)."""
        assert self.unreal is not None
        node = self._node(fid)
        entry = self._unreal_entry(node)
        if entry is None or entry.kind != Kind.FILE:
            return True  # realized meanwhile, or replaced: nothing left to realize
        self._materialize_dir(node.parent)
        area, rel = self.area_path(fid)

        def still_wanted() -> bool:  # checked with nothing awaited before the file is placed
            now = self.inodes.node(fid)
            if now is None or (now.parent, now.name, now.unreal) != (node.parent, node.name, True):
                return False
            current = self.journal.index.get(area, rel)
            return current is not None and (current.layer, current.blob) == (
                Layer.UNREAL,
                entry.blob,
            )

        dir_fd = self.local.dup_dir_fd(node.parent)
        try:
            owner = self.areas.get(node.area)
            placed = await self.unreal.realize(
                entry,
                dir_fd,
                node.name,
                self._area_owner(node.area),
                progress,
                owner.name if owner else "",
                still_wanted,
            )
            if not placed:
                return False
            st = os.stat(node.name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as e:
            raise from_os_error(e) from None
        finally:
            os.close(dir_fd)
        batch = self.store.batch()
        self.inodes.put_node(batch, Node(fid, node.parent, area, st.st_dev, st.st_ino, node.name))
        self.journal.index.put(batch, area, rel, entry_of(st, entry.blob))
        batch.commit()
        return True

    async def unrealize(self, fid: int, pin: str | None) -> int:
        """Move a Real file's content into the blob cache (verified, pinned for `pin`) and
        remove the file once the index holds it; the fid stays. Returns the bytes moved.

        The file must rest: no write in flight, none waiting to be hashed, and no change
        while its content is copied (BUSY otherwise, and the file stays as it was)."""
        node = self._node(fid)
        if self._unreal_entry(node) is not None:
            return 0
        if self.unreal is None:
            raise FsError(nfsstat3.NFS3ERR_NOTSUPP, "no blob cache attached")
        node, st = self._real_node(fid)
        if not stat.S_ISREG(st.st_mode):
            raise FsError(nfsstat3.NFS3ERR_INVAL, "only files have content to move")
        if st.st_nlink > 1:
            raise FsError(nfsstat3.NFS3ERR_INVAL, f"the file has {st.st_nlink} names")
        area, rel = self.area_path(fid)
        if self.fds.busy(fid) or self.journal.is_dirty(area, rel):
            raise FsError(nfsstat3.NFS3ERR_JUKEBOX, "being written; try again when it rests")
        blobs = self.unreal.blobs
        area_name = self.areas[area].name
        fd, _ = self.local.open_file(node, writable=False)
        try:
            before = os.fstat(fd)
            with open(fd, "rb", buffering=0, closefd=False) as f:
                blob = await trio.to_thread.run_sync(
                    lambda: blobs.ingest(f, area=area_name, pin=pin)
                )
        except OSError as e:
            raise from_os_error(e) from None
        finally:
            os.close(fd)
        # From here to the unlink nothing awaits, so no NFS call runs in between.
        node = self._node(fid)
        try:
            after = self.local.child_stat(node.parent, node.name)
        except FsError:
            after = None
        unchanged = (
            after is not None
            and (after.st_ino, after.st_size, after.st_mtime_ns, after.st_ctime_ns)
            == (before.st_ino, before.st_size, before.st_mtime_ns, before.st_ctime_ns)
            and self.area_path(fid) == (area, rel)  # not renamed within one clock tick
        )
        if not unchanged or self.fds.busy(fid) or self.journal.is_dirty(area, rel):
            if pin is not None:
                blobs.unpin(blob, pin)  # the copy stays, as evictable cache
            raise FsError(nfsstat3.NFS3ERR_JUKEBOX, "changed while its content was moved")
        entry = entry_of(before, blob)
        entry.layer = Layer.UNREAL
        batch = self.store.batch()
        self.journal.index.put(batch, area, rel, entry)
        self.inodes.forget_inode(batch, node)
        self.inodes.put_node(batch, Node(fid, node.parent, area, 0, 0, node.name))
        # Synced: once the file is unlinked, this batch (and the WAL before it, the blob's
        # manifest included) is the only record of its content, and must survive a power cut.
        batch.commit(sync=True)
        self.fds.invalidate(fid)
        # A crash here leaves both the file and an Unreal entry: the start-up scan then
        # takes the file back as Real (the old state), and the cache copy stays as cache.
        try:
            os.unlink(node.name, dir_fd=self.local.dir_fd(node.parent))
        except FileNotFoundError:
            pass
        except (OSError, FsError) as e:
            log.warning("cannot remove %s after moving it to the cache: %s", os.fsdecode(rel), e)
        self._index_generation += 1
        self._listings.forget(node.parent)
        return before.st_size
