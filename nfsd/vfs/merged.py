"""The merged tree: one tree of fileids over the local layer (ordinary files) and the Unreal
layer (index entries whose content is in the blob cache), behind the Tree contract.

Owns routing (a node is Real when the fileid table records an inode for it, Unreal when the
index holds it as such), the fileid table's updates for every namespace change (one batch
each), the journal's reports, the directory listings that merge both layers, and the moves
between the layers: realize (an Unreal file written as a Real one, keeping its fileid) and
unrealize (a Real file's content moved into the cache, then the file removed).

Each area is a directory; the virtual root (fileid 1) lists the areas by name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import struct
import time
from collections.abc import Iterator

import trio

from nfsd.store.areas import AreaTable
from nfsd.store.db import Batch, Store
from nfsd.store.index import Entry, Kind, Layer
from nfsd.threads import run_blocking
from nfsd.vfs.errors import FsError, from_os_error
from nfsd.vfs.fdcache import FdCache
from nfsd.vfs.inodes import ROOT_FID, InodeTable, Node
from nfsd.vfs.journal import DEFAULT_REST, Journal, entry_of
from nfsd.vfs.listing import DOT_COOKIE, DOTDOT_COOKIE, Listing, ListingCache, name_cookie
from nfsd.vfs.local import AreaRoots, LocalLayer
from nfsd.vfs.names import TEMP_PREFIX, check_name, check_new_name, check_old_name
from nfsd.vfs.osapi import RWF_NOWAIT
from nfsd.vfs.tree import (
    SERVER_TIME,
    Attr,
    DirEntry,
    FsStat,
    Owner,
    ReadResult,
    SetAttr,
    Tree,
)
from nfsd.vfs.unreal import Progress, UnrealLayer, unreal_attr
from nfsd.waiting import about_to_wait
from xdr.nfs3 import ftype3, nfsstat3, stable_how

log = logging.getLogger("realize.tree")

_INLINE_WRITE = 64 * 1024

_KIND = {
    stat.S_IFREG: ftype3.NF3REG,
    stat.S_IFDIR: ftype3.NF3DIR,
    stat.S_IFLNK: ftype3.NF3LNK,
    stat.S_IFCHR: ftype3.NF3CHR,
    stat.S_IFBLK: ftype3.NF3BLK,
    stat.S_IFSOCK: ftype3.NF3SOCK,
    stat.S_IFIFO: ftype3.NF3FIFO,
}

_SPECIAL = {
    ftype3.NF3FIFO: stat.S_IFIFO,
    ftype3.NF3SOCK: stat.S_IFSOCK,
    ftype3.NF3CHR: stat.S_IFCHR,
    ftype3.NF3BLK: stat.S_IFBLK,
}


_KIND_BY_FORMAT = [_KIND.get(fmt << 12, ftype3.NF3REG) for fmt in range(16)]
_NO_RDEV = (0, 0)


def attr_from_stat(st: os.stat_result, fid: int) -> Attr:
    """The attributes of an lstat; in a READDIRPLUS this runs once per entry."""
    mode = st.st_mode
    kind = _KIND_BY_FORMAT[(mode >> 12) & 15]
    nlink = st.st_nlink
    if nlink < 2 and kind == ftype3.NF3DIR:
        nlink = 2  # macOS skips READDIR of a directory that claims one link
    rdev = st.st_rdev
    return Attr(
        kind,
        mode & 0o7777,
        nlink,
        st.st_uid,
        st.st_gid,
        st.st_size,
        st.st_blocks * 512,
        (os.major(rdev), os.minor(rdev)) if rdev else _NO_RDEV,
        fid,
        st.st_atime_ns,
        st.st_mtime_ns,
        st.st_ctime_ns,
    )


class Area:
    __slots__ = ("id", "name", "path", "root_fid")

    def __init__(self, area_id: int, name: str, path: bytes, root_fid: int) -> None:
        self.id, self.name, self.path, self.root_fid = area_id, name, path, root_fid


def _read_cached(fd: int, buf: bytearray, offset: int) -> tuple[int, bool]:
    """Read into buf what the page cache holds, without waiting (RWF_NOWAIT).

    Returns the count read and whether the end of the file was reached."""
    if RWF_NOWAIT == 0:
        return 0, False
    view = memoryview(buf)
    done = 0
    while done < len(buf):
        try:
            n = os.preadv(fd, [view[done:]], offset + done, RWF_NOWAIT)
        except OSError:  # EAGAIN: it would wait; others: the thread will tell
            return done, False
        if n == 0:
            return done, True
        done += n
    return done, False


def _read_into(fd: int, buf: bytearray, start: int, offset: int) -> int:
    """Read into buf[start:] until it is full or the file ends; the count read."""
    view = memoryview(buf)
    done = start
    while done < len(buf):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            break
        done += n
    return done - start


def _write_cached(fd: int, data: bytes, offset: int) -> int:
    """Bytes of data written without waiting (RWF_NOWAIT); the rest goes to a thread."""
    if RWF_NOWAIT == 0:
        return 0
    try:
        return os.pwritev(fd, [data], offset, RWF_NOWAIT)
    except OSError:
        return 0


def _write_all(fd: int, offset: int, data: bytes, stable: stable_how) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written
    if stable == stable_how.FILE_SYNC:
        os.fsync(fd)
    elif stable == stable_how.DATA_SYNC:
        os.fdatasync(fd)


def _create_file(dir_fd: int, name: bytes, mode: int, owner: Owner) -> os.stat_result:
    """A new regular file `name` (O_EXCL) given to `owner`; its stat. On a worker thread."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    fd = os.open(name, flags, mode, dir_fd=dir_fd)
    try:
        if os.geteuid() == 0:
            os.fchown(fd, owner.uid, owner.gid)
        return os.fstat(fd)
    finally:
        os.close(fd)


