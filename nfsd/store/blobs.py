"""The content-addressed blob cache: blobs named by the BLAKE3 hash of their content, stored as
fixed-size chunks in RocksDB (BlobDB), each chunk verified before it is stored and before it
is served; partial blobs; LRU eviction under size and free-space limits; pins; garbage
collection; and the entry point of the store check (`fsck`, in `nfsd.store.blobcheck`).

This module owns `BlobStore`, the blob cache's one public face: lookups, reads, blobs
registered from elsewhere and their chunks, pins and lifetime (`release`, `gc`). It composes
the state and the transactions that change it (`nfsd.store.blob_state`), the ingest path
(`nfsd.store.blob_ingest`), the limits and eviction (`nfsd.store.blob_eviction`) and the
check (`nfsd.store.blobcheck`, which sees only the state); the errors live in
`nfsd.store.blob_errors` and are re-exported here with the rest of the public names.

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
  bytes that are not durable. Two exceptions to "through the WAL": past its first MiB an
  ingest writes chunk bytes without the WAL and records them only once a flush made them
  durable (see `nfsd.store.blob_ingest`); a crash in between leaves only unrecorded bytes,
  which `fsck` counts as garbage. And `put_chunk` writes an unpinned blob's chunk without
  the WAL and its record through it, marked until a flush covers it
  (`nfsd.store.blob_fill`): after a crash, opening the store drops the records of marked
  chunks whose bytes were lost (a cache fill lost is fetched again; nothing a user wrote).
  `ingest` returns once its manifest batch is written (the WAL reaches the OS at once, so
  SIGKILL loses nothing acknowledged; `Store.flush` also covers power loss).
- **Memory**: content streams chunk by chunk; an ingest holds up to 1 MiB of chunks (one
  batch) plus the chunk hash list (32 bytes per chunk, 1/8192 of the size) and writes the
  manifest in one batch; RocksDB holds at most three 8 MiB memtables of chunk bytes. Measured:
  peak RSS grows about 30 MiB during a 256 MiB or a 1 GiB ingest. Reads keep the verified
  chunks they loaded in memory, up to `MEMORY_BYTES`, and so does `put_chunk`: the READs a
  client keeps in flight (16 of 1 MiB from the kernel client) take the chunks fetched for
  them from there, not read back from RocksDB and hashed again.
- **Verification of fills**: a blob whose chunks `put_chunk` receives in order is hashed
  whole as they arrive (`nfsd.store.blob_fill`), so its last chunk completes the check of
  its id without a second read of the whole content.

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
import logging
import time
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from blake3 import blake3

from nfsd.store import blobcheck
from nfsd.store.blob_errors import (
    BadChunk,
    BlobError,
    CacheFull,
    ChunkHashMismatch,
    ManifestMismatch,
    MissingChunks,
    UnknownBlob,
)
from nfsd.store.blob_eviction import Eviction
from nfsd.store.blob_fill import Fills
from nfsd.store.blob_ingest import CHECKPOINT_BYTES, Ingest
from nfsd.store.blob_state import BlobState, Stats, Txn
from nfsd.store.blobcheck import FsckReport
from nfsd.store.db import Store
from nfsd.store.limits import CacheLimits, CacheUsage
from nfsd.store.manifest import (
    EMPTY_BLOB,
    F_BAD,
    F_VERIFIED,
    HASH_LEN,
    MAX_CHUNK_SIZE,
    MAX_CHUNKS,
    MIN_CHUNK_SIZE,
    BlobId,
    ChunkHash,
    ChunkInfo,
    Manifest,
    blob_upper_bound,
    chunk_count,
    chunk_span,
    slot_key,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "BadChunk",
    "BlobError",
    "BlobStore",
    "CacheFull",
    "ChunkHashMismatch",
    "FsckReport",
    "GcReport",
    "ManifestMismatch",
    "MissingChunks",
    "Stats",
    "UnknownBlob",
]

log = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 256 * 1024
MEMORY_BYTES = 32 * 1024 * 1024  # a sequential reader's window of READs in flight, and then some
_ACCESS_GRANULARITY = 60  # seconds between updates of a manifest's last access
_MULTIGET = 1024  # keys per multi-get when walking long chunk lists


@dataclass
class GcReport:
    blobs: int = 0  # manifests dropped
    chunks: int = 0  # chunk records dropped
    bytes: int = 0  # chunk bytes freed


class BlobStore:
    """Blobs and chunks in `store` (families `blobs`, `chunks`, `chunkinfo`, `lru`, and usage
    counters in `meta`), under `limits`. Thread-safe: changes are serialised by one lock;
    reading, hashing and verifying chunk bytes happen outside it.

    `chunk_size` applies to blobs made by `ingest` (a manifest from elsewhere brings its own);
    up to `memory_bytes` of verified chunks stay in memory for the reads that follow; a chunk's LRU
    stamp is refreshed on access once it is more than `touch_window` stamps old; an ingest
    records the chunk bytes it wrote without the WAL every `checkpoint_bytes`.
    """

    def __init__(
        self,
        store: Store,
        limits: CacheLimits | None = None,
        *,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        memory_bytes: int = MEMORY_BYTES,
        touch_window: int = 64,
        checkpoint_bytes: int = CHECKPOINT_BYTES,
    ) -> None:
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk size {chunk_size} outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
        self.store = store
        self.chunk_size = chunk_size
        self.touch_window = touch_window
        self._state = state = BlobState(store, memory_bytes)
        self.stats: Stats = state.stats
        self._blobs = state.blobs  # the families read on every lookup, without a detour
        self._info = state.info
        self._eviction = Eviction(state, limits or CacheLimits())
        self._ingest = Ingest(
            state,
            self._eviction,
            pin=self.pin,
            chunk_hashes=self.chunk_hashes,
            checkpoint_bytes=checkpoint_bytes,
        )
        self._fills = Fills(state, self._load_slot)

    def quiesce(self) -> None:
        """Wait for the store's background work (a flush of filled chunks) to end: before its
        Store is closed."""
        self._fills.wait()

    # -- limits and usage ---------------------------------------------------------------

    @property
    def limits(self) -> CacheLimits:
        return self._eviction.limits

    def set_limits(self, limits: CacheLimits) -> int:
        """Apply new limits and `trim` to them at once; returns the bytes evicted."""
        return self._eviction.set_limits(limits)

    def trim(self) -> int:
        """Evict until the caps and the free-space reserve hold, or everything evictable is
        gone (pinned data may keep the cache above its limits: new chunks then get CacheFull);
        returns the bytes evicted."""
        return self._eviction.trim()

    def usage(self) -> CacheUsage:
        return self._eviction.usage()

    def reclaim(self) -> None:
        """Compact the chunk family now with blob garbage collection on, so the blob files of
        evicted and dropped chunks are given back to the disk."""
        self._eviction.reclaim()

    # -- lookups --------------------------------------------------------------------------

    def manifest(self, blob_id: BlobId) -> Manifest | None:
        """The blob's header, or None when the store has no such blob."""
        return self._state.manifest(blob_id)

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
        state = self._state
        load = state.load
        for index, chunk, info in zip(span, hashes, infos, strict=True):
            data = load(chunk, m.chunk_length(index))
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
            if state.clock - info.stamp > self.touch_window:
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

    def _drop_bad(self, bad: list[tuple[int, ChunkHash]]) -> None:
        """Drop chunks that failed to load (corrupt, or bytes missing behind a record that
        says present), so they read as missing and are fetched again."""
        with self._state.lock:
            txn = Txn(self._state)
            for _, chunk in bad:
                info = txn.info(chunk)
                if info is None or not info.present:
                    continue  # evicted meanwhile: plainly missing
                data = self._state.chunks.get(chunk, None, self._state.chunk_reads)
                if data is not None and len(data) == info.length and blake3(data).digest() == chunk:
                    continue  # written again meanwhile, and good
                why = "bytes missing" if data is None else "hash mismatch"
                log.warning("chunk %s failed verification (%s); dropped", chunk.hex(), why)
                self.stats.corrupt_chunks += 1
                self._state.unstore(txn, chunk, info)
            txn.commit()

    def _touch(self, blob_id: BlobId, chunks: list[ChunkHash]) -> None:
        with self._state.lock:
            txn = Txn(self._state)
            for chunk in chunks:
                info = txn.info(chunk)
                if info is not None and info.present:
                    self._state.restamp(txn, chunk, info)
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
        return self._ingest.ingest(source, area=area, pin=pin, chunk_size=cs)

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
        with self._state.lock:
            existing = self.manifest(blob_id)
            if existing is not None:  # registered meanwhile
                return existing
            txn = Txn(self._state)
            m = Manifest(
                blob_id,
                size,
                chunk_size,
                flags=F_VERIFIED if n <= 1 else 0,
                born=self._state.tick(),
                last_access=int(time.time()),
                area=area,
                pins=(pin,) if pin is not None else (),
            )
            self._state.write_manifest(txn, m, chunks)
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
        stored = False
        check = False
        with self._state.lock:
            m = self._manifest(blob_id)
            if self._blobs.get(slot_key(blob_id, index)) != expected:  # replaced meanwhile
                raise BadChunk(blob_id, index, "the manifest changed while the chunk was checked")
            txn = Txn(self._state)
            info = txn.info(expected)
            if info is None:  # a slot always has a record; heal rather than fail
                log.warning("chunk %s of blob %s had no record", expected.hex(), blob_id.hex())
                info = ChunkInfo(refs=1, pins=1 if m.pinned else 0)
            if info.present:
                changed = m.pinned and expected in self._state.unflushed
                if changed:  # promised offline: a fill's unlogged bytes go through the WAL
                    self._state.make_durable(txn, expected)
                if self._state.clock - info.stamp > self.touch_window:
                    self._state.restamp(txn, expected, info)
                    changed = True
                if changed:
                    txn.commit()
            else:
                self._eviction.make_room(txn, m.area, len(data))
                self._state.store_chunk(txn, expected, info, data, m.area, logged=m.pinned)
                m.present_hint += 1
                txn.batch.put("blobs", blob_id, m.pack())
                txn.commit()
                stored = True
                # Count exactly when the tally says complete, or the last chunk came (chunks
                # shared with other blobs arrive without this blob's tally knowing).
                check = m.present_hint >= m.nchunks or index == m.nchunks - 1
            self._state.remember(expected, data)  # the reader waiting for it takes it here
        hashed = self._fills.hash_along(m, index, data)
        if hashed is not None:
            self._record_verdict(blob_id, hashed)
        elif check:
            self._check_complete(blob_id)
        if stored:
            self._fills.flush_if_due()
            self._eviction.reclaim_if_due()
        return stored

    def _load_slot(self, m: Manifest, index: int) -> bytes | None:
        """Chunk `index` of `m`, verified, if its bytes are here."""
        raw = self._blobs.get(slot_key(m.blob_id, index))
        if raw is None or len(raw) != HASH_LEN:
            return None
        return self._state.load(raw, m.chunk_length(index))

    def _check_complete(self, blob_id: BlobId) -> None:
        missing = self.missing(blob_id)
        if missing:
            with self._state.lock:
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
        self._manifest(blob_id)
        whole = blake3(max_threads=blake3.AUTO)
        for piece in self.iter_read(blob_id):
            whole.update(piece)
        return self._record_verdict(blob_id, whole.digest() == blob_id)

    def _record_verdict(self, blob_id: BlobId, ok: bool) -> bool:
        """Record in the manifest whether its chunks make its id: True, or ManifestMismatch."""
        with self._state.lock:
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
        with self._state.lock:
            m = self._manifest(blob_id)
            if reason in m.pins:
                return False
            txn = Txn(self._state)
            if not m.pinned:
                for chunk, count in self._state.slot_counts(blob_id):
                    self._state.repin(txn, chunk, count)
                    self._state.make_durable(txn, chunk)  # pinned: through the WAL now
            m.pins = tuple(sorted({*m.pins, reason}))
            txn.batch.put("blobs", blob_id, m.pack())
            txn.commit()
            return True

    def unpin(self, blob_id: BlobId, reason: str) -> bool:
        """Drop one pin; when none remains, the chunks become evictable again in the order of
        their last access. False when the blob had no such pin."""
        with self._state.lock:
            m = self.manifest(blob_id)
            if m is None or reason not in m.pins:
                return False
            txn = Txn(self._state)
            m.pins = tuple(p for p in m.pins if p != reason)
            if not m.pinned:
                for chunk, count in self._state.slot_counts(blob_id):
                    self._state.repin(txn, chunk, -count)
            txn.batch.put("blobs", blob_id, m.pack())
            txn.commit()
            return True

    def release(self, blob_id: BlobId, *, born_before: int | None = None) -> bool:
        """Drop a blob nothing refers to any more (pinned or not): its manifest, and every
        chunk no other manifest names. False when there is no such blob (or, with
        `born_before`, when it was made at or after that stamp)."""
        with self._state.lock:
            m = self.manifest(blob_id)
            if m is None or (born_before is not None and m.born >= born_before):
                return False
            txn = Txn(self._state)
            self._state.drop_manifest(txn, m)
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
        with self._state.lock:
            start = self._state.tick()
            before = self._state.usage_total()
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
        with self._state.lock:
            report.bytes = max(0, before - self._state.usage_total())
        return report

    def _drop_orphans(self, chunks: list[ChunkHash], start: int) -> int:
        dropped = 0
        with self._state.lock:
            txn = Txn(self._state)
            horizon = min(start, self._state.horizon())
            for chunk in chunks:
                info = txn.info(chunk)
                if info is not None and info.refs == 0 and info.stamp < horizon:
                    self._state.unstore(txn, chunk, info)
                    dropped += 1
            txn.commit()
        return dropped

    def fsck(self, repair: bool = False, *, verify_data: bool = True) -> FsckReport:
        """Check manifests, chunk records, chunk bytes (re-hashed with `verify_data`), the
        LRU index and the usage counters; with `repair`, fix what can be fixed (a corrupt
        chunk is dropped and reads as missing; orphans are removed; counters recomputed)."""
        return blobcheck.check(self._state, repair=repair, verify_data=verify_data)


def _present(info: ChunkInfo | None) -> bool:
    return info is not None and info.present
