"""The merged tree: one tree of fileids over the local layer (ordinary files) and the Unreal
layer (index entries whose content is in the blob cache), behind the Tree contract.

Owns routing (a node is Real when the fileid table records an inode for it, Unreal when the
index holds it as such), the fileid table, the attributes, lookups and the directory listings
that merge both layers, and file data. Its namespace changes are in `changes`
(NamespaceChanges), its moves between the layers in `moves` (LayerMoves).

Each area is a directory; the virtual root (fileid 1) lists the areas by name.
"""

from __future__ import annotations

import logging
import os
import stat
import struct
import time
from collections.abc import Iterator
from contextlib import nullcontext

import trio

from nfsd.store.areas import AreaTable
from nfsd.store.blobs import BlobStore
from nfsd.store.db import Batch, Store
from nfsd.store.index import AreaIndex, Entry, Kind, Layer, Mark
from nfsd.threads import run_blocking
from nfsd.vfs.acting import as_caller, bound, kill_privileges_by_hand
from nfsd.vfs.changes import NamespaceChanges
from nfsd.vfs.durable import GroupSync
from nfsd.vfs.errors import FsError, from_os_error
from nfsd.vfs.fdcache import FdCache
from nfsd.vfs.inodes import ROOT_FID, UNIDENTIFIED, InodeTable, Node
from nfsd.vfs.journal import DEFAULT_REST, Journal
from nfsd.vfs.listing import DOT_COOKIE, DOTDOT_COOKIE, Listing, ListingCache, name_cookie
from nfsd.vfs.local import AreaRoots, LocalLayer, attr_from_stat, identities
from nfsd.vfs.moves import LayerMoves
from nfsd.vfs.names import TEMP_PREFIX, check_name
from nfsd.vfs.osapi import read_cached, read_into, write_cached
from nfsd.vfs.tree import (
    SERVER_TIME,
    Attr,
    DirEntry,
    FsStat,
    ReadResult,
    SetAttr,
    Tree,
)
from nfsd.vfs.unreal import UnrealLayer, unreal_attr
from xdr.nfs3 import ftype3, nfsstat3, stable_how

log = logging.getLogger("realize.tree")

_INLINE_WRITE = 64 * 1024


class Area:
    __slots__ = ("id", "name", "path", "root_fid")

    def __init__(self, area_id: int, name: str, path: bytes, root_fid: int) -> None:
        self.id, self.name, self.path, self.root_fid = area_id, name, path, root_fid


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


