"""The blob store's state and the only ways to change it: the RocksDB families (`blobs`,
`chunks`, `chunkinfo`, `lru`, `meta`), the lock that serialises changes, the clock, the usage
counters, the chunks of running ingests, the chunks fills wrote without the WAL, the few
verified chunks kept in memory, and `Txn`, the WriteBatch every change goes through, with the
state transitions of a chunk record (stored, dropped, restamped, pinned) and of a manifest
(written, dropped).

Layouts are in `nfsd.store.manifest`; `nfsd.store.blobs` composes this state with the ingest
path (`nfsd.store.blob_ingest`), eviction (`nfsd.store.blob_eviction`) and the check
(`nfsd.store.blobcheck`). The ingest path is the only writer of `inflight`, `pending` and
`pending_bytes`; they live here because every deleting path and the check must see them.

A fill (a chunk of a registered blob arriving alone, `BlobStore.put_chunk`) may write its bytes
without the WAL (`store_chunk(..., logged=False)`): RocksDB's WAL CRC costs as much CPU as the
write itself in this build. Its record goes through the WAL at once, with a marker naming the
chunk (`unflushed_key`); `nfsd.store.blob_fill` flushes the chunk family every few MiB and only
then deletes the markers the flush covered. A crash before that leaves records whose bytes may
be gone, every one of them marked: opening the store again (`recover_unflushed`) drops the
records of marked chunks whose bytes did not survive, so no record names lost bytes for longer
than it takes to open the store (and a read meanwhile re-checks every chunk it loads).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from blake3 import blake3
from rocksdict import ReadOptions, WriteBatch, WriteOptions

from nfsd.store.db import Store
from nfsd.store.manifest import (
    CLOCK_KEY,
    UNFLUSHED_PREFIX,
    USAGE_PREFIX,
    BlobId,
    ChunkHash,
    ChunkInfo,
    Manifest,
    blob_upper_bound,
    lru_key,
    pack_stamp,
    pack_usage,
    slot_key,
    unflushed_key,
    unpack_stamp,
    unpack_usage,
    usage_key,
)

log = logging.getLogger(__name__)


@dataclass
class Stats:
    """Counters since this BlobStore was opened."""

    evicted_chunks: int = 0
    evicted_bytes: int = 0
    corrupt_chunks: int = 0  # chunks that failed verification on read and were dropped
    stored_chunks: int = 0
    deduped_chunks: int = 0
    loaded_chunks: int = 0  # read back from RocksDB (not found among the recent ones)


class Txn:
    """One WriteBatch plus staged chunk records and usage deltas (read-your-writes)."""

    __slots__ = ("batch", "dirty", "dropped", "infos", "state", "usage")

    def __init__(self, state: BlobState) -> None:
        self.state = state
        self.batch = state.store.batch()
        self.infos: dict[ChunkHash, ChunkInfo | None] = {}
        self.dirty: set[ChunkHash] = set()
        self.usage: dict[str, list[int]] = {}
        self.dropped: set[ChunkHash] = set()

    def info(self, chunk: ChunkHash) -> ChunkInfo | None:
        try:
            return self.infos[chunk]
        except KeyError:
            raw = self.state.info.get(chunk)
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
        usage = self.state.usage
        pending = self.state.pending_bytes  # written by running ingests, not yet recorded
        if area is not None:
            recorded = usage.get(area, [0, 0, 0])[0] + self.usage.get(area, [0, 0, 0])[0]
            return recorded + pending.get(area, 0)
        recorded = sum(u[0] for u in usage.values()) + sum(d[0] for d in self.usage.values())
        return recorded + sum(pending.values())

    def commit(self) -> None:
        state = self.state
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
            old = state.usage.get(area, [0, 0, 0])
            now = [max(0, o + d) for o, d in zip(old, delta, strict=True)]
            new_usage[area] = now
            if now == [0, 0, 0]:
                batch.delete("meta", usage_key(area))
            else:
                batch.put("meta", usage_key(area), pack_usage(*now))
        batch.put("meta", CLOCK_KEY, pack_stamp(state.clock))
        batch.commit()
        for area, now in new_usage.items():
            if now == [0, 0, 0]:
                state.usage.pop(area, None)
            else:
                state.usage[area] = now
        if self.dropped:
            state.forget(self.dropped)


class BlobState:
    """The state of one blob store in `store`. Changes happen under `lock`, in a `Txn`;
    up to `memory_bytes` of verified chunks stay in memory for the reads that follow."""

    def __init__(self, store: Store, memory_bytes: int) -> None:
        self.store = store
        self.stats = Stats()
        self.blobs = store.family("blobs")  # manifest headers and their slots
        self.chunks = store.family("chunks")
        self.info = store.family("chunkinfo")
        self.lru = store.family("lru")
        self.meta = store.family("meta")
        # Chunk bytes are verified with BLAKE3 on every load, so RocksDB's own CRC pass over
        # blob values is redundant; skipping it reads about 5x faster (measured: 520 MB/s with,
        # 3 GB/s without, for 256 KiB values).
        self.chunk_reads = ReadOptions()
        self.chunk_reads.set_verify_checksums(False)
        self.lock = threading.RLock()
        self._recent: OrderedDict[ChunkHash, bytes] = OrderedDict()
        self._recent_max = memory_bytes
        self._recent_bytes = 0
        self._recent_lock = threading.Lock()
        self.inflight: dict[int, int] = {}  # ingest token -> stamp at its start
        # Chunks whose bytes a running ingest wrote without the WAL and has not recorded yet
        # (how many times), and their bytes per area: never deleted meanwhile.
        self.pending: dict[ChunkHash, int] = {}
        self.pending_bytes: dict[str, int] = {}
        # Chunks fills wrote without the WAL since the last flush that covered them: the fill
        # number of each one's latest write (a flush covers the fills numbered below it), and
        # its length.
        self.unflushed: dict[ChunkHash, tuple[int, int]] = {}
        self.unflushed_bytes = 0
        self.fills = 0
        self._unlogged = WriteOptions()
        self._unlogged.disable_wal = True
        raw = self.meta.get(CLOCK_KEY)
        self.clock = unpack_stamp(raw) if raw is not None else 0
        self.usage: dict[str, list[int]] = {}  # area -> [cached, pinned, chunks]
        it = self.meta.iter()
        it.seek(USAGE_PREFIX)
        while it.valid() and it.key().startswith(USAGE_PREFIX):
            area = it.key()[len(USAGE_PREFIX) :].decode()
            self.usage[area] = list(unpack_usage(it.value()))
            it.next()
        if not store.read_only:
            self.recover_unflushed()

    # -- reading --------------------------------------------------------------------------

    def manifest(self, blob_id: BlobId) -> Manifest | None:
        raw = self.blobs.get(blob_id)
        return Manifest.unpack(blob_id, raw) if raw is not None else None

    def slot_counts(self, blob_id: BlobId) -> Iterator[tuple[ChunkHash, int]]:
        """Each distinct chunk the blob's slots name, with how many slots name it."""
        counts: Counter[ChunkHash] = Counter()
        opts = ReadOptions()
        opts.set_iterate_upper_bound(blob_upper_bound(blob_id))
        it = self.blobs.iter(opts)
        it.seek(slot_key(blob_id, 0))
        while it.valid():
            counts[it.value()] += 1
            it.next()
        return iter(counts.items())

    def horizon(self) -> int:
        """Chunks stamped at or after this belong to a running ingest: not evicted, and kept
        even when no manifest names them yet."""
        return min(self.inflight.values(), default=1 << 64)

    def usage_total(self) -> int:
        return sum(u[0] for u in self.usage.values())

    def load(self, chunk: ChunkHash, length: int) -> bytes | None:
        """The chunk's bytes, verified, or None when absent or corrupt."""
        with self._recent_lock:
            data = self._recent.get(chunk)
            if data is not None:
                self._recent.move_to_end(chunk)
                return data
        data = self.chunks.get(chunk, None, self.chunk_reads)
        self.stats.loaded_chunks += 1
        if data is None or len(data) != length or blake3(data).digest() != chunk:
            return None
        self.remember(chunk, data)
        return data

    def remember(self, chunk: ChunkHash, data: bytes) -> None:
        """Keep a verified chunk's bytes among the recent ones (a read soon after the chunk
        was stored, or read, takes them from memory)."""
        if len(data) > self._recent_max:
            return
        with self._recent_lock:
            old = self._recent.pop(chunk, None)
            if old is not None:
                self._recent_bytes -= len(old)
            self._recent[chunk] = data
            self._recent_bytes += len(data)
            while self._recent_bytes > self._recent_max:
                _, dropped = self._recent.popitem(last=False)
                self._recent_bytes -= len(dropped)

    def forget(self, chunks: Iterable[ChunkHash]) -> None:
        """Drop chunks from the memory of recent reads."""
        with self._recent_lock:
            for chunk in chunks:
                self._recent_bytes -= len(self._recent.pop(chunk, b""))

    def forget_all(self) -> None:
        with self._recent_lock:
            self._recent.clear()
            self._recent_bytes = 0

    # -- changes (under self.lock, inside a Txn) ------------------------------------------

    def tick(self) -> int:
        self.clock += 1
        return self.clock

    def advance_clock(self, stamp: int) -> None:
        """Move the clock up to `stamp` (a repair found it in use); persisted by the caller."""
        self.clock = max(self.clock, stamp)

    def replace_usage(self, usage: dict[str, list[int]]) -> None:
        """Take recomputed usage counters (a repair wrote them)."""
        self.usage = usage

    def store_chunk(
        self,
        txn: Txn,
        chunk: ChunkHash,
        info: ChunkInfo,
        data: bytes | None,
        area: str,
        length: int = 0,
        *,
        logged: bool = True,
    ) -> None:
        """Record a chunk as present (writing `data`, or bytes already durable when None).
        Not `logged`: `data` is written now, without the WAL, and marked unflushed in `txn`."""
        if data is not None:
            length = len(data)
            if logged:
                txn.batch.put("chunks", chunk, data)
            else:
                fresh = WriteBatch(raw_mode=True)
                fresh.put(chunk, data, self.store.handle("chunks"))
                self.store.write(fresh, self._unlogged)
                txn.batch.put("meta", unflushed_key(chunk), b"")
                self.fills += 1
                _, before = self.unflushed.get(chunk, (0, 0))
                self.unflushed_bytes += length - before
                self.unflushed[chunk] = (self.fills, length)
            self.stats.stored_chunks += 1
        info.present = True
        info.length = length
        info.owner = area
        info.stamp = self.tick()
        if info.pins == 0:
            txn.batch.put("lru", lru_key(area, info.stamp, chunk), b"")
        txn.account(area, cached=length, pinned=length if info.pins else 0, chunks=1)
        txn.set_info(chunk, info)

    def make_durable(self, txn: Txn, chunk: ChunkHash) -> None:
        """A chunk a fill wrote without the WAL, now needed by something promised durable
        (an ingest that found it stored, a pinned blob): its bytes go through the WAL in
        `txn` and its marker goes, or a crash before the next flush would drop it from under
        that promise (under `lock`)."""
        if chunk not in self.unflushed:
            return
        data = self.chunks.get(chunk, None, self.chunk_reads)
        if data is None:
            return  # not readable: the crash recovery treats it as lost, as before
        txn.batch.put("chunks", chunk, data)
        txn.batch.delete("meta", unflushed_key(chunk))
        self.unflushed_bytes -= self.unflushed.pop(chunk)[1]

    def flushed(self, below: int) -> None:
        """A flush of the chunk family that began after fill `below - 1` has ended: the
        chunks filled before it are durable; their markers go (under `lock`)."""
        done = [chunk for chunk, (fill, _) in self.unflushed.items() if fill < below]
        if not done:
            return
        batch = self.store.batch()
        for chunk in done:
            batch.delete("meta", unflushed_key(chunk))
        batch.commit()
        for chunk in done:
            self.unflushed_bytes -= self.unflushed.pop(chunk)[1]

    def recover_unflushed(self) -> None:
        """After a crash: drop the records of chunks a fill wrote without the WAL whose bytes
        were lost before a flush; then forget every marker."""
        marked: list[bytes] = []
        it = self.meta.iter()
        it.seek(UNFLUSHED_PREFIX)
        while it.valid() and it.key().startswith(UNFLUSHED_PREFIX):
            marked.append(it.key())
            it.next()
        if not marked:
            return
        lost = 0
        with self.lock:
            txn = Txn(self)
            for key in marked:
                chunk = key[len(UNFLUSHED_PREFIX) :]
                txn.batch.delete("meta", key)
                info = txn.info(chunk)
                if info is None or not info.present:
                    continue
                data = self.chunks.get(chunk, None, self.chunk_reads)
                if data is None or len(data) != info.length:
                    self.unstore(txn, chunk, info)
                    lost += 1
            txn.commit()
        if lost:
            log.warning("%d cached chunks were lost in a crash before they were flushed", lost)

    def unstore(self, txn: Txn, chunk: ChunkHash, info: ChunkInfo) -> None:
        """Delete a chunk's bytes; its record stays (absent) while manifests name it."""
        if info.present:
            if info.pins == 0:
                txn.batch.delete("lru", lru_key(info.owner, info.stamp, chunk))
            pinned = info.length if info.pins else 0
            txn.account(info.owner, cached=-info.length, pinned=-pinned, chunks=-1)
            info.present = False
        if chunk not in self.pending:  # else a running ingest has written these bytes
            txn.batch.delete("chunks", chunk)
        txn.dropped.add(chunk)
        txn.set_info(chunk, info if info.refs > 0 else None)

    def restamp(self, txn: Txn, chunk: ChunkHash, info: ChunkInfo) -> None:
        """Make a chunk the most recently used."""
        old = info.stamp
        info.stamp = self.tick()
        if info.present and info.pins == 0:
            txn.batch.delete("lru", lru_key(info.owner, old, chunk))
            txn.batch.put("lru", lru_key(info.owner, info.stamp, chunk), b"")
        txn.set_info(chunk, info)

    def repin(self, txn: Txn, chunk: ChunkHash, delta: int) -> None:
        """Add `delta` pinned slots to a chunk: out of the LRU index at the first, back at the
        last."""
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

    def write_manifest(self, txn: Txn, m: Manifest, chunks: list[ChunkHash]) -> None:
        """A new manifest and its slots; each chunk named gains its references (and pins)."""
        txn.batch.put("blobs", m.blob_id, m.pack())
        for index, chunk in enumerate(chunks):
            txn.batch.put("blobs", slot_key(m.blob_id, index), chunk)
        for chunk, count in Counter(chunks).items():
            info = txn.info(chunk) or ChunkInfo()
            info.refs += count
            txn.set_info(chunk, info)
            if m.pinned:
                self.repin(txn, chunk, count)

    def drop_manifest(self, txn: Txn, m: Manifest) -> None:
        """A manifest and its slots gone; chunks nothing else names (and no running ingest
        holds) are dropped."""
        horizon = self.horizon()
        counts = dict(self.slot_counts(m.blob_id))
        txn.batch.delete("blobs", m.blob_id)
        for index in range(m.nchunks):
            txn.batch.delete("blobs", slot_key(m.blob_id, index))
        for chunk, count in counts.items():
            if m.pinned:
                self.repin(txn, chunk, -count)
            info = txn.info(chunk)
            if info is None:
                continue
            info.refs = max(0, info.refs - count)
            if info.refs == 0 and info.stamp < horizon:
                self.unstore(txn, chunk, info)
            else:
                txn.set_info(chunk, info)
