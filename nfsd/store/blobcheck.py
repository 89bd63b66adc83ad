"""The blob store's check and repair (`BlobStore.fsck`, part of `realize fsck`): manifests,
chunk records, chunk bytes, the LRU index, usage counters and the clock, in one pass over each
family, with the store's lock held.

What it finds and (with `repair`) does:

| kind | meaning | repair |
| --- | --- | --- |
| `bad-manifest` | undecodable header, missing or damaged slots, impossible chunk list | dropped |
| `orphan-slot` | manifest slot without its header | deleted |
| `bad-key` | key of the wrong shape in `blobs`, `chunkinfo` or `lru` | deleted |
| `refcount` | a chunk record's refs or pins disagree with the manifests | set |
| `missing-chunk-record` | a manifest names a chunk with no record | record made (absent) |
| `corrupt-chunk` | stored bytes fail their hash or length | bytes dropped, chunk marked missing |
| `missing-chunk-bytes` | record says present, no bytes | marked missing |
| `lru` | LRU key missing for an evictable chunk, or stale | added / deleted |
| `usage` | usage counters disagree with the chunk records | recomputed |
| `clock` | the stored clock is behind a stamp in use | advanced |

What an ingest interrupted by a crash leaves is garbage, not damage, counted in `garbage`:
`unreferenced-chunk` (recorded chunks no manifest names; removed by `repair` or by
`BlobStore.gc`) and `unrecorded-chunk-bytes` (bytes written without the WAL whose record was
not written yet; with `repair`, adopted when a manifest names them and they verify, else
deleted). Chunks of ingests still running are left alone. Memory: the check keeps
one counter per distinct chunk named by a manifest (about 150 bytes each).

It sees the store only through `CheckedState` (the blob store hands over its
`nfsd.store.blob_state.BlobState`), so it does not depend on `nfsd.store.blobs`.
"""

from __future__ import annotations

from collections.abc import Container, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from blake3 import blake3
from rocksdict import Rdict, ReadOptions

from nfsd.store.db import Store
from nfsd.store.manifest import (
    CLOCK_KEY,
    EMPTY_BLOB,
    HASH_LEN,
    ChunkHash,
    ChunkInfo,
    Manifest,
    lru_key,
    lru_parse,
    pack_stamp,
    pack_usage,
    slot_index,
    slot_key,
    usage_key,
)

_DETAILS = 200
_BATCH_OPS = 1000


class CheckedState(Protocol):
    """All the check reads and changes of a blob store: its lock (held for the whole check),
    its families (read through iterators; repairs go through `store.batch()`), the horizon and
    the pending chunks of running ingests (left alone), and the in-memory figures a repair
    rewrites (usage counters, clock) and the memory of recent reads it empties."""

    @property
    def lock(self) -> AbstractContextManager[object]: ...
    @property
    def store(self) -> Store: ...
    @property
    def blobs(self) -> Rdict: ...
    @property
    def chunks(self) -> Rdict: ...
    @property
    def info(self) -> Rdict: ...  # the `chunkinfo` family
    @property
    def lru(self) -> Rdict: ...
    @property
    def chunk_reads(self) -> ReadOptions: ...  # reads of chunk bytes without RocksDB's CRC
    @property
    def pending(self) -> Container[ChunkHash]: ...  # chunks a running ingest has yet to record
    @property
    def usage(self) -> Mapping[str, Sequence[int]]: ...  # area -> [cached, pinned, chunks]
    @property
    def clock(self) -> int: ...

    def horizon(self) -> int: ...
    def replace_usage(self, usage: dict[str, list[int]]) -> None: ...
    def advance_clock(self, stamp: int) -> None: ...
    def forget_all(self) -> None: ...


