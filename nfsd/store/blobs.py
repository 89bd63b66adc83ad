"""The content-addressed blob cache: blobs named by the BLAKE3 hash of their content, stored as
fixed-size chunks in RocksDB (BlobDB), each chunk verified before it is stored and before it
is served; partial blobs; LRU eviction under size and free-space limits; pins; garbage
collection; and the entry point of the store check (`fsck`, in `nfsd.store.blobcheck`).

Model
-----
- A **blob** has a manifest: size, chunk size, one slot per chunk holding the chunk's BLAKE3
  hash, pins, the area it is charged to, last access. Any chunk can be verified alone.
  `ingest` makes complete blobs from a stream; `begin_blob` registers a manifest known from
  elsewhere (an Unreal file) whose chunks arrive later through `put_chunk`.
- A **chunk** is stored once under its own hash, whichever blobs (or slots of one blob) hold
  the same bytes: identical blobs and identical chunks are stored once. Its record counts the
  slots that name it (`refs`) and the slots of pinned blobs (`pins`).
- **Verification**: `put_chunk` and `ingest` store nothing whose hash is wrong; `read`
  re-hashes every chunk it loads from disk and never returns one that fails (the chunk is
  dropped, marked missing and reported through `MissingChunks` so it is fetched again). When
  the last chunk of a registered blob arrives, the whole content is hashed against the blob
  id once (`Manifest.verified`); a manifest whose chunks do not make its id is marked bad and
  `ManifestMismatch` is raised.
- **Eviction**: each present, unpinned chunk has one `lru` key ordered by its stamp (a counter
  bumped on store and on access). Adding a chunk first evicts the oldest unpinned chunks until
  the caps of `CacheLimits` (server and the chunk's area) and the free-space reserve hold, in
  the same WriteBatch as the new chunk (just before it, for an ingest's unlogged bytes); when
  not enough can be evicted, `CacheFull` (an `OSError` with errno ENOSPC) and nothing is
  written. Pinned blobs (Real, `keep`) are never
  evicted; chunks stored or touched by an ingest still running are not evicted either.
- **Lifetime**: pins protect from eviction, not from deletion. `release` drops a blob nothing
  refers to; `gc(is_live)` drops every blob the caller's predicate calls dead (blobs made
  after the sweep began are spared) and chunks no manifest names (left by an interrupted
  ingest; the unrecorded bytes a crash can leave are removed by `fsck(repair=True)`).
- **Crash safety**: every change is one WriteBatch over `chunks`, `chunkinfo`, `blobs`, `lru`
  and the usage counters, so SIGKILL leaves the old state or the new; no record ever names
  bytes that are not durable. One exception to "through the WAL": past its first MiB an
  ingest writes chunk bytes without the WAL (RocksDB's WAL CRC costs as much CPU as the write
  itself in this build) and records them in checkpoints (every 64 MiB and at the end) after
  flushing the chunk family; a crash in between leaves only unrecorded bytes, which `fsck`
  counts as garbage. `ingest` returns once its manifest batch is written (the WAL reaches the
  OS at once, so SIGKILL loses nothing acknowledged; `Store.flush` also covers power loss).
- **Memory**: content streams chunk by chunk; an ingest holds up to 1 MiB of chunks (one
  batch) plus the chunk hash list (32 bytes per chunk, 1/8192 of the size) and writes the
  manifest in one batch; RocksDB holds at most two 8 MiB memtables of chunk bytes. Measured:
  peak RSS grows about 30 MiB during a 256 MiB or a 1 GiB ingest. Reads keep a few verified
  chunks in memory (`memory_chunks`).

Key layouts are in `nfsd.store.manifest`.

Chunk size: 256 KiB (`DEFAULT_CHUNK_SIZE`), chosen with `scripts/measure-chunk-size`: a fresh
store per run ingests a 512 MiB stream (BLAKE3 of the whole and of each chunk, then RocksDB)
and reads it back through `read` in 1 MiB requests (every chunk re-verified). Median of 5
runs on this machine (2 vCPUs shared with other jobs, load average 3.3; MB per CPU-second
counts RocksDB's threads too and is the steadier figure):

| chunk | ingest | ingest per CPU-s | read | read per CPU-s |
| --- | --- | --- | --- | --- |
| 256 KiB | 262 MB/s | 228 MB | 830 MB/s | 679 MB |
| 512 KiB | 267 MB/s | 229 MB | 1164 MB/s | 755 MB |
| 1 MiB | 315 MB/s | 230 MB | 1397 MB/s | 832 MB |

(Another 5 runs at load 4.5: ingest 176 / 203 / 228 MB/s, read 673 / 801 / 955 MB/s.)
Ingest costs the same CPU at every size; the wall-clock differences move with the load. A
cached read costs about 20% more CPU per byte with 256 KiB chunks, and is still far faster
than the network or an NFS client consumes it. Against that, 256 KiB fetches a missing
range of an Unreal file in 4x finer steps (a random read waits for, and fetches, less),
re-verifies 4x less when a small read loads a chunk, and evicts in finer steps; its cost is
metadata, about 200 bytes per chunk (0.08%). So: 256 KiB.
"""

from __future__ import annotations

import contextlib
import heapq
import logging
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

from blake3 import blake3
from rocksdict import ReadOptions, WriteBatch, WriteOptions

from nfsd.store.blob_errors import (
    BadChunk,
    BlobError,
    CacheFull,
    ChunkHashMismatch,
    ManifestMismatch,
    MissingChunks,
    UnknownBlob,
)
from nfsd.store.db import Store
from nfsd.store.limits import AreaUsage, CacheLimits, CacheUsage, DiskSpace, disk_space
from nfsd.store.manifest import (
    CLOCK_KEY,
    EMPTY_BLOB,
    F_BAD,
    F_VERIFIED,
    HASH_LEN,
    MAX_CHUNK_SIZE,
    MAX_CHUNKS,
    MIN_CHUNK_SIZE,
    USAGE_PREFIX,
    BlobId,
    ChunkHash,
    ChunkInfo,
    Manifest,
    blob_upper_bound,
    chunk_count,
    chunk_span,
    lru_area_end,
    lru_key,
    lru_parse,
    lru_prefix,
    pack_stamp,
    pack_usage,
    slot_key,
    unpack_stamp,
    unpack_usage,
    usage_key,
)

if TYPE_CHECKING:
    from nfsd.store.blobcheck import FsckReport

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 256 * 1024
_ACCESS_GRANULARITY = 60  # seconds between updates of a manifest's last access
_MULTIGET = 1024  # keys per multi-get when walking long chunk lists
_INGEST_BATCH = 1 << 20  # chunk bytes an ingest writes per batch
_CHECKPOINT = 64 << 20  # unlogged chunk bytes an ingest makes durable and records at once
_RECLAIM_EVERY = 10.0  # seconds between compactions that collect evicted chunks' bytes
_RECLAIM_AT = 64 << 20  # garbage in the blob files worth a compaction (or a quarter of the cache)


