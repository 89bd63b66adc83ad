"""The server's RocksDB database (rocksdict, raw bytes): column families and atomic batches.

One database per state directory. Column families are opened by name; related updates are
written through `Batch` so a crash leaves either the old state or the new.
"""

from __future__ import annotations

import errno
import os
import uuid
from collections.abc import Callable
from pathlib import Path

from rocksdict import AccessType, Options, Rdict, WriteBatch

FAMILIES = ("meta", "inodes", "entries", "marks", "history", "blobs", "chunks", "chunkinfo", "lru")
SCHEMA_VERSION = b"1"


def _options() -> Options:
    opt = Options(raw_mode=True)
    opt.create_if_missing(True)
    opt.create_missing_column_families(True)
    # The blob cache makes one blob file per memtable flush (8 MiB): thousands for a large
    # cache. Keep at most this many files open (LRU) instead of all, which would run into the
    # usual 1024-descriptor limit.
    opt.set_max_open_files(512)
    return opt


def _chunk_options() -> Options:
    """BlobDB for `chunks` (nfsd.store.blobs): chunk values go to blob files, the LSM keeps
    only keys and references. 8 MiB write buffers (at most two) bound the memory a long
    ingest holds (about 24 MiB of RSS measured). Blob garbage collection is off: left on,
    the compactions of a 1 GiB ingest rewrote 1.3-1.5 GiB of live chunks and stalled writes
    (ingest 190 MB/s with it, 430 without, measured). `BlobStore.reclaim` turns it on for
    one compaction when evicted chunks left enough garbage in the blob files."""
    opt = Options(raw_mode=True)
    opt.set_enable_blob_files(True)
    opt.set_min_blob_size(4096)
    opt.set_blob_file_size(64 << 20)
    opt.set_enable_blob_gc(False)
    opt.set_blob_gc_age_cutoff(0.25)
    opt.set_blob_gc_force_threshold(0.5)
    opt.set_write_buffer_size(8 << 20)
    opt.set_max_write_buffer_number(2)
    return opt


# Families that need more than the plain raw-mode options.
FAMILY_OPTIONS: dict[str, Callable[[], Options]] = {"chunks": _chunk_options}


def family_options(name: str) -> Options:
    make = FAMILY_OPTIONS.get(name)
    return make() if make is not None else Options(raw_mode=True)


class Batch:
    """Puts and deletes across families, applied at once by `commit`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.batch = WriteBatch(raw_mode=True)

    def put(self, family: str, key: bytes, value: bytes) -> None:
        self.batch.put(key, value, self.store.handle(family))

    def delete(self, family: str, key: bytes) -> None:
        self.batch.delete(key, self.store.handle(family))

    def commit(self) -> None:
        try:
            self.store.db.write(self.batch)
        except Exception as e:  # rocksdict reports every failure as a plain Exception
            raise store_error(e) from e


def store_error(e: Exception) -> OSError:
    """RocksDB's failure as the OSError it stands for: a full disk is ENOSPC (a client is
    told NOSPC, not a server fault); any other I/O failure EIO."""
    text = str(e)
    code = errno.ENOSPC if "No space left" in text else errno.EIO
    return OSError(code, f"the server's database: {text}")


class Store:
    def __init__(self, path: str | os.PathLike[str], *, read_only: bool = False) -> None:
        """Open (or create) the database; `read_only` opens beside a running server."""
        self.path = Path(path)
        if read_only and not (self.path / "CURRENT").exists():
            raise FileNotFoundError(f"no database in {path}")
        self.path.mkdir(parents=True, exist_ok=True)
        existing: list[str] = []
        if (self.path / "CURRENT").exists():
            existing = Rdict.list_cf(str(self.path), Options(raw_mode=True))
        names = set(existing) if read_only else {*FAMILIES, *existing}
        families = {name: family_options(name) for name in names}
        families.pop("default", None)
        access = AccessType.read_only() if read_only else AccessType.read_write()
        self.db = Rdict(
            str(self.path), options=_options(), column_families=families, access_type=access
        )
        self._families = {name: self.db.get_column_family(name) for name in families}
        self._handles = {name: self.db.get_column_family_handle(name) for name in families}
        meta = self.family("meta")
        if read_only:
            return
        if meta.get(b"schema") is None:
            batch = self.batch()
            batch.put("meta", b"schema", SCHEMA_VERSION)
            batch.put("meta", b"store-uuid", uuid.uuid4().bytes)
            batch.commit()
        elif meta[b"schema"] != SCHEMA_VERSION:
            raise RuntimeError(f"state in {path} has schema {meta[b'schema']!r}, expected 1")

    def family(self, name: str) -> Rdict:
        return self._families[name]

    def handle(self, name: str):
        return self._handles[name]

    def batch(self) -> Batch:
        return Batch(self)

    def flush(self) -> None:
        self.db.flush_wal(True)

    def close(self) -> None:
        for family in self._families.values():
            family.close()
        # Column family handles keep the database (and its lock) alive until released.
        self._handles.clear()
        self.db.close()
