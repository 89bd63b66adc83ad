"""Keeps the area index and the history in step with the Real layer.

Every change made through NFS is reported here by the tree; a scan at start finds what
changed on the disk while the server was not looking, and while it runs the watcher
(`watch`) has each directory where something changed reconciled the same way. Deletes,
renames, directories, links and symlinks go into the history at once. A file's content is
hashed only once it has rested (`rest` seconds without a write), never per WRITE; then a
CREATE (first content) or CHANGE (old blob → new blob) is recorded. Paths are relative to
the area root.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable

import blake3
import trio

from nfsd.store.db import Batch, Store
from nfsd.store.history import Change, History, Op
from nfsd.store.index import AreaIndex, Entry, Kind, Layer, join
from nfsd.vfs.errors import FsError
from nfsd.vfs.local import AreaRoots, identities
from nfsd.waiting import Pause

log = logging.getLogger("realize.journal")

HASH_BLOCK = 1 << 20
DEFAULT_REST = 3.0
_INLINE_HASH = 64 * 1024


def kind_of(st: os.stat_result) -> Kind:
    if stat.S_ISREG(st.st_mode):
        return Kind.FILE
    if stat.S_ISDIR(st.st_mode):
        return Kind.DIR
    if stat.S_ISLNK(st.st_mode):
        return Kind.SYMLINK
    return Kind.OTHER


def entry_of(st: os.stat_result, blob: bytes = b"", target: bytes = b"") -> Entry:
    kind = kind_of(st)
    size = st.st_size if kind == Kind.FILE else 0
    mode = stat.S_IMODE(st.st_mode)
    return Entry(kind, Layer.REAL, mode, size, st.st_mtime_ns, blob, target, st.st_uid, st.st_gid)


def hash_fd(fd: int, start: bytes = b"") -> tuple[bytes, os.stat_result]:
    """BLAKE3 of an open file, streamed from its beginning (`start`: its first bytes, read
    already), and its stat taken after reading."""
    hasher = blake3.blake3(start)
    offset = len(start)
    while True:
        block = os.pread(fd, HASH_BLOCK, offset)
        if not block:
            break
        hasher.update(block)
        offset += len(block)
    return hasher.digest(), os.fstat(fd)


def _announced(entry: Entry | None) -> bool:
    """Whether peers were told of this entry (files: once hashed)."""
    return entry is not None and (entry.kind != Kind.FILE or bool(entry.blob))


class Journal:
    def __init__(
        self, store: Store, roots: AreaRoots | dict[int, bytes], rest: float = DEFAULT_REST
    ):
        """`roots`: the tree's area roots, or area id → directory (opened here)."""
        self.store = store
        if not isinstance(roots, AreaRoots):
            opened = AreaRoots()
            for area, path in roots.items():
                opened.add(area, path)
            roots = opened
        self.disk = roots  # every look at the disk goes through its descriptors
        self.roots = {area: roots.path(area) for area in roots.areas()}
        self.rest = rest
        self.index = AreaIndex(store)
        self.history = History(store)
        self.dirty: dict[tuple[int, bytes], float] = {}
        # Files the start scan found changed while nobody looked: hashed at once, the only
        # ones not left to rest from their ctime.
        self.at_once: set[tuple[int, bytes]] = set()
        # Files written over an Unreal entry, waiting to be hashed: the blob they replaced
        # (their entry names none until hashed; their change still says what it replaced).
        self.replacing: dict[tuple[int, bytes], bytes] = {}
        self.clock: Callable[[], float] = time.monotonic
        self.started_ns = time.time_ns()
        # Told each file whose new content was recorded (nfsd/vfs/releases.py).
        self.on_content: Callable[[int, bytes], None] | None = None

    def _record(
        self,
        area: int,
        *,
        put: tuple[bytes, Entry] | None = None,
        delete: bytes | None = None,
        change: Change | None = None,
    ) -> None:
        batch = self.store.batch()
        if delete is not None:
            self.index.delete(batch, area, delete)
        if put is not None:
            self.index.put(batch, area, put[0], put[1])
        if change is not None:
            self.history.append(batch, area, change)
        batch.commit()

    # ---- what the tree reports ----

    def written(self, area: int, path: bytes) -> None:
        """Content changed (create, write, truncate): hash it once it rests."""
        self.dirty[(area, path)] = self.clock()
        self.at_once.discard((area, path))

    def is_dirty(self, area: int, path: bytes) -> bool:
        """Whether the file was written and not yet hashed since."""
        return (area, path) in self.dirty

    def created(self, area: int, path: bytes, st: os.stat_result) -> None:
        if self.index.get(area, path) is None:
            self._record(area, put=(path, entry_of(st)))
        self.written(area, path)

    def made(self, area: int, path: bytes, st: os.stat_result, target: bytes = b"") -> None:
        """A directory, symlink or special file appeared."""
        entry = entry_of(st, target=target)
        op = {Kind.DIR: Op.MKDIR, Kind.SYMLINK: Op.SYMLINK}.get(entry.kind)
        change = None
        if op is not None:
            change = Change(op, path, target, mode=entry.mode)
        self._record(area, put=(path, entry), change=change)

    def linked(self, area: int, existing: bytes, path: bytes) -> None:
        entry = self.index.get(area, existing)
        if entry is None:
            return
        change = Change(Op.LINK, existing, path, new_blob=entry.blob) if entry.blob else None
        self._record(area, put=(path, entry), change=change)

    def removed(self, area: int, path: bytes) -> None:
        entry = self.index.get(area, path)
        self.dirty.pop((area, path), None)
        self.at_once.discard((area, path))
        self.replacing.pop((area, path), None)
        if entry is None:
            return
        batch = self.store.batch()
        self.index.remove_tree(batch, area, path)
        # Even a file never hashed: it may stand where a file peers know was deleted and made
        # again, that delete dropped as the path held a file once more (nfsd/peer/exchange.py
        # `_held`). A delete of a path no peer was told of publishes nothing.
        op = Op.RMDIR if entry.kind == Kind.DIR else Op.DELETE
        self.history.append(batch, area, Change(op, path, old_blob=entry.blob))
        batch.commit()

    def renamed(self, area: int, old: bytes, new: bytes, batch: Batch | None = None) -> None:
        """`old` now is `new` (replacing whatever was there); in `batch` when the caller
        commits other changes with it."""
        entry = self.index.get(area, old)
        replaced = self.index.get(area, new)
        own = batch is None
        if batch is None:
            batch = self.store.batch()
        if replaced is not None:
            self.index.remove_tree(batch, area, new)
        if entry is not None:
            # A directory's announced descendants are renamed with it, each a change of its
            # own after the directory's: peers then move every path by the rules of one
            # rename (a concurrent change under the old name meets its own path's versions).
            below = list(self.index.walk(area, old)) if entry.kind == Kind.DIR else []
            self.index.move(batch, area, old, new)
            if _announced(entry):
                self.history.append(batch, area, Change(Op.RENAME, old, new, old_blob=entry.blob))
                for path, child in below:
                    if _announced(child):
                        moved = Change(Op.RENAME, path, new + path[len(old) :], old_blob=child.blob)
                        self.history.append(batch, area, moved)
            elif entry.kind == Kind.FILE:  # a file made again, not hashed yet: see `removed`
                self.history.append(batch, area, Change(Op.DELETE, old))
        if own:
            batch.commit()
        prefix = old + b"/"
        for key in [
            k for k in self.dirty if k[0] == area and (k[1] == old or k[1].startswith(prefix))
        ]:
            self.dirty[(area, new + key[1][len(old) :])] = self.dirty.pop(key)
            self.at_once.discard(key)  # moved: it rests from the rename, its ctime
            if key in self.replacing:
                self.replacing[(area, new + key[1][len(old) :])] = self.replacing.pop(key)

    def attributes(self, area: int, path: bytes, st: os.stat_result) -> None:
        entry = self.index.get(area, path)
        if entry is None:
            return
        mode = stat.S_IMODE(st.st_mode)
        same_owner = (entry.uid, entry.gid) == (st.st_uid, st.st_gid)
        same_mode_mtime = mode == entry.mode and entry.mtime_ns == st.st_mtime_ns
        if same_mode_mtime and same_owner:
            return
        # The owner is kept in the index (for the Unreal layer), not yet told to peers.
        change = (
            Change(Op.SETATTR, path, mode=mode)
            if _announced(entry) and not same_mode_mtime
            else None
        )
        entry.mode, entry.mtime_ns = mode, st.st_mtime_ns
        entry.uid, entry.gid = st.st_uid, st.st_gid
        self._record(area, put=(path, entry), change=change)

    # ---- hashing what rested ----

    def rested(self) -> list[tuple[int, bytes]]:
        now = self.clock()
        return [key for key, when in self.dirty.items() if now - when >= self.rest]

    async def settle(self, keys: list[tuple[int, bytes]] | None = None) -> int:
        """Hash the rested files (or `keys`, rested or not) and record their CREATE/CHANGE;
        how many."""
        done = 0
        pause = Pause()
        for area, path in self.rested() if keys is None else keys:
            await pause.now_and_then()
            when = self.dirty.get((area, path))
            if when is None or area not in self.roots:
                continue
            try:
                fd = self.disk.open_relative(area, path)
            except (OSError, FsError):
                self.dirty.pop((area, path), None)  # gone or not a file: its removal reports
                self.at_once.discard((area, path))
                self.replacing.pop((area, path), None)
                continue
            try:
                # The event loop reads at most _INLINE_HASH + 1 bytes, whatever size the file
                # had when opened (it may be growing): a thread hand-off costs more than a small
                # file, and anything bigger is hashed in a thread.
                first = os.pread(fd, _INLINE_HASH + 1, 0)
                if len(first) <= _INLINE_HASH:
                    blob, st = blake3.blake3(first).digest(), os.fstat(fd)
                else:
                    blob, st = await trio.to_thread.run_sync(hash_fd, fd, first)
            except OSError:
                self.dirty.pop((area, path), None)
                self.at_once.discard((area, path))
                continue
            finally:
                os.close(fd)
            if self.dirty.get((area, path)) != when:
                continue  # written again while hashing: wait for the next rest
            # Its last change may be younger than the mark: a write whose event is still on
            # its way. The ctime says when it was written, and it rests from then (a ctime
            # ahead of the clock, the clock set back, is not waited for).
            age = (time.time_ns() - st.st_ctime_ns) / 1e9
            if keys is None and (area, path) not in self.at_once and 0 <= age < self.rest:
                self.dirty[(area, path)] = self.clock() - age
                continue
            self._settled(area, path, blob, st)  # if this fails, the file stays to hash again
            del self.dirty[(area, path)]
            self.at_once.discard((area, path))
            done += 1
        return done

    def _settled(self, area: int, path: bytes, blob: bytes, st: os.stat_result) -> None:
        old = self.index.get(area, path)
        new = entry_of(st, blob)
        replaced = self.replacing.pop((area, path), b"")
        if old is not None and old.blob == blob:
            if _attributes(old) != _attributes(new):
                self._record(area, put=(path, new))
            return
        old_blob = (old.blob if old else b"") or replaced
        op = Op.CHANGE if old_blob else Op.CREATE
        change = Change(op, path, old_blob=old_blob, new_blob=blob, mode=new.mode, size=new.size)
        self._record(area, put=(path, new), change=change)
        if self.on_content is not None:
            self.on_content(area, path)

    async def run(self, period: float = 1.0) -> None:
        """Settle rested files for as long as the server runs."""
        while True:
            await trio.sleep(period)
            await self.settle()

    # ---- reconciling with the disk: the scan at start, and what the watcher saw ----

    async def scan(
        self,
        area: int,
        hidden: set[bytes] = frozenset(),
        below: bytes = b"",
        *,
        deep: bool = True,
        soon: bool = True,
    ) -> list[bytes]:
        """Reconcile the index of `area` with its directory: what changed while we were away.

        `hidden`: directories to skip besides those the roots hide. `below`: only that
        directory's subtree; with deep=False only its direct children, plus the whole
        subtree of any directory that appeared there (those are returned). `soon`: changed
        files are hashed at once (they changed while we were away) instead of resting from
        now. A directory that cannot be read is not taken as emptied: what the index holds
        below it stays.
        """
        if below:
            seen = self.disk.look(area, below)
            if seen is None or not stat.S_ISDIR(seen[0].st_mode):
                return []  # gone or replaced by a file: the reconcile of its parent sees to it
        hidden_ids = identities(hidden)
        temporaries: list[tuple[bytes, bytes]] = []
        unreadable: list[bytes] = []

        def snapshot() -> tuple[dict[bytes, tuple[os.stat_result, bytes]], dict[bytes, Entry]]:
            on_disk = self.disk.walk(area, below, deep, temporaries, hidden_ids, unreadable)
            if deep:
                return on_disk, dict(self.index.walk(area, below))
            children = self.index.children(area, below)
            return on_disk, {join(below, name): entry for name, entry in children}

        # Both in a thread: a big directory must not stall NFS calls while it is read.
        on_disk, known = await trio.to_thread.run_sync(snapshot)
        for directory, name in temporaries:
            if self.disk.remove_temporary(area, directory, name, self.started_ns):
                shown = os.fsdecode(join(directory, name))
                log.info("removed %s, left by an interrupted realize", shown)
        if unreadable:
            known = {p: e for p, e in known.items() if not _below_any(p, unreadable)}
        appeared = await self._reconcile(area, on_disk, known, soon)
        if deep:
            return []
        for directory in appeared:
            await self.scan(area, hidden, directory, soon=soon)
        return appeared

    async def _reconcile(
        self,
        area: int,
        on_disk: dict[bytes, tuple[os.stat_result, bytes]],
        known: dict[bytes, Entry],
        soon: bool,
    ) -> list[bytes]:
        """Bring the index to what is on the disk; the directories that appeared.

        `on_disk` was walked in a thread, so NFS calls may have acted since: a difference is
        decided on a fresh lstat and index entry, never on the walk's."""
        pause = Pause()
        for path, entry in known.items():  # parents before children
            await pause.now_and_then()
            if entry.layer != Layer.REAL or path in on_disk:
                continue  # Unreal entries live only in the index
            if self.disk.look(area, path) is not None:
                continue  # back since the walk: its events bring another reconcile
            current = self.index.get(area, path)
            if current is not None and current.layer == Layer.REAL:  # not gone with its parent
                self._vanished(area, path, current)
        appeared: list[bytes] = []
        for path, (st, target) in sorted(on_disk.items()):
            await pause.now_and_then()
            if _same(known.get(path), st, target):
                continue
            fresh = self.disk.look(area, path)
            if fresh is None:
                continue  # gone since the walk: its removal is reported or reconciled
            st, target = fresh
            entry = self.index.get(area, path)
            kind = kind_of(st)
            if entry is not None and (
                entry.kind != kind or (kind == Kind.SYMLINK and entry.target != target)
            ):
                self.removed(area, path)  # replaced by another object
                entry = None
            if kind == Kind.FILE:
                if entry is None:
                    self._record(area, put=(path, entry_of(st)))
                elif entry.layer != Layer.REAL:
                    # A Real file where the index has an Unreal one (an unrealize interrupted
                    # before the unlink, or a copy put there): the disk wins; the blob stays
                    # until hashing says whether the content is the same, but only where the
                    # size and mtime are the Unreal entry's. Other bytes (a file written over
                    # it) are not hashed yet: with the old blob, a rename of the file before
                    # it is hashed would carry that blob on as its content.
                    same = (entry.size, entry.mtime_ns) == (st.st_size, st.st_mtime_ns)
                    if not same and entry.blob:
                        self.replacing[(area, path)] = entry.blob
                    self._record(area, put=(path, entry_of(st, entry.blob if same else b"")))
                if (
                    entry is None
                    or not entry.blob
                    or entry.size != st.st_size
                    or entry.mtime_ns != st.st_mtime_ns
                ):
                    self._changed(area, path, st, soon)
                else:
                    self.attributes(area, path, st)
            elif entry is None:
                self.made(area, path, st, target)
                if kind == Kind.DIR:
                    appeared.append(path)
            else:
                if kind == Kind.DIR and entry.layer != Layer.REAL:
                    appeared.append(path)  # an Unreal directory made on the disk
                self._restat(area, path, entry, st)
        return appeared

    def _changed(self, area: int, path: bytes, st: os.stat_result, soon: bool) -> None:
        """A file's content differs from the index: hash it once it rests."""
        key = (area, path)
        when = self.dirty.get(key)
        if when is None:
            self.dirty[key] = self.clock() - (self.rest if soon else 0.0)
            if soon:
                self.at_once.add(key)
            return
        # Already waiting: a file written through NFS rests from its last WRITE; one changed
        # since it was marked (its ctime is later, on the wall clock) rests from now.
        marked_ns = time.time_ns() - int((self.clock() - when) * 1e9)
        if st.st_ctime_ns > marked_ns:
            self.dirty[key] = self.clock()
            self.at_once.discard(key)

    def _restat(self, area: int, path: bytes, entry: Entry, st: os.stat_result) -> None:
        """A directory, symlink or special file still there. A new mode is a SETATTR; a new
        mtime alone is not (a directory's changes whenever its content does)."""
        mode = stat.S_IMODE(st.st_mode)
        now = (mode, st.st_mtime_ns, Layer.REAL, st.st_uid, st.st_gid)
        if now == (entry.mode, entry.mtime_ns, entry.layer, entry.uid, entry.gid):
            return
        change = Change(Op.SETATTR, path, mode=mode) if mode != entry.mode else None
        entry.mode, entry.mtime_ns, entry.layer = mode, st.st_mtime_ns, Layer.REAL
        entry.uid, entry.gid = st.st_uid, st.st_gid
        self._record(area, put=(path, entry), change=change)

    def _vanished(self, area: int, path: bytes, entry: Entry) -> None:
        """A Real entry is gone from the disk. A directory holding Unreal entries stays, as an
        Unreal directory, so that they do: only its Real contents go."""
        if entry.kind != Kind.DIR or all(
            e.layer == Layer.REAL for _, e in self.index.walk(area, path)
        ):
            self.removed(area, path)
            return
        for name, child in list(self.index.children(area, path)):
            if child.layer == Layer.REAL:
                self._vanished(area, join(path, name), child)
        entry.layer = Layer.UNREAL
        self._record(area, put=(path, entry))


def _attributes(entry: Entry) -> tuple[object, ...]:
    return entry.size, entry.mtime_ns, entry.mode, entry.uid, entry.gid


def _same(entry: Entry | None, st: os.stat_result, target: bytes) -> bool:
    """Whether the index entry already says what this lstat does (the common case)."""
    if entry is None or entry.layer != Layer.REAL or entry.kind != kind_of(st):
        return False
    if stat.S_IMODE(st.st_mode) != entry.mode or st.st_mtime_ns != entry.mtime_ns:
        return False
    if (entry.uid, entry.gid) != (st.st_uid, st.st_gid):
        return False  # chowned, or an entry from before owners were kept
    if entry.kind == Kind.FILE:
        return bool(entry.blob) and entry.size == st.st_size
    return entry.target == target


def _below_any(path: bytes, directories: list[bytes]) -> bool:
    return any(not d or path == d or path.startswith(d + b"/") for d in directories)