def _make_owned(dir_fd: int, name: bytes, owner: Owner, make) -> os.stat_result:
    """`make(dir_fd, name)`, then the new object given to `owner` (never following it); its
    lstat. On a worker thread."""
    make(dir_fd, name)
    if os.geteuid() == 0:
        os.chown(name, owner.uid, owner.gid, dir_fd=dir_fd, follow_symlinks=False)
    return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)


class MergedTree(Tree):
    def __init__(
        self,
        store: Store,
        areas: dict[str, str | os.PathLike[str]],
        hidden: set[str] | None = None,
        *,
        unreal: UnrealLayer | None = None,
        rest: float = DEFAULT_REST,
    ) -> None:
        """`hidden`: directories inside areas that clients must not see (the state
        directory); hidden by (dev, ino), wherever they sit. `unreal`: the Unreal layer
        (without one, only Real files are served). `rest`: how long a changed file rests
        before it is hashed into the history."""
        self.store = store
        self.hidden = {os.fsencode(os.path.abspath(p)) for p in hidden or ()}
        hidden_ids = set()
        for path in self.hidden:
            with contextlib.suppress(OSError):
                st = os.stat(path)
                hidden_ids.add((st.st_dev, st.st_ino))
        self.inodes = InodeTable(store)
        self.roots = AreaRoots(hidden_ids)
        self.local = LocalLayer(self.inodes, self.roots)
        self.fds = FdCache()
        self.areas: dict[int, Area] = {}
        self.area_by_name: dict[str, Area] = {}
        self._listings = ListingCache()
        meta = store.family("meta")
        created = meta.get(b"created-ns")
        if created is None:
            created = struct.pack(">Q", time.time_ns())
            meta[b"created-ns"] = created
        self.created_ns = struct.unpack(">Q", created)[0]
        table = AreaTable(store)
        for name, path in areas.items():
            self._register_area(table, name, os.fsencode(os.path.abspath(path)))
        self.journal = Journal(store, self.roots, rest)
        self.unreal = unreal
        self._index_generation = 0  # bumped when Unreal entries change (listings depend on it)
        self._realizing: dict[int, trio.Event] = {}
        self._owners: dict[int, tuple[float, tuple[int, int]]] = {}

    # ---- areas ----

    def _register_area(self, table: AreaTable, name: str, path: bytes) -> None:
        batch = self.store.batch()
        record = table.register(batch, name, path, self.inodes.allocate)
        try:
            st = self.roots.add(record.id, path)
        except OSError as e:
            raise ValueError(f"area {name}: cannot use {os.fsdecode(path)}: {e.strerror}") from e
        # The area root keeps its fileid even if its directory was replaced or moved.
        self.inodes.put_node(batch, Node(record.root_fid, 0, record.id, st.st_dev, st.st_ino, b""))
        batch.commit()
        area = Area(record.id, name, path, record.root_fid)
        self.areas[record.id] = area
        self.area_by_name[name] = area

    def area_of(self, fid: int) -> int | None:
        if fid == ROOT_FID:
            return None
        return self._node(fid).area

    def area_root(self, area: int) -> int:
        return self.areas[area].root_fid

    def index_changed(self) -> None:
        """Unreal entries were added or removed outside the tree (an import): listings that
        merge them are out of date."""
        self._index_generation += 1

    # ---- resolution ----

    def _node(self, fid: int) -> Node:
        node = self.inodes.node(fid)
        if node is None or node.area not in self.areas:
            raise FsError(nfsstat3.NFS3ERR_STALE)
        return node

    def area_path(self, fid: int) -> tuple[int, bytes]:
        """(area, path relative to the area root) of `fid`'s primary name."""
        parts: list[bytes] = []
        node = self._node(fid)
        while node.parent:
            parts.append(node.name)
            if len(parts) > 4096:
                raise FsError(nfsstat3.NFS3ERR_STALE, "cycle")
            node = self._node(node.parent)
        parts.reverse()
        return node.area, b"/".join(parts)

    def _child_path(self, dir_fid: int, name: bytes) -> tuple[int, bytes]:
        area, path = self.area_path(dir_fid)
        return area, path + b"/" + name if path else name

    def _unreal_entry(self, node: Node) -> Entry | None:
        """The index entry of an Unreal node; None for a Real one."""
        if not node.unreal:
            return None
        area, rel = self.area_path(node.fid)
        entry = self.journal.index.get(area, rel)
        if entry is not None and entry.layer == Layer.UNREAL:
            return entry
        self._adopt(node, area)
        return None

    def _adopt(self, node: Node, area: int) -> None:
        """The index holds an Unreal node's path as Real now (realized, or put there by
        another program): the node takes that file's inode, keeping its fid. STALE when
        there is no such file."""
        parent = self._node(node.parent)
        st = None if parent.unreal else self.local.child_stat(node.parent, node.name)
        if st is None:
            raise FsError(nfsstat3.NFS3ERR_STALE)
        batch = self.store.batch()
        self.inodes.put_node(
            batch, Node(node.fid, node.parent, area, st.st_dev, st.st_ino, node.name)
        )
        batch.commit()

    def _real_node(self, fid: int) -> tuple[Node, os.stat_result]:
        """A Real node and its lstat, checked to be the very inode recorded."""
        node = self._node(fid)
        if self._unreal_entry(node) is not None:
            # Callers realize an Unreal file first (prepare_change); reaching here is a bug,
            # which must not make a client retry forever as JUKEBOX would.
            raise FsError(nfsstat3.NFS3ERR_NOTSUPP, "not on this machine yet")
        node = self._node(fid)  # adopting may have given it an inode
        return node, self.local.lstat(node)

    def _writable_dir(self, fid: int) -> int:
        """A descriptor of the Real directory `fid`, made real first if it is Unreal (so
        something can be put in it). Cached: use it at once."""
        if fid == ROOT_FID:
            raise FsError(nfsstat3.NFS3ERR_ACCES, "the root holds only areas")
        self._materialize_dir(fid)
        _, st = self._real_node(fid)
        if not stat.S_ISDIR(st.st_mode):
            raise FsError(nfsstat3.NFS3ERR_NOTDIR)
        return self.local.dir_fd(fid)

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
            os.mkdir(node.name, entry.mode & 0o7777, dir_fd=parent_fd)
            st = os.stat(node.name, dir_fd=parent_fd, follow_symlinks=False)
        except OSError as e:
            raise from_os_error(e) from None
        area, rel = self.area_path(fid)
        batch = self.store.batch()
        self.inodes.put_node(batch, Node(fid, node.parent, area, st.st_dev, st.st_ino, node.name))
        entry.layer = Layer.REAL
        self.journal.index.put(batch, area, rel, entry)
        batch.commit()
        self._listings.forget(node.parent)

    # ---- moves between the layers ----

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
        self._materialize_dir(node.parent)
        done = self._realizing[fid] = trio.Event()
        dir_fd = self.local.dup_dir_fd(node.parent)
        try:
            await self.unreal.realize(entry, dir_fd, node.name, progress)
            st = os.stat(node.name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as e:
            raise from_os_error(e) from None
        finally:
            os.close(dir_fd)
            del self._realizing[fid]
            done.set()
        area, rel = self.area_path(fid)
        batch = self.store.batch()
        self.inodes.put_node(batch, Node(fid, node.parent, area, st.st_dev, st.st_ino, node.name))
        self.journal.index.put(batch, area, rel, entry_of(st, entry.blob))
        batch.commit()

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
        unchanged = after is not None and (
            (after.st_ino, after.st_size, after.st_mtime_ns, after.st_ctime_ns)
            == (before.st_ino, before.st_size, before.st_mtime_ns, before.st_ctime_ns)
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
        batch.commit()
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

    def fid_of_path(self, area: int, rel: bytes) -> int:
        """The fid of an area path, walked name by name as LOOKUP would."""
        fid = self.areas[area].root_fid
        for name in rel.split(b"/") if rel else ():
            fid = self.lookup(fid, name)[0]
        return fid

    # ---- the fileid table ----

    def _register(self, dir_fid: int, name: bytes, st: os.stat_result) -> int:
        """The fid of the entry `name` of `dir_fid`, whose lstat is `st`; recorded if new."""
        fid = self.inodes.child(dir_fid, name)
        if fid is not None:
            node = self.inodes.node(fid)
            if node is not None and node.ino == st.st_ino and node.dev == st.st_dev:
                return fid
        area = self._node(dir_fid).area
        batch = self.store.batch()
        if fid is not None:  # the name now holds another object than recorded
            old = self.inodes.node(fid)
            self.inodes.drop_link(batch, fid, dir_fid, name)
            if old is not None:
                self._forget_link(batch, old, dir_fid, name, remaining=None)
        known = self.inodes.by_inode(area, st.st_dev, st.st_ino)
        node = self.inodes.node(known) if known is not None else None
        if node is not None:
            fid = node.fid
            # A second name of a known inode: a hard link, or a move made outside.
            if not self._primary_holds(node):
                self.inodes.put_node(batch, Node(fid, dir_fid, area, node.dev, node.ino, name))
        else:
            fid = self.inodes.allocate(batch)
            self.inodes.put_node(batch, Node(fid, dir_fid, area, st.st_dev, st.st_ino, name))
        self.inodes.add_link(batch, fid, dir_fid, name)
        batch.commit()
        return fid

    def _primary_holds(self, node: Node) -> bool:
        """Whether the node's recorded primary name still names its inode."""
        try:
            self.local.lstat(node)
        except (OSError, FsError):
            return False
        return True

    def _forget_link(
        self, batch: Batch, node: Node, dir_fid: int, name: bytes, remaining: int | None
    ) -> None:
        """After (dir_fid, name) stopped naming `node`: forget it or move its primary name."""
        others = [link for link in self.inodes.links(node.fid) if link != (dir_fid, name)]
        if remaining == 0 or not others:
            self.inodes.drop_node(batch, node)
            self.fds.invalidate(node.fid)
            self.local.forget_dir(node.fid)
            return
        if (node.parent, node.name) == (dir_fid, name):
            parent, other = others[0]
            self.inodes.put_node(
                batch, Node(node.fid, parent, node.area, node.dev, node.ino, other)
            )

    def _known_child(self, dir_fid: int, name: bytes, st: os.stat_result) -> Node | None:
        fid = self.inodes.child(dir_fid, name)
        node = self.inodes.node(fid) if fid is not None else None
        if node is None or node.ino != st.st_ino or node.dev != st.st_dev:
            return None
        return node

    def _unreal_child(self, dir_fid: int, name: bytes) -> int | None:
        """The fid of an Unreal entry `name` of `dir_fid` (recorded if new), or None."""
        area, rel = self._child_path(dir_fid, name)
        entry = self.journal.index.get(area, rel)
        if entry is None or entry.layer != Layer.UNREAL:
            return None
        fid = self.inodes.child(dir_fid, name)
        if fid is not None:
            node = self.inodes.node(fid)
            if node is not None and node.unreal:
                return fid
        batch = self.store.batch()
        if fid is not None:
            self.inodes.drop_link(batch, fid, dir_fid, name)
        fid = self.inodes.allocate(batch)
        self.inodes.put_node(batch, Node(fid, dir_fid, area, 0, 0, name))
        self.inodes.add_link(batch, fid, dir_fid, name)
        batch.commit()
        return fid

    # ---- attributes ----

    def getattr(self, fid: int) -> Attr:
        if fid == ROOT_FID:
            return self._root_attr()
        node = self._node(fid)
        entry = self._unreal_entry(node)
        if entry is not None:
            return unreal_attr(entry, fid, *self._area_owner(node.area))
        if node.unreal:
            node = self._node(fid)  # adopted a Real file just now
        return attr_from_stat(self.local.lstat(node), fid)

    def _area_owner(self, area: int) -> tuple[int, int]:
        """Unreal objects belong to whoever owns the area's directory (looked at once a
        second: every GETATTR of an Unreal file asks)."""
        now = time.monotonic()
        known = self._owners.get(area)
        if known is not None and now - known[0] < 1.0:
            return known[1]
        try:
            st = os.fstat(self.roots.fd(area))
            owner = st.st_uid, st.st_gid
        except (OSError, FsError):
            owner = 0, 0
        self._owners[area] = (now, owner)
        return owner

    def _root_attr(self) -> Attr:
        t = self.created_ns
        return Attr(
            ftype3.NF3DIR, 0o755, 2 + len(self.areas), 0, 0, 4096, 4096, (0, 0), ROOT_FID, t, t, t
        )

    def setattr(self, fid: int, changes: SetAttr) -> Attr | None:
        if fid == ROOT_FID:
            raise FsError(nfsstat3.NFS3ERR_ACCES)
        node, st = self._real_node(fid)
        try:
            if changes.size is not None:
                if stat.S_ISDIR(st.st_mode):
                    raise FsError(nfsstat3.NFS3ERR_ISDIR)
                if not stat.S_ISREG(st.st_mode):
                    raise FsError(nfsstat3.NFS3ERR_INVAL)
                with self.fds.borrow(fid, lambda w: self.local.open_file(node, w), True) as fd:
                    os.ftruncate(fd, changes.size)
            with self.local.pin(node) as pinned:
                if changes.uid is not None or changes.gid is not None:
                    uid = -1 if changes.uid is None else changes.uid
                    gid = -1 if changes.gid is None else changes.gid
                    pinned.chown(uid, gid)
                if changes.mode is not None:
                    pinned.chmod(changes.mode & 0o7777)
                if changes.atime_ns is not None or changes.mtime_ns is not None:
                    now = time.time_ns()

                    def pick(value: int | None, current: int) -> int:
                        if value is None:
                            return current
                        return now if value == SERVER_TIME else value

                    pinned.utime(
                        pick(changes.atime_ns, st.st_atime_ns),
                        pick(changes.mtime_ns, st.st_mtime_ns),
                    )
        except OSError as e:
            raise from_os_error(e) from None
        if node.parent:
            self._listings.forget(node.parent)
        area, rel = self.area_path(fid)
        if changes.size is not None:
            self.journal.written(area, rel)
        try:
            after = self.local.lstat(node)
        except FsError:
            return None
        self.journal.attributes(area, rel, after)
        return attr_from_stat(after, fid)

    # ---- lookup and listing ----

    def lookup(self, dir_fid: int, name: bytes) -> tuple[int, Attr | None]:
        if name == b".":
            return dir_fid, self.getattr(dir_fid)
        if name == b"..":
            return self.parent(dir_fid), None
        check_name(name)
        if dir_fid == ROOT_FID:
            area = self.area_by_name.get(os.fsdecode(name))
            if area is None:
                raise FsError(nfsstat3.NFS3ERR_NOENT)
            return area.root_fid, None
        if name.startswith(TEMP_PREFIX):
            raise FsError(nfsstat3.NFS3ERR_NOENT)
        node = self._node(dir_fid)
        entry = self._unreal_entry(node)
        if entry is not None:
            if entry.kind != Kind.DIR:
                raise FsError(nfsstat3.NFS3ERR_NOTDIR)
            st = None  # only in the index: so is everything in it
        else:
            st = self.local.child_stat(dir_fid, name)
        if st is None:
            fid = self._unreal_child(dir_fid, name)
            if fid is None:
                raise FsError(nfsstat3.NFS3ERR_NOENT)
            return fid, None
        fid = self._register(dir_fid, name, st)
        return fid, attr_from_stat(st, fid)

    def parent(self, dir_fid: int) -> int:
        if dir_fid == ROOT_FID:
            return ROOT_FID
        return self._node(dir_fid).parent or ROOT_FID

    def readlink(self, fid: int) -> bytes:
        node = self._node(fid)
        entry = self._unreal_entry(node)
        if entry is not None:
            if entry.kind != Kind.SYMLINK:
                raise FsError(nfsstat3.NFS3ERR_INVAL, "not a symlink")
            return entry.target
        node, st = self._real_node(fid)
        if not stat.S_ISLNK(st.st_mode):
            raise FsError(nfsstat3.NFS3ERR_INVAL, "not a symlink")
        return self.local.readlink(node)

    def _listing(self, dir_fid: int) -> Listing:
        if dir_fid == ROOT_FID:
            rows = [
                (name_cookie(a.name.encode()), a.name.encode(), 0, a.root_fid)
                for a in self.areas.values()
            ]
            return Listing.of((0, 0, 0), rows)
        node = self._node(dir_fid)
        entry = self._unreal_entry(node)
        if entry is not None:
            if entry.kind != Kind.DIR:
                raise FsError(nfsstat3.NFS3ERR_NOTDIR)
            version: tuple[int, ...] = (0, 0, 0, self._index_generation)
        else:
            node, st = self._real_node(dir_fid)
            if not stat.S_ISDIR(st.st_mode):
                raise FsError(nfsstat3.NFS3ERR_NOTDIR)
            version = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, self._index_generation)
        cached = self._listings.get(dir_fid, version)
        if cached is not None:
            return cached
        rows: list[tuple[int, bytes, int, int]] = []
        if version[0]:
            rows = [(name_cookie(name), name, ino, 0) for name, ino in self.local.entries(dir_fid)]
        # Unreal entries of this directory join the listing, unless a Real one has the name.
        real_names = {row[1] for row in rows}
        area, rel = self.area_path(dir_fid)
        for name, child in self.journal.index.children(area, rel):
            if child.layer == Layer.UNREAL and name not in real_names:
                rows.append((name_cookie(name), name, 0, 0))
        listing = Listing.of(version, rows)
        self._listings.put(dir_fid, listing)
        return listing

    def readdir(self, dir_fid: int, cookie: int) -> Iterator[DirEntry]:
        return (entry for entry, _ in self._entries(dir_fid, cookie, with_attrs=False))

    def readdirplus(self, dir_fid: int, cookie: int) -> Iterator[tuple[DirEntry, Attr | None]]:
        return self._entries(dir_fid, cookie, with_attrs=True)

    def _entries(
        self, dir_fid: int, cookie: int, with_attrs: bool
    ) -> Iterator[tuple[DirEntry, Attr | None]]:
        listing = self._listing(dir_fid)
        if cookie < DOT_COOKIE:
            yield DirEntry(b".", dir_fid, DOT_COOKIE), None
        if cookie < DOTDOT_COOKIE:
            yield DirEntry(b"..", self.parent(dir_fid), DOTDOT_COOKIE), None
        # Resume after the cookie's place in name-hash order: entries that still exist are
        # neither repeated nor skipped, however the directory changed meanwhile.
        if dir_fid == ROOT_FID:
            for i in range(listing.after(cookie), len(listing.names)):
                fid = listing.fids[i]
                attr = self.getattr(fid) if with_attrs else None
                yield DirEntry(listing.names[i], fid, listing.cookies[i]), attr
            return
        # The directory held for this listing (the cache may close its own copy meanwhile).
        dir_fd = os.dup(self.local.dir_fd(dir_fid)) if len(listing.names) else -1
        hidden = self.roots.hidden
        hidden_inodes = {ino for _, ino in hidden}
        names, inodes, fids, cookies = listing.names, listing.inodes, listing.fids, listing.cookies
        try:
            for i in range(listing.after(cookie), len(names)):
                name, ino = names[i], inodes[i]
                if ino == 0:  # Unreal
                    fid = fids[i] or self._unreal_child(dir_fid, name)
                    if fid is None:
                        continue
                    fids[i] = fid
                    attr = self._attr_or_none(fid) if with_attrs else None
                    yield DirEntry(name, fid, cookies[i]), attr
                    continue
                fid = fids[i]
                st = None
                if with_attrs or not fid:
                    try:
                        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    except OSError:
                        continue  # gone since the listing was taken
                    if st.st_ino != ino:
                        continue  # replaced: the directory's next listing has it
                    if st.st_ino in hidden_inodes and (st.st_dev, st.st_ino) in hidden:
                        continue
                    if not fid:
                        fid = fids[i] = self._register(dir_fid, name, st)
                yield DirEntry(name, fid, cookies[i]), (attr_from_stat(st, fid) if st else None)
        finally:
            if dir_fd >= 0:
                os.close(dir_fd)

    def _attr_or_none(self, fid: int) -> Attr | None:
        try:
            return self.getattr(fid)
        except FsError:
            return None

    # ---- data ----

    def _open(self, fid: int, writable: bool) -> tuple[int, bool]:
        node, _ = self._real_node(fid)
        return self.local.open_file(node, writable)

    async def read(self, fid: int, offset: int, count: int) -> ReadResult:
        node = self._node(fid)
        entry = self._unreal_entry(node)
        if entry is not None:
            if self.unreal is None:
                raise FsError(nfsstat3.NFS3ERR_IO, "no blob cache attached")
            data, eof = await self.unreal.read(entry, offset, count)
            return ReadResult(data, eof, unreal_attr(entry, fid, *self._area_owner(node.area)))
        with self.fds.borrow(fid, lambda w: self._open(fid, w), False) as fd:
            try:
                buf = bytearray(count)
                # What the page cache holds is read at once; only a read that would wait on
                # the disk goes to a worker thread.
                done, ended = _read_cached(fd, buf, offset)
                if done < count and not ended:
                    done += await run_blocking(_read_into, fd, buf, done, offset)
                st = os.fstat(fd)
            except OSError as e:
                raise from_os_error(e) from None
        data = memoryview(buf)[:done] if done < count else buf
        return ReadResult(data, offset + done >= st.st_size, attr_from_stat(st, fid))

    async def write(
        self, fid: int, offset: int, data: bytes, stable: stable_how
    ) -> tuple[stable_how, Attr | None]:
        with self.fds.borrow(fid, lambda w: self._open(fid, w), True) as fd:
            try:
                done = 0
                if stable == stable_how.UNSTABLE:
                    if len(data) <= _INLINE_WRITE:
                        # Small buffered writes only copy into the page cache: cheaper here
                        # than a thread hand-off (RWF_NOWAIT writes are not on every kernel).
                        _write_all(fd, offset, data, stable)
                        done = len(data)
                    else:
                        done = _write_cached(fd, data, offset)
                if done < len(data) or stable != stable_how.UNSTABLE:
                    await run_blocking(
                        _write_all, fd, offset + done, memoryview(data)[done:], stable
                    )
                st = os.fstat(fd)
            except OSError as e:
                raise from_os_error(e) from None
        self.journal.written(*self.area_path(fid))
        return stable, attr_from_stat(st, fid)

    async def commit(self, fid: int) -> Attr | None:
        if self._unreal_entry(self._node(fid)) is not None:
            return self._attr_or_none(fid)  # nothing written here: all of it is in the cache
        with self.fds.borrow(fid, lambda w: self._open(fid, w), False) as fd:
            try:
                await run_blocking(os.fsync, fd)
                return attr_from_stat(os.fstat(fd), fid)
            except OSError as e:
                raise from_os_error(e) from None

    # ---- namespace changes ----

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
        """A descriptor of the writable directory that the caller owns (and closes): a
        change waits on a worker thread, while the cache may close its own."""
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
        dir_fd = self._held_dir(dir_fid)
        try:
            try:
                st = await run_blocking(_create_file, dir_fd, name, mode & 0o7777, owner)
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
        fid = self._created(dir_fid, name, st)
        if verifier is not None:
            batch = self.store.batch()
            self.inodes.put_verifier(batch, fid, verifier)
            batch.commit()
        return fid, attr_from_stat(st, fid), True

    async def _make(
        self, dir_fid: int, name: bytes, owner: Owner, make, target: bytes = b""
    ) -> tuple[int, Attr]:
        """Run `make(dir_fd, name)` (mkdir, symlink or mknod) on a worker thread, give it to
        `owner`, and register it."""
        dir_fd = self._held_dir(dir_fid)
        try:
            st = await run_blocking(_make_owned, dir_fd, name, owner, make)
        except OSError as e:
            raise from_os_error(e) from None
        finally:
            os.close(dir_fd)
        fid = self._created(dir_fid, name, st, target)
        return fid, attr_from_stat(st, fid)

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
            try:
                remove = os.rmdir if directory else os.unlink
                await run_blocking(lambda: remove(name, dir_fd=dir_fd))
            except OSError as e:
                raise from_os_error(e) from None
        finally:
            os.close(dir_fd)
        self._listings.forget(dir_fid)
        self.journal.removed(*self._child_path(dir_fid, name))
        node = self._known_child(dir_fid, name, st)
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
        await self._unlink(dir_fid, name, directory=False)

    async def rmdir(self, dir_fid: int, name: bytes) -> None:
        await self._unlink(dir_fid, name, directory=True)
        self.local.forget_dirs()

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
        src_fd = self._held_dir(from_dir)
        try:
            dst_fd = self._held_dir(to_dir)
            try:
                await self._rename_in(src_fd, dst_fd, from_dir, from_name, to_dir, to_name)
            finally:
                os.close(dst_fd)
        finally:
            os.close(src_fd)

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
        try:
            await run_blocking(
                lambda: os.rename(from_name, to_name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
            )
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
        dir_fd = self._held_dir(dir_fid)
        try:
            pinned = self.local.pin(node)
            try:
                if pinned.fd < 0:  # held by name in a cached descriptor: not for a thread
                    pinned.link_as(dir_fd, name)
                else:
                    await run_blocking(pinned.link_as, dir_fd, name)
            finally:
                pinned.close()
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
        return self._attr_or_none(fid)

    # ---- file system ----

    def fsstat(self, fid: int) -> FsStat:
        try:
            if fid == ROOT_FID:
                vfs = os.statvfs(os.fsencode(str(self.store.path)))
            else:
                vfs = self.roots.statvfs(self._node(fid).area)
        except OSError as e:
            raise from_os_error(e) from None
        return FsStat(
            vfs.f_blocks * vfs.f_frsize,
            vfs.f_bfree * vfs.f_frsize,
            vfs.f_bavail * vfs.f_frsize,
            vfs.f_files,
            vfs.f_ffree,
            vfs.f_favail,
        )

    def close(self) -> None:
        self.fds.close_all()
        self.local.close()
        self.roots.close()