class MergedTree(LayerMoves, NamespaceChanges, Tree):
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
        self.inodes = InodeTable(store)
        self.roots = AreaRoots(identities(self.hidden))
        self.local = LocalLayer(self.inodes, self.roots)
        self.fds = FdCache()
        self.areas: dict[int, Area] = {}
        self.area_by_name: dict[str, Area] = {}
        self._listings = ListingCache()
        self._sync_group = GroupSync(self.store, self._held_dir)  # namespace durability
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

    # ---- for marks and the control program (beside the NFS contract) ----

    @property
    def index(self) -> AreaIndex:
        """The area index (entries, marks), to read; changes go through the methods here."""
        return self.journal.index

    @property
    def blobs(self) -> BlobStore | None:
        """The blob cache, when an Unreal layer is attached."""
        return None if self.unreal is None else self.unreal.blobs

    @property
    def rest(self) -> float:
        """How long a changed file rests before it is hashed."""
        return self.journal.rest

    def set_mark(self, area: int, rel: bytes, mark: Mark) -> None:
        batch = self.store.batch()
        self.journal.index.set_mark(batch, area, rel, mark)
        batch.commit()

    def look(self, area: int, rel: bytes) -> os.stat_result | None:
        """The lstat of an area path on this disk, walked by descriptor; None when there is
        nothing there (or it is hidden from clients)."""
        seen = self.roots.look(area, rel) if rel else (os.fstat(self.roots.fd(area)), b"")
        return None if seen is None else seen[0]

    def disk_names(self, area: int, rel: bytes) -> set[bytes]:
        """The names in the Real directory at an area path (none when it is not on disk)."""
        try:
            fd = self.roots.dir_relative(area, rel)
        except (OSError, FsError):
            return set()
        try:
            return {name for name, _ in self.roots.names(fd)}
        finally:
            os.close(fd)

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

    def _indexed_as(self, node: Node, st: os.stat_result) -> bool:
        """Whether the index entry of `node`'s path is a file of `st`'s size and mtime."""
        entry = self.journal.index.get(*self.area_path(node.fid))
        return (
            entry is not None
            and entry.kind == Kind.FILE
            and stat.S_ISREG(st.st_mode)
            and (entry.size, entry.mtime_ns) == (st.st_size, st.st_mtime_ns)
        )

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

    def fid_of_path(self, area: int, rel: bytes) -> int:
        """The fid of an area path, walked name by name as LOOKUP would."""
        fid = self.areas[area].root_fid
        for name in rel.split(b"/") if rel else ():
            fid = self.lookup(fid, name)[0]
        return fid

    # ---- the fileid table ----

    def _register(self, dir_fid: int, name: bytes, st: os.stat_result) -> int:
        """The fid of the entry `name` of `dir_fid`, whose lstat is `st`; recorded if new.
        A recorded node whose inode number the file took but which is not its file (see
        nfsd/vfs/inodes.py) is forgotten: its handles are STALE, the file gets a fid of its
        own."""
        current = self.local.identity_in(dir_fid, name, st.st_dev)  # after the stat: see lstat
        fid = self.inodes.child(dir_fid, name)
        if fid is not None:
            node = self.inodes.node(fid)
            if (
                node is not None
                and (node.dev, node.ino) == (st.st_dev, st.st_ino)
                and not self._another_file(node, current, dir_fid, name)
            ):
                return fid
            if node is not None and node.unreal and self._indexed_as(node, st):
                # An Unreal file whose bytes are on the disk (an unrealize cut short before
                # its unlink, which the start-up scan takes back as Real): it keeps its fid.
                self._adopt(node, node.area)
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
        if node is not None and self._another_file(node, current, dir_fid, name):
            self.inodes.drop_node(batch, node)  # its file is gone; another took its inode
            self.fds.invalidate(node.fid)
            self.local.forget_dir(node.fid)
            node = None
        if node is not None:
            fid = node.fid
            # A second name of a known inode: a hard link, or a move made outside.
            if not self._primary_holds(node):
                self.inodes.put_node(batch, Node(fid, dir_fid, area, node.dev, node.ino, name))
        else:
            fid = self.inodes.allocate(batch)
            self.inodes.put_node(
                batch, Node(fid, dir_fid, area, st.st_dev, st.st_ino, name, current)
            )
        self.inodes.add_link(batch, fid, dir_fid, name)
        batch.commit()
        return fid

    def _another_file(self, node: Node, current: bytes, dir_fid: int, name: bytes) -> bool:
        """Whether the entry `name` of `dir_fid` (of the node's dev and ino, identity
        `current`) is known not to be the node's file. Unidentified (gone meanwhile), it may
        be: every use of the fid checks again."""
        if current == UNIDENTIFIED:
            return False
        return not self.local.recognizes(node, current, self.local.dir_fd(dir_fid), name)

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
                    with as_caller():  # as the caller, the kernel kills setuid
                        os.ftruncate(fd, changes.size)
                    kill_privileges_by_hand(fd)
            with self.local.pin(node) as pinned:
                if changes.uid is not None or changes.gid is not None:
                    uid = -1 if changes.uid is None else changes.uid
                    gid = -1 if changes.gid is None else changes.gid
                    with as_caller():
                        pinned.chown(uid, gid)
                if changes.mode is not None:
                    with as_caller():  # setgid goes unless the caller is in the group
                        pinned.chmod(changes.mode & 0o7777)
                if changes.atime_ns is not None or changes.mtime_ns is not None:
                    now = time.time_ns()

                    def pick(value: int | None, current: int) -> int:
                        if value is None:
                            return current
                        return now if value == SERVER_TIME else value

                    # Explicit times are for the owner alone, and the kernel says so. "Now"
                    # is for anyone who may write (checked before): made as the server,
                    # since the kernel's own "now" cannot leave the other time untouched.
                    to_now = SERVER_TIME in (changes.atime_ns, changes.mtime_ns)
                    with nullcontext() if to_now else as_caller():
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
        real = listing.version[0] != 0  # an Unreal directory has nothing on the disk
        dir_fd = os.dup(self.local.dir_fd(dir_fid)) if real and listing.names else -1
        hidden = self.roots.hidden
        hidden_inodes = {ino for _, ino in hidden}
        names, inodes, fids, cookies = listing.names, listing.inodes, listing.fids, listing.cookies
        try:
            # The listing may be older than the names (the loop lets other calls in): a file
            # that moved between the layers since (realized, or moved into the cache) or was
            # replaced is listed as what the name holds now, never left out.
            for i in range(listing.after(cookie), len(names)):
                name, ino = names[i], inodes[i]
                unreal = ino == 0
                if unreal:
                    fid = fids[i] or self._unreal_child(dir_fid, name)
                    if fid is not None:
                        fids[i] = fid
                        attr = self._attr_or_none(fid) if with_attrs else None
                        yield DirEntry(name, fid, cookies[i]), attr
                        continue
                    if dir_fd < 0:
                        continue  # an Unreal directory: nothing on the disk to look at
                fid = fids[i]
                st = None
                if with_attrs or not fid:
                    try:
                        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    except OSError:
                        fid = None if unreal else self._unreal_child(dir_fid, name)
                        if fid is not None:  # its content moved into the cache meanwhile
                            attr = self._attr_or_none(fid) if with_attrs else None
                            yield DirEntry(name, fid, cookies[i]), attr
                        continue
                    if st.st_ino in hidden_inodes and (st.st_dev, st.st_ino) in hidden:
                        continue
                    if st.st_ino != ino:  # realized or replaced since the listing
                        inodes[i], fid = st.st_ino, 0
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
            area = self.areas.get(node.area)
            data, eof = await self.unreal.read(entry, offset, count, area.name if area else "")
            return ReadResult(data, eof, unreal_attr(entry, fid, *self._area_owner(node.area)))
        with self.fds.borrow(fid, lambda w: self._open(fid, w), False) as fd:
            try:
                buf = bytearray(count)
                # What the page cache holds is read at once; only a read that would wait on
                # the disk goes to a worker thread.
                done, ended = read_cached(fd, buf, offset)
                if done < count and not ended:
                    done += await run_blocking(read_into, fd, buf, done, offset)
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
                    # Written as the caller, so that the kernel kills setuid as it should.
                    with as_caller():
                        if len(data) <= _INLINE_WRITE:
                            # Small buffered writes only copy into the page cache: cheaper
                            # here than a thread hand-off (RWF_NOWAIT writes are not on every
                            # kernel).
                            _write_all(fd, offset, data, stable)
                            done = len(data)
                        else:
                            done = write_cached(fd, data, offset)
                if done < len(data) or stable != stable_how.UNSTABLE:
                    await run_blocking(
                        bound(_write_all), fd, offset + done, memoryview(data)[done:], stable
                    )
                st = kill_privileges_by_hand(fd)
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
