"""Keeps the area index and the history in step with the Real layer.

Every change made through NFS is reported here by the tree, and a scan at start finds what
changed on the disk while the server was not looking. Deletes, renames, directories, links
and symlinks go into the history at once. A file's content is hashed only once it has rested
(`rest` seconds without a write), never per WRITE; then a CREATE (first content) or CHANGE
(old blob → new blob) is recorded. Paths are relative to the area root.
"""

from __future__ import annotations

import logging
import os
import stat
import time
from collections.abc import Callable

import blake3
import trio

from nfsd.store.db import Store
from nfsd.store.history import Change, History, Op
from nfsd.store.index import AreaIndex, Entry, Kind, Layer, join

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
    return Entry(kind, Layer.REAL, stat.S_IMODE(st.st_mode), size, st.st_mtime_ns, blob, target)


def hash_file(path: bytes) -> tuple[bytes, os.stat_result]:
    """BLAKE3 of a file, streamed, and its stat taken from the open file after reading."""
    hasher = blake3.blake3()
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        while True:
            block = os.read(fd, HASH_BLOCK)
            if not block:
                break
            hasher.update(block)
        return hasher.digest(), os.fstat(fd)
    finally:
        os.close(fd)


def _announced(entry: Entry | None) -> bool:
    """Whether peers were told of this entry (files: once hashed)."""
    return entry is not None and (entry.kind != Kind.FILE or bool(entry.blob))


class Journal:
    def __init__(self, store: Store, roots: dict[int, bytes], rest: float = DEFAULT_REST):
        self.store = store
        self.roots = roots
        self.rest = rest
        self.index = AreaIndex(store)
        self.history = History(store)
        self.dirty: dict[tuple[int, bytes], float] = {}
        self.clock: Callable[[], float] = time.monotonic

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
        if entry is None:
            return
        batch = self.store.batch()
        self.index.remove_tree(batch, area, path)
        if _announced(entry):
            op = Op.RMDIR if entry.kind == Kind.DIR else Op.DELETE
            self.history.append(batch, area, Change(op, path, old_blob=entry.blob))
        batch.commit()

    def renamed(self, area: int, old: bytes, new: bytes) -> None:
        entry = self.index.get(area, old)
        replaced = self.index.get(area, new)
        batch = self.store.batch()
        if replaced is not None:
            self.index.remove_tree(batch, area, new)
        if entry is not None:
            self.index.move(batch, area, old, new)
            if _announced(entry):
                self.history.append(batch, area, Change(Op.RENAME, old, new, old_blob=entry.blob))
        batch.commit()
        prefix = old + b"/"
        for key in [
            k for k in self.dirty if k[0] == area and (k[1] == old or k[1].startswith(prefix))
        ]:
            self.dirty[(area, new + key[1][len(old) :])] = self.dirty.pop(key)

    def attributes(self, area: int, path: bytes, st: os.stat_result) -> None:
        entry = self.index.get(area, path)
        if entry is None:
            return
        mode = stat.S_IMODE(st.st_mode)
        if mode == entry.mode and entry.mtime_ns == st.st_mtime_ns:
            return
        change = Change(Op.SETATTR, path, mode=mode) if _announced(entry) else None
        entry.mode, entry.mtime_ns = mode, st.st_mtime_ns
        self._record(area, put=(path, entry), change=change)

    # ---- hashing what rested ----

    def rested(self) -> list[tuple[int, bytes]]:
        now = self.clock()
        return [key for key, when in self.dirty.items() if now - when >= self.rest]

    async def settle(self, keys: list[tuple[int, bytes]] | None = None) -> int:
        """Hash the rested files (or `keys`) and record their CREATE/CHANGE; how many."""
        done = 0
        for area, path in self.rested() if keys is None else keys:
            when = self.dirty.get((area, path))
            if when is None or area not in self.roots:
                continue
            full = join(self.roots[area], path) if path else self.roots[area]
            try:
                small = os.lstat(full).st_size <= _INLINE_HASH
                if small:  # a thread hand-off costs more than hashing a small file
                    blob, st = hash_file(full)
                else:
                    blob, st = await trio.to_thread.run_sync(hash_file, full)
            except OSError:
                self.dirty.pop((area, path), None)  # gone or not a file: its removal reports
                continue
            if self.dirty.get((area, path)) != when:
                continue  # written again while hashing: wait for the next rest
            del self.dirty[(area, path)]
            self._settled(area, path, blob, st)
            done += 1
        return done

    def _settled(self, area: int, path: bytes, blob: bytes, st: os.stat_result) -> None:
        old = self.index.get(area, path)
        new = entry_of(st, blob)
        if old is not None and old.blob == blob:
            if (old.size, old.mtime_ns, old.mode) != (new.size, new.mtime_ns, new.mode):
                self._record(area, put=(path, new))
            return
        op = Op.CHANGE if old is not None and old.blob else Op.CREATE
        change = Change(
            op, path, old_blob=old.blob if old else b"", new_blob=blob, mode=new.mode, size=new.size
        )
        self._record(area, put=(path, new), change=change)

    async def run(self, period: float = 1.0) -> None:
        """Settle rested files for as long as the server runs."""
        while True:
            await trio.sleep(period)
            await self.settle()

    # ---- the scan at start ----

    async def scan(self, area: int, hidden: set[bytes] = frozenset()) -> None:
        """Reconcile the index of `area` with its directory: what changed while we were away."""
        root = self.roots[area]
        on_disk = await trio.to_thread.run_sync(_walk, root, hidden)
        for path, entry in list(self.index.walk(area)):
            if entry.layer != Layer.REAL or path in on_disk:
                continue
            if self.index.get(area, path) is not None:  # not already gone with its parent
                self.removed(area, path)
        for count, (path, (st, target)) in enumerate(sorted(on_disk.items())):
            if count % 1000 == 999:
                await trio.lowlevel.checkpoint()
            known = self.index.get(area, path)
            kind = kind_of(st)
            if known is not None and known.kind != kind:
                self.removed(area, path)
                known = None
            if kind == Kind.FILE:
                if known is None:
                    self._record(area, put=(path, entry_of(st)))
                if (
                    known is None
                    or not known.blob
                    or known.size != st.st_size
                    or known.mtime_ns != st.st_mtime_ns
                ):
                    self.dirty[(area, path)] = self.clock() - self.rest  # hash soon
            elif known is None:
                self.made(area, path, st, target)
            else:
                self.attributes(area, path, st)


def _walk(root: bytes, hidden: set[bytes]) -> dict[bytes, tuple[os.stat_result, bytes]]:
    """lstat of everything below root (paths relative to it), skipping hidden paths."""
    found: dict[bytes, tuple[os.stat_result, bytes]] = {}
    pending = [b""]
    while pending:
        relative = pending.pop()
        directory = join(root, relative) if relative else root
        try:
            with os.scandir(directory) as it:
                items = list(it)
        except OSError as e:
            log.warning("cannot scan %s: %s", os.fsdecode(directory), e.strerror)
            continue
        for item in items:
            if item.path in hidden:
                continue
            path = join(relative, item.name)
            try:
                st = item.stat(follow_symlinks=False)
                target = os.readlink(item.path) if stat.S_ISLNK(st.st_mode) else b""
            except OSError:
                continue
            found[path] = (st, target)
            if stat.S_ISDIR(st.st_mode):
                pending.append(path)
    return found
