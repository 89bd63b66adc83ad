"""The server's RocksDB database (rocksdict, raw bytes): column families and atomic batches.

One database per state directory. Column families are opened by name; related updates are
written through `Batch` so a crash leaves either the old state or the new.

A write RocksDB could not make (a full disk) leaves the database refusing every later write
until it is resumed, which rocksdict cannot ask for. So every write goes through
`Store.write`: after such a failure, once the disk has room again, the store closes the
database and opens it again (the WAL gives back every write acknowledged before the failure).
While the disk stays full, writes fail with the first failure (ENOSPC) and reads go on; a
reopen that fails leaves the database open read-only until the next try. `Store.family`
hands out `Family` objects that stay valid across such a reopen.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rocksdict import (
    AccessType,
    BlockBasedOptions,
    Cache,
    Options,
    Rdict,
    WriteBatch,
    WriteOptions,
)

log = logging.getLogger("realize.store")

FAMILIES = ("meta", "inodes", "entries", "marks", "history", "blobs", "chunks", "chunkinfo", "lru")
SCHEMA_VERSION = b"1"

_SYNCED = WriteOptions()
_SYNCED.sync = True

REOPEN_PAUSE = 0.5  # seconds between tries to reopen a database that failed a write
READ_ONLY_TRIES = 20  # opens of a live database read-only, each of which a compaction can race
# Room a reopen needs besides the WALs it replays into new tables: a new MANIFEST, OPTIONS
# file and WAL.
REOPEN_ROOM = 256 << 10
# RocksDB's failures after which it refuses writes until resumed (its "background error").
_LASTING = ("IO error", "No space left", "previous error", "read only")
_NOT_OPEN = (errno.EIO, "the server's database is not open")


# Memory. RocksDB's defaults give each column family its own 32 MiB block cache and 64 MiB
# memtables (two of them), so the server's RSS grew with every family written: after three
# rounds of the benchmark's small-file workload the index families' memtables held 38 MB and
# were still growing, none of it flushed. The families share one block cache instead, each
# memtable is flushed at a few MiB, and all memtables together are held under a total
# (a flush of the oldest when it is reached). Durability is the WAL's, whatever the sizes.
BLOCK_CACHE_BYTES = 16 << 20  # shared by every family of one store
WRITE_BUFFER_BYTES = 4 << 20  # one memtable of an index family; at most two
MEMTABLES_BYTES = 32 << 20  # every memtable of the store together


def _family_base(cache: Cache) -> Options:
    """What every family has: raw bytes, and the store's one block cache."""
    opt = Options(raw_mode=True)
    table = BlockBasedOptions()
    table.set_block_cache(cache)
    opt.set_block_based_table_factory(table)
    return opt


def _options(cache: Cache) -> Options:
    opt = _family_base(cache)
    opt.create_if_missing(True)
    opt.create_missing_column_families(True)
    # The blob cache makes one blob file per memtable flush (8 MiB): thousands for a large
    # cache. Keep at most this many files open (LRU) instead of all, which would run into the
    # usual 1024-descriptor limit.
    opt.set_max_open_files(512)
    opt.set_write_buffer_size(WRITE_BUFFER_BYTES)
    opt.set_db_write_buffer_size(MEMTABLES_BYTES)
    # Two flushes at once (RocksDB gives a quarter of its jobs to flushes): a flush of chunk
    # bytes spends most of its time copying them into the page cache, and with one flush at
    # a time a peer's chunks arrived faster than they were flushed (a cold READ of a 1 GiB
    # peer file: 109 MB/s with one, 133-142 with two, measured).
    opt.set_max_background_jobs(8)
    return opt


def _index_options(cache: Cache) -> Options:
    """The families of the index, history and cache bookkeeping: small values."""
    opt = _family_base(cache)
    opt.set_write_buffer_size(WRITE_BUFFER_BYTES)
    opt.set_max_write_buffer_number(2)
    return opt


def _chunk_options(cache: Cache) -> Options:
    """BlobDB for `chunks` (nfsd.store.blobs): chunk values go to blob files, the LSM keeps
    only keys and references. 8 MiB write buffers (at most three: one filling while two
    flush) bound the memory a long ingest holds (about 24 MiB of RSS measured with two).
    Blob garbage collection is off: left on, the compactions of a 1 GiB ingest rewrote
    1.3-1.5 GiB of live chunks and stalled writes (ingest 190 MB/s with it, 430 without,
    measured). `BlobStore.reclaim` turns it on for one compaction when evicted chunks left
    enough garbage in the blob files."""
    opt = _family_base(cache)
    opt.set_enable_blob_files(True)
    opt.set_min_blob_size(4096)
    opt.set_blob_file_size(64 << 20)
    opt.set_enable_blob_gc(False)
    opt.set_blob_gc_age_cutoff(0.25)
    opt.set_blob_gc_force_threshold(0.5)
    opt.set_write_buffer_size(8 << 20)
    opt.set_max_write_buffer_number(3)
    return opt


