"""Blob sources: where the cache gets the chunks it lacks.

`BlobSource` is the one interface the Unreal layer asks for missing chunks; peers will join
behind it. `StateDirSource` is another Realize state directory on this machine (for example a
copy on an external disk), attached read-only: its index says which of its Real files holds
which blob, and chunks are read from those files. The cache verifies every chunk it gets
(`BlobStore.put_chunk`), so a source that changed under us cannot slip in wrong bytes.

`import_area` makes a source's files of one area appear here as Unreal entries: the index
gets their paths, sizes and blob ids, the cache their manifests (chunk hashes, computed by
reading the source's files once), and no content is copied.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import blake3

from nfsd.store.areas import AreaTable
from nfsd.store.blobs import DEFAULT_CHUNK_SIZE, BlobStore
from nfsd.store.db import Store
from nfsd.store.index import AreaIndex, Entry, Kind, Layer, join

log = logging.getLogger("realize.source")


class BlobSource(Protocol):
    name: str

    def read_chunk(self, blob_id: bytes, offset: int, length: int) -> bytes | None:
        """`length` bytes of the blob at `offset`, or None when this source cannot give them."""
        ...

    def has(self, blob_id: bytes) -> bool:
        """Whether this source says it holds the whole blob."""
        ...


def file_chunks(
    path: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> tuple[bytes, int, list[bytes]]:
    """(blob id, size, chunk hashes) of a file, read once, chunk by chunk."""
    whole = blake3.blake3()
    hashes: list[bytes] = []
    size = 0
    with open(path, "rb", buffering=0) as f:
        while True:
            chunk = f.read(chunk_size)
            if not chunk:
                break
            whole.update(chunk)
            hashes.append(blake3.blake3(chunk).digest())
            size += len(chunk)
    return whole.digest(), size, hashes


@dataclass(frozen=True)
class SourceEntry:
    path: bytes  # relative to the area root
    entry: Entry
    location: bytes | None  # the source's Real file, for files


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
        self._locations: dict[bytes, bytes] = {}
        for area_id, root in self.areas.values():
            for path, entry in self._walk(area_id):
                if entry.kind == Kind.FILE and entry.blob and entry.layer == Layer.REAL:
                    self._locations.setdefault(entry.blob, join(root, path))

    def _walk(self, area_id: int) -> Iterator[tuple[bytes, Entry]]:
        return self.index.walk(area_id) if self.index is not None else iter(())

    def entries(self, area: str) -> Iterator[SourceEntry]:
        if area not in self.areas:
            raise KeyError(f"the source has no area {area!r} (it has {sorted(self.areas)})")
        area_id, root = self.areas[area]
        for path, entry in self._walk(area_id):
            location = join(root, path) if entry.layer == Layer.REAL else None
            yield SourceEntry(path, entry, location)

    def has(self, blob_id: bytes) -> bool:
        return blob_id in self._locations

    def read_chunk(self, blob_id: bytes, offset: int, length: int) -> bytes | None:
        location = self._locations.get(blob_id)
        if location is None:
            return None
        try:
            fd = os.open(location, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            return os.pread(fd, length, offset)
        finally:
            os.close(fd)

    def close(self) -> None:
        self.store.close()


@dataclass
class ImportReport:
    files: int = 0
    directories: int = 0
    symlinks: int = 0
    bytes: int = 0
    skipped: int = 0  # already here, or changed in the source since it was indexed


def import_area(
    store: Store,
    blobs: BlobStore,
    area_id: int,
    area_root: bytes,
    source: StateDirSource,
    source_area: str,
) -> ImportReport:
    """Add the source's entries of `source_area` to our area as Unreal entries.

    Paths that exist here (in the Real directory or the index) are left alone."""
    index = AreaIndex(store)
    report = ImportReport()
    for item in source.entries(source_area):
        path, entry = item.path, item.entry
        if index.get(area_id, path) is not None or os.path.lexists(join(area_root, path)):
            report.skipped += 1
            continue
        unreal = Entry(
            entry.kind,
            Layer.UNREAL,
            entry.mode,
            entry.size,
            entry.mtime_ns,
            entry.blob,
            entry.target,
        )
        if entry.kind == Kind.FILE:
            if not entry.blob or item.location is None:
                report.skipped += 1
                continue
            try:
                st = os.lstat(item.location)
                if not stat.S_ISREG(st.st_mode):
                    raise OSError("not a regular file")
                blob_id, size, hashes = file_chunks(item.location)
            except OSError as e:
                log.warning("skipping %s: %s", os.fsdecode(item.location), e)
                report.skipped += 1
                continue
            if blob_id != entry.blob or size != entry.size:
                report.skipped += 1  # changed since the source indexed it
                continue
            blobs.begin_blob(blob_id, size, hashes, area=source_area)
            report.files += 1
            report.bytes += size
        elif entry.kind == Kind.DIR:
            report.directories += 1
        elif entry.kind == Kind.SYMLINK:
            report.symlinks += 1
        else:
            report.skipped += 1
            continue
        batch = store.batch()
        index.put(batch, area_id, path, unreal)
        batch.commit()
    return report