@dataclass
class FsckReport:
    blobs: int = 0  # manifests checked (and kept)
    chunks: int = 0  # chunk records checked
    bytes_verified: int = 0  # chunk bytes re-hashed
    problems: dict[str, int] = field(default_factory=dict)  # kind -> count
    garbage: dict[str, int] = field(default_factory=dict)  # unreferenced, not damage
    repaired: int = 0
    details: list[str] = field(default_factory=list)  # the first problems, one line each

    @property
    def ok(self) -> bool:
        """No damage found (garbage does not count)."""
        return not self.problems

    def problem(self, kind: str, message: str) -> None:
        self.problems[kind] = self.problems.get(kind, 0) + 1
        if len(self.details) < _DETAILS:
            self.details.append(f"{kind}: {message}")

    def lines(self) -> Iterator[str]:
        yield (
            f"blob store: {self.blobs} blobs, {self.chunks} chunk records, "
            f"{self.bytes_verified} bytes verified"
        )
        for kind, count in sorted(self.problems.items()):
            yield f"  {kind}: {count}"
        for kind, count in sorted(self.garbage.items()):
            yield f"  garbage {kind}: {count}"
        if self.repaired:
            yield f"  repaired: {self.repaired}"
        yield from (f"    {line}" for line in self.details)


class _Repairs:
    """Puts and deletes applied in batches of bounded size when repairing, else dropped."""

    def __init__(self, state: CheckedState, enabled: bool, report: FsckReport) -> None:
        self.state = state
        self.enabled = enabled
        self.report = report
        self.batch = state.store.batch()
        self.ops = 0

    def put(self, family: str, key: bytes, value: bytes, count: bool = True) -> None:
        if self.enabled:
            self.batch.put(family, key, value)
            self._done(count)

    def delete(self, family: str, key: bytes, count: bool = True) -> None:
        if self.enabled:
            self.batch.delete(family, key)
            self._done(count)

    def _done(self, count: bool) -> None:
        self.ops += 1
        if count:
            self.report.repaired += 1
        if self.ops >= _BATCH_OPS:
            self.flush()

    def flush(self) -> None:
        if self.ops:
            self.batch.commit()
            self.batch = self.state.store.batch()
            self.ops = 0


def check(state: CheckedState, *, repair: bool, verify_data: bool) -> FsckReport:
    """Check (and with `repair`, fix) the blob store whose state is `state`; see above."""
    report = FsckReport()
    fix = _Repairs(state, repair, report)
    with state.lock:
        expected = _check_manifests(state, report, fix)
        fix.flush()
        recorded, usage, max_stamp = _check_chunks(state, report, fix, expected, verify_data)
        fix.flush()
        _check_lru(state, report, fix)
        fix.flush()
        current = {area: list(u) for area, u in state.usage.items() if any(u)}
        if recorded != current:
            report.problem("usage", f"counters {current} but chunk records say {recorded}")
        if usage != current and repair:
            for area in set(current) - set(usage):
                fix.delete("meta", usage_key(area), count=False)
            for area, (cached, pinned, chunks) in usage.items():
                fix.put("meta", usage_key(area), pack_usage(cached, pinned, chunks), count=False)
            report.repaired += 1 if recorded != current else 0
            state.replace_usage(usage)
        if max_stamp > state.clock:
            report.problem("clock", f"clock {state.clock} behind stamp {max_stamp}")
            if repair:
                state.advance_clock(max_stamp)
                fix.put("meta", CLOCK_KEY, pack_stamp(max_stamp))
        fix.flush()
        if repair:
            state.forget_all()
    return report


