"""The Real layer: areas kept as ordinary local directories, served through the Tree interface.

Owns path resolution (fileid → path by walking parents, checked against the inode it was
recorded with, so a replaced file is NFS3ERR_STALE rather than someone else's data), the
directory listing order (cookies are name hashes, so paging survives changes), and every
namespace change with its fileid-table update in one batch.

Each area is a directory; the virtual root (fileid 1) lists the areas by name.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import logging
import os
import stat
import struct
import time
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

import trio

from nfsd.store.db import Store
from nfsd.store.index import Entry, Kind, Layer
from nfsd.vfs.errors import FsError, from_os_error
from nfsd.vfs.fdcache import FdCache
from nfsd.vfs.inodes import ROOT_FID, InodeTable, Node
from nfsd.vfs.journal import TEMP_PREFIX, Journal, entry_of
from nfsd.vfs.tree import (
    SERVER_TIME,
    Attr,
    DirEntry,
    FsStat,
    Owner,
    SetAttr,
    Tree,
)
from nfsd.vfs.unreal import Progress, UnrealLayer, unreal_attr
from nfsd.waiting import about_to_wait
from xdr.codec import Gather
from xdr.nfs3 import ftype3, nfsstat3, stable_how

log = logging.getLogger("realize.tree")

DOT_COOKIE, DOTDOT_COOKIE = 1, 2
_FIRST_NAME_COOKIE = 3
_AREA = struct.Struct(">IQ")
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)
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


def name_cookie(name: bytes) -> int:
    """A directory cookie for `name`: a 63-bit hash, above the cookies of "." and ".."."""
    value = int.from_bytes(hashlib.blake2b(name, digest_size=8).digest(), "big") >> 1
    return max(value, _FIRST_NAME_COOKIE)


def attr_from_stat(st: os.stat_result, fid: int) -> Attr:
    kind = _KIND.get(stat.S_IFMT(st.st_mode), ftype3.NF3REG)
    nlink = st.st_nlink
    if kind == ftype3.NF3DIR and nlink < 2:
        nlink = 2  # macOS skips READDIR of a directory that claims one link
    return Attr(
        kind,
        stat.S_IMODE(st.st_mode),
        nlink,
        st.st_uid,
        st.st_gid,
        st.st_size,
        st.st_blocks * 512,
        (os.major(st.st_rdev), os.minor(st.st_rdev)),
        fid,
        st.st_atime_ns,
        st.st_mtime_ns,
        st.st_ctime_ns,
    )


def check_name(name: bytes) -> None:
    """Reject names no directory entry can have, before they reach the file system."""
    if not name or b"/" in name or b"\0" in name:
        raise FsError(nfsstat3.NFS3ERR_INVAL, "invalid name")
    if len(name) > 255:
        raise FsError(nfsstat3.NFS3ERR_NAMETOOLONG)


def check_new_name(name: bytes) -> None:
    """A name to create or remove: also not "." or ".."."""
    check_name(name)
    if name in (b".", b".."):
        raise FsError(nfsstat3.NFS3ERR_EXIST, "dot name")
    if name.startswith(TEMP_PREFIX):
        raise FsError(nfsstat3.NFS3ERR_ACCES, "a name the server keeps for itself")


@dataclass(slots=True)
class Area:
    id: int
    name: str
    path: bytes
    root_fid: int


@dataclass(slots=True)
class _Listing:
    """A directory's names sorted by cookie, valid while the directory is unchanged."""

    version: tuple[int, ...]
    cookies: list[int]
    names: list[bytes]
    inodes: list[int]


def _read_cached(fd: int, buf: bytearray, offset: int) -> tuple[int, bool]:
    """Read into buf what the page cache holds, without waiting (RWF_NOWAIT).

    Returns the count read and whether the end of the file was reached."""
    if _RWF_NOWAIT == 0:
        return 0, False
    view = memoryview(buf)
    done = 0
    while done < len(buf):
        try:
            n = os.preadv(fd, [view[done:]], offset + done, _RWF_NOWAIT)
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
    if _RWF_NOWAIT == 0:
        return 0
    try:
        return os.pwritev(fd, [data], offset, _RWF_NOWAIT)
    except (BlockingIOError, OSError):
        return 0