# Families that need other options than the index's.
FAMILY_OPTIONS: dict[str, Callable[[Cache], Options]] = {"chunks": _chunk_options}


def family_options(name: str, cache: Cache) -> Options:
    return FAMILY_OPTIONS.get(name, _index_options)(cache)


class Batch:
    """Puts and deletes across families, applied at once by `commit`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.batch = WriteBatch(raw_mode=True)

    def put(self, family: str, key: bytes, value: bytes) -> None:
        self.batch.put(key, value, self.store.handle(family))

    def delete(self, family: str, key: bytes) -> None:
        self.batch.delete(key, self.store.handle(family))

    def commit(self, *, sync: bool = False) -> None:
        """Apply the batch; `sync` waits until the WAL (this batch and every write before it)
        is on the disk, for a change that must survive a power cut (RocksDB's default only
        survives a crash of the process)."""
        self.store.write(self.batch, _SYNCED if sync else None)


def store_error(e: Exception) -> OSError:
    """RocksDB's failure as the OSError it stands for: a full disk is ENOSPC (a client is
    told NOSPC, not a server fault); any other I/O failure EIO."""
    if isinstance(e, OSError):
        return e
    text = str(e)
    code = errno.ENOSPC if "No space left" in text else errno.EIO
    return OSError(code, f"the server's database: {text}")


# Rdict methods a Family does not pass straight on: writes go through the store, and the
# store alone closes.
_NOT_BOUND = frozenset({"put", "delete", "write", "close"})


class Family:
    """One column family, the same object across reopens of the database. Its reads are the
    current Rdict's own bound methods, set on this object (no extra call on a hot path);
    its writes go through `Store.write`, which reopens a failed database."""

    def __init__(self, store: Store, name: str) -> None:
        self._store = store
        self._name = name
        self._rdict: Rdict | None = None
        self._bound: list[str] = []

    def _bind(self, rdict: Rdict) -> None:
        self._rdict = rdict
        self._bound = [
            attr for attr in dir(rdict) if not attr.startswith("_") and attr not in _NOT_BOUND
        ]
        for attr in self._bound:
            setattr(self, attr, getattr(rdict, attr))

    def _unbind(self) -> Rdict | None:
        for attr in self._bound:
            self.__dict__.pop(attr, None)
        self._bound = []
        rdict, self._rdict = self._rdict, None
        return rdict

    def _current(self) -> Rdict:
        rdict = self._rdict
        return rdict if rdict is not None else self._store._family_now(self._name)

    def __getattr__(self, attr: str) -> Any:
        # Only what is not bound: during a reopen, or an attribute Rdict does not have.
        if attr.startswith("_"):
            raise AttributeError(attr)
        return getattr(self._current(), attr)

    def __getitem__(self, key: bytes) -> Any:
        return self._current()[key]

    def __contains__(self, key: bytes) -> bool:
        return key in self._current()

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.put(key, value)

    def __delitem__(self, key: bytes) -> None:
        self.delete(key)

    def put(self, key: bytes, value: bytes, write_opt: WriteOptions | None = None) -> None:
        batch = WriteBatch(raw_mode=True)
        batch.put(key, value, self._store.handle(self._name))
        self._store.write(batch, write_opt)

    def delete(self, key: bytes, write_opt: WriteOptions | None = None) -> None:
        batch = WriteBatch(raw_mode=True)
        batch.delete(key, self._store.handle(self._name))
        self._store.write(batch, write_opt)


class Store:
    def __init__(self, path: str | os.PathLike[str], *, read_only: bool = False) -> None:
        """Open (or create) the database; `read_only` opens beside a running server."""
        self.path = Path(path)
        if read_only and not (self.path / "CURRENT").exists():
            raise FileNotFoundError(f"no database in {path}")
        self.path.mkdir(parents=True, exist_ok=True)
        self.read_only = read_only
        self._lock = threading.RLock()  # held while the database is reopened
        self._families: dict[str, Family] = {}
        self._handles: dict[str, Any] = {}
        # The write failure not healed yet, as (errno, text): a new OSError is raised each time,
        # since one kept with its traceback would keep its frames, and what they hold of the
        # database, alive.
        self._failure: tuple[int, str] | None = None
        self._next_reopen = 0.0
        self._block_cache = Cache(BLOCK_CACHE_BYTES)  # outlives every open of the database
        self._open(read_only)
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

    def _open(self, read_only: bool) -> None:
        existing: list[str] = []
        if (self.path / "CURRENT").exists():
            existing = Rdict.list_cf(str(self.path), Options(raw_mode=True))
        names = set(existing) if read_only else {*FAMILIES, *existing}
        cache = self._block_cache
        families = {name: family_options(name, cache) for name in names}
        families.pop("default", None)
        access = AccessType.read_only() if read_only else AccessType.read_write()
        for attempt in range(READ_ONLY_TRIES):
            try:
                db = Rdict(
                    str(self.path),
                    options=_options(cache),
                    column_families=families,
                    access_type=access,
                )
                break
            except Exception as e:  # rocksdict raises Exception itself
                # A read-only open beside the running server lists its table files, then
                # opens them: one its compaction deleted in between is missing. Again.
                if not read_only or "No such file" not in str(e) or attempt + 1 == READ_ONLY_TRIES:
                    raise
                time.sleep(0.02)
        self._handles = {name: db.get_column_family_handle(name) for name in families}
        for name in families:
            family = self._families.get(name)
            if family is None:
                family = self._families[name] = Family(self, name)
            family._bind(db.get_column_family(name))
        self.db = db

    def _drop(self) -> None:
        """Let go of the database: RocksDB closes it once nothing else holds it (an iterator
        still open keeps it, and then the reopen finds it locked and tries again later)."""
        if self.db is not None:
            # Stop its background work first: a database with a write failure otherwise waits
            # for its retries (a second) when it closes.
            self.db.cancel_all_background(False)
        for family in self._families.values():
            family._unbind()
        self._handles = {}
        self.db = None  # type: ignore[assignment]

    def family(self, name: str) -> Family:
        return self._families[name]

    def handle(self, name: str) -> Any:
        handle = self._handles.get(name)
        if handle is None:
            with self._lock:  # a reopen under way
                handle = self._handles[name]
        return handle

    def _family_now(self, name: str) -> Rdict:
        """The family's Rdict, waiting for a reopen under way; OSError when there is none."""
        with self._lock:
            rdict = self._families[name]._rdict
        if rdict is None:
            raise OSError(*(self._failure or _NOT_OPEN))
        return rdict

    def batch(self) -> Batch:
        return Batch(self)

    def write(self, batch: WriteBatch, options: WriteOptions | None = None) -> None:
        """Apply a WriteBatch. After a write failure RocksDB does not get over by itself, the
        database is first reopened, once the disk has room. (A batch is spent by a failed
        write: the one that failed is not tried again, its caller was told.)"""
        if self._failure is not None:
            self._reopen()
        try:
            self._write(batch, options)
        except Exception as e:  # rocksdict reports every failure as a plain Exception
            raise self._failed(e) from e
        if self._failure is not None:
            self._healed()

    def _write(self, batch: WriteBatch, options: WriteOptions | None) -> None:
        # No local holds the database: a traceback keeping this frame must not keep it open.
        if self.db is None:
            raise OSError(*(self._failure or _NOT_OPEN))
        if options is None:
            self.db.write(batch)
        else:
            self.db.write(batch, options)

    def _failed(self, e: Exception) -> OSError:
        """The error a failed write is reported as: the first of a run of failures (later
        ones, of the read-only database a failed reopen left, only echo it)."""
        with self._lock:
            if self._failure is None:
                failure = store_error(e)
                if self.read_only or not any(sign in str(e) for sign in _LASTING):
                    return failure
                self._failure = (failure.errno, failure.strerror)
                log.warning("the database failed a write (%s): reopened once there is room", e)
            return OSError(*self._failure)

    def _healed(self) -> None:
        with self._lock:
            if self._failure is not None:
                log.warning("the database takes writes again")
                self._failure = None

    def _room(self) -> bool:
        """Whether the disk has room for a reopen: the WALs it turns into tables, and more."""
        try:
            fs = os.statvfs(self.path)
            logs = sum(p.stat().st_size for p in self.path.glob("*.log"))
        except OSError:
            return False
        return fs.f_bavail * fs.f_frsize >= logs + REOPEN_ROOM

    def _reopen(self) -> None:
        """Close and open the failed database, if it is time to try and there is room."""
        with self._lock:
            if self._failure is None:
                return
            now = time.monotonic()
            if now < self._next_reopen or not self._room():
                return
            self._next_reopen = now + REOPEN_PAUSE
            self._drop()
            try:
                self._open(read_only=False)
                return
            except Exception as e:
                log.warning("reopening the database failed (%s): read-only until the next try", e)
            try:
                self._open(read_only=True)
            except Exception as e:
                log.error("the database cannot be opened even to read: %s", e)

    def flush(self) -> None:
        try:
            self.db.flush_wal(True)
        except Exception as e:
            raise store_error(e) from e

    def close(self) -> None:
        """Close the database; the first failure (a memtable it cannot flush on a full disk)
        is raised once everything is let go."""
        failures: list[Exception] = []
        with self._lock:
            rdicts = [family._unbind() for family in self._families.values()]
            db, self.db = self.db, None  # type: ignore[assignment]
            # Column family handles keep the database (and its lock) alive until released.
            self._handles = {}
            for rdict in [*rdicts, db]:
                if rdict is None:
                    continue
                try:
                    rdict.close()
                except Exception as e:
                    failures.append(e)
        if failures:
            raise store_error(failures[0]) from failures[0]