def _check_manifests(
    state: CheckedState, report: FsckReport, fix: _Repairs
) -> dict[ChunkHash, list[int]]:
    """Walk `blobs`: each header followed by its slots 0..n-1. Returns chunk -> [refs, pins]
    over the manifests that are kept."""
    expected: dict[ChunkHash, list[int]] = {}
    m: Manifest | None = None
    current: bytes | None = None  # id of the blob whose slots are being read
    slots: list[ChunkHash] = []
    broken = ""  # why the current blob is being dropped

    def finish() -> None:
        nonlocal m, current, slots, broken
        if current is None:
            return
        why = broken
        if m is not None and not why:
            if len(slots) != m.nchunks:
                why = f"{len(slots)} of {m.nchunks} slots"
            elif m.size == 0 and current != EMPTY_BLOB:
                why = "empty content under another id"
            elif m.nchunks == 1 and slots[0] != current:
                why = "one-chunk blob whose chunk hash is not its id"
        if why:
            report.problem("bad-manifest", f"{current.hex()}: {why}")
            fix.delete("blobs", current)
            for index in range(len(slots)):
                fix.delete("blobs", slot_key(current, index), count=False)
        else:
            assert m is not None
            report.blobs += 1
            if m.present_hint > m.nchunks:
                m.present_hint = m.nchunks
                fix.put("blobs", current, m.pack(), count=False)
        if m is not None and not (why and fix.enabled):  # what stays names its chunks
            for chunk in slots:
                if len(chunk) == HASH_LEN:
                    counts = expected.setdefault(chunk, [0, 0])
                    counts[0] += 1
                    counts[1] += 1 if m.pinned else 0
        m, current, slots, broken = None, None, [], ""

    it = state.blobs.iter()
    it.seek_to_first()
    while it.valid():
        key = it.key()
        if len(key) == HASH_LEN:
            finish()
            current = key
            try:
                m = Manifest.unpack(key, it.value())
            except (ValueError, IndexError, UnicodeDecodeError) as e:
                broken = f"undecodable header ({e})"
        elif len(key) == HASH_LEN + 4 and current is not None and key[:HASH_LEN] == current:
            value = it.value()
            if slot_index(key) != len(slots) or len(value) != HASH_LEN:
                broken = broken or f"slot {slot_index(key)} out of order or damaged"
            slots.append(value)
        elif len(key) == HASH_LEN + 4:
            finish()
            report.problem("orphan-slot", f"{key.hex()}")
            fix.delete("blobs", key)
        else:
            finish()
            report.problem("bad-key", f"blobs {key.hex()}")
            fix.delete("blobs", key)
        it.next()
    finish()
    return expected