# -- reports ------------------------------------------------------------------------------


@dataclass
class GcReport:
    blobs: int = 0  # manifests dropped
    chunks: int = 0  # chunk records dropped
    bytes: int = 0  # chunk bytes freed


@dataclass
class Stats:
    """Counters since this BlobStore was opened."""

    evicted_chunks: int = 0
    evicted_bytes: int = 0
    corrupt_chunks: int = 0  # chunks that failed verification on read and were dropped
    stored_chunks: int = 0
    deduped_chunks: int = 0


# -- transactions -------------------------------------------------------------------------


class _Txn:
    """One WriteBatch plus staged chunk records and usage deltas (read-your-writes)."""

    __slots__ = ("batch", "blobs", "dirty", "dropped", "infos", "usage")

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self.batch = blobs.store.batch()
        self.infos: dict[ChunkHash, ChunkInfo | None] = {}
        self.dirty: set[ChunkHash] = set()
        self.usage: dict[str, list[int]] = {}
        self.dropped: set[ChunkHash] = set()

    def info(self, chunk: ChunkHash) -> ChunkInfo | None:
        try:
            return self.infos[chunk]
        except KeyError:
            raw = self.blobs._info.get(chunk)
            info = ChunkInfo.unpack(raw) if raw is not None else None
            self.infos[chunk] = info
            return info

    def set_info(self, chunk: ChunkHash, info: ChunkInfo | None) -> None:
        self.infos[chunk] = info
        self.dirty.add(chunk)

    def account(self, area: str, cached: int = 0, pinned: int = 0, chunks: int = 0) -> None:
        delta = self.usage.setdefault(area, [0, 0, 0])
        delta[0] += cached
        delta[1] += pinned
        delta[2] += chunks

    def cached(self, area: str | None = None) -> int:
        """Cached bytes as they will be after this transaction (one area or all)."""
        usage = self.blobs._usage
        pending = self.blobs._pending_bytes  # written by running ingests, not yet recorded
        if area is not None:
            recorded = usage.get(area, [0, 0, 0])[0] + self.usage.get(area, [0, 0, 0])[0]
            return recorded + pending.get(area, 0)
        recorded = sum(u[0] for u in usage.values()) + sum(d[0] for d in self.usage.values())
        return recorded + sum(pending.values())

    def commit(self) -> None:
        blobs = self.blobs
        batch = self.batch
        for chunk in self.dirty:
            info = self.infos[chunk]
            if info is None:
                batch.delete("chunkinfo", chunk)
            else:
                batch.put("chunkinfo", chunk, info.pack())
        new_usage: dict[str, list[int]] = {}
        for area, delta in self.usage.items():
            if delta == [0, 0, 0]:
                continue
            old = blobs._usage.get(area, [0, 0, 0])
            now = [max(0, o + d) for o, d in zip(old, delta, strict=True)]
            new_usage[area] = now
            if now == [0, 0, 0]:
                batch.delete("meta", usage_key(area))
            else:
                batch.put("meta", usage_key(area), pack_usage(*now))
        batch.put("meta", CLOCK_KEY, pack_stamp(blobs._clock))
        batch.commit()
        for area, now in new_usage.items():
            if now == [0, 0, 0]:
                blobs._usage.pop(area, None)
            else:
                blobs._usage[area] = now
        if self.dropped:
            blobs._forget(self.dropped)


# -- the store ----------------------------------------------------------------------------


