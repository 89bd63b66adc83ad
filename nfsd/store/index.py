"""The area index: every path of every area with what it is and where its content lives.

Column family `entries`, key `area id (4) ‖ parent path ‖ 0x00 ‖ name` → packed `Entry`, so
the entries of one directory are one prefix scan (names hold neither "/" nor NUL). Paths are
bytes relative to the area root, "/"-separated, the root itself being b"".

A packed entry is `kind, layer, mode, size, mtime_ns, blob length` (`_ENTRY`), then, when the
kind byte has its high bit (`_OWNED`) set, the owner's `uid, gid` (`_OWNER`), then the blob id
and the symlink target. Entries written before owners were kept lack that bit and the owner:
they load with `uid = gid = None`, the owner unknown (see `Entry.uid`).

Column family `marks`, key `area id (4) ‖ path` → one byte `Mark`: what a path should be
(`real`, `keep`, `unreal`); a path without its own mark inherits the nearest marked parent's,
and the area's default (stored under the root path b"") applies above all.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from enum import IntEnum

from nfsd.store.db import Batch, Store

_AREA = struct.Struct(">I")
# kind, layer, mode, size, mtime_ns, blob length; then the owner (when `_OWNED`), then blob
# id, then symlink target
_ENTRY = struct.Struct(">BBIQqB")
_OWNER = struct.Struct(">II")
_OWNED = 0x80  # in the kind byte: the owner follows the header (kinds are 1..4)


class Kind(IntEnum):
    FILE = 1
    DIR = 2
    SYMLINK = 3
    OTHER = 4  # FIFOs, sockets, devices: recorded, never synced as content


class Layer(IntEnum):
    REAL = 1  # a complete local file in the area's directory
    UNREAL = 2  # known by its blob; content (if any) in the blob cache


class Mark(IntEnum):
    INHERIT = 0
    REAL = 1
    KEEP = 2
    UNREAL = 3


@dataclass(slots=True)
class Entry:
    kind: Kind
    layer: Layer
    mode: int
    size: int
    mtime_ns: int
    blob: bytes = b""  # BLAKE3 id of the content (files); b"" while not yet hashed
    target: bytes = b""  # symlinks
    # The owner the Real object had, kept so that it comes back with it. None (both) when
    # unknown: an entry from before owners were kept, or one imported from a source whose
    # owners are not taken at its word (nfsd/store/source.py); see nfsd/vfs/unreal.py
    # `ownership` for what such an entry is then shown and realized as.
    uid: int | None = None
    gid: int | None = None

    def pack(self) -> bytes:
        owned = self.uid is not None and self.gid is not None
        header = _ENTRY.pack(
            self.kind | (_OWNED if owned else 0),
            self.layer,
            self.mode,
            self.size,
            self.mtime_ns,
            len(self.blob),
        )
        owner = _OWNER.pack(self.uid, self.gid) if owned else b""
        return header + owner + self.blob + self.target

    @classmethod
    def unpack(cls, raw: bytes) -> Entry:
        kind, layer, mode, size, mtime_ns, blob_length = _ENTRY.unpack_from(raw)
        start = _ENTRY.size
        uid = gid = None
        if kind & _OWNED:
            kind &= ~_OWNED
            uid, gid = _OWNER.unpack_from(raw, start)
            start += _OWNER.size
        blob = bytes(raw[start : start + blob_length])
        target = bytes(raw[start + blob_length :])
        return cls(Kind(kind), Layer(layer), mode, size, mtime_ns, blob, target, uid, gid)


def split(path: bytes) -> tuple[bytes, bytes]:
    """(parent, name) of a non-root area path."""
    parent, _, name = path.rpartition(b"/")
    return parent, name


def join(parent: bytes, name: bytes) -> bytes:
    return parent + b"/" + name if parent else name


def _key(area: int, path: bytes) -> bytes:
    if not path:
        return _AREA.pack(area)  # the area root: outside every directory's prefix
    parent, name = split(path)
    return _AREA.pack(area) + parent + b"\0" + name


class AreaIndex:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.entries = store.family("entries")
        self.marks = store.family("marks")

    # ---- entries ----

    def get(self, area: int, path: bytes) -> Entry | None:
        raw = self.entries.get(_key(area, path))
        return None if raw is None else Entry.unpack(raw)

    def put(self, batch: Batch, area: int, path: bytes, entry: Entry) -> None:
        batch.put("entries", _key(area, path), entry.pack())

    def delete(self, batch: Batch, area: int, path: bytes) -> None:
        batch.delete("entries", _key(area, path))

    def children(self, area: int, directory: bytes) -> Iterator[tuple[bytes, Entry]]:
        """(name, entry) of each entry directly in `directory`, in name order."""
        prefix = _AREA.pack(area) + directory + b"\0"
        for key, raw in self.entries.items(from_key=prefix):
            if not key.startswith(prefix):
                break
            yield bytes(key[len(prefix) :]), Entry.unpack(raw)

    def walk(self, area: int, directory: bytes = b"") -> Iterator[tuple[bytes, Entry]]:
        """(path, entry) of everything below `directory`, parents before children."""
        pending = [directory]
        while pending:
            current = pending.pop()
            for name, entry in self.children(area, current):
                path = join(current, name)
                yield path, entry
                if entry.kind == Kind.DIR:
                    pending.append(path)

    def at_and_below(self, area: int, path: bytes) -> Iterator[tuple[bytes, Entry]]:
        """(path, entry) of `path` itself (none for the area root) and, when it is a
        directory (or the root, or not in the index), of everything below it."""
        top = self.get(area, path) if path else None
        if top is not None:
            yield path, top
        if top is None or top.kind == Kind.DIR:
            yield from self.walk(area, path)

    def move(self, batch: Batch, area: int, old: bytes, new: bytes) -> None:
        """Re-key `old` (and, for a directory, everything below it) as `new`."""
        entry = self.get(area, old)
        if entry is None:
            return
        if entry.kind == Kind.DIR:
            for path, child in list(self.walk(area, old)):
                self.delete(batch, area, path)
                self.put(batch, area, new + path[len(old) :], child)
        self.delete(batch, area, old)
        self.put(batch, area, new, entry)

    def remove_tree(self, batch: Batch, area: int, path: bytes) -> None:
        for below, _ in list(self.walk(area, path)):
            self.delete(batch, area, below)
        self.delete(batch, area, path)

    # ---- marks ----

    def set_mark(self, batch: Batch, area: int, path: bytes, mark: Mark) -> None:
        key = _AREA.pack(area) + path
        if mark == Mark.INHERIT:
            batch.delete("marks", key)
        else:
            batch.put("marks", key, bytes([mark]))

    def own_mark(self, area: int, path: bytes) -> Mark:
        raw = self.marks.get(_AREA.pack(area) + path)
        return Mark(raw[0]) if raw else Mark.INHERIT

    def marked(self, area: int) -> Iterator[tuple[bytes, Mark]]:
        """(path, own mark) of every marked path of the area, in key order."""
        prefix = _AREA.pack(area)
        for key, raw in self.marks.items(from_key=prefix):
            if not key.startswith(prefix):
                break
            yield bytes(key[len(prefix) :]), Mark(raw[0])

    def files_marked(self, area: int, marks: set[Mark], layer: Layer) -> Iterator[bytes]:
        """Every file of `layer` (hashed) whose mark in force is one of `marks`."""
        for top, mark in list(self.marked(area)):
            if mark not in marks:
                continue
            for path, entry in self.at_and_below(area, top):
                found = entry.kind == Kind.FILE and entry.layer == layer and entry.blob
                if found and self.marked_at(area, path)[1] == top:  # not a nested mark's
                    yield path

    def mark(self, area: int, path: bytes, default: Mark = Mark.REAL) -> Mark:
        """The mark in force for `path`: its own, else the nearest marked parent's."""
        mark, where = self.marked_at(area, path)
        return default if where is None else mark

    def marked_at(self, area: int, path: bytes) -> tuple[Mark, bytes | None]:
        """The mark in force for `path` and the path that carries it (its own or the nearest
        marked parent's); (INHERIT, None) when nothing above it is marked."""
        current = path
        while True:
            mark = self.own_mark(area, current)
            if mark != Mark.INHERIT:
                return mark, current
            if not current:
                return Mark.INHERIT, None
            current = split(current)[0]