def _check_chunks(
    state: CheckedState,
    report: FsckReport,
    fix: _Repairs,
    expected: dict[ChunkHash, list[int]],
    verify_data: bool,
) -> tuple[dict[str, list[int]], dict[str, list[int]], int]:
    """Merge-join `chunkinfo` with `chunks` (both keyed by chunk hash, so each chunk's bytes
    are read once) and compare with the expected references. Returns the usage per area the
    records say, the usage after repairs, and the highest stamp seen."""
    recorded: dict[str, list[int]] = {}
    usage: dict[str, list[int]] = {}
    max_stamp = 0
    horizon = state.horizon()
    records = state.info.iter()
    records.seek_to_first()
    data = state.chunks.iter(state.chunk_reads)  # BLAKE3 checks the bytes, not CRC
    data.seek_to_first()
    while records.valid() or data.valid():
        rkey = records.key() if records.valid() else None
        dkey = data.key() if data.valid() else None
        if rkey is None or (dkey is not None and dkey < rkey):
            assert dkey is not None
            if dkey in expected:  # a manifest names it: the record was lost, not the bytes
                value = data.value()
                refs, pins = expected.pop(dkey)
                report.problem("missing-chunk-record", f"{dkey.hex()} named by {refs} slot(s)")
                info = ChunkInfo(refs=refs, pins=pins)
                if blake3(value).digest() == dkey:
                    info.present, info.length = True, len(value)
                    _count(usage, info)
                    if not pins:
                        fix.put("lru", lru_key("", 0, dkey), b"", count=False)
                else:
                    fix.delete("chunks", dkey, count=False)
                fix.put("chunkinfo", dkey, info.pack())
            elif dkey not in state.pending:  # else a running ingest records them soon
                _garbage(report, "unrecorded-chunk-bytes")
                fix.delete("chunks", dkey, count=False)
            data.next()
            continue
        raw = records.value()
        value = None
        if dkey == rkey:
            value = data.value()
            data.next()
        records.next()
        chunk = rkey
        if len(chunk) != HASH_LEN:
            report.problem("bad-key", f"chunkinfo {chunk.hex()}")
            fix.delete("chunkinfo", chunk)
            if value is not None:
                fix.delete("chunks", chunk, count=False)
            continue
        try:
            info = ChunkInfo.unpack(raw)
        except (ValueError, IndexError, UnicodeDecodeError) as e:
            report.problem("bad-chunk-record", f"{chunk.hex()}: {e}")
            info = ChunkInfo(present=False)
            info.refs = -1  # force a rewrite below
        report.chunks += 1
        if info.refs >= 0 and info.present:
            _count(recorded, info)
        was_listed = info.refs >= 0 and info.present and info.pins == 0
        old_lru = lru_key(info.owner, info.stamp, chunk) if was_listed else None
        changed = False
        refs, pins = expected.pop(chunk, (0, 0))
        if (info.refs, info.pins) != (refs, pins):
            if info.refs >= 0:
                report.problem(
                    "refcount",
                    f"{chunk.hex()}: refs/pins {info.refs}/{info.pins}, "
                    f"manifests say {refs}/{pins}",
                )
            info.refs, info.pins = refs, pins
            changed = True
        if info.present:
            if value is None:
                report.problem("missing-chunk-bytes", chunk.hex())
                info.present = False
                changed = True
            elif len(value) != info.length or (verify_data and blake3(value).digest() != chunk):
                report.problem("corrupt-chunk", f"{chunk.hex()} ({len(value)} bytes)")
                fix.delete("chunks", chunk, count=False)
                info.present = False
                changed = True
            elif verify_data:
                report.bytes_verified += len(value)
        elif value is not None and chunk in state.pending:
            value = None  # written by a running ingest, recorded at its next checkpoint
        elif value is not None:
            # Bytes an ingest wrote before a crash, recorded absent: adopted when they verify.
            if len(value) == (info.length or len(value)) and blake3(value).digest() == chunk:
                _garbage(report, "unrecorded-chunk-bytes")
                info.present = True
                info.length = len(value)
                changed = True
            else:
                report.problem("corrupt-chunk", f"{chunk.hex()} (unrecorded, {len(value)} bytes)")
                fix.delete("chunks", chunk)
                value = None
        max_stamp = max(max_stamp, info.stamp)
        garbage = info.refs == 0 and info.stamp < horizon and chunk not in state.pending
        if garbage:
            _garbage(report, "unreferenced-chunk")
        if garbage and fix.enabled:
            fix.delete("chunkinfo", chunk, count=False)
            if value is not None:
                fix.delete("chunks", chunk, count=False)
            if old_lru is not None:
                fix.delete("lru", old_lru, count=False)
            continue
        if changed:
            fix.put("chunkinfo", chunk, info.pack())
        new_lru = lru_key(info.owner, info.stamp, chunk) if info.present and not info.pins else None
        if old_lru is not None and old_lru != new_lru:
            fix.delete("lru", old_lru, count=False)  # follows the record's repair
        if new_lru is not None:
            if new_lru != old_lru:
                fix.put("lru", new_lru, b"", count=False)
            elif state.lru.get(new_lru) is None:
                report.problem("lru", f"no lru key for evictable chunk {chunk.hex()}")
                fix.put("lru", new_lru, b"")
        if info.present:
            _count(usage, info)
    for chunk, (refs, pins) in expected.items():
        report.problem("missing-chunk-record", f"{chunk.hex()} named by {refs} slot(s)")
        fix.put("chunkinfo", chunk, ChunkInfo(refs=refs, pins=pins).pack())
    return recorded, usage, max_stamp


def _garbage(report: FsckReport, kind: str) -> None:
    report.garbage[kind] = report.garbage.get(kind, 0) + 1


def _count(usage: dict[str, list[int]], info: ChunkInfo) -> None:
    u = usage.setdefault(info.owner, [0, 0, 0])
    u[0] += info.length
    u[1] += info.length if info.pins else 0
    u[2] += 1


def _check_lru(state: CheckedState, report: FsckReport, fix: _Repairs) -> None:
    it = state.lru.iter()
    it.seek_to_first()
    while it.valid():
        key = it.key()
        it.next()
        try:
            area, stamp, chunk = lru_parse(key)
        except (ValueError, IndexError, UnicodeDecodeError):
            report.problem("bad-key", f"lru {key.hex()}")
            fix.delete("lru", key)
            continue
        raw = state.info.get(chunk)
        info = ChunkInfo.unpack(raw) if raw is not None else None
        if (
            info is None
            or not info.present
            or info.pins
            or info.stamp != stamp
            or info.owner != area
        ):
            report.problem("lru", f"stale lru key for chunk {chunk.hex()}")
            fix.delete("lru", key)