class BlobStore:
    """Blobs and chunks in `store` (families `blobs`, `chunks`, `chunkinfo`, `lru`, and usage
    counters in `meta`), under `limits`. Thread-safe: changes are serialised by one lock;
    reading, hashing and verifying chunk bytes happen outside it.

    `chunk_size` applies to blobs made by `ingest` (a manifest from elsewhere brings its own);
    `memory_chunks` verified chunks stay in memory for small sequential reads; a chunk's LRU
    stamp is refreshed on access once it is more than `touch_window` stamps old.
    """

    def __init__(
        self,
        store: Store,
        limits: CacheLimits | None = None,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        memory_chunks: int = 8,
        touch_window: int = 64,
    ) -> None:
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk size {chunk_size} outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
        self.store = store
        self.limits = limits or CacheLimits()
        self.chunk_size = chunk_size
        self.touch_window = touch_window
        self.stats = Stats()
        self._blobs = store.family("blobs")
        self._chunks = store.family("chunks")
        self._info = store.family("chunkinfo")
        self._lru = store.family("lru")
        self._meta = store.family("meta")
        # Chunk bytes are verified with BLAKE3 on every load, so RocksDB's own CRC pass over
        # blob values is redundant; skipping it reads about 5x faster (measured: 520 MB/s with,
        # 3 GB/s without, for 256 KiB values).
        self._chunk_reads = ReadOptions()
        self._chunk_reads.set_verify_checksums(False)
        self._lock = threading.RLock()
        self._recent: OrderedDict[ChunkHash, bytes] = OrderedDict()
        self._recent_max = memory_chunks
        self._recent_lock = threading.Lock()
        self._inflight: dict[int, int] = {}  # ingest token -> stamp at its start
        # Chunks whose bytes a running ingest wrote without the WAL and has not recorded yet:
        # never deleted meanwhile (see `_write_unlogged`).
        self._pending: dict[ChunkHash, int] = {}
        self._pending_bytes: dict[str, int] = {}
        self._unlogged = WriteOptions()
        self._unlogged.disable_wal = True
        self._next_token = 0
        self._last_reclaim = 0.0
        self._reclaim_due = False
        raw = self._meta.get(CLOCK_KEY)
        self._clock = unpack_stamp(raw) if raw is not None else 0
        self._usage: dict[str, list[int]] = {}
        it = self._meta.iter()
        it.seek(USAGE_PREFIX)
        while it.valid() and it.key().startswith(USAGE_PREFIX):
            area = it.key()[len(USAGE_PREFIX) :].decode()
            self._usage[area] = list(unpack_usage(it.value()))
            it.next()

    # -- limits and usage ---------------------------------------------------------------

    def set_limits(self, limits: CacheLimits) -> int:
        """Apply new limits and `trim` to them at once; returns the bytes evicted."""
        with self._lock:
            self.limits = limits
            return self.trim()

    def trim(self) -> int:
        """Evict until the caps and the free-space reserve hold, or everything evictable is
        gone (pinned data may keep the cache above its limits: new chunks then get CacheFull);
        returns the bytes evicted."""
        with self._lock:
            txn = _Txn(self)
            before = self._usage_total()
            self._make_room(txn, None, 0)
            txn.commit()
            return before - self._usage_total()

    def usage(self) -> CacheUsage:
        with self._lock:
            disk = self._disk()
            areas = {}
            for area, (cached, pinned, chunks) in self._usage.items():
                cap = self.limits.area_cap(area, disk.total)
                areas[area] = AreaUsage(cached, pinned, chunks, cap)
            for area in self.limits.areas:
                if area not in areas:
                    areas[area] = AreaUsage(0, 0, 0, self.limits.area_cap(area, disk.total))
            return CacheUsage(
                cached=sum(a.cached for a in areas.values()),
                pinned=sum(a.pinned for a in areas.values()),
                chunks=sum(a.chunks for a in areas.values()),
                limit=self.limits.cap(disk.total),
                disk_total=disk.total,
                disk_free=disk.free,
                reserve=self.limits.reserve(disk.total),
                areas=areas,
            )

    def _disk(self) -> DiskSpace:
        if self.limits.disk is not None:
            return self.limits.disk()
        return disk_space(self.store.path)

    # -- lookups --------------------------------------------------------------------------

    def manifest(self, blob_id: BlobId) -> Manifest | None:
        """The blob's header, or None when the store has no such blob."""
        raw = self._blobs.get(blob_id)
        return Manifest.unpack(blob_id, raw) if raw is not None else None

    def __contains__(self, blob_id: object) -> bool:
        return isinstance(blob_id, bytes) and self._blobs.get(blob_id) is not None

    def _manifest(self, blob_id: BlobId) -> Manifest:
        if len(blob_id) != HASH_LEN:
            raise UnknownBlob(blob_id)
        m = self.manifest(blob_id)
        if m is None:
            raise UnknownBlob(blob_id)
        return m

    def blob_ids(self) -> Iterator[BlobId]:
        """Every blob id, in key order (a snapshot taken when iteration starts)."""
        for blob_id, _ in self._headers():
            yield blob_id

    def _headers(self) -> Iterator[tuple[BlobId, bytes]]:
        it = self._blobs.iter()
        it.seek_to_first()
        while it.valid():
            key = it.key()
            if len(key) == HASH_LEN:
                yield key, it.value()
                it.seek(blob_upper_bound(key))
            else:  # a slot without its header (fsck reports it); skip the rest of that id
                it.seek(blob_upper_bound(key[:HASH_LEN]))

    def chunk_hash(self, blob_id: BlobId, index: int) -> ChunkHash:
        raw = self._blobs.get(slot_key(blob_id, index))
        if raw is None:
            m = self._manifest(blob_id)
            raise BadChunk(blob_id, index, f"no such chunk (blob has {m.nchunks})")
        return raw

    def chunk_hashes(self, blob_id: BlobId) -> Iterator[ChunkHash]:
        """The blob's chunk hashes in order (streamed, one prefix scan)."""
        m = self._manifest(blob_id)
        for start in range(0, m.nchunks, _MULTIGET):
            yield from self._slot_hashes(blob_id, range(start, min(m.nchunks, start + _MULTIGET)))

    def _slot_hashes(self, blob_id: BlobId, span: range) -> list[ChunkHash]:
        raws = self._blobs.get([slot_key(blob_id, i) for i in span])
        for index, raw in zip(span, raws, strict=True):
            if raw is None or len(raw) != HASH_LEN:
                if self._blobs.get(blob_id) is None:
                    raise UnknownBlob(blob_id)  # released meanwhile
                raise BlobError(f"blob {blob_id.hex()[:16]}: manifest slot {index} damaged; fsck")
        return raws

    def _infos(self, chunks: list[ChunkHash]) -> list[ChunkInfo | None]:
        return [
            ChunkInfo.unpack(raw) if raw is not None else None for raw in self._info.get(chunks)
        ]

    def missing(self, blob_id: BlobId, offset: int = 0, count: int | None = None) -> list[int]:
        """Indexes of the chunks of bytes [offset, offset + count) that are not present
        (count None: to the end)."""
        m = self._manifest(blob_id)
        span = chunk_span(m.size, m.chunk_size, offset, m.size if count is None else count)
        out = []
        for start in range(span.start, span.stop, _MULTIGET):
            part = range(start, min(span.stop, start + _MULTIGET))
            infos = self._infos(self._slot_hashes(blob_id, part))
            out.extend(i for i, info in zip(part, infos, strict=True) if not _present(info))
        return out

    def has_all(self, blob_id: BlobId) -> bool:
        return not self.missing(blob_id)

    # -- reading --------------------------------------------------------------------------

    def read(self, blob_id: BlobId, offset: int, count: int) -> bytes:
        """Up to `count` bytes at `offset` (fewer at the end of the blob, b"" past it), every
        chunk verified. Raises MissingChunks listing what must be fetched first, UnknownBlob,
        or ManifestMismatch for a blob whose chunks were found not to make its id."""
        pieces = self.read_pieces(blob_id, offset, count)
        if len(pieces) == 1:
            piece = pieces[0]
            return piece if isinstance(piece, bytes) else bytes(piece)
        return b"".join(pieces)

    def read_pieces(self, blob_id: BlobId, offset: int, count: int) -> list[bytes | memoryview]:
        """As `read`, the bytes left in their chunks' buffers (one piece per chunk): a READ
        reply sends them as they are, without joining a megabyte."""
        m = self._manifest(blob_id)
        if m.bad:
            raise ManifestMismatch(blob_id, "chunks do not hash to the blob id")
        span = chunk_span(m.size, m.chunk_size, offset, count)
        if not span:
            return [b""]
        hashes = self._slot_hashes(blob_id, span)
        infos = self._infos(hashes)
        missing = [i for i, info in zip(span, infos, strict=True) if not _present(info)]
        if missing:
            # The chunks here are wanted again once the rest is fetched: make them the most
            # recently used, so that fetching the rest does not evict them first.
            here = [c for c, info in zip(hashes, infos, strict=True) if _present(info)]
            if here:
                self._touch(blob_id, here)
            raise MissingChunks(blob_id, missing, m.size, m.chunk_size)
        end = min(m.size, offset + count)
        pieces: list[memoryview | bytes] = []
        bad: list[tuple[int, ChunkHash]] = []
        stale: list[ChunkHash] = []
        cs = m.chunk_size
        for index, chunk, info in zip(span, hashes, infos, strict=True):
            data = self._load(chunk, m.chunk_length(index))
            if data is None:
                bad.append((index, chunk))
                continue
            base = index * cs
            start = max(offset - base, 0)
            stop = min(end - base, len(data))
            pieces.append(
                data if start == 0 and stop == len(data) else memoryview(data)[start:stop]
            )
            assert info is not None
            if self._clock - info.stamp > self.touch_window:
                stale.append(chunk)
        if bad:
            self._drop_bad(bad)
            raise MissingChunks(blob_id, [index for index, _ in bad], m.size, m.chunk_size)
        if stale or time.time() - m.last_access > _ACCESS_GRANULARITY:
            self._touch(blob_id, stale)
        return pieces

    def iter_read(
        self, blob_id: BlobId, offset: int = 0, count: int | None = None
    ) -> Iterator[bytes]:
        """Stream bytes [offset, offset + count) chunk by chunk (count None: to the end).
        Raises MissingChunks before the first byte when any chunk of the range is absent,
        or during the stream if one disappears or fails verification meanwhile."""
        m = self._manifest(blob_id)
        end = m.size if count is None else min(m.size, offset + count)
        missing = self.missing(blob_id, offset, end - offset)
        if missing:
            raise MissingChunks(blob_id, missing, m.size, m.chunk_size)
        pos = offset
        while pos < end:
            step = min(end - pos, m.chunk_size - pos % m.chunk_size)
            yield self.read(blob_id, pos, step)
            pos += step

    def read_chunk(self, blob_id: BlobId, index: int) -> bytes:
        """One whole verified chunk (what a peer asks for when it fetches by chunk)."""
        m = self._manifest(blob_id)
        if not 0 <= index < m.nchunks:
            raise BadChunk(blob_id, index, f"no such chunk (blob has {m.nchunks})")
        return self.read(blob_id, index * m.chunk_size, m.chunk_size)

    def _load(self, chunk: ChunkHash, length: int) -> bytes | None:
        """The chunk's bytes, verified, or None when absent or corrupt."""
        with self._recent_lock:
            data = self._recent.get(chunk)
            if data is not None:
                self._recent.move_to_end(chunk)
                return data
        data = self._chunks.get(chunk, None, self._chunk_reads)
        if data is None or len(data) != length or blake3(data).digest() != chunk:
            return None
        if self._recent_max:
            with self._recent_lock:
                self._recent[chunk] = data
                while len(self._recent) > self._recent_max:
                    self._recent.popitem(last=False)
        return data

    def _forget(self, chunks: Iterable[ChunkHash]) -> None:
        with self._recent_lock:
            for chunk in chunks:
                self._recent.pop(chunk, None)

    def _drop_bad(self, bad: list[tuple[int, ChunkHash]]) -> None:
        """Drop chunks that failed to load (corrupt, or bytes missing behind a record that
        says present), so they read as missing and are fetched again."""
        with self._lock:
            txn = _Txn(self)
            for _, chunk in bad:
                info = txn.info(chunk)
                if info is None or not info.present:
                    continue  # evicted meanwhile: plainly missing
                data = self._chunks.get(chunk, None, self._chunk_reads)
                if data is not None and len(data) == info.length and blake3(data).digest() == chunk:
                    continue  # written again meanwhile, and good
                why = "bytes missing" if data is None else "hash mismatch"
                log.warning("chunk %s failed verification (%s); dropped", chunk.hex(), why)
                self.stats.corrupt_chunks += 1
                self._unstore(txn, chunk, info)
            txn.commit()

    def _touch(self, blob_id: BlobId, chunks: list[ChunkHash]) -> None:
        with self._lock:
            txn = _Txn(self)
            for chunk in chunks:
                info = txn.info(chunk)
                if info is not None and info.present:
                    self._restamp(txn, chunk, info)
            m = self.manifest(blob_id)
            now = int(time.time())
            if m is not None and now - m.last_access > _ACCESS_GRANULARITY:
                m.last_access = now
                txn.batch.put("blobs", blob_id, m.pack())
            txn.commit()

    # -- storing --------------------------------------------------------------------------

    def ingest(
        self,
        source: bytes | Iterable[bytes] | BinaryIO,
        *,
        area: str = "",
        pin: str | None = None,
        chunk_size: int | None = None,
    ) -> BlobId:
        """Hash, chunk and store a complete content read from `source` (a binary file object,
        an iterable of bytes-like pieces of any sizes, or bytes); returns its blob id. Streams: one
        chunk in memory at a time. Chunks already present are not written again; a blob
        already present is completed (or replaced, if its manifest was damaged). `pin`
        pins the blob in the same batch as its manifest, so it is never evictable.
        Raises CacheFull when the content does not fit (what was stored stays as evictable
        cache, so a retry after space is freed rewrites less)."""
        cs = chunk_size or self.chunk_size
        if not MIN_CHUNK_SIZE <= cs <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk size {cs} outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
        whole = blake3(max_threads=blake3.AUTO)
        hashes = bytearray()
        size = 0
        pending: list[tuple[ChunkHash, bytes]] = []  # stored together, one batch per MiB
        pending_bytes = 0
        # The first MiB goes through the WAL like every other change. Past it, chunk bytes
        # skip the WAL (whose CRC pass costs as much as the write) and are recorded in
        # checkpoints, after a flush has made them durable: see `_write_unlogged`. A
        # checkpoint runs in a thread (the flush waits for the disk, without the GIL) while
        # the ingest goes on; at most one at a time.
        unlogged: list[tuple[ChunkHash, int, bool]] | None = None
        unlogged_bytes = 0
        checkpoint: _Checkpoint | None = None
        token, start = self._begin_ingest()
        try:
            for data in _chunked(source, cs):
                chunk = blake3(data).digest()
                whole.update(data)
                hashes += chunk
                size += len(data)
                pending.append((chunk, data))
                pending_bytes += len(data)
                if pending_bytes < _INGEST_BATCH:
                    continue
                if unlogged is None:
                    with self._lock:
                        txn = _Txn(self)
                        self._ingest_chunks(txn, pending, area, start)
                        txn.commit()
                    unlogged = []
                else:
                    self._write_unlogged(pending, area, start, unlogged)
                    unlogged_bytes += pending_bytes
                    if unlogged_bytes >= _CHECKPOINT:
                        if checkpoint is not None:
                            checkpoint.join()
                        checkpoint = _Checkpoint(self, unlogged, area)
                        unlogged = []
                        unlogged_bytes = 0
                pending = []
                pending_bytes = 0
            blob_id = whole.digest()
            if unlogged is not None:
                self._write_unlogged(pending, area, start, unlogged)
                if checkpoint is not None:
                    checkpoint.join()
                    checkpoint = None
                self._checkpoint(unlogged, area)
                pending = []
            # The last chunks and the manifest in one batch: a small file is one write.
            self._commit_ingest(blob_id, size, cs, hashes, area, pin, pending, start)
        finally:
            if checkpoint is not None:
                checkpoint.join(raise_error=False)
            with self._lock:
                if unlogged:  # interrupted: the bytes stay unrecorded (garbage for fsck)
                    self._unpend(unlogged, area)
                self._inflight.pop(token, None)
        return blob_id

    def _begin_ingest(self) -> tuple[int, int]:
        with self._lock:
            self._next_token += 1
            start = self._tick()
            self._inflight[self._next_token] = start
            return self._next_token, start

    def _write_unlogged(
        self,
        chunks: list[tuple[ChunkHash, bytes]],
        area: str,
        start: int,
        unlogged: list[tuple[ChunkHash, int, bool]],
    ) -> None:
        """Write chunk bytes without the WAL and without a record; `_checkpoint` records them
        once a flush has made them durable, so a crash never leaves a record whose bytes are
        lost (only unrecorded bytes, which fsck counts as garbage). Meanwhile they count
        against the limits and are listed in `_pending`, which keeps every deleting path
        away from their keys."""
        with self._lock:
            txn = _Txn(self)
            fresh = WriteBatch(raw_mode=True)
            handle = self.store.handle("chunks")
            for chunk, data in chunks:
                if self._stored_already(txn, chunk, start):
                    continue
                if chunk in self._pending:  # written already (by this or another ingest)
                    self._pending[chunk] += 1
                    unlogged.append((chunk, len(data), False))
                    continue
                self._make_room(txn, area, len(data))
                fresh.put(chunk, data, handle)
                self._pending[chunk] = 1
                self._pending_bytes[area] = self._pending_bytes.get(area, 0) + len(data)
                unlogged.append((chunk, len(data), True))
                self.stats.stored_chunks += 1
            txn.commit()  # evictions and restamps, through the WAL
            # Under the lock, so no checkpoint can flush between listing a chunk and writing it.
            self.store.db.write(fresh, self._unlogged)

    def _checkpoint(self, unlogged: list[tuple[ChunkHash, int, bool]], area: str) -> None:
        """Make the unlogged bytes durable (flush the chunk family), then record them."""
        if not unlogged:
            return
        try:
            self._chunks.flush(True)
            with self._lock:
                txn = _Txn(self)
                for chunk, length, _ in unlogged:
                    info = txn.info(chunk)
                    if info is None or not info.present:
                        self._store(txn, chunk, info or ChunkInfo(), None, area, length)
                txn.commit()
        finally:
            with self._lock:
                self._unpend(unlogged, area)

    def _unpend(self, unlogged: list[tuple[ChunkHash, int, bool]], area: str) -> None:
        for chunk, length, counted in unlogged:
            left = self._pending.get(chunk, 0) - 1
            if left > 0:
                self._pending[chunk] = left
            else:
                self._pending.pop(chunk, None)
            if counted:
                remaining = self._pending_bytes.get(area, 0) - length
                if remaining > 0:
                    self._pending_bytes[area] = remaining
                else:
                    self._pending_bytes.pop(area, None)
        unlogged.clear()

    def _horizon(self) -> int:
        """Chunks stamped at or after this belong to a running ingest: not evicted, and kept
        even when no manifest names them yet."""
        return min(self._inflight.values(), default=1 << 64)

    def _ingest_chunks(
        self, txn: _Txn, chunks: list[tuple[ChunkHash, bytes]], area: str, start: int
    ) -> None:
        for chunk, data in chunks:
            if not self._stored_already(txn, chunk, start):
                self._make_room(txn, area, len(data))
                self._store(txn, chunk, txn.info(chunk) or ChunkInfo(), data, area)

    def _stored_already(self, txn: _Txn, chunk: ChunkHash, start: int) -> bool:
        """Whether an ingest's chunk is stored already (then it is not written again, and is
        restamped once per ingest so that eviction spares it until the manifest names it)."""
        info = txn.info(chunk)
        if info is None or not info.present:
            return False
        if info.stamp < start:  # else already protected by this ingest
            self._restamp(txn, chunk, info)
            self.stats.deduped_chunks += 1
        return True

    def _commit_ingest(
        self,
        blob_id: BlobId,
        size: int,
        cs: int,
        hashes: bytearray,
        area: str,
        pin: str | None,
        pending: list[tuple[ChunkHash, bytes]],
        start: int,
    ) -> None:
        chunks = [bytes(hashes[i : i + HASH_LEN]) for i in range(0, len(hashes), HASH_LEN)]
        with self._lock:
            txn = _Txn(self)
            self._ingest_chunks(txn, pending, area, start)
            m = self.manifest(blob_id)
            if m is not None and m.size == size and m.chunk_size == cs and not m.bad:
                same = all(a == b for a, b in zip(self.chunk_hashes(blob_id), chunks, strict=True))
                if same:
                    m.flags = (m.flags | F_VERIFIED) & ~F_BAD
                    m.present_hint = m.nchunks
                    txn.batch.put("blobs", blob_id, m.pack())
                    txn.commit()
                    if pin is not None:
                        self.pin(blob_id, pin)
                    return
            pins: tuple[str, ...] = ()
            if m is not None:  # a manifest that disagrees with the content: replace it
                log.warning(
                    "blob %s: replacing a manifest that disagrees with its content", blob_id.hex()
                )
                pins = m.pins
                area = m.area
                self._drop_manifest(txn, m)
            if pin is not None:
                pins = tuple(sorted({*pins, pin}))
            new = Manifest(
                blob_id,
                size,
                cs,
                flags=F_VERIFIED,
                born=self._tick(),
                last_access=int(time.time()),
                present_hint=len(chunks),
                area=area,
                pins=pins,
            )
            self._write_manifest(txn, new, chunks)
            txn.commit()

    def begin_blob(
        self,
        blob_id: BlobId,
        size: int,
        chunk_hashes: Iterable[ChunkHash],
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        area: str = "",
        pin: str | None = None,
    ) -> Manifest:
        """Register a blob known from elsewhere (an Unreal file): its size, chunk size and
        chunk hashes; the chunks arrive later through `put_chunk` (some may be here already,
        shared with other blobs). Returns the manifest. When the blob is already known, its
        manifest stays (the first one registered wins until released) and `pin` is added.
        Raises ManifestMismatch when the facts cannot describe `blob_id`."""
        if len(blob_id) != HASH_LEN:
            raise ValueError("a blob id is 32 bytes")
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk size {chunk_size} outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
        n = chunk_count(size, chunk_size)
        if size < 0 or n >= MAX_CHUNKS:
            raise ValueError(f"bad blob size {size}")
        existing = self.manifest(blob_id)
        if existing is not None:
            if existing.size != size:
                raise ManifestMismatch(blob_id, f"size {size}, known as {existing.size}")
            if pin is not None:
                self.pin(blob_id, pin)
                existing = self._manifest(blob_id)
            return existing
        chunks = list(chunk_hashes)
        if len(chunks) != n or any(len(c) != HASH_LEN for c in chunks):
            raise ManifestMismatch(blob_id, f"{len(chunks)} chunk hashes for {n} chunks")
        if size == 0 and blob_id != EMPTY_BLOB:
            raise ManifestMismatch(blob_id, "empty content has another id")
        if n == 1 and chunks[0] != blob_id:
            raise ManifestMismatch(blob_id, "a one-chunk blob's chunk hash is its id")
        with self._lock:
            existing = self.manifest(blob_id)
            if existing is not None:  # registered meanwhile
                return existing
            txn = _Txn(self)
            m = Manifest(
                blob_id,
                size,
                chunk_size,
                flags=F_VERIFIED if n <= 1 else 0,
                born=self._tick(),
                last_access=int(time.time()),
                area=area,
                pins=(pin,) if pin is not None else (),
            )
            self._write_manifest(txn, m, chunks)
            m.present_hint = sum(1 for c in chunks if _present(txn.info(c)))
            txn.batch.put("blobs", blob_id, m.pack())
            txn.commit()
            return m

    def put_chunk(self, blob_id: BlobId, index: int, data: bytes) -> bool:
        """Store chunk `index` of a registered blob after checking its length and hash
        (BadChunk / ChunkHashMismatch otherwise, and nothing is stored). Returns False when the
        chunk was already present. May evict other chunks first; raises CacheFull when it
        cannot. When this completes the blob, the whole content is verified against the blob
        id once (ManifestMismatch when it fails: the blob is then marked bad)."""
        m = self._manifest(blob_id)
        if not 0 <= index < m.nchunks:
            raise BadChunk(blob_id, index, f"no such chunk (blob has {m.nchunks})")
        if len(data) != m.chunk_length(index):
            raise BadChunk(blob_id, index, f"{len(data)} bytes, expected {m.chunk_length(index)}")
        expected = self.chunk_hash(blob_id, index)
        actual = blake3(data).digest()
        if actual != expected:
            raise ChunkHashMismatch(blob_id, index, expected, actual)
        data = bytes(data)
        with self._lock:
            m = self._manifest(blob_id)
            if self._blobs.get(slot_key(blob_id, index)) != expected:  # replaced meanwhile
                raise BadChunk(blob_id, index, "the manifest changed while the chunk was checked")
            txn = _Txn(self)
            info = txn.info(expected)
            if info is None:  # a slot always has a record; heal rather than fail
                log.warning("chunk %s of blob %s had no record", expected.hex(), blob_id.hex())
                info = ChunkInfo(refs=1, pins=1 if m.pinned else 0)
            if info.present:
                if self._clock - info.stamp > self.touch_window:
                    self._restamp(txn, expected, info)
                    txn.commit()
                return False
            self._make_room(txn, m.area, len(data))
            self._store(txn, expected, info, data, m.area)
            m.present_hint += 1
            txn.batch.put("blobs", blob_id, m.pack())
            txn.commit()
            # Count exactly when the tally says complete, or the last chunk came (chunks
            # shared with other blobs arrive without this blob's tally knowing).
            check = m.present_hint >= m.nchunks or index == m.nchunks - 1
        if check:
            self._check_complete(blob_id)
        if self._reclaim_due:
            self._reclaim_due = False
            self.reclaim()
        return True

    def _check_complete(self, blob_id: BlobId) -> None:
        missing = self.missing(blob_id)
        if missing:
            with self._lock:
                m = self.manifest(blob_id)
                if m is not None:
                    m.present_hint = m.nchunks - len(missing)
                    self._blobs[blob_id] = m.pack()
            return
        m = self.manifest(blob_id)
        if m is not None and not m.verified and not m.bad:
            with contextlib.suppress(MissingChunks):  # evicted meanwhile: verified later
                self.verify(blob_id)

    def verify(self, blob_id: BlobId) -> bool:
        """Hash the whole content against the blob id and record the outcome in the manifest
        (verified, or bad). Returns True when it matches; raises ManifestMismatch when not,
        MissingChunks when chunks are absent."""
        m = self._manifest(blob_id)
        whole = blake3(max_threads=blake3.AUTO)
        for piece in self.iter_read(blob_id):
            whole.update(piece)
        ok = whole.digest() == blob_id
        with self._lock:
            m = self.manifest(blob_id)
            if m is not None:
                m.flags = (m.flags | F_VERIFIED) & ~F_BAD if ok else m.flags | F_BAD
                self._blobs[blob_id] = m.pack()
        if not ok:
            raise ManifestMismatch(blob_id, "chunks do not hash to the blob id")
        return True

    # -- pins and lifetime ----------------------------------------------------------------

    def pin(self, blob_id: BlobId, reason: str) -> bool:
        """Protect the blob's chunks from eviction for `reason` (e.g. "keep", "real:area");
        False when already pinned for that reason."""
        with self._lock:
            m = self._manifest(blob_id)
            if reason in m.pins:
                return False
            txn = _Txn(self)
            if not m.pinned:
                for chunk, count in self._slot_counts(blob_id):
                    self._repin(txn, chunk, count)
            m.pins = tuple(sorted({*m.pins, reason}))
            txn.batch.put("blobs", blob_id, m.pack())
            txn.commit()
            return True

    def unpin(self, blob_id: BlobId, reason: str) -> bool:
        """Drop one pin; when none remains, the chunks become evictable again in the order of
        their last access. False when the blob had no such pin."""
        with self._lock:
            m = self.manifest(blob_id)
            if m is None or reason not in m.pins:
                return False
            txn = _Txn(self)
            m.pins = tuple(p for p in m.pins if p != reason)
            if not m.pinned:
                for chunk, count in self._slot_counts(blob_id):
                    self._repin(txn, chunk, -count)
            txn.batch.put("blobs", blob_id, m.pack())
            txn.commit()
            return True

    def release(self, blob_id: BlobId, *, born_before: int | None = None) -> bool:
        """Drop a blob nothing refers to any more (pinned or not): its manifest, and every
        chunk no other manifest names. False when there is no such blob (or, with
        `born_before`, when it was made at or after that stamp)."""
        with self._lock:
            m = self.manifest(blob_id)
            if m is None or (born_before is not None and m.born >= born_before):
                return False
            txn = _Txn(self)
            self._drop_manifest(txn, m)
            txn.commit()
            return True

    def gc(
        self, live: Callable[[BlobId], bool] | Container[BlobId], *, sweep_chunks: bool = True
    ) -> GcReport:
        """Drop every blob for which `live` (a predicate or a container of ids) says no,
        except blobs made after this sweep began; with `sweep_chunks`, also chunks that no
        manifest names (left by an interrupted ingest). Run it where no reference to a new
        blob can be pending, e.g. from the code that owns the references."""
        is_live: Callable[[BlobId], bool] = (
            live if callable(live) else live.__contains__  # type: ignore[assignment]
        )
        report = GcReport()
        with self._lock:
            start = self._tick()
            before = self._usage_total()
        for blob_id, _ in self._headers():
            if not is_live(blob_id) and self.release(blob_id, born_before=start):
                report.blobs += 1
        if sweep_chunks:
            it = self._info.iter()
            it.seek_to_first()
            orphans: list[ChunkHash] = []
            while it.valid():
                info = ChunkInfo.unpack(it.value())
                if info.refs == 0 and info.stamp < start:
                    orphans.append(it.key())
                if len(orphans) >= _MULTIGET:
                    report.chunks += self._drop_orphans(orphans, start)
                    orphans = []
                it.next()
            report.chunks += self._drop_orphans(orphans, start)
        with self._lock:
            report.bytes = max(0, before - self._usage_total())
        return report

    def _drop_orphans(self, chunks: list[ChunkHash], start: int) -> int:
        dropped = 0
        with self._lock:
            txn = _Txn(self)
            horizon = min(start, self._horizon())
            for chunk in chunks:
                info = txn.info(chunk)
                if info is not None and info.refs == 0 and info.stamp < horizon:
                    self._unstore(txn, chunk, info)
                    dropped += 1
            txn.commit()
        return dropped

    def _usage_total(self) -> int:
        return sum(u[0] for u in self._usage.values())

    def reclaim(self) -> None:
        """Compact the chunk family now with blob garbage collection on, so the blob files of
        evicted and dropped chunks are given back to the disk (the oldest quarter of the
        files, where LRU eviction leaves most garbage, have their live chunks moved)."""
        self._last_reclaim = time.monotonic()
        self._chunks.set_options({"enable_blob_garbage_collection": "true"})
        try:
            self._chunks.compact_range(None, None)
        finally:
            self._chunks.set_options({"enable_blob_garbage_collection": "false"})

    def fsck(self, repair: bool = False, *, verify_data: bool = True) -> FsckReport:
        """Check manifests, chunk records, chunk bytes (re-hashed with `verify_data`), the
        LRU index and the usage counters; with `repair`, fix what can be fixed (a corrupt
        chunk is dropped and reads as missing; orphans are removed; counters recomputed)."""
        from nfsd.store.blobcheck import check

        return check(self, repair=repair, verify_data=verify_data)

    # -- internal state transitions (under self._lock, inside a _Txn) ---------------------

    def _tick(self) -> int:
        self._clock += 1
        return self._clock

    def _store(
        self,
        txn: _Txn,
        chunk: ChunkHash,
        info: ChunkInfo,
        data: bytes | None,
        area: str,
        length: int = 0,
    ) -> None:
        """Record a chunk as present (writing `data`, or bytes already durable when None)."""
        if data is not None:
            length = len(data)
            txn.batch.put("chunks", chunk, data)
            self.stats.stored_chunks += 1
        info.present = True
        info.length = length
        info.owner = area
        info.stamp = self._tick()
        if info.pins == 0:
            txn.batch.put("lru", lru_key(area, info.stamp, chunk), b"")
        txn.account(area, cached=length, pinned=length if info.pins else 0, chunks=1)
        txn.set_info(chunk, info)

    def _unstore(self, txn: _Txn, chunk: ChunkHash, info: ChunkInfo) -> None:
        """Delete a chunk's bytes; its record stays (absent) while manifests name it."""
        if info.present:
            if info.pins == 0:
                txn.batch.delete("lru", lru_key(info.owner, info.stamp, chunk))
            pinned = info.length if info.pins else 0
            txn.account(info.owner, cached=-info.length, pinned=-pinned, chunks=-1)
            info.present = False
        if chunk not in self._pending:  # else a running ingest has written these bytes
            txn.batch.delete("chunks", chunk)
        txn.dropped.add(chunk)
        txn.set_info(chunk, info if info.refs > 0 else None)

    def _restamp(self, txn: _Txn, chunk: ChunkHash, info: ChunkInfo) -> None:
        old = info.stamp
        info.stamp = self._tick()
        if info.present and info.pins == 0:
            txn.batch.delete("lru", lru_key(info.owner, old, chunk))
            txn.batch.put("lru", lru_key(info.owner, info.stamp, chunk), b"")
        txn.set_info(chunk, info)

    def _repin(self, txn: _Txn, chunk: ChunkHash, delta: int) -> None:
        info = txn.info(chunk)
        if info is None:
            log.warning("chunk %s named by a manifest had no record", chunk.hex())
            info = ChunkInfo(refs=max(delta, 0))
        before = info.pins
        info.pins = max(0, before + delta)
        if info.present:
            if before == 0 and info.pins > 0:
                txn.batch.delete("lru", lru_key(info.owner, info.stamp, chunk))
                txn.account(info.owner, pinned=info.length)
            elif before > 0 and info.pins == 0:
                txn.batch.put("lru", lru_key(info.owner, info.stamp, chunk), b"")
                txn.account(info.owner, pinned=-info.length)
        txn.set_info(chunk, info)

    def _write_manifest(self, txn: _Txn, m: Manifest, chunks: list[ChunkHash]) -> None:
        txn.batch.put("blobs", m.blob_id, m.pack())
        for index, chunk in enumerate(chunks):
            txn.batch.put("blobs", slot_key(m.blob_id, index), chunk)
        for chunk, count in Counter(chunks).items():
            info = txn.info(chunk) or ChunkInfo()
            info.refs += count
            txn.set_info(chunk, info)
            if m.pinned:
                self._repin(txn, chunk, count)

    def _drop_manifest(self, txn: _Txn, m: Manifest) -> None:
        horizon = self._horizon()
        counts = dict(self._slot_counts(m.blob_id))
        txn.batch.delete("blobs", m.blob_id)
        for index in range(m.nchunks):
            txn.batch.delete("blobs", slot_key(m.blob_id, index))
        for chunk, count in counts.items():
            if m.pinned:
                self._repin(txn, chunk, -count)
            info = txn.info(chunk)
            if info is None:
                continue
            info.refs = max(0, info.refs - count)
            if info.refs == 0 and info.stamp < horizon:
                self._unstore(txn, chunk, info)
            else:
                txn.set_info(chunk, info)

    def _slot_counts(self, blob_id: BlobId) -> Iterator[tuple[ChunkHash, int]]:
        counts: Counter[ChunkHash] = Counter()
        opts = ReadOptions()
        opts.set_iterate_upper_bound(blob_upper_bound(blob_id))
        it = self._blobs.iter(opts)
        it.seek(slot_key(blob_id, 0))
        while it.valid():
            counts[it.value()] += 1
            it.next()
        return iter(counts.items())

    # -- eviction -------------------------------------------------------------------------

    def _make_room(self, txn: _Txn, area: str | None, length: int) -> None:
        """Evict (into `txn`) until `length` more bytes charged to `area` fit the caps and
        the free-space reserve; CacheFull when they cannot. `area` None (trimming): every
        area to its cap, and as much as can be evicted, without CacheFull."""
        best_effort = area is None
        limits = self.limits
        uncapped = limits.max_bytes is None and limits.max_percent is None and not limits.areas
        if uncapped and not limits.watches_disk:
            return
        disk = self._disk()
        if area is not None:
            cap = limits.area_cap(area, disk.total)
            if cap is not None:
                self._evict(txn, txn.cached(area) + length - cap, [area], f"area {area!r} cap")
        else:  # trim: every area to its cap
            for name in list(limits.areas):
                cap = limits.area_cap(name, disk.total)
                if cap is not None:
                    need = txn.cached(name) + length - cap
                    self._evict(txn, need, [name], f"area {name!r}", best_effort)
        cap = limits.cap(disk.total)
        if cap is not None:
            need = txn.cached() + length - cap
            self._evict(txn, need, None, "cache size limit", best_effort)
        if limits.watches_disk:
            reserve = limits.reserve(disk.total)
            if disk.free - length < reserve // 2 and limits.disk is None:
                self._maybe_reclaim()
                disk = self._disk()
            # Bytes evicted but not yet given back by RocksDB count as free: they will be.
            # (A `limits.disk` function reports its own free space, garbage included.)
            garbage = 0 if limits.disk else max(0, self._blob_file_bytes() - txn.cached())
            short = reserve + length - disk.free - garbage
            self._evict(txn, short, None, "free space reserve", best_effort)
        if not self._reclaim_due and time.monotonic() - self._last_reclaim > _RECLAIM_EVERY:
            # Evicted bytes stay in the blob files until a compaction collects them: do not let
            # them grow the store far past its limit. Done by `put_chunk` once out of the lock.
            garbage = self._blob_file_bytes() - txn.cached()
            self._reclaim_due = garbage > max(_RECLAIM_AT, txn.cached() // 4)

    def _blob_file_bytes(self) -> int:
        try:
            return int(self._chunks.property_int_value("rocksdb.total-blob-file-size") or 0)
        except Exception:  # property unsupported: assume no garbage
            return 0

    def _maybe_reclaim(self) -> None:
        if time.monotonic() - self._last_reclaim > _RECLAIM_EVERY:
            self.reclaim()

    def _evict(
        self,
        txn: _Txn,
        need: int,
        areas: list[str] | None,
        why: str,
        best_effort: bool = False,
    ) -> None:
        """Evict least-recently-used unpinned chunks (of `areas`, or of all) until `need`
        bytes are freed; CacheFull, with nothing evicted, when that is impossible (with
        `best_effort`: evict what can be)."""
        if need <= 0:
            return
        horizon = self._horizon()
        heap: list[tuple[int, int, bytes]] = []
        iters = []
        for area in areas if areas is not None else self._lru_areas():
            opts = ReadOptions()
            opts.set_iterate_upper_bound(lru_area_end(area))
            it = self._lru.iter(opts)
            it.seek(lru_prefix(area))
            iters.append(it)
            if it.valid():
                heap.append((lru_parse(it.key())[1], len(iters) - 1, it.key()))
        heapq.heapify(heap)
        victims: list[tuple[ChunkHash, ChunkInfo, bytes]] = []
        freed = 0
        while freed < need and heap:
            stamp, i, key = heapq.heappop(heap)
            if stamp >= horizon:
                break
            area, _, chunk = lru_parse(key)
            info = txn.info(chunk)
            if chunk in txn.dropped:
                pass
            elif (
                info is None
                or not info.present
                or info.pins
                or info.stamp != stamp
                or info.owner != area
            ):
                log.warning("stale lru entry for chunk %s removed", chunk.hex())
                txn.batch.delete("lru", key)
            else:
                victims.append((chunk, info, key))
                freed += info.length
            it = iters[i]
            it.next()
            if it.valid():
                heapq.heappush(heap, (lru_parse(it.key())[1], i, it.key()))
        if freed < need and not best_effort:
            raise CacheFull(
                f"cache full ({why}): {need} bytes needed, {freed} evictable"
                + (" (chunks of running ingests are kept)" if horizon < 1 << 64 else "")
            )
        for chunk, info, _ in victims:
            self._unstore(txn, chunk, info)
            self.stats.evicted_chunks += 1
            self.stats.evicted_bytes += info.length

    def _lru_areas(self) -> list[str]:
        areas = []
        it = self._lru.iter()
        it.seek_to_first()
        while it.valid():
            key = it.key()
            try:
                area = lru_parse(key)[0]
            except (ValueError, IndexError, UnicodeDecodeError):
                it.next()
                continue
            areas.append(area)
            it.seek(lru_area_end(area))
        return areas


class _Checkpoint:
    """`BlobStore._checkpoint` in a thread; `join` waits and re-raises its error."""

    def __init__(self, blobs: BlobStore, unlogged: list[tuple[ChunkHash, int, bool]], area: str):
        self.error: BaseException | None = None

        def run() -> None:
            try:
                blobs._checkpoint(unlogged, area)
            except BaseException as e:
                self.error = e

        self.thread = threading.Thread(target=run, name="blob-checkpoint", daemon=True)
        self.thread.start()

    def join(self, raise_error: bool = True) -> None:
        self.thread.join()
        if self.error is not None and raise_error:
            raise self.error


def _present(info: ChunkInfo | None) -> bool:
    return info is not None and info.present


def _chunked(source: bytes | Iterable[bytes] | BinaryIO, size: int) -> Iterator[bytes]:
    """Cut a file object or an iterable of bytes-like pieces into `size`-byte chunks (the
    last one shorter), holding at most one chunk."""
    if isinstance(source, bytes | bytearray | memoryview):
        source = [source]
    read = getattr(source, "read", None)
    if read is not None:
        while True:
            data = read(size)
            if not data:
                return
            while len(data) < size:  # pipes and sockets return short reads
                more = read(size - len(data))
                if not more:
                    break
                data += more
            yield bytes(data)
            if len(data) < size:
                return
    buf = bytearray()
    for piece in source:  # type: ignore[union-attr]
        view = memoryview(piece).cast("B")
        while view:
            if not buf and len(view) >= size:
                yield bytes(view[:size])
                view = view[size:]
                continue
            take = min(size - len(buf), len(view))
            buf += view[:take]
            view = view[take:]
            if len(buf) == size:
                yield bytes(buf)
                buf.clear()
    if buf:
        yield bytes(buf)
