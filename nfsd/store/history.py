"""Per-area history: the ordered log of changes to an area, what peers will be sent.

Column family `history`, key `area id (4) ‖ sequence (8)` → packed `Change`. Sequences grow
by one per change within an area (the next one kept in `meta`), so "everything after N" is
one range scan. A change carries the blob it replaces, so a peer can tell a stale change from
a conflict. A sequence is given when a change is appended, which is when it is published (after
its rest, for content), so a change still resting can never be overtaken by a later one.

Each area's log has an identity (`log_uuid`, 16 random bytes kept in `meta`): a subscriber
that names another uuid, or a sequence the log no longer holds (`trimmed`) or never reached,
gets a full catch-up instead of a delta (nfsd/peer/exchange.py). A change may carry a `stamp`:
the versions it publishes, in the exchange's encoding, opaque here.
"""

from __future__ import annotations

import struct
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum

from nfsd.store.db import Batch, Store

_KEY = struct.Struct(">IQ")
# op, time_ns, mode, size, then four length-prefixed fields: path, new path, old and new blob
_HEAD = struct.Struct(">BqIQ")
_LENGTH = struct.Struct(">H")
_STAMP_LENGTH = struct.Struct(">I")


class Op(IntEnum):
    CREATE = 1
    CHANGE = 2
    RENAME = 3
    DELETE = 4
    MKDIR = 5
    RMDIR = 6
    LINK = 7
    SYMLINK = 8
    SETATTR = 9


@dataclass(slots=True)
class Change:
    op: Op
    path: bytes
    new_path: bytes = b""  # RENAME and LINK: where to; SYMLINK: the target
    old_blob: bytes = b""
    new_blob: bytes = b""
    mode: int = 0
    size: int = 0
    time_ns: int = field(default_factory=time.time_ns)
    # The versions this change publishes (nfsd/peer/exchange.py's encoding); b"" until the
    # exchange stamps it. Packed last, after a 4-byte length, and only when present, so a
    # record written before stamps existed still unpacks.
    stamp: bytes = b""

    def pack(self) -> bytes:
        parts = [_HEAD.pack(self.op, self.time_ns, self.mode, self.size)]
        for value in (self.path, self.new_path, self.old_blob, self.new_blob):
            parts.append(_LENGTH.pack(len(value)) + value)
        if self.stamp:
            parts.append(_STAMP_LENGTH.pack(len(self.stamp)) + self.stamp)
        return b"".join(parts)

    @classmethod
    def unpack(cls, raw: bytes) -> Change:
        op, time_ns, mode, size = _HEAD.unpack_from(raw)
        pos = _HEAD.size
        values = []
        for _ in range(4):
            (length,) = _LENGTH.unpack_from(raw, pos)
            pos += _LENGTH.size
            values.append(bytes(raw[pos : pos + length]))
            pos += length
        path, new_path, old_blob, new_blob = values
        stamp = b""
        if pos < len(raw):
            (length,) = _STAMP_LENGTH.unpack_from(raw, pos)
            pos += _STAMP_LENGTH.size
            stamp = bytes(raw[pos : pos + length])
        return cls(Op(op), path, new_path, old_blob, new_blob, mode, size, time_ns, stamp)


class History:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.log = store.family("history")
        self.meta = store.family("meta")
        self._next: dict[int, int] = {}
        # area -> changes appended here unstamped (made here, not relayed) since start-up
        self.local_appends: dict[int, int] = {}

    def _counter_key(self, area: int) -> bytes:
        return b"history-next:" + area.to_bytes(4, "big")

    def next_sequence(self, area: int) -> int:
        if area not in self._next:
            raw = self.meta.get(self._counter_key(area))
            self._next[area] = int.from_bytes(raw, "big") if raw else 1
        return self._next[area]

    def append(self, batch: Batch, area: int, change: Change) -> int:
        """Add `change` to the batch; its sequence number is returned."""
        sequence = self.next_sequence(area)
        self._next[area] = sequence + 1
        if not change.stamp:
            self.local_appends[area] = self.local_appends.get(area, 0) + 1
        batch.put("history", _KEY.pack(area, sequence), change.pack())
        batch.put("meta", self._counter_key(area), (sequence + 1).to_bytes(8, "big"))
        return sequence

    def high(self, area: int) -> int:
        """The last sequence given in `area` (0 when none yet)."""
        return self.next_sequence(area) - 1

    def log_uuid(self, area: int) -> bytes:
        """The identity of `area`'s log, made (and kept) the first time it is asked for."""
        key = b"history-uuid:" + area.to_bytes(4, "big")
        raw = self.meta.get(key)
        if raw is None:
            raw = uuid.uuid4().bytes
            self.meta.put(key, raw)
        return bytes(raw)

    def trimmed(self, area: int) -> int:
        """The highest sequence trimmed away (0 when nothing was): a subscriber that saw less
        cannot be given a delta any more."""
        raw = self.meta.get(self._trimmed_key(area))
        return int.from_bytes(raw, "big") if raw else 0

    def _trimmed_key(self, area: int) -> bytes:
        return b"history-trimmed:" + area.to_bytes(4, "big")

    def rewrite(self, batch: Batch, area: int, sequence: int, change: Change) -> None:
        """Put `change` back under its own sequence (the exchange stamping it)."""
        batch.put("history", _KEY.pack(area, sequence), change.pack())

    def forget_pending(self, area: int) -> None:
        """Drop the cached counter (after a batch that appended was not committed)."""
        self._next.pop(area, None)

    def since(self, area: int, after: int = 0) -> Iterator[tuple[int, Change]]:
        """(sequence, change) of every change after sequence `after`, in order."""
        start = _KEY.pack(area, after + 1)
        prefix = area.to_bytes(4, "big")
        for key, raw in self.log.items(from_key=start):
            if not key.startswith(prefix):
                break
            yield _KEY.unpack(key)[1], Change.unpack(raw)

    def trim(self, batch: Batch, area: int, up_to: int, limit: int | None = None) -> int:
        """Forget the changes up to `up_to` (acknowledged by every peer), at most `limit` of
        them in this batch, and record how far the log is trimmed; how many."""
        count = 0
        last = 0
        for sequence, _ in self.since(area, 0):
            if sequence > up_to or (limit is not None and count >= limit):
                break
            batch.delete("history", _KEY.pack(area, sequence))
            count += 1
            last = sequence
        done = up_to if limit is None or count < limit else last
        if done > self.trimmed(area):
            batch.put("meta", self._trimmed_key(area), done.to_bytes(8, "big"))
        return count
