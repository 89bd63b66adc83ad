"""Landing: what a version arriving from a peer does to a path this peer holds Real. The
exchange (nfsd/peer/exchange.py) decides; this module looks at the Real file and carries the
decision out on the disk, through the tree's own descriptors (nfsd/vfs/merged.py: every
step walked by descriptor, symlinks never followed, the server acting as itself).

- `inspect(area, path, entry)`: the Real file at `path` as the index holds it, and whether it
  is *clean*: not being written, not waiting to be hashed, and its lstat (kind, size, mtime,
  and the inode the fileid table recorded) what the index says. Only a clean file's content
  is known to be the version the index published; any other may hold a change not published
  yet, which the exchange keeps (see `Exchange` on bases).
- `Act`: one change of the disk: `DROP` (outdated bytes: the index shows the path Unreal
  now; `target` names the dropped content, kept a while as the new version's base,
  nfsd/vfs/bases.py), `REMOVE` (a file or empty directory deleted by a peer), `MOVE` (renamed
  by a peer, or a losing local version moved aside to its conflict name). Each names the
  inode it expects.

Crash safety: the exchange puts the new index entries, the fileid table's changes (`plan`)
and each act as an intent (`xchg-disk:` area ‖ path, this module alone reads it) into the
page's batch, commits it synced, and only then has the acts carried out (`carry_out`): each
checks the inode is still the one planned, makes its one system call, and the directories
are synced before the intents are dropped. A crash in between leaves the new index and the
old disk; `recover`, run at start before the journal scans the areas, does what the intents
still say (an act whose inode is gone or replaced is dropped: the scan takes what is there).
"""

from __future__ import annotations

import errno
import logging
import os
import stat
import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import TYPE_CHECKING

from nfsd.store.db import Batch, Store
from nfsd.store.index import Entry, Kind, Layer, split
from nfsd.vfs.errors import FsError
from nfsd.vfs.inodes import Node
from nfsd.vfs.osapi import open_listable

if TYPE_CHECKING:
    from nfsd.vfs.merged import MergedTree

log = logging.getLogger("realize.landing")

_INTENT = b"xchg-disk:"
_AREA = struct.Struct(">I")
_ACT = struct.Struct(">BQQ")  # what, dev, ino; the target path follows
# A directory whose entries take more than this (tens of thousands of names) is not listed
# for each page of a catch-up: its paths are looked at one by one instead.
_LIST_MAX_BYTES = 1 << 20


class What(IntEnum):
    DROP = 1  # unlink: the index shows a newer version, Unreal
    REMOVE = 2  # unlink or rmdir: deleted by a peer
    MOVE = 3  # rename to `target`


@dataclass(frozen=True, slots=True)
class Act:
    what: What
    area: int
    path: bytes
    dev: int
    ino: int
    is_dir: bool = False
    target: bytes = b""

    def key(self) -> bytes:
        return _INTENT + _AREA.pack(self.area) + self.path

    def pack(self) -> bytes:
        return _ACT.pack(self.what | (0x80 if self.is_dir else 0), self.dev, self.ino) + self.target

    @classmethod
    def unpack(cls, key: bytes, raw: bytes) -> Act:
        (area,) = _AREA.unpack_from(key, len(_INTENT))
        what, dev, ino = _ACT.unpack_from(raw)
        path = bytes(key[len(_INTENT) + _AREA.size :])
        target = bytes(raw[_ACT.size :])
        return cls(What(what & 0x7F), area, path, dev, ino, bool(what & 0x80), target)


@dataclass(frozen=True, slots=True)
class RealFile:
    entry: Entry
    st: os.stat_result
    fid: int | None  # its fileid, when the table knows one
    clean: bool


