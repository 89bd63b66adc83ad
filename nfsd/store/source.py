"""Blob sources: where the cache gets the chunks it lacks.

`BlobSource` is the one interface the Unreal layer asks for missing chunks; the connected
peers are one (nfsd/peer/source.py). `StateDirSource` is another Realize state directory on
this machine (for example a copy on an external disk), attached read-only: its index says
which of its Real files holds which blob, and chunks are read from those files. The cache
verifies every chunk it gets (`BlobStore.put_chunk`), so a source that changed under us
cannot slip in wrong bytes.

`import_area` makes a source's files of one area appear here as Unreal entries: the index
gets their paths, sizes and blob ids, the cache their manifests (chunk hashes, computed by
reading the source's files once), and no content is copied.

A source's index is input like any other (the disk it is on may have been anyone's): every
entry's path passes nfsd/store/paths.py's check, and its directory must be one of the
source's checked directories, before it is imported or names a file to read; the others are
refused, with the reason, and the rest is imported. The source's files are opened below its
area root one directory at a time, never following a symlink.

Nor are a source's owners taken at its word: anyone may have written that index, or made a
setuid-root file on that disk. An imported entry keeps its permission bits and the sticky bit,
but not setuid or setgid, and no owner: it is shown and realized as the importing area root's
owner and group (nfsd/vfs/unreal.py `ownership`).
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import blake3

from nfsd.store.areas import AreaTable
from nfsd.store.blobs import DEFAULT_CHUNK_SIZE, BlobStore
from nfsd.store.db import Store
from nfsd.store.index import AreaIndex, Entry, Kind, Layer, join, split
from nfsd.store.paths import path_problem, shown, target_problem
from nfsd.vfs.osapi import DIR_FLAGS, open_dir, open_regular
from xdr.control import IMPORT_REFUSALS

log = logging.getLogger("realize.source")

# What an imported entry keeps of its mode: the permissions and the sticky bit (which only
# restricts), never setuid or setgid.
_IMPORTED_MODE = 0o1777


class BlobSource(Protocol):
    name: str

    def read_chunk(self, blob_id: bytes, offset: int, length: int) -> bytes | None:
        """`length` bytes of the blob at `offset`, or None when this source cannot give them."""
        ...

    def has(self, blob_id: bytes) -> bool:
        """Whether this source says it holds the whole blob."""
        ...

    # Optional: `chunk_hashes(blob_id, size) -> list[bytes] | None`, the blob's chunk hashes
    # when the cache has no manifest for it (nfsd/vfs/unreal.py `describe`); and
    # `might_have(blob_id) -> bool`, cheap on the event loop, False where asking the two
    # above (in a worker thread) would surely find nothing.


def file_chunks(fd: int, chunk_size: int = DEFAULT_CHUNK_SIZE) -> tuple[bytes, int, list[bytes]]:
    """(blob id, size, chunk hashes) of an open file, read once, chunk by chunk."""
    whole = blake3.blake3()
    hashes: list[bytes] = []
    size = 0
    while True:
        chunk = os.pread(fd, chunk_size, size)
        if not chunk:
            break
        whole.update(chunk)
        hashes.append(blake3.blake3(chunk).digest())
        size += len(chunk)
    return whole.digest(), size, hashes


def open_below(root: bytes, path: bytes) -> int:
    """The regular file `path` (a checked area path) below the directory `root`, opened for
    reading one directory at a time: a symlink on the way or at the end is never followed,
    so nothing outside `root` is opened."""
    fd = os.open(root, DIR_FLAGS)
    try:
        *directories, name = path.split(b"/")
        for directory in directories:
            inner = open_dir(directory, fd)
            os.close(fd)
            fd = inner
        return open_regular(fd, name, os.O_RDONLY)[0]
    finally:
        os.close(fd)


@dataclass(frozen=True)
class SourceEntry:
    path: bytes  # relative to the area root, checked
    entry: Entry
    root: bytes | None  # the source's area root, where a Real entry's file is


@dataclass(frozen=True)
class Refused:
    """An entry of the source's index that is not taken, and why."""

    path: bytes  # as the source's index spells it: for messages only
    reason: str


def is_state_dir(path: Path) -> bool:
    """Whether `path` holds a Realize store (a state directory)."""
    return (path / "db" / "CURRENT").exists()


