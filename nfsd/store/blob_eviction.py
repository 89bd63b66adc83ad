"""Keeping the blob cache within its limits: the current `CacheLimits`, the usage report,
LRU eviction before a chunk is added (per-area caps, the server's cap, the free-space
reserve; `CacheFull` when not enough is evictable), trimming to lowered limits, and giving
evicted chunks' bytes back to the disk (`reclaim`, a compaction with blob garbage collection).

Eviction walks the `lru` family in stamp order across areas and never takes a pinned chunk
or one stamped by an ingest still running (`BlobState.horizon`).
"""

from __future__ import annotations

import heapq
import logging
import time

from rocksdict import ReadOptions

from nfsd.store.blob_errors import CacheFull
from nfsd.store.blob_state import BlobState, Txn
from nfsd.store.limits import AreaUsage, CacheLimits, CacheUsage, DiskSpace, disk_space
from nfsd.store.manifest import ChunkHash, ChunkInfo, lru_area_end, lru_parse, lru_prefix

log = logging.getLogger(__name__)

_RECLAIM_EVERY = 10.0  # seconds between compactions that collect evicted chunks' bytes
_RECLAIM_AT = 64 << 20  # garbage in the blob files worth a compaction (or a quarter of the cache)


class Eviction:
    """The limits of the cache in `state` and their enforcement. Call `make_room` under the
    state's lock, inside the `Txn` that adds the chunk."""

    def __init__(self, state: BlobState, limits: CacheLimits) -> None:
        self.state = state
        self.limits = limits
        self._last_reclaim = 0.0
        self._reclaim_due = False

    def set_limits(self, limits: CacheLimits) -> int:
        """Apply new limits and `trim` to them at once; returns the bytes evicted."""
        with self.state.lock:
            self.limits = limits
            return self.trim()

    def trim(self) -> int:
        """Evict until the caps and the free-space reserve hold, or everything evictable is
        gone; returns the bytes evicted."""
        state = self.state
        with state.lock:
            txn = Txn(state)
            before = state.usage_total()
            self.make_room(txn, None, 0)
            txn.commit()
            return before - state.usage_total()

    def usage(self) -> CacheUsage:
        with self.state.lock:
            disk = self.disk()
            areas = {}
            for area, (cached, pinned, chunks) in self.state.usage.items():
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

    def disk(self) -> DiskSpace:
        if self.limits.disk is not None:
            return self.limits.disk()
        return disk_space(self.state.store.path)

    def make_room(self, txn: Txn, area: str | None, length: int) -> None:
        """Evict (into `txn`) until `length` more bytes charged to `area` fit the caps and
        the free-space reserve; CacheFull when they cannot. `area` None (trimming): every
        area to its cap, and as much as can be evicted, without CacheFull."""
        best_effort = area is None
        limits = self.limits
        uncapped = limits.max_bytes is None and limits.max_percent is None and not limits.areas
        if uncapped and not limits.watches_disk:
            return
        disk = self.disk()
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
                disk = self.disk()
            # Bytes evicted but not yet given back by RocksDB count as free: they will be.
            # (A `limits.disk` function reports its own free space, garbage included.)
            garbage = 0 if limits.disk else max(0, self._blob_file_bytes() - txn.cached())
            short = reserve + length - disk.free - garbage
            self._evict(txn, short, None, "free space reserve", best_effort)
        if not self._reclaim_due and time.monotonic() - self._last_reclaim > _RECLAIM_EVERY:
            # Evicted bytes stay in the blob files until a compaction collects them: do not let
            # them grow the store far past its limit. Done by `reclaim_if_due` out of the lock.
            garbage = self._blob_file_bytes() - txn.cached()
            self._reclaim_due = garbage > max(_RECLAIM_AT, txn.cached() // 4)

    def reclaim(self) -> None:
        """Compact the chunk family now with blob garbage collection on, so the blob files of
        evicted and dropped chunks are given back to the disk (the oldest quarter of the
        files, where LRU eviction leaves most garbage, have their live chunks moved)."""
        self._last_reclaim = time.monotonic()
        chunks = self.state.chunks
        chunks.set_options({"enable_blob_garbage_collection": "true"})
        try:
            chunks.compact_range(None, None)
        finally:
            chunks.set_options({"enable_blob_garbage_collection": "false"})

    def reclaim_if_due(self) -> None:
        """`reclaim` when `make_room` found enough garbage in the blob files (call it out of
        the state's lock)."""
        if self._reclaim_due:
            self._reclaim_due = False
            self.reclaim()

    def _blob_file_bytes(self) -> int:
        try:
            return int(self.state.chunks.property_int_value("rocksdb.total-blob-file-size") or 0)
        except Exception:  # property unsupported: assume no garbage
            return 0

    def _maybe_reclaim(self) -> None:
        if time.monotonic() - self._last_reclaim > _RECLAIM_EVERY:
            self.reclaim()

    def _evict(
        self,
        txn: Txn,
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
        state = self.state
        horizon = state.horizon()
        heap: list[tuple[int, int, bytes]] = []
        iters = []
        for area in areas if areas is not None else self._lru_areas():
            opts = ReadOptions()
            opts.set_iterate_upper_bound(lru_area_end(area))
            it = state.lru.iter(opts)
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
        stats = state.stats
        for chunk, info, _ in victims:
            state.unstore(txn, chunk, info)
            stats.evicted_chunks += 1
            stats.evicted_bytes += info.length

    def _lru_areas(self) -> list[str]:
        areas = []
        it = self.state.lru.iter()
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
