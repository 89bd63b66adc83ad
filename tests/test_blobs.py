"""The blob store (nfsd.store.blobs) on a real RocksDB: ingest and read back, dedupe, partial
blobs, verification of every chunk, eviction and limits, pins, gc, fsck, reopening, SIGKILL
during writes, and bounded memory during a large ingest.

REALIZE_SLOW_TESTS=1 runs many more SIGKILL rounds.
"""

from __future__ import annotations

import errno
import io
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from blake3 import blake3

from nfsd.store.blobs import (
    DEFAULT_CHUNK_SIZE,
    BadChunk,
    BlobStore,
    CacheFull,
    ChunkHashMismatch,
    ManifestMismatch,
    MissingChunks,
    UnknownBlob,
)
from nfsd.store.db import Store
from nfsd.store.limits import AreaLimit, CacheLimits, DiskSpace
from nfsd.store.manifest import (
    EMPTY_BLOB,
    UNFLUSHED_PREFIX,
    USAGE_PREFIX,
    ChunkInfo,
    lru_key,
    unpack_usage,
    usage_key,
)

REPO = Path(__file__).resolve().parent.parent
CS = 16 * 1024  # small chunks keep the tests fast; one test uses the default size
SLOW = os.environ.get("REALIZE_SLOW_TESTS") == "1"


def content(seed: int | str, size: int) -> bytes:
    """Deterministic pseudo-random bytes (no repeated chunks unless asked)."""
    return blake3(str(seed).encode()).digest(length=size) if size else b""


def chunk_hashes(data: bytes, cs: int = CS) -> list[bytes]:
    return [blake3(data[i : i + cs]).digest() for i in range(0, len(data), cs)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "db")
    yield s
    s.close()


def blobs_of(store: Store, limits: CacheLimits | None = None, **kw) -> BlobStore:
    kw.setdefault("chunk_size", CS)
    return BlobStore(store, limits, **kw)


def cached_bytes(store: Store) -> int:
    """The cached bytes the store's usage counters record (committed changes only)."""
    meta = store.family("meta")
    return sum(
        unpack_usage(value)[0]
        for key, value in meta.items(from_key=USAGE_PREFIX)
        if key.startswith(USAGE_PREFIX)
    )


def read_all(blobs: BlobStore, blob_id: bytes) -> bytes:
    m = blobs.manifest(blob_id)
    assert m is not None
    return blobs.read(blob_id, 0, m.size)