class RealTree(Tree):
    def __init__(
        self,
        store: Store,
        areas: dict[str, str | os.PathLike[str]],
        hidden: set[str] | None = None,
    ) -> None:
        """`hidden`: paths inside areas that clients must not see (the state directory)."""
        self.store = store
        self.hidden = {os.fsencode(os.path.abspath(p)) for p in hidden or ()}
        self.inodes = InodeTable(store)
        self.fds = FdCache()
        self.areas: dict[int, Area] = {}
        self.area_by_name: dict[str, Area] = {}
        self._listings: OrderedDict[int, _Listing] = OrderedDict()
        self._listed_names = 0
        meta = store.family("meta")
        created = meta.get(b"created-ns")
        if created is None:
            created = struct.pack(">Q", time.time_ns())
            meta[b"created-ns"] = created
        self.created_ns = struct.unpack(">Q", created)[0]
        for name, path in areas.items():
            self._register_area(name, os.fsencode(os.path.abspath(path)))
        self.journal = Journal(store, {a.id: a.path for a in self.areas.values()})
        self.unreal: UnrealLayer | None = None  # set when a blob cache is attached
        self.index_generation = 0  # bumped when Unreal entries change (listings depend on it)
        self._realizing: dict[int, trio.Event] = {}
        self._owners: dict[int, tuple[float, tuple[int, int]]] = {}

    # ---- areas ----

    def _register_area(self, name: str, path: bytes) -> None:
        try:
            st = os.stat(path)
        except OSError as e:
            raise ValueError(f"area {name}: cannot use {os.fsdecode(path)}: {e.strerror}") from e
        if not stat.S_ISDIR(st.st_mode):
            raise ValueError(f"area {name}: {os.fsdecode(path)} is not a directory")
        meta = self.store.family("meta")
        key = b"area:" + name.encode()
        raw = meta.get(key)
        batch = self.store.batch()
        if raw is None:
            area_id = int.from_bytes(meta.get(b"next-area", b"\0\0\0\1"), "big")
            batch.put("meta", b"next-area", (area_id + 1).to_bytes(4, "big"))
            root = self.inodes.allocate(batch)
            batch.put("meta", key, _AREA.pack(area_id, root))
        else:
            area_id, root = _AREA.unpack(raw)
        # The area root keeps its fileid even if its directory was replaced or moved.
        self.inodes.put_node(batch, Node(root, 0, area_id, st.st_dev, st.st_ino, b""))
        # Where the area lives, for whoever attaches this state directory as a source.
        batch.put("meta", b"area-path:" + name.encode(), path)
        batch.commit()
        area = Area(area_id, name, path, root)
        self.areas[area_id] = area
        self.area_by_name[name] = area

    def area_of(self, fid: int) -> int | None:
        if fid == ROOT_FID:
            return None
        return self._node(fid).area

    def area_root(self, area: int) -> int:
        return self.areas[area].root_fid

    # ---- resolution ----

    def _node(self, fid: int) -> Node:
        node = self.inodes.node(fid)
        if node is None or node.area not in self.areas:
            raise FsError(nfsstat3.NFS3ERR_STALE)
        return node

    def _path(self, fid: int) -> bytes:
        """The absolute path of `fid`'s primary name."""
        area, relative = self.area_path(fid)
        root = self.areas[area].path
        return root + b"/" + relative if relative else root

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

    def _unreal_entry(self, fid: int) -> Entry | None:
        """The index entry of an Unreal object; None for a Real one.

        An Unreal node whose path now exists on the disk (its content was realized) takes
        that file's inode, keeping its fid."""
        if fid == ROOT_FID:
            return None
        node = self._node(fid)
        if not node.unreal:
            return None
        area, rel = self.area_path(fid)
        root = self.areas[area].path
        try:
            st = os.lstat(root + b"/" + rel if rel else root)
        except OSError:
            entry = self.journal.index.get(area, rel)
            if entry is None or entry.layer != Layer.UNREAL:
                raise FsError(nfsstat3.NFS3ERR_STALE) from None
            return entry
        batch = self.store.batch()
        self.inodes.put_node(batch, Node(fid, node.parent, area, st.st_dev, st.st_ino, node.name))
        batch.commit()
        return None

    def _resolve(self, fid: int) -> tuple[bytes, os.stat_result]:
        """The path of `fid` and its lstat, checked to be the very inode recorded."""
        if self._unreal_entry(fid) is not None:
            # Callers realize an Unreal file first (prepare_change); reaching here is a bug,
            # which must not make a client retry forever as JUKEBOX would.
            raise FsError(nfsstat3.NFS3ERR_NOTSUPP, "not on this machine yet")
        node = self._node(fid)
        path = self._path(fid)
        try:
            st = os.lstat(path)
        except OSError:
            raise FsError(nfsstat3.NFS3ERR_STALE) from None
        if st.st_ino != node.ino or st.st_dev != node.dev:
            raise FsError(nfsstat3.NFS3ERR_STALE, "replaced")
        return path, st

    def _dir(self, fid: int) -> bytes:
        entry = self._unreal_entry(fid)
        if entry is not None:
            if entry.kind != Kind.DIR:
                raise FsError(nfsstat3.NFS3ERR_NOTDIR)
            return self._path(fid)  # only in the index: nothing on the disk yet
        path, st = self._resolve(fid)
        if not stat.S_ISDIR(st.st_mode):
            raise FsError(nfsstat3.NFS3ERR_NOTDIR)
        return path

    def _writable_dir(self, fid: int) -> bytes:
        if fid == ROOT_FID:
            raise FsError(nfsstat3.NFS3ERR_ACCES, "the root holds only areas")
        self._materialize_dir(fid)
        return self._dir(fid)

    def _materialize_dir(self, fid: int) -> None:
        """Make an Unreal directory (and its Unreal parents) real, to put something in it."""
        entry = self._unreal_entry(fid)
        if entry is None:
            return
        if entry.kind != Kind.DIR:
            raise FsError(nfsstat3.NFS3ERR_NOTDIR)
        node = self._node(fid)
        self._materialize_dir(node.parent)
        path = self._path(fid)
        try:
            os.mkdir(path, entry.mode & 0o7777)
            st = os.lstat(path)
        except OSError as e:
            raise from_os_error(e) from None
        area, rel = self.area_path(fid)
        batch = self.store.batch()
        self.inodes.put_node(batch, Node(fid, node.parent, area, st.st_dev, st.st_ino, node.name))
        entry.layer = Layer.REAL
        self.journal.index.put(batch, area, rel, entry)
        batch.commit()
        self._listings.pop(node.parent, None)

    async def prepare_change(self, fid: int, progress: Progress | None = None) -> None:
        """Realize an Unreal file before it is written, truncated or its attributes set
        (and when it is marked `real`: then `progress` hears of every chunk written)."""
        while fid in self._realizing:  # one realization per file; later callers find it done
            about_to_wait()
            await self._realizing[fid].wait()
        entry = self._unreal_entry(fid)
        if entry is None:
            return
        if entry.kind == Kind.DIR:
            self._materialize_dir(fid)
            return
        if entry.kind != Kind.FILE or self.unreal is None:
            raise FsError(nfsstat3.NFS3ERR_NOTSUPP, "cannot change this Unreal object")
        about_to_wait()  # realizing fetches and writes the whole file
        node = self._node(fid)
        self._materialize_dir(node.parent)
        path = self._path(fid)
        done = self._realizing[fid] = trio.Event()
        try:
            await self.unreal.realize(entry, path, progress)
            st = os.lstat(path)
        except OSError as e:
            raise from_os_error(e) from None
        finally:
            del self._realizing[fid]
            done.set()
        area, rel = self.area_path(fid)
        batch = self.store.batch()
        self.inodes.put_node(batch, Node(fid, node.parent, area, st.st_dev, st.st_ino, node.name))
        real = entry_of(st, entry.blob)
        self.journal.index.put(batch, area, rel, real)
        batch.commit()

    async def unrealize(self, fid: int, pin: str | None) -> int:
        """Move a Real file's content into the blob cache (verified, pinned for `pin`) and
        remove the file once the index holds it; the fid stays. Returns the bytes moved.

        The file must rest: no write in flight, none waiting to be hashed, and no change
        while its content is copied (BUSY otherwise, and the file stays as it was)."""
        if self._unreal_entry(fid) is not None:
            return 0
        if self.unreal is None:
            raise FsError(nfsstat3.NFS3ERR_NOTSUPP, "no blob cache attached")
        path, st = self._resolve(fid)
        if not stat.S_ISREG(st.st_mode):
            raise FsError(nfsstat3.NFS3ERR_INVAL, "only files have content to move")
        if st.st_nlink > 1:
            raise FsError(nfsstat3.NFS3ERR_INVAL, f"the file has {st.st_nlink} names")
        area, rel = self.area_path(fid)
        if self.fds.busy(fid) or self.journal.is_dirty(area, rel):
            raise FsError(nfsstat3.NFS3ERR_JUKEBOX, "being written; try again when it rests")
        blobs = self.unreal.blobs
        area_name = self.areas[area].name
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            raise from_os_error(e) from None
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
        try:
            after = os.lstat(path)
        except OSError:
            after = None
        unchanged = after is not None and (
            (after.st_ino, after.st_size, after.st_mtime_ns, after.st_ctime_ns)
            == (before.st_ino, before.st_size, before.st_mtime_ns, before.st_ctime_ns)
        )
        if not unchanged or self.fds.busy(fid) or self.journal.is_dirty(area, rel):
            if pin is not None:
                blobs.unpin(blob, pin)  # the copy stays, as evictable cache
            raise FsError(nfsstat3.NFS3ERR_JUKEBOX, "changed while its content was moved")
        node = self._node(fid)
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
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as e:
            log.warning("cannot remove %s after moving it to the cache: %s", path, e)
        self.index_generation += 1
        self._listings.pop(node.parent, None)
        return before.st_size

    def fid_of_path(self, area: int, rel: bytes) -> int:
        """The fid of an area path, walked name by name as LOOKUP would."""
        fid = self.areas[area].root_fid
        for name in rel.split(b"/") if rel else ():
            fid = self.lookup(fid, name)
        return fid

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
            st = os.lstat(self._path(node.fid))
        except (OSError, FsError):
            return False
        return st.st_ino == node.ino and st.st_dev == node.dev

    def _forget_link(
        self, batch, node: Node, dir_fid: int, name: bytes, remaining: int | None
    ) -> None:
        """After (dir_fid, name) stopped naming `node`: forget it or move its primary name."""
        others = [link for link in self.inodes.links(node.fid) if link != (dir_fid, name)]
        if remaining == 0 or not others:
            self.inodes.drop_node(batch, node)
            batch.delete("inodes", b"X" + node.fid.to_bytes(8, "big"))
            self.fds.invalidate(node.fid)
            return
        if (node.parent, node.name) == (dir_fid, name):
            parent, other = others[0]
            self.inodes.put_node(
                batch, Node(node.fid, parent, node.area, node.dev, node.ino, other)
            )

    # ---- attributes ----

    def getattr(self, fid: int) -> Attr:
        if fid == ROOT_FID:
            return self._root_attr()
        entry = self._unreal_entry(fid)
        if entry is not None:
            root = self.areas[self._node(fid).area]
            owner = self._area_owner(root.id)
            return unreal_attr(entry, fid, *owner)
        _, st = self._resolve(fid)
        return attr_from_stat(st, fid)

    def _area_owner(self, area: int) -> tuple[int, int]:
        """Unreal objects belong to whoever owns the area's directory (looked at once a
        second: every GETATTR of an Unreal file asks)."""
        now = time.monotonic()
        known = self._owners.get(area)
        if known is not None and now - known[0] < 1.0:
            return known[1]
        try:
            st = os.stat(self.areas[area].path)
            owner = st.st_uid, st.st_gid
        except OSError:
            owner = 0, 0
        self._owners[area] = (now, owner)
        return owner

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

    def _root_attr(self) -> Attr:
        t = self.created_ns
        return Attr(
            ftype3.NF3DIR,
            0o755,
            2 + len(self.areas),
            0,
            0,
            4096,
            4096,
            (0, 0),
            ROOT_FID,
            t,
            t,
            t,
        )

    def setattr(self, fid: int, changes: SetAttr) -> None:
        if fid == ROOT_FID:
            raise FsError(nfsstat3.NFS3ERR_ACCES)
        path, st = self._resolve(fid)
        is_link = stat.S_ISLNK(st.st_mode)
        try:
            if changes.size is not None:
                if stat.S_ISDIR(st.st_mode):
                    raise FsError(nfsstat3.NFS3ERR_ISDIR)
                if not stat.S_ISREG(st.st_mode):
                    raise FsError(nfsstat3.NFS3ERR_INVAL)
                with self.fds.borrow(fid, lambda w: self._open(fid, w), True) as fd:
                    os.ftruncate(fd, changes.size)
            if changes.uid is not None or changes.gid is not None:
                uid = -1 if changes.uid is None else changes.uid
                gid = -1 if changes.gid is None else changes.gid
                os.chown(path, uid, gid, follow_symlinks=False)
            if changes.mode is not None and not is_link:
                os.chmod(path, changes.mode & 0o7777)
            if changes.atime_ns is not None or changes.mtime_ns is not None:
                now = time.time_ns()

                def pick(value: int | None, current: int) -> int:
                    if value is None:
                        return current
                    return now if value == SERVER_TIME else value

                os.utime(
                    path,
                    ns=(
                        pick(changes.atime_ns, st.st_atime_ns),
                        pick(changes.mtime_ns, st.st_mtime_ns),
                    ),
                    follow_symlinks=False,
                )
        except OSError as e:
            raise from_os_error(e) from None
        self._invalidate_listing_of_parent(fid)
        area, rel = self.area_path(fid)
        if changes.size is not None:
            self.journal.written(area, rel)
        with contextlib.suppress(OSError):
            self.journal.attributes(area, rel, os.lstat(path))

    # ---- lookup and listing ----

    def lookup(self, dir_fid: int, name: bytes) -> int:
        if name == b".":
            self.getattr(dir_fid)
            return dir_fid
        if name == b"..":
            return self.parent(dir_fid)
        check_name(name)
        if dir_fid == ROOT_FID:
            area = self.area_by_name.get(os.fsdecode(name))
            if area is None:
                raise FsError(nfsstat3.NFS3ERR_NOENT)
            return area.root_fid
        path = self._dir(dir_fid) + b"/" + name
        if path in self.hidden or name.startswith(TEMP_PREFIX):
            raise FsError(nfsstat3.NFS3ERR_NOENT)
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            fid = self._unreal_child(dir_fid, name)
            if fid is None:
                raise FsError(nfsstat3.NFS3ERR_NOENT) from None
            return fid
        except OSError as e:
            raise from_os_error(e) from None
        return self._register(dir_fid, name, st)

    def parent(self, dir_fid: int) -> int:
        if dir_fid == ROOT_FID:
            return ROOT_FID
        node = self._node(dir_fid)
        return node.parent or ROOT_FID

    def readlink(self, fid: int) -> bytes:
        entry = self._unreal_entry(fid)
        if entry is not None:
            if entry.kind != Kind.SYMLINK:
                raise FsError(nfsstat3.NFS3ERR_INVAL, "not a symlink")
            return entry.target
        path, st = self._resolve(fid)
        if not stat.S_ISLNK(st.st_mode):
            raise FsError(nfsstat3.NFS3ERR_INVAL, "not a symlink")
        try:
            return os.readlink(path)
        except OSError as e:
            raise from_os_error(e) from None

    def _listing(self, dir_fid: int) -> _Listing:
        if dir_fid == ROOT_FID:
            names = [a.name.encode() for a in self.areas.values()]
            fids = [a.root_fid for a in self.areas.values()]
            rows = sorted(zip(map(name_cookie, names), names, fids, strict=True))
            return _Listing(
                (0, 0, 0), [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
            )
        path = self._dir(dir_fid)
        try:
            st = os.lstat(path)
            version = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, self.index_generation)
        except FileNotFoundError:  # an Unreal directory: only the index knows it
            version = (0, 0, 0, self.index_generation)
        except OSError as e:
            raise from_os_error(e) from None
        cached = self._listings.get(dir_fid)
        if cached is not None and cached.version == version:
            self._listings.move_to_end(dir_fid)
            return cached
        rows: list[tuple[int, bytes, int]] = []
        if version[0]:
            try:
                with os.scandir(path) as it:
                    rows = [
                        (name_cookie(e.name), e.name, e.inode())
                        for e in it
                        if not e.name.startswith(TEMP_PREFIX)
                        and (not self.hidden or path + b"/" + e.name not in self.hidden)
                    ]
            except OSError as e:
                raise from_os_error(e) from None
        # Unreal entries of this directory join the listing, unless a Real one has the name.
        real_names = {row[1] for row in rows}
        area, rel = self.area_path(dir_fid)
        for name, entry in self.journal.index.children(area, rel):
            if entry.layer == Layer.UNREAL and name not in real_names:
                rows.append((name_cookie(name), name, 0))
        rows.sort()
        listing = _Listing(
            version, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
        )
        self._remember_listing(dir_fid, listing)
        return listing

    def _remember_listing(self, dir_fid: int, listing: _Listing) -> None:
        old = self._listings.pop(dir_fid, None)
        if old is not None:
            self._listed_names -= len(old.names)
        self._listings[dir_fid] = listing
        self._listed_names += len(listing.names)
        while self._listed_names > 1_000_000 and len(self._listings) > 1:
            _, dropped = self._listings.popitem(last=False)
            self._listed_names -= len(dropped.names)

    def _invalidate_listing_of_parent(self, fid: int) -> None:
        node = self.inodes.node(fid)
        if node is not None and node.parent:
            self._listings.pop(node.parent, None)

    def readdir(self, dir_fid: int, cookie: int) -> Iterator[DirEntry]:
        listing = self._listing(dir_fid)
        return self._entries(dir_fid, listing, cookie)

    def _entries(self, dir_fid: int, listing: _Listing, cookie: int) -> Iterator[DirEntry]:
        if cookie < DOT_COOKIE:
            yield DirEntry(b".", dir_fid, DOT_COOKIE)
        if cookie < DOTDOT_COOKIE:
            yield DirEntry(b"..", self.parent(dir_fid), DOTDOT_COOKIE)
        # Resume after the cookie's place in name-hash order: entries that still exist are
        # neither repeated nor skipped, however the directory changed meanwhile.
        start = bisect.bisect_right(listing.cookies, cookie)
        is_root = dir_fid == ROOT_FID
        path = b"" if is_root else self._dir(dir_fid)
        for i in range(start, len(listing.names)):
            name = listing.names[i]
            if is_root:
                yield DirEntry(name, listing.inodes[i], listing.cookies[i])
                continue
            fid = self._fid_for_entry(dir_fid, path, name, listing.inodes[i])
            if fid is not None:
                yield DirEntry(name, fid, listing.cookies[i])

    def _fid_for_entry(self, dir_fid: int, path: bytes, name: bytes, ino: int) -> int | None:
        fid = self.inodes.child(dir_fid, name)
        if fid is not None:
            node = self.inodes.node(fid)
            if node is not None and node.ino == ino:
                return fid
        if ino == 0:
            return self._unreal_child(dir_fid, name)
        try:
            st = os.lstat(path + b"/" + name)
        except OSError:
            return None  # gone since the listing was taken
        return self._register(dir_fid, name, st)

    # ---- data ----

    def _open(self, fid: int, writable: bool) -> tuple[int, bool]:
        path, st = self._resolve(fid)
        if stat.S_ISDIR(st.st_mode):
            raise FsError(nfsstat3.NFS3ERR_ISDIR)
        if not stat.S_ISREG(st.st_mode):
            raise FsError(nfsstat3.NFS3ERR_INVAL, "not a regular file")
        flags = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            try:
                fd = os.open(path, os.O_RDWR | flags)
                writable = True
            except PermissionError:
                if writable:
                    raise
                fd = os.open(path, os.O_RDONLY | flags)
                writable = False
            fst = os.fstat(fd)
            if fst.st_ino != st.st_ino or fst.st_dev != st.st_dev:
                os.close(fd)
                raise FsError(nfsstat3.NFS3ERR_STALE, "replaced while opening")
        except OSError as e:
            raise from_os_error(e) from None
        return fd, writable

    async def read(
        self, fid: int, offset: int, count: int
    ) -> tuple[bytes | bytearray | memoryview | Gather, bool]:
        entry = self._unreal_entry(fid)
        if entry is not None:
            if self.unreal is None:
                raise FsError(nfsstat3.NFS3ERR_IO, "no blob cache attached")
            return await self.unreal.read(entry, offset, count)
        with self.fds.borrow(fid, lambda w: self._open(fid, w), False) as fd:
            try:
                buf = bytearray(count)
                # What the page cache holds is read at once; only a read that would wait on
                # the disk goes to a worker thread.
                done, ended = _read_cached(fd, buf, offset)
                if done < count and not ended:
                    done += await trio.to_thread.run_sync(_read_into, fd, buf, done, offset)
                size = os.fstat(fd).st_size
            except OSError as e:
                raise from_os_error(e) from None
        data = memoryview(buf)[:done] if done < count else buf
        return data, offset + done >= size

    async def write(self, fid: int, offset: int, data: bytes, stable: stable_how) -> stable_how:
        with self.fds.borrow(fid, lambda w: self._open(fid, w), True) as fd:
            try:
                done = 0
                if stable == stable_how.UNSTABLE:
                    if len(data) <= _INLINE_WRITE:
                        # Small buffered writes only copy into the page cache: cheaper here
                        # than a thread hand-off (RWF_NOWAIT writes are not on every kernel).
                        self._write_all(fd, offset, data, stable)
                        done = len(data)
                    else:
                        done = _write_cached(fd, data, offset)
                if done < len(data) or stable != stable_how.UNSTABLE:
                    await trio.to_thread.run_sync(
                        self._write_all, fd, offset + done, memoryview(data)[done:], stable
                    )
            except OSError as e:
                raise from_os_error(e) from None
        self.journal.written(*self.area_path(fid))
        return stable

    @staticmethod
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

    async def commit(self, fid: int) -> None:
        if self._unreal_entry(fid) is not None:
            return  # nothing written here: all of it is in the cache, verified
        with self.fds.borrow(fid, lambda w: self._open(fid, w), False) as fd:
            try:
                await trio.to_thread.run_sync(os.fsync, fd)
            except OSError as e:
                raise from_os_error(e) from None

    # ---- namespace changes ----

    def _chown_new(self, path: bytes, owner: Owner) -> None:
        if os.geteuid() == 0:
            os.chown(path, owner.uid, owner.gid, follow_symlinks=False)

    def _created(self, dir_fid: int, name: bytes, path: bytes, target: bytes = b"") -> int:
        self._listings.pop(dir_fid, None)
        try:
            st = os.lstat(path)
        except OSError as e:
            raise from_os_error(e) from None
        fid = self._register(dir_fid, name, st)
        area, rel = self._child_path(dir_fid, name)
        if stat.S_ISREG(st.st_mode):
            self.journal.created(area, rel, st)
        else:
            self.journal.made(area, rel, st, target)
        return fid

    def create(
        self,
        dir_fid: int,
        name: bytes,
        mode: int,
        owner: Owner,
        *,
        exclusive: bool,
        verifier: bytes | None = None,
    ) -> tuple[int, bool]:
        check_new_name(name)
        path = self._writable_dir(dir_fid) + b"/" + name
        flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            try:
                fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, mode & 0o7777)
                created = True
            except FileExistsError:
                if verifier is not None:
                    # EXCLUSIVE: a retransmission of our own create finds its verifier.
                    fid = self.lookup(dir_fid, name)
                    stored = self.store.family("inodes").get(b"X" + fid.to_bytes(8, "big"))
                    if stored != verifier:
                        raise FsError(nfsstat3.NFS3ERR_EXIST) from None
                    return fid, False
                if exclusive:
                    raise FsError(nfsstat3.NFS3ERR_EXIST) from None
                fd = os.open(path, flags)
                created = False
            try:
                if created:
                    self._chown_new(path, owner)
            finally:
                os.close(fd)
        except OSError as e:
            raise from_os_error(e) from None
        fid = self._created(dir_fid, name, path)
        if verifier is not None:
            self.store.family("inodes")[b"X" + fid.to_bytes(8, "big")] = verifier
        return fid, created

    def mkdir(self, dir_fid: int, name: bytes, mode: int, owner: Owner) -> int:
        check_new_name(name)
        path = self._writable_dir(dir_fid) + b"/" + name
        try:
            os.mkdir(path, mode & 0o7777)
            self._chown_new(path, owner)
        except OSError as e:
            raise from_os_error(e) from None
        return self._created(dir_fid, name, path)

    def symlink(self, dir_fid: int, name: bytes, target: bytes, owner: Owner) -> int:
        check_new_name(name)
        if not target or b"\0" in target:
            raise FsError(nfsstat3.NFS3ERR_INVAL, "bad symlink target")
        path = self._writable_dir(dir_fid) + b"/" + name
        try:
            os.symlink(target, path)
            self._chown_new(path, owner)
        except OSError as e:
            raise from_os_error(e) from None
        return self._created(dir_fid, name, path, target)

    def mknod(
        self,
        dir_fid: int,
        name: bytes,
        kind: ftype3,
        mode: int,
        owner: Owner,
        rdev: tuple[int, int] = (0, 0),
    ) -> int:
        check_new_name(name)
        path = self._writable_dir(dir_fid) + b"/" + name
        type_bits = {
            ftype3.NF3FIFO: stat.S_IFIFO,
            ftype3.NF3SOCK: stat.S_IFSOCK,
            ftype3.NF3CHR: stat.S_IFCHR,
            ftype3.NF3BLK: stat.S_IFBLK,
        }.get(kind)
        if type_bits is None:
            raise FsError(nfsstat3.NFS3ERR_BADTYPE)
        try:
            device = os.makedev(*rdev) if kind in (ftype3.NF3CHR, ftype3.NF3BLK) else 0
        except (OverflowError, ValueError):
            raise FsError(nfsstat3.NFS3ERR_INVAL, "device number out of range") from None
        try:
            os.mknod(path, type_bits | (mode & 0o7777), device)
            self._chown_new(path, owner)
        except OSError as e:
            raise from_os_error(e) from None
        return self._created(dir_fid, name, path)

    def _known_child(self, dir_fid: int, name: bytes, st: os.stat_result) -> Node | None:
        fid = self.inodes.child(dir_fid, name)
        node = self.inodes.node(fid) if fid is not None else None
        if node is None or node.ino != st.st_ino or node.dev != st.st_dev:
            return None
        return node

    def _not_hidden(self, path: bytes, status: nfsstat3) -> bytes:
        """`path`, unless it is hidden from clients (the state directory): then `status`.

        Removing or renaming the state directory would put the handle key in reach."""
        if path in self.hidden:
            raise FsError(status, "hidden")
        return path

    def _unlink(self, dir_fid: int, name: bytes, directory: bool) -> None:
        if name in (b".", b".."):
            raise FsError(nfsstat3.NFS3ERR_INVAL, "dot name")
        check_name(name)
        path = self._writable_dir(dir_fid) + b"/" + name
        self._not_hidden(path, nfsstat3.NFS3ERR_NOENT)
        if not os.path.lexists(path) and self._unreal_child(dir_fid, name) is not None:
            self._forget_unreal(dir_fid, name, directory)
            return
        try:
            st = os.lstat(path)
            if directory:
                if not stat.S_ISDIR(st.st_mode):
                    raise FsError(nfsstat3.NFS3ERR_NOTDIR)
                os.rmdir(path)
            else:
                if stat.S_ISDIR(st.st_mode):
                    raise FsError(nfsstat3.NFS3ERR_ISDIR)
                os.unlink(path)
        except OSError as e:
            raise from_os_error(e) from None
        self._listings.pop(dir_fid, None)
        self.journal.removed(*self._child_path(dir_fid, name))
        node = self._known_child(dir_fid, name, st)
        if node is not None:
            batch = self.store.batch()
            self.inodes.drop_link(batch, node.fid, dir_fid, name)
            remaining = 0 if directory else st.st_nlink - 1
            self._forget_link(batch, node, dir_fid, name, remaining)
            batch.commit()
        else:
            fid = self.inodes.child(dir_fid, name)
            if fid is not None:
                batch = self.store.batch()
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
        self.index_generation += 1
        self._listings.pop(dir_fid, None)
        batch = self.store.batch()
        self.inodes.drop_node(batch, self._node(fid))
        batch.commit()

    def remove(self, dir_fid: int, name: bytes) -> None:
        self._unlink(dir_fid, name, directory=False)

    def rmdir(self, dir_fid: int, name: bytes) -> None:
        self._unlink(dir_fid, name, directory=True)

    def rename(self, from_dir: int, from_name: bytes, to_dir: int, to_name: bytes) -> None:
        for name in (from_name, to_name):
            if name in (b".", b".."):
                raise FsError(nfsstat3.NFS3ERR_INVAL, "dot name")
            check_name(name)
        check_new_name(to_name)  # dot names are refused above: this is the kept prefix
        from_path = self._writable_dir(from_dir) + b"/" + from_name
        to_path = self._writable_dir(to_dir) + b"/" + to_name
        self._not_hidden(from_path, nfsstat3.NFS3ERR_NOENT)
        self._not_hidden(to_path, nfsstat3.NFS3ERR_ACCES)
        if self._node(from_dir).area != self._node(to_dir).area:
            raise FsError(nfsstat3.NFS3ERR_XDEV, "areas are separate")
        if not os.path.lexists(from_path):
            unreal = self._unreal_child(from_dir, from_name)
            if unreal is not None:
                self._rename_unreal(unreal, from_dir, from_name, to_dir, to_name, to_path)
                return
        try:
            src = os.lstat(from_path)
        except OSError as e:
            raise from_os_error(e) from None
        fid = self._register(from_dir, from_name, src)
        try:
            dst: os.stat_result | None = os.lstat(to_path)
        except FileNotFoundError:
            dst = None
        except OSError as e:
            raise from_os_error(e) from None
        if dst is not None and dst.st_ino == src.st_ino and dst.st_dev == src.st_dev:
            return  # two names of one file: POSIX says rename does nothing
        replaced = self._known_child(to_dir, to_name, dst) if dst is not None else None
        try:
            os.rename(from_path, to_path)
        except OSError as e:
            raise from_os_error(e) from None
        self._listings.pop(from_dir, None)
        self._listings.pop(to_dir, None)
        area, old_rel = self._child_path(from_dir, from_name)
        self.journal.renamed(area, old_rel, self._child_path(to_dir, to_name)[1])
        batch = self.store.batch()
        stale_target = self.inodes.child(to_dir, to_name)
        if replaced is not None:
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

    def _rename_unreal(
        self,
        fid: int,
        from_dir: int,
        from_name: bytes,
        to_dir: int,
        to_name: bytes,
        to_path: bytes,
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
        if os.path.lexists(to_path):
            self._unlink(to_dir, to_name, directory=os.path.isdir(to_path))
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
        self.index_generation += 1
        self._listings.pop(from_dir, None)
        self._listings.pop(to_dir, None)

    def link(self, fid: int, dir_fid: int, name: bytes) -> None:
        check_new_name(name)
        src_path, st = self._resolve(fid)
        if stat.S_ISDIR(st.st_mode):
            raise FsError(nfsstat3.NFS3ERR_ISDIR, "no hard links to directories")
        if self._node(fid).area != self._node(dir_fid).area:
            raise FsError(nfsstat3.NFS3ERR_XDEV, "areas are separate")
        path = self._writable_dir(dir_fid) + b"/" + name
        try:
            os.link(src_path, path, follow_symlinks=False)
        except OSError as e:
            raise from_os_error(e) from None
        self._listings.pop(dir_fid, None)
        batch = self.store.batch()
        self.inodes.add_link(batch, fid, dir_fid, name)
        batch.commit()
        area, existing = self.area_path(fid)
        self.journal.linked(area, existing, self._child_path(dir_fid, name)[1])

    # ---- file system ----

    def fsstat(self, fid: int) -> FsStat:
        if fid == ROOT_FID:
            path = os.fsencode(str(self.store.path))
        else:
            path = self.areas[self._node(fid).area].path
        try:
            vfs = os.statvfs(path)
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