class Landing:
    def __init__(self, tree: MergedTree, store: Store) -> None:
        self.tree = tree
        self.store = store
        self.meta = store.family("meta")

    # ---- looking ----

    def fid_of(self, area: int, path: bytes) -> int | None:
        """The fileid the table holds for an area path, walked without looking anything up
        on the disk (so nothing is registered); None when it knows none."""
        if area not in self.tree.areas:
            return None
        fid: int | None = self.tree.area_root(area)
        for name in path.split(b"/") if path else ():
            fid = self.tree.inodes.child(fid, name) if fid is not None else None
        return fid

    def inspect(self, area: int, path: bytes, entry: Entry) -> RealFile | None:
        """The Real object at `path` (None when nothing is on the disk there)."""
        st = self.tree.look(area, path)
        if st is None:
            return None
        fid = self.fid_of(area, path)
        node = self.tree.inodes.node(fid) if fid is not None else None
        mode = st.st_mode
        # A node recorded Unreal has no inode yet (a file put there outside NFS, adopted by
        # the next lookup): it vouches for nothing either way.
        clean = node is None or node.unreal or (node.dev, node.ino) == (st.st_dev, st.st_ino)
        if entry.kind == Kind.FILE:
            clean = clean and (
                stat.S_ISREG(mode)
                and bool(entry.blob)
                and (st.st_size, st.st_mtime_ns) == (entry.size, entry.mtime_ns)
                and not self.tree.journal.is_dirty(area, path)
                and not (fid is not None and self.tree.fds.busy(fid))
            )
        elif entry.kind == Kind.DIR:
            clean = clean and stat.S_ISDIR(mode)
        elif entry.kind == Kind.SYMLINK:
            clean = clean and stat.S_ISLNK(mode)
        else:
            clean = False  # special files carry no version
        return RealFile(entry, st, fid, clean)

    def names(self, area: int, directory: bytes) -> set[bytes] | None:
        """The names on the disk in the directory at `directory` (none when it is not on
        this disk), or None when it is too big to list for a few of them (ask `look`)."""
        try:
            fd = self.tree.roots.dir_relative(area, directory)
        except (OSError, FsError):
            return set()
        try:
            if os.fstat(fd).st_size > _LIST_MAX_BYTES:
                return None
            return {name for name, _ in self.tree.roots.names(fd)}
        except OSError:
            return set()
        finally:
            os.close(fd)

    def disk_parent_fid(self, area: int, path: bytes) -> int | None:
        """The fileid of `path`'s parent when it is a Real directory here, known to the
        table (so something can be moved into it)."""
        parent = split(path)[0]
        if parent and self.tree.look(area, parent) is None:
            return None
        fid = self.fid_of(area, parent)
        if fid is None:
            return None
        node = self.tree.inodes.node(fid)
        return None if node is None or node.unreal else fid

    # ---- planning: the index and fileid table's side, in the exchange's batch ----

    def plan(self, batch: Batch, act: Act, fid: int | None) -> None:
        """Put the fileid table's side of `act`, and the act as an intent, into `batch`."""
        batch.put("meta", act.key(), act.pack())
        if fid is None:
            return
        inodes = self.tree.inodes
        node = inodes.node(fid)
        if node is None:
            return
        if act.what is not What.MOVE:
            self.tree.fds.invalidate(fid)  # its descriptor names the outdated file
        if act.what is What.DROP:
            # The fid stays (a client holding it now reads the newer version), as unrealize.
            inodes.forget_inode(batch, node)
            inodes.put_node(batch, Node(fid, node.parent, act.area, 0, 0, node.name))
        elif act.what is What.REMOVE:
            inodes.drop_node(batch, node)
        else:
            parent = self.fid_of(act.area, split(act.target)[0])
            name = split(act.target)[1]
            if parent is None:
                inodes.drop_node(batch, node)  # planned only with a known parent; be safe
                return
            replaced = inodes.child(parent, name)
            if replaced is not None and replaced != fid:
                old = inodes.node(replaced)
                if old is not None:
                    inodes.drop_node(batch, old)
            inodes.drop_link(batch, fid, node.parent, node.name)
            inodes.add_link(batch, fid, parent, name)
            inodes.put_node(
                batch, Node(fid, parent, act.area, node.dev, node.ino, name, node.identity)
            )

    # ---- carrying out ----

    def carry_out(self, acts: list[Act]) -> list[Act]:
        """Do the planned acts (their batch committed, synced), sync their directories, then
        drop their intents; the acts that could not be done: directory removals (not empty)
        and moves whose file was changed, moved or removed meanwhile (`_moved_already`)."""
        if not acts:
            return []
        failed: list[Act] = []
        touched: dict[tuple[int, bytes], int] = {}
        # Moves first (a file moved aside leaves its directory), then removals deepest first.
        order = sorted(acts, key=lambda a: (a.what is not What.MOVE, -a.path.count(b"/")))
        try:
            for act in order:
                if self._do(act, touched):
                    continue
                kept_dir = act.what is What.REMOVE and act.is_dir
                if kept_dir or (act.what is What.MOVE and not self._moved_already(act, touched)):
                    failed.append(act)
            for fd in touched.values():
                held = open_listable(fd)
                try:
                    os.fsync(held)
                finally:
                    os.close(held)
        finally:
            for fd in touched.values():
                os.close(fd)
        batch = self.store.batch()
        for act in acts:
            batch.delete("meta", act.key())
        batch.commit()
        self.tree.local.forget_dirs()
        self.tree.index_changed()
        return failed

    def _dir(self, touched: dict[tuple[int, bytes], int], area: int, rel: bytes) -> int:
        fd = touched.get((area, rel))
        if fd is None:
            fd = touched[(area, rel)] = self.tree.roots.dir_relative(area, rel)
        return fd

    def _moved_already(self, act: Act, touched: dict[tuple[int, bytes], int]) -> bool:
        """Whether a move's file is at its target (moved before a crash)."""
        parent, name = split(act.target)
        try:
            st = os.stat(name, dir_fd=self._dir(touched, act.area, parent), follow_symlinks=False)
        except (OSError, FsError):
            return False
        return (st.st_dev, st.st_ino) == (act.dev, act.ino)

    def _do(self, act: Act, touched: dict[tuple[int, bytes], int]) -> bool:
        """One act, if the object at its path is still the inode planned; whether done."""
        parent, name = split(act.path)
        try:
            dir_fd = self._dir(touched, act.area, parent)
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except (OSError, FsError):
            return False  # gone already (done before a crash, or removed meanwhile)
        if (st.st_dev, st.st_ino) != (act.dev, act.ino):
            log.warning("not touching %s: another file took its place", os.fsdecode(act.path))
            return False
        try:
            if act.what is What.MOVE:
                target_parent, target_name = split(act.target)
                dst_fd = self._dir(touched, act.area, target_parent)
                os.rename(name, target_name, src_dir_fd=dir_fd, dst_dir_fd=dst_fd)
            elif stat.S_ISDIR(st.st_mode):
                os.rmdir(name, dir_fd=dir_fd)
            else:
                bases = self.tree.unreal.bases if self.tree.unreal is not None else None
                if act.what is What.DROP and act.target and bases is not None:
                    bases.keep_file(dir_fd, name, act.target)  # the new version's base
                os.unlink(name, dir_fd=dir_fd)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                log.warning("cannot change %s as a peer asked: %s", os.fsdecode(act.path), e)
            return False
        return True

    def recover(self) -> int:
        """Carry out the intents a crash left (before the journal scans); how many."""
        acts = []
        for key, raw in self.meta.items(from_key=_INTENT):
            if not key.startswith(_INTENT):
                break
            acts.append(Act.unpack(bytes(key), bytes(raw)))
        failed = self.carry_out([a for a in acts if a.area in self.tree.areas])
        for act in failed:  # a directory that is not empty stays, as the index then says
            if act.what is What.REMOVE:
                self._keep_dir(act)
        if acts:
            log.info("carried out %d changes a peer asked for before the last stop", len(acts))
        return len(acts)

    def _keep_dir(self, act: Act) -> None:
        st = self.tree.look(act.area, act.path)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return
        entry = Entry(
            Kind.DIR, Layer.REAL, stat.S_IMODE(st.st_mode), 0, st.st_mtime_ns,
            uid=st.st_uid, gid=st.st_gid,
        )  # fmt: skip
        batch = self.store.batch()
        self.tree.index.put(batch, act.area, act.path, entry)
        batch.commit()

    def keep_dirs(self, acts: list[Act]) -> None:
        """Directories a peer deleted that still hold something here: kept, Real."""
        for act in acts:
            self._keep_dir(act)