# -- ingest and read back -----------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, CS - 1, CS, CS + 1, 3 * CS, 5 * CS + 123])
def test_ingest_reads_back_by_checksum(store: Store, size: int) -> None:
    blobs = blobs_of(store)
    data = content(size, size)
    blob_id = blobs.ingest(io.BytesIO(data))
    assert blob_id == blake3(data).digest()
    m = blobs.manifest(blob_id)
    assert m is not None and m.size == size and m.nchunks == -(-size // CS) and m.verified
    assert list(blobs.chunk_hashes(blob_id)) == chunk_hashes(data)
    assert read_all(blobs, blob_id) == data
    assert blobs.has_all(blob_id) and blobs.missing(blob_id) == []
    assert blobs.read(blob_id, size, 10) == b""
    assert blobs.read(blob_id, size + 100, 10) == b""
    assert blobs.usage().cached == size
    if size == 0:
        assert blob_id == EMPTY_BLOB
    assert blobs.fsck().ok


def test_read_any_range(store: Store) -> None:
    blobs = blobs_of(store)
    data = content("ranges", 7 * CS + 999)
    blob_id = blobs.ingest([data[:5], data[5 : 3 * CS + 7], data[3 * CS + 7 :]])
    rng = random.Random(1)
    for _ in range(200):
        offset = rng.randrange(len(data) + 10)
        count = rng.randrange(3 * CS)
        assert blobs.read(blob_id, offset, count) == data[offset : offset + count]
    assert blobs.read(blob_id, 0, 0) == b""
    assert b"".join(blobs.iter_read(blob_id, 100, 4 * CS)) == data[100 : 100 + 4 * CS]
    assert blobs.read_chunk(blob_id, 7) == data[7 * CS :]


def test_ingest_default_chunk_size_from_file_with_short_reads(store: Store) -> None:
    class Trickle(io.RawIOBase):  # a pipe-like source: short reads of odd sizes
        def __init__(self, data: bytes) -> None:
            self.data = memoryview(data)
            self.pos = 0

        def read(self, n: int = -1) -> bytes:
            n = min(n, 100_003)
            out = bytes(self.data[self.pos : self.pos + n])
            self.pos += len(out)
            return out

    blobs = BlobStore(store)
    data = content("default", 3 * DEFAULT_CHUNK_SIZE + 4321)
    blob_id = blobs.ingest(Trickle(data))
    assert blob_id == blake3(data).digest()
    assert blobs.manifest(blob_id).chunk_size == DEFAULT_CHUNK_SIZE
    assert blobs.manifest(blob_id).nchunks == 4
    assert read_all(blobs, blob_id) == data


# -- dedupe -------------------------------------------------------------------------------


def test_same_content_is_stored_once(store: Store) -> None:
    blobs = blobs_of(store)
    data = content("twice", 4 * CS + 5)
    first = blobs.ingest([data])
    used = blobs.usage()
    second = blobs.ingest(io.BytesIO(data))
    assert first == second
    assert blobs.usage().cached == used.cached == len(data)
    assert blobs.usage().chunks == used.chunks == 5
    assert blobs.stats.deduped_chunks == 5
    assert list(blobs.blob_ids()) == [first]


def test_identical_chunks_are_shared_between_and_within_blobs(store: Store) -> None:
    blobs = blobs_of(store)
    x, y, z = content("x", CS), content("y", CS), content("z", CS)
    a = blobs.ingest([x + y])
    b = blobs.ingest([x + z + x + x])  # x three times in one blob
    assert blobs.usage().chunks == 3
    assert blobs.usage().cached == 3 * CS
    info = ChunkInfo.unpack(store.family("chunkinfo")[blake3(x).digest()])
    assert info.refs == 4
    assert blobs.release(a)
    assert read_all(blobs, b) == x + z + x + x  # the shared chunk stayed for b
    assert blobs.usage().chunks == 2
    assert blobs.release(b)
    assert blobs.usage().cached == 0 and blobs.usage().chunks == 0
    assert not list(store.family("chunks").keys())
    assert blobs.fsck().ok


# -- partial blobs ------------------------------------------------------------------------


def test_partial_blob_serves_what_is_present_and_names_what_is_missing(store: Store) -> None:
    blobs = blobs_of(store)
    data = content("unreal", 4 * CS + 100)
    blob_id = blake3(data).digest()
    m = blobs.begin_blob(blob_id, len(data), chunk_hashes(data), chunk_size=CS)
    assert m.nchunks == 5 and not m.verified
    assert blobs.missing(blob_id) == [0, 1, 2, 3, 4]
    assert blobs.put_chunk(blob_id, 1, data[CS : 2 * CS])
    assert blobs.put_chunk(blob_id, 3, data[3 * CS : 4 * CS])
    assert not blobs.put_chunk(blob_id, 3, data[3 * CS : 4 * CS])  # already there
    assert blobs.read(blob_id, CS + 10, 100) == data[CS + 10 : CS + 110]
    assert blobs.missing(blob_id, CS, 3 * CS) == [2]
    with pytest.raises(MissingChunks) as e:
        blobs.read(blob_id, CS, 3 * CS)
    assert e.value.indexes == [2]
    assert e.value.ranges == [(2 * CS, CS)]
    with pytest.raises(MissingChunks) as e:
        blobs.read(blob_id, 0, len(data))
    assert e.value.indexes == [0, 2, 4]
    assert e.value.ranges == [(0, CS), (2 * CS, CS), (4 * CS, 100)]
    assert not blobs.has_all(blob_id)
    for index in (0, 2, 4):
        blobs.put_chunk(blob_id, index, data[index * CS : (index + 1) * CS])
    assert blobs.has_all(blob_id)
    assert blobs.manifest(blob_id).verified  # whole content checked once complete
    assert read_all(blobs, blob_id) == data
    assert blobs.fsck().ok


def test_begin_blob_uses_chunks_already_here(store: Store) -> None:
    blobs = blobs_of(store)
    x, y = content("x", CS), content("y", CS)
    blobs.ingest([x])
    data = x + y + x
    blob_id = blake3(data).digest()
    blobs.begin_blob(blob_id, len(data), chunk_hashes(data), chunk_size=CS)
    assert blobs.missing(blob_id) == [1]
    blobs.put_chunk(blob_id, 1, y)
    assert read_all(blobs, blob_id) == data
    assert blobs.manifest(blob_id).verified


def test_bad_chunks_are_refused_and_nothing_is_stored(store: Store) -> None:
    blobs = blobs_of(store)
    data = content("refuse", 2 * CS)
    blob_id = blake3(data).digest()
    blobs.begin_blob(blob_id, len(data), chunk_hashes(data), chunk_size=CS)
    wrong = bytearray(data[:CS])
    wrong[5] ^= 1
    with pytest.raises(ChunkHashMismatch) as e:
        blobs.put_chunk(blob_id, 0, bytes(wrong))
    assert e.value.index == 0 and e.value.expected == chunk_hashes(data)[0]
    with pytest.raises(BadChunk):
        blobs.put_chunk(blob_id, 0, data[: CS - 1])
    with pytest.raises(BadChunk):
        blobs.put_chunk(blob_id, 2, data[:CS])
    with pytest.raises(UnknownBlob):
        blobs.put_chunk(b"\1" * 32, 0, data[:CS])
    assert blobs.usage().cached == 0
    assert not list(store.family("chunks").keys())
    assert blobs.missing(blob_id) == [0, 1]


def test_manifests_that_cannot_describe_the_id_are_refused(store: Store) -> None:
    blobs = blobs_of(store)
    data = content("m", 2 * CS)
    blob_id = blake3(data).digest()
    with pytest.raises(ManifestMismatch):
        blobs.begin_blob(blob_id, len(data), chunk_hashes(data)[:1], chunk_size=CS)
    small = content("small", 100)
    with pytest.raises(ManifestMismatch):  # one chunk: its hash is the id
        blobs.begin_blob(blake3(b"other").digest(), 100, chunk_hashes(small), chunk_size=CS)
    with pytest.raises(ManifestMismatch):
        blobs.begin_blob(b"\2" * 32, 0, [], chunk_size=CS)
    blobs.begin_blob(blob_id, len(data), chunk_hashes(data), chunk_size=CS)
    with pytest.raises(ManifestMismatch):
        blobs.begin_blob(blob_id, len(data) + 1, chunk_hashes(data), chunk_size=CS)


def test_chunks_that_do_not_make_the_id_mark_the_blob_bad(store: Store) -> None:
    blobs = blobs_of(store)
    data = content("truth", 2 * CS)
    lie = content("lie", 2 * CS)
    blob_id = blake3(data).digest()
    blobs.begin_blob(blob_id, len(lie), chunk_hashes(lie), chunk_size=CS)
    blobs.put_chunk(blob_id, 0, lie[:CS])
    with pytest.raises(ManifestMismatch):
        blobs.put_chunk(blob_id, 1, lie[CS:])
    assert blobs.manifest(blob_id).bad
    with pytest.raises(ManifestMismatch):
        blobs.read(blob_id, 0, 10)
    assert blobs.ingest([data]) == blob_id  # the real content replaces the bad manifest
    assert read_all(blobs, blob_id) == data
    assert blobs.fsck().ok


# -- verification of stored chunks --------------------------------------------------------


def test_corrupt_chunk_is_never_served_and_is_refetched(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    blobs = blobs_of(store)
    data = content("rot", 3 * CS)
    blob_id = blobs.ingest([data])
    store.close()

    store = Store(tmp_path / "db")  # nothing in memory: reads come from RocksDB
    blobs = blobs_of(store)
    victim = chunk_hashes(data)[1]
    rotten = bytearray(data[CS : 2 * CS])
    rotten[100] ^= 0x40
    store.family("chunks")[victim] = bytes(rotten)  # behind the API
    assert blobs.read(blob_id, 0, 100) == data[:100]  # other chunks still served
    with pytest.raises(MissingChunks) as e:
        blobs.read(blob_id, 0, len(data))
    assert e.value.indexes == [1]
    assert blobs.stats.corrupt_chunks == 1
    assert blobs.missing(blob_id) == [1]  # dropped: to be fetched again
    assert blobs.fsck().ok  # the read path already repaired it
    assert blobs.put_chunk(blob_id, 1, data[CS : 2 * CS])
    assert read_all(blobs, blob_id) == data
    store.close()


def test_fsck_finds_and_repairs_a_corrupt_chunk(store: Store) -> None:
    blobs = blobs_of(store)
    data = content("fsck", 4 * CS)
    blob_id = blobs.ingest([data])
    store.family("chunks")[chunk_hashes(data)[2]] = b"\0" * CS
    report = blobs.fsck()
    assert not report.ok and report.problems == {"corrupt-chunk": 1}
    assert report.repaired == 0
    assert blobs.missing(blob_id) == []  # not repaired without repair=True
    report = blobs.fsck(repair=True)
    assert report.problems == {"corrupt-chunk": 1} and report.repaired
    assert blobs.missing(blob_id) == [2]
    assert blobs.usage().cached == 3 * CS
    assert blobs.fsck().ok
    blobs.put_chunk(blob_id, 2, data[2 * CS : 3 * CS])
    assert read_all(blobs, blob_id) == data


def test_fsck_repairs_index_damage(store: Store) -> None:
    blobs = blobs_of(store)
    a_data, b_data = content("a", 3 * CS), content("b", 2 * CS)
    a = blobs.ingest([a_data])
    b = blobs.ingest([b_data])
    info = ChunkInfo.unpack(store.family("chunkinfo")[chunk_hashes(a_data)[0]])
    del store.family("lru")[lru_key(info.owner, info.stamp, chunk_hashes(a_data)[0])]
    store.family("lru")[lru_key("", 1, b"\7" * 32)] = b""  # stale
    store.family("meta")[usage_key("")] = b"\0" * 24  # wrong counters
    store.family("chunks")[bytes([9]) * 32] = b"orphan bytes" * 1000
    store.family("blobs")[bytes([8]) * 32 + bytes(4)] = b"\1" * 32  # slot without header
    del store.family("chunkinfo")[chunk_hashes(b_data)[1]]  # b names a chunk with no record
    report = blobs.fsck()
    assert set(report.problems) == {
        "lru",
        "usage",
        "orphan-slot",
        "missing-chunk-record",
    }, report.details
    assert report.garbage == {"unrecorded-chunk-bytes": 1}
    report = blobs.fsck(repair=True)
    assert report.repaired
    report = blobs.fsck()
    assert report.ok and not report.garbage, report.details
    assert read_all(blobs, a) == a_data
    assert read_all(blobs, b) == b_data  # the chunk's bytes were adopted again
    assert blobs.usage().cached == 5 * CS


# -- eviction and limits ------------------------------------------------------------------


def test_eviction_is_least_recently_used_first(store: Store) -> None:
    blobs = blobs_of(store, CacheLimits(max_bytes=4 * CS), touch_window=0)
    ids = {name: blobs.ingest([content(name, CS)]) for name in "abcd"}
    assert blobs.usage().cached == 4 * CS
    blobs.read(ids["a"], 0, 1)  # a is now the most recent; b the oldest
    ids["e"] = blobs.ingest([content("e", CS)])
    assert blobs.missing(ids["b"]) == [0]
    assert all(blobs.has_all(ids[n]) for n in "acde")
    blobs.read(ids["c"], 0, 1)
    ids["f"] = blobs.ingest([content("f", 2 * CS)])  # two more: d and a go
    assert [n for n in "abcdef" if blobs.has_all(ids[n])] == ["c", "e", "f"]
    assert blobs.usage().cached == 4 * CS
    assert blobs.stats.evicted_chunks == 3
    assert blobs.fsck().ok


def test_eviction_keeps_pinned_blobs(store: Store) -> None:
    blobs = blobs_of(store, CacheLimits(max_bytes=4 * CS))
    keep = blobs.ingest([content("keep", 2 * CS)], pin="keep")
    for i in range(10):
        blobs.ingest([content(i, CS)])
    assert blobs.has_all(keep)
    assert blobs.usage().pinned == 2 * CS
    assert blobs.usage().cached == 4 * CS
    assert blobs.unpin(keep, "keep")
    for i in range(10, 13):
        blobs.ingest([content(i, CS)])
    assert not blobs.has_all(keep)  # evictable again, and the oldest
    assert blobs.fsck().ok


def test_cache_full_when_everything_is_pinned(store: Store) -> None:
    blobs = blobs_of(store, CacheLimits(max_bytes=3 * CS))
    a = blobs.ingest([content("a", 2 * CS)], pin="keep")
    blobs.pin(a, "real")
    before = blobs.usage()
    with pytest.raises(CacheFull) as e:
        blobs.ingest([content("b", 2 * CS)])
    assert e.value.errno == errno.ENOSPC and isinstance(e.value, OSError)
    assert "cache full" in str(e.value)
    assert blobs.usage().cached <= 3 * CS
    # A registered blob pinned for keeping cannot be fetched past the limit either.
    data = content("unreal", 3 * CS)
    blob_id = blake3(data).digest()
    blobs.begin_blob(blob_id, len(data), chunk_hashes(data), chunk_size=CS, pin="keep")
    assert blobs.put_chunk(blob_id, 0, data[:CS])  # the third and last chunk that fits
    with pytest.raises(CacheFull):
        blobs.put_chunk(blob_id, 1, data[CS : 2 * CS])
    assert blobs.missing(blob_id) == [1, 2]
    assert blobs.usage().cached == blobs.usage().pinned == 3 * CS
    assert blobs.has_all(a)
    assert before.pinned == 2 * CS
    assert blobs.fsck().ok


def test_per_area_cap_evicts_only_that_area(store: Store) -> None:
    limits = CacheLimits(max_bytes=100 * CS, areas={"photos": AreaLimit(max_bytes=2 * CS)})
    blobs = blobs_of(store, limits)
    docs = [blobs.ingest([content(f"doc{i}", CS)], area="docs") for i in range(3)]
    photos = [blobs.ingest([content(f"photo{i}", CS)], area="photos") for i in range(4)]
    usage = blobs.usage()
    assert usage.areas["photos"].cached == 2 * CS and usage.areas["photos"].limit == 2 * CS
    assert usage.areas["docs"].cached == 3 * CS
    assert all(blobs.has_all(d) for d in docs)
    assert [blobs.has_all(p) for p in photos] == [False, False, True, True]
    blobs.pin(photos[2], "keep")
    blobs.pin(photos[3], "keep")
    with pytest.raises(CacheFull):
        blobs.ingest([content("photo-more", CS)], area="photos")
    assert blobs.fsck().ok


def test_percent_cap_and_free_space_reserve(store: Store) -> None:
    total = 64 * CS

    def disk() -> DiskSpace:  # a small disk whose only other tenant takes 40 chunks
        return DiskSpace(total, total - 40 * CS - cached_bytes(store))

    blobs = blobs_of(store, CacheLimits(max_percent=50, min_free_bytes=16 * CS, disk=disk))
    ids = [blobs.ingest([content(i, CS)]) for i in range(12)]
    # 64 - 40 - 16 = 8 chunks fit beside the reserve (the 50% cap, 32 chunks, is looser)
    assert blobs.usage().cached == 8 * CS
    assert [blobs.has_all(i) for i in ids] == [False] * 4 + [True] * 8
    blobs.set_limits(CacheLimits(max_percent=5, disk=disk))  # 3.2 chunks
    assert blobs.usage().cached == 3 * CS
    assert blobs.usage().limit == int(total * 5 / 100)


def test_free_space_reserve_on_the_real_disk(store: Store) -> None:
    blobs = blobs_of(store, CacheLimits(min_free_bytes=1 << 20))
    a = blobs.ingest([content("fits", 2 * CS)])
    assert blobs.set_limits(CacheLimits(min_free_percent=100)) == 2 * CS  # all evictable
    assert not blobs.has_all(a)
    with pytest.raises(CacheFull, match="free space"):
        blobs.ingest([content("does not fit", CS)])
    usage = blobs.usage()
    assert usage.reserve == usage.disk_total and usage.cached == 0


def test_trim_applies_lowered_limits(store: Store) -> None:
    blobs = blobs_of(store)
    for i in range(6):
        blobs.ingest([content(i, CS)])
    freed = blobs.set_limits(CacheLimits(max_bytes=2 * CS))
    assert freed == 4 * CS
    assert blobs.usage().cached == 2 * CS


# -- lifetime -----------------------------------------------------------------------------


def test_gc_drops_unreferenced_blobs(store: Store) -> None:
    blobs = blobs_of(store)
    a_data = content("a", 2 * CS)
    a = blobs.ingest([a_data])
    b = blobs.ingest([content("b", 3 * CS)], pin="keep")  # pins do not keep dead blobs
    c = blobs.ingest([a_data[:CS] + content("c", CS)])
    report = blobs.gc({a})
    assert report.blobs == 2 and report.bytes == 4 * CS
    assert list(blobs.blob_ids()) == [a]
    assert b not in blobs and c not in blobs
    assert read_all(blobs, a) == a_data
    assert blobs.usage().cached == 2 * CS
    assert blobs.gc(lambda blob_id: False).blobs == 1
    assert blobs.usage().cached == 0
    assert not blobs.release(a)
    assert blobs.fsck().ok


def test_interrupted_ingest_leaves_garbage_that_gc_sweeps(store: Store) -> None:
    blobs = blobs_of(store)

    def failing() -> Iterator[bytes]:
        yield content("partial", 80 * CS)  # chunks go to RocksDB 1 MiB (64 chunks) at a time
        raise OSError("source went away")

    with pytest.raises(OSError, match="went away"):
        blobs.ingest(failing())
    assert blobs.usage().chunks == 64 and not list(blobs.blob_ids())
    report = blobs.fsck()
    assert report.ok and report.garbage == {"unreferenced-chunk": 64}
    assert blobs.gc(set()).chunks == 64
    assert blobs.usage().cached == 0
    assert not list(store.family("chunks").keys())
    assert blobs.fsck().garbage == {}


def test_large_ingest_skips_the_wal_safely(store: Store) -> None:
    """Past its first MiB an ingest writes chunk bytes without the WAL and records them after
    a flush; meanwhile fsck and releases must leave those bytes alone."""
    blobs = blobs_of(store)
    shared = content("shared", CS)
    other_data = content("other", CS) + shared
    other = blake3(other_data).digest()
    blobs.begin_blob(other, len(other_data), chunk_hashes(other_data), chunk_size=CS)
    data = content("big", 100 * CS) + shared + content("tail", 60 * CS)
    seen: list[object] = []

    def stream() -> Iterator[bytes]:
        # Chunks 0-63 (the first MiB) go through the WAL, 64-127 are written unlogged.
        yield data[: 140 * CS]
        shared_hash = blake3(shared).digest()  # chunk 100: written, not recorded yet
        assert store.family("chunks").get(shared_hash) is not None
        assert not ChunkInfo.unpack(store.family("chunkinfo")[shared_hash]).present
        seen.append(blobs.fsck(repair=True))  # must not touch the pending bytes
        blobs.release(other)  # drops the last record naming `shared`; its bytes must stay
        yield data[140 * CS :]

    blob_id = blobs.ingest(stream())
    report = seen[0]
    assert isinstance(report, type(blobs.fsck())) and report.ok and not report.garbage
    assert read_all(blobs, blob_id) == data
    assert blobs.usage().cached == len(data)
    assert blobs.fsck().ok and not blobs.fsck().garbage
    # Once recorded, the bytes are no longer held back from deletion.
    assert blobs.release(blob_id)
    assert blobs.usage().cached == 0 and not list(store.family("chunks").keys())


def test_reopening_keeps_everything(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    blobs = blobs_of(store, CacheLimits(max_bytes=50 * CS))
    full = content("full", 3 * CS + 7)
    a = blobs.ingest([full], area="docs", pin="keep")
    part = content("part", 3 * CS)
    b = blake3(part).digest()
    blobs.begin_blob(b, len(part), chunk_hashes(part), chunk_size=CS, area="media")
    blobs.put_chunk(b, 2, part[2 * CS :])
    usage = blobs.usage()
    born = blobs.manifest(b).born
    store.close()

    store = Store(tmp_path / "db")
    blobs = blobs_of(store, CacheLimits(max_bytes=50 * CS))
    assert read_all(blobs, a) == full
    assert blobs.manifest(a).pins == ("keep",) and blobs.manifest(a).area == "docs"
    assert blobs.missing(b) == [0, 1]
    assert blobs.read(b, 2 * CS, CS) == part[2 * CS :]
    after = blobs.usage()
    assert (after.cached, after.pinned, after.chunks, after.areas) == (
        usage.cached,
        usage.pinned,
        usage.chunks,
        usage.areas,
    )
    assert blobs.fsck().ok  # the clock is not behind any stamp in use
    blobs.put_chunk(b, 0, part[:CS])
    blobs.put_chunk(b, 1, part[CS : 2 * CS])
    assert read_all(blobs, b) == part
    assert blobs.manifest(blobs.ingest([content("after", CS)])).born > born  # clock kept
    store.close()


def test_concurrent_use_keeps_the_store_consistent(store: Store) -> None:
    import threading

    blobs = blobs_of(
        store, CacheLimits(max_bytes=200 * CS), touch_window=0, checkpoint_bytes=1 << 20
    )
    errors: list[BaseException] = []
    done: list[bytes] = []

    def worker(n: int) -> None:
        rng = random.Random(n)
        try:
            for i in range(15):
                data = content(f"{n}-{i % 5}", rng.choice([CS, 3 * CS + 5, 70 * CS]))
                try:
                    blob_id = blobs.ingest([data], pin="keep" if rng.random() < 0.2 else None)
                except CacheFull:
                    continue
                try:
                    got = blobs.read(blob_id, 0, len(data))
                    assert got == data
                except (MissingChunks, UnknownBlob):
                    pass  # evicted or released by another worker meanwhile
                if rng.random() < 0.3:
                    blobs.release(blob_id)
                elif rng.random() < 0.3:
                    blobs.unpin(blob_id, "keep")
                done.append(blob_id)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert done
    report = blobs.fsck()
    assert report.ok, list(report.lines())
    assert blobs.usage().cached <= 200 * CS
    # No ingest is left running or holding chunks back: everything can be collected.
    blobs.gc(set())
    assert blobs.usage().cached == 0 and not list(store.family("chunks").keys())


# -- crashes ------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import random, sys
    from blake3 import blake3
    from nfsd.store.db import Store
    from nfsd.store.blobs import BlobStore, CacheFull
    from nfsd.store.limits import CacheLimits

    CS = 16 * 1024
    path, seed = sys.argv[1], int(sys.argv[2])
    rng = random.Random(seed)
    blobs = BlobStore(  # unlogged bytes recorded every MiB, not 64
        Store(path), CacheLimits(max_bytes=640 * CS), chunk_size=CS, checkpoint_bytes=1 << 20
    )
    out = sys.stdout

    def say(*words):
        out.write(" ".join(str(w) for w in words) + "\\n")
        out.flush()

    def content(key, size):
        return blake3(key.encode()).digest(length=size) if size else b""

    say("ready")
    n = 0
    while True:
        n += 1
        key = f"{seed}-{n}" if rng.random() < 0.8 else f"shared-{rng.randrange(20)}"
        size = rng.choice([0, 100, CS, CS + 1, rng.randrange(6 * CS), rng.randrange(250 * CS)])
        data = content(key, size)
        pin = "keep" if rng.random() < 0.5 else None
        try:
            if rng.random() < 0.7:
                blob_id = blobs.ingest([data], pin=pin)
                say("I", blob_id.hex(), key, size, pin or "-")
            else:
                blob_id = blake3(data).digest()
                hashes = [blake3(data[i : i + CS]).digest() for i in range(0, size, CS)]
                blobs.begin_blob(blob_id, size, hashes, chunk_size=CS, pin=pin)
                say("B", blob_id.hex(), key, size, pin or "-")
                order = list(range(len(hashes)))
                rng.shuffle(order)
                for index in order[: rng.randrange(len(order) + 1)]:
                    blobs.put_chunk(blob_id, index, data[index * CS : (index + 1) * CS])
                    say("P", blob_id.hex(), index)
        except CacheFull:
            victims = list(blobs.blob_ids())
            rng.shuffle(victims)
            for victim in victims[:5]:
                say("r", victim.hex())
                blobs.release(victim)
    """
)


def _kill_round(path: Path, seed: int, rng: random.Random) -> list[list[str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with open(path.parent / "child.err", "w+b") as err:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path), str(seed)],
            stdout=subprocess.PIPE,
            stderr=err,
            env=env,
        )
        assert child.stdout is not None
        first = child.stdout.readline()
        if first != b"ready\n":
            child.kill()
            child.wait()
            err.seek(0)
            raise AssertionError(err.read().decode())
        time.sleep(rng.uniform(0.02, 0.5))
        child.send_signal(signal.SIGKILL)
        out = child.stdout.read()  # the same buffered reader: nothing read ahead is lost
        child.stdout.close()
        child.wait()
        err.seek(0)
        assert child.returncode == -signal.SIGKILL, err.read().decode()
    lines = out.decode(errors="replace").split("\n")
    return [line.split() for line in lines[:-1]]  # the last one may be cut short


def _check_after_crash(path: Path, events: list[list[str]], known: dict) -> None:
    for event in events:
        kind, blob = event[0], event[1]
        if kind == "I":
            known[blob] = ("ingest", event[2], int(event[3]), event[4] == "keep")
        elif kind == "B":
            known.setdefault(blob, ("begin", event[2], int(event[3]), event[4] == "keep"))
            known.setdefault(("puts", blob), set())
        elif kind == "P":
            known.setdefault(("puts", blob), set()).add(int(event[2]))
        elif kind == "r":  # about to be released: no longer promised
            known.pop(blob, None)
            known.pop(("puts", blob), None)
    store = Store(path)
    try:
        blobs = BlobStore(store, chunk_size=CS)
        report = blobs.fsck()
        assert report.ok, list(report.lines())
        for blob, fact in list(known.items()):
            if not isinstance(blob, str):
                continue
            kind, key, size, pinned = fact
            blob_id = bytes.fromhex(blob)
            data = content(key, size)
            m = blobs.manifest(blob_id)
            assert m is not None, f"acknowledged blob {blob} lost"
            assert m.size == size
            if kind == "ingest" and pinned:
                assert blake3(blobs.read(blob_id, 0, size)).digest() == blob_id
            elif kind == "ingest" or not (pinned and m.pinned):
                # Evictable (a fill of an unpinned blob may also be lost in the crash, its
                # record dropped when the store opens): what is present must be right.
                present = set(range(m.nchunks)) - set(blobs.missing(blob_id))
                for index in present:
                    assert blobs.read_chunk(blob_id, index) == data[index * CS : (index + 1) * CS]
            else:
                for index in known.get(("puts", blob), ()):
                    assert blobs.read_chunk(blob_id, index) == data[index * CS : (index + 1) * CS]
        blobs.fsck(repair=True)  # sweep what the interrupted writes left
    finally:
        store.close()


def test_sigkill_during_writes_loses_nothing_acknowledged(tmp_path: Path) -> None:
    rounds = 200 if SLOW else 20
    rng = random.Random(os.getpid())
    path = tmp_path / "db"
    known: dict = {}
    acknowledged = 0
    started = time.monotonic()
    for round_ in range(rounds):
        events = _kill_round(path, round_ * 1000 + rng.randrange(1000), rng)
        acknowledged += sum(1 for e in events if e[0] in "IP")
        _check_after_crash(path, events, known)
        if not SLOW and time.monotonic() - started > 20:
            break
    assert acknowledged > 20  # the children did real work before being killed


FILL_CHILD = textwrap.dedent(
    """
    import sys
    from blake3 import blake3
    from nfsd.store.blobs import BlobStore
    from nfsd.store.db import Store

    path, flush, pin = sys.argv[1], sys.argv[2] == "flush", sys.argv[3]
    cs = 16 * 1024
    blobs = BlobStore(Store(path), chunk_size=cs)
    data = blake3(b"fill").digest(length=6 * cs)
    hashes = [blake3(data[i : i + cs]).digest() for i in range(0, len(data), cs)]
    blob_id = blake3(data).digest()
    blobs.begin_blob(blob_id, len(data), hashes, chunk_size=cs, pin=None if pin == "-" else pin)
    for index in range(4):
        blobs.put_chunk(blob_id, index, data[index * cs : (index + 1) * cs])
    if flush:
        blobs._fills.flush()
    shared = "-"
    if len(sys.argv) > 4:  # then what needs those chunks durable: an ingest, or a pin
        if sys.argv[4] == "ingest":
            shared = blobs.ingest(data[: 4 * cs], pin="keep", chunk_size=cs).hex()
        else:
            blobs.pin(blob_id, "keep")
    print(blob_id.hex(), shared, flush=True)
    sys.stdin.read()
    """
)


@pytest.mark.parametrize("then", ["ingest", "pin"])
def test_chunks_a_fill_left_unflushed_are_made_durable_when_an_ingest_or_a_pin_needs_them(
    tmp_path: Path, then: str
) -> None:
    """An unpinned fill writes its chunks without the WAL. An ingest of the same content
    (which finds the chunks stored) or a pin of the blob is promised durable: SIGKILL before
    any flush must leave those chunks readable (found by the SIGKILL rounds)."""
    path = tmp_path / "db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", FILL_CHILD, str(path), "no", "-", then],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    child.send_signal(signal.SIGKILL)
    child.wait()
    filled, shared = line.decode().split()
    data = content_of_fill()
    store = Store(path)
    try:
        blobs = blobs_of(store)
        kept = bytes.fromhex(shared if then == "ingest" else filled)
        for index in range(4):
            assert blobs.read_chunk(kept, index) == data[index * CS : (index + 1) * CS], index
        assert blobs.fsck().ok
    finally:
        store.close()


@pytest.mark.parametrize(
    ("flushed", "pin"),
    [(False, "-"), (True, "-"), (False, "keep")],
    ids=["lost", "flushed", "kept"],
)
def test_a_crash_before_a_fill_is_flushed_drops_its_records(
    tmp_path: Path, flushed: bool, pin: str
) -> None:
    """Fills of an unpinned blob skip the WAL: SIGKILL before a flush loses their bytes, and
    opening the store again drops their records (never a record naming lost bytes); after a
    flush, or for a pinned blob (through the WAL), they survive."""
    path = tmp_path / "db"
    args = [str(path), "flush" if flushed else "no", pin]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [sys.executable, "-c", FILL_CHILD, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=env,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert line, "the child did not fill the blob"
    blob_id = bytes.fromhex(line.decode().split()[0])
    store = Store(path)
    try:
        blobs = blobs_of(store)
        survived = flushed or pin == "keep"
        assert blobs.missing(blob_id) == ([4, 5] if survived else list(range(6)))
        assert blobs.usage().cached == (4 * CS if survived else 0)
        assert cached_bytes(store) == blobs.usage().cached
        data = content_of_fill()
        for index in range(4 if survived else 0):
            assert blobs.read_chunk(blob_id, index) == data[index * CS : (index + 1) * CS]
        report = blobs.fsck()
        assert report.ok, list(report.lines())
        meta = store.family("meta")
        marks = [
            k for k, _ in meta.items(from_key=UNFLUSHED_PREFIX) if k.startswith(UNFLUSHED_PREFIX)
        ]
        assert marks == []
    finally:
        store.close()


def content_of_fill() -> bytes:
    return blake3(b"fill").digest(length=6 * CS)


def test_a_blob_filled_in_order_is_checked_without_reading_it_back(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks arriving in order (some a little ahead of their turn) are hashed as they come:
    the last one completes the check of the id, with no second pass over the content."""
    blobs = blobs_of(store)
    data = content("along", 8 * CS)
    blob_id = blake3(data).digest()
    blobs.begin_blob(blob_id, len(data), chunk_hashes(data), chunk_size=CS)

    def no_second_pass(blob_id: bytes) -> bool:
        raise AssertionError("the whole blob was read back to check it")

    monkeypatch.setattr(blobs, "verify", no_second_pass)
    for index in (1, 0, 2, 4, 3, 5, 7, 6):  # as parallel fetches finish
        blobs.put_chunk(blob_id, index, data[index * CS : (index + 1) * CS])
    m = blobs.manifest(blob_id)
    assert m is not None and m.verified and not m.bad
    assert read_all(blobs, blob_id) == data

    lie = content("lie", 3 * CS)  # chunks that each match the list but not the id
    liar = blake3(content("truth", 3 * CS)).digest()
    blobs.begin_blob(liar, len(lie), chunk_hashes(lie), chunk_size=CS)
    blobs.put_chunk(liar, 0, lie[:CS])
    blobs.put_chunk(liar, 2, lie[2 * CS :])
    with pytest.raises(ManifestMismatch):
        blobs.put_chunk(liar, 1, lie[CS : 2 * CS])
    assert blobs.manifest(liar).bad


# -- memory -------------------------------------------------------------------------------

MEMORY_CHILD = textwrap.dedent(
    """
    import json, sys
    from blake3 import blake3
    from nfsd.store.db import Store
    from nfsd.store.blobs import BlobStore

    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024

    blobs = BlobStore(Store(sys.argv[1]))
    size = int(sys.argv[2])
    blobs.ingest([blake3(b"warm").digest(length=4 << 20)])  # RocksDB and imports warmed
    before = status("VmRSS")

    def stream():
        for i in range(size >> 20):
            yield blake3(i.to_bytes(8, "big")).digest(length=1 << 20)

    blob_id = blobs.ingest(stream())
    print(json.dumps({"before": before, "peak": status("VmHWM"), "id": blob_id.hex()}))
    """
)


def test_ingest_memory_stays_bounded(tmp_path: Path) -> None:
    size = 256 << 20
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, str(tmp_path / "db"), str(size)],
        check=True,
        capture_output=True,
        env=env,
        timeout=120,
    ).stdout
    figures = json.loads(out)
    growth = figures["peak"] - figures["before"]
    assert growth < 48 << 20, f"peak RSS grew {growth >> 20} MiB during a 256 MiB ingest"
    whole = blake3()
    for i in range(size >> 20):
        whole.update(blake3(i.to_bytes(8, "big")).digest(length=1 << 20))
    assert figures["id"] == whole.hexdigest()


def test_chunks_fetched_for_reads_in_flight_are_served_from_memory_within_its_bound(
    store: Store,
) -> None:
    """A client keeps many READs in flight (the kernel client 16 of 1 MiB), so the chunks
    fetched for them arrive in any order before they are read: each is read from memory, not
    read back from RocksDB and hashed again, as long as the window fits `memory_bytes`; past
    it the oldest go, and memory stays bounded."""
    window = 32
    blobs = blobs_of(store, memory_bytes=window * CS)
    data = content("in flight", window * CS)
    blob_id = blake3(data).digest()
    blobs.begin_blob(blob_id, len(data), chunk_hashes(data), chunk_size=CS)
    for index in reversed(range(window)):  # the fetches ahead finish first
        blobs.put_chunk(blob_id, index, data[index * CS : (index + 1) * CS])
    assert read_all(blobs, blob_id) == data
    assert blobs.stats.loaded_chunks == 0
    other = content("later", 2 * window * CS)
    other_id = blobs.ingest(other)
    assert read_all(blobs, other_id) == other
    loaded = blobs.stats.loaded_chunks
    assert read_all(blobs, blob_id) == data  # pushed out of memory by the later blob
    assert blobs.stats.loaded_chunks - loaded == window
