"""Cache limits and usage figures of the blob store: how big the cache may grow (bytes or
percent of the disk that holds the store), how much free disk to leave, per server and
optionally per area; and the usage report (`BlobStore.usage`). Only data and arithmetic;
`nfsd.store.blobs` enforces the limits when chunks are added.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class DiskSpace:
    total: int
    free: int  # available to this (unprivileged) user


def disk_space(path: str | os.PathLike[str]) -> DiskSpace:
    st = os.statvfs(path)
    return DiskSpace(st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize)


def _cap(max_bytes: int | None, max_percent: float | None, total: int) -> int | None:
    caps = []
    if max_bytes is not None:
        caps.append(max_bytes)
    if max_percent is not None:
        caps.append(int(total * max_percent / 100))
    return min(caps) if caps else None


@dataclass(frozen=True, slots=True)
class AreaLimit:
    """A cap on the cached bytes charged to one area (None: no cap of that kind)."""

    max_bytes: int | None = None
    max_percent: float | None = None

    def cap(self, disk_total: int) -> int | None:
        return _cap(self.max_bytes, self.max_percent, disk_total)


@dataclass(frozen=True, slots=True)
class CacheLimits:
    """The cache's limits. Every cap that is set applies (the smallest wins).

    - `max_bytes` / `max_percent`: cached chunk bytes at most this (percent of the disk size).
    - `min_free_bytes` / `min_free_percent`: leave at least this much of the disk free.
    - `areas`: per-area caps on the bytes charged to an area.
    - `disk`: where free and total space come from (default: statvfs of the store directory,
      counting the blob files of evicted chunks that RocksDB has yet to delete as free);
      tests pass a function to simulate a small disk.

    Counted bytes are chunk bytes (each distinct chunk once); RocksDB's own overhead is small
    and not counted, while the free-space rule looks at the real disk.
    """

    max_bytes: int | None = None
    max_percent: float | None = None
    min_free_bytes: int = 0
    min_free_percent: float | None = None
    areas: Mapping[str, AreaLimit] = field(default_factory=dict)
    disk: Callable[[], DiskSpace] | None = None

    def cap(self, disk_total: int) -> int | None:
        return _cap(self.max_bytes, self.max_percent, disk_total)

    def area_cap(self, area: str, disk_total: int) -> int | None:
        limit = self.areas.get(area)
        return limit.cap(disk_total) if limit is not None else None

    def reserve(self, disk_total: int) -> int:
        """Free bytes to leave on the disk."""
        percent = self.min_free_percent or 0.0
        return max(self.min_free_bytes, int(disk_total * percent / 100))

    @property
    def watches_disk(self) -> bool:
        return self.min_free_bytes > 0 or bool(self.min_free_percent)


@dataclass(frozen=True, slots=True)
class AreaUsage:
    cached: int  # bytes of present chunks charged to the area
    pinned: int  # of those, bytes that may not be evicted
    chunks: int
    limit: int | None  # the area's cap, if any


@dataclass(frozen=True, slots=True)
class CacheUsage:
    cached: int  # bytes of present chunks (each distinct chunk counted once)
    pinned: int  # of those, bytes of chunks held by pinned blobs
    chunks: int
    limit: int | None  # effective cap from max_bytes / max_percent
    disk_total: int
    disk_free: int
    reserve: int  # free disk to leave
    areas: dict[str, AreaUsage]

    @property
    def evictable(self) -> int:
        return self.cached - self.pinned