class StateDirSource:
    """Another Realize state directory, opened read-only."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self.state_dir = Path(state_dir).resolve()
        self.name = str(self.state_dir)
        self.store = Store(self.state_dir / "db", read_only=True)
        self.areas: dict[str, tuple[int, bytes]] = {
            area.name: (area.id, area.path)
            for area in AreaTable(self.store)
            if area.path is not None
        }
        self.index = AreaIndex(self.store) if "entries" in self.store._families else None
        self._locations: dict[bytes, tuple[bytes, bytes]] = {}  # blob -> (area root, path)
        for area_id, root in self.areas.values():
            for item in self._scan(area_id):
                if isinstance(item, Refused):
                    continue
                path, entry = item
                if entry.kind == Kind.FILE and entry.blob and entry.layer == Layer.REAL:
                    self._locations.setdefault(entry.blob, (root, path))

    def _scan(self, area_id: int) -> Iterator[tuple[bytes, Entry] | Refused]:
        """Every entry of one area in the source's index, each checked or refused.

        Keys are `area ‖ parent ‖ NUL ‖ name` in byte order, so a directory comes before
        everything below it: one pass knows whether an entry's directory was taken."""
        if self.index is None:
            return
        prefix = struct.pack(">I", area_id)
        directories = {b""}
        for key, raw in self.index.entries.items(from_key=prefix):
            if not key.startswith(prefix):
                break
            rest = bytes(key[len(prefix) :])
            if not rest:
                continue  # the area root's own entry
            parent, separator, name = rest.partition(b"\0")
            path = join(parent, name)
            if not separator:
                yield Refused(rest, "not an entry key")
                continue
            problem = path_problem(path)
            if problem is None and b"/" in name:
                problem = "a '/' inside a name"
            if problem is None and parent not in directories:
                problem = "its directory is not one of the source's"
            if problem is not None:
                yield Refused(path, problem)
                continue
            try:
                entry = Entry.unpack(raw)
            except (ValueError, struct.error):
                yield Refused(path, "an unreadable entry")
                continue
            if entry.kind == Kind.SYMLINK:
                problem = target_problem(entry.target)
                if problem is not None:
                    yield Refused(path, problem)
                    continue
            if entry.kind == Kind.DIR:
                directories.add(path)
            yield path, entry

    def entries(self, area: str) -> Iterator[SourceEntry | Refused]:
        if area not in self.areas:
            raise KeyError(f"the source has no area {area!r} (it has {sorted(self.areas)})")
        area_id, root = self.areas[area]
        for item in self._scan(area_id):
            if isinstance(item, Refused):
                yield item
                continue
            path, entry = item
            yield SourceEntry(path, entry, root if entry.layer == Layer.REAL else None)

    def has(self, blob_id: bytes) -> bool:
        return blob_id in self._locations

    def read_chunk(self, blob_id: bytes, offset: int, length: int) -> bytes | None:
        location = self._locations.get(blob_id)
        if location is None:
            return None
        try:
            fd = open_below(*location)
        except OSError:
            return None
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def close(self) -> None:
        self.store.close()


# Refused entries named one by one in the report (and the log); the rest are only counted.
REFUSALS_SHOWN = IMPORT_REFUSALS


@dataclass
class ImportReport:
    files: int = 0
    directories: int = 0
    symlinks: int = 0
    bytes: int = 0
    skipped: int = 0  # already here, or changed in the source since it was indexed
    refused: int = 0  # entries whose path (or target) the index must never hold
    refusals: list[str] = field(default_factory=list)  # the first few, "path: reason"

    def refuse(self, item: Refused) -> None:
        self.refused += 1
        if len(self.refusals) < REFUSALS_SHOWN:
            self.refusals.append(f"{shown(item.path)}: {item.reason}")
            log.warning("refused %s from the source: %s", shown(item.path), item.reason)


def import_area(
    store: Store,
    blobs: BlobStore,
    area_id: int,
    area_root: bytes,
    source: StateDirSource,
    source_area: str,
    place: Callable[[Callable[[], bool], bytes], bool] = lambda put, path: put(),
) -> ImportReport:
    """Add the source's entries of `source_area` to our area as Unreal entries.

    Paths that exist here (in the Real directory or the index) are left alone; entries the
    check refuses are counted and named in the report, and the others imported. A file is
    read and hashed first, then `place(put, path)` runs `put` where the tree's changes are
    serialized (a running server's event loop): it looks again whether the path is free,
    and only then registers the blob and writes the entry, so a client's CREATE or RENAME
    of that name meanwhile is never written over."""
    index = AreaIndex(store)
    report = ImportReport()

    def taken(path: bytes) -> bool:
        """Whether the path is not ours to fill: something is there (or its parent is not a
        directory of the index, as where the source's directory is a file here)."""
        parent, _ = split(path)
        above = index.get(area_id, parent) if parent else None
        if parent and (above is None or above.kind != Kind.DIR):
            return True
        return index.get(area_id, path) is not None or os.path.lexists(join(area_root, path))

    for item in source.entries(source_area):
        if isinstance(item, Refused):
            report.refuse(item)
            continue
        path, entry = item.path, item.entry
        if taken(path):
            report.skipped += 1
            continue
        unreal = Entry(
            entry.kind,
            Layer.UNREAL,
            entry.mode & _IMPORTED_MODE,
            entry.size,
            entry.mtime_ns,
            entry.blob,
            entry.target,
        )  # no owner: the source's is not taken at its word (see the module docstring)
        hashes: list[bytes] = []
        if entry.kind == Kind.FILE:
            if not entry.blob or item.root is None:
                report.skipped += 1
                continue
            try:
                fd = open_below(item.root, path)
                try:
                    blob_id, size, hashes = file_chunks(fd)
                finally:
                    os.close(fd)
            except OSError as e:
                log.warning("skipping %s: %s", shown(path), e)
                report.skipped += 1
                continue
            if blob_id != entry.blob or size != entry.size:
                report.skipped += 1  # changed since the source indexed it
                continue
        elif entry.kind not in (Kind.DIR, Kind.SYMLINK):
            report.skipped += 1
            continue

        def put(path: bytes = path, unreal: Entry = unreal, hashes: list[bytes] = hashes) -> bool:
            if taken(path):
                return False  # made here while the file was read
            if unreal.kind == Kind.FILE:
                blobs.begin_blob(unreal.blob, unreal.size, hashes, area=source_area)
            batch = store.batch()
            index.put(batch, area_id, path, unreal)
            batch.commit()
            return True

        if not place(put, path):
            report.skipped += 1
        elif unreal.kind == Kind.FILE:
            report.files += 1
            report.bytes += unreal.size
        elif unreal.kind == Kind.DIR:
            report.directories += 1
        else:
            report.symlinks += 1
    if report.refused > REFUSALS_SHOWN:
        log.warning("refused %d entries from the source in all", report.refused)
    return report
