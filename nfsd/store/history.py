"""Per-area history: the ordered log of changes to an area, what peers will be sent.

Column family `history`, key `area id (4) ‖ sequence (8)` → packed `Change`. Sequences grow
by one per change within an area (the next one kept in `meta`), so "everything after N" is
one range scan. A change carries the blob it replaces, so a peer can tell a stale change from
a conflict.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import IntEnum

from nfsd.store.db import Batch, Store

_KEY = struct.Struct(">IQ")
# op, time_ns, mode, size, then four length-prefixed fields: path, new path, old and new blob
_HEAD = struct.Struct(">BqIQ")
_LENGTH = struct.Struct(">H")


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

    def pack(self) -> bytes:
        parts = [_HEAD.pack(self.op, self.time_ns, self.mode, self.size)]
        for value in (self.path, self.new_path, self.old_blob, self.new_blob):
            parts.append(_LENGTH.pack(len(value)) + value)
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
        return cls(Op(op), path, new_path, old_blob, new_blob, mode, size, time_ns)


class History:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.log = store.family("history")
        self.meta = store.family("meta")
        self._next: dict[int, int] = {}

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
        batch.put("history", _KEY.pack(area, sequence), change.pack())
        batch.put("meta", self._counter_key(area), (sequence + 1).to_bytes(8, "big"))
        return sequence

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

    def trim(self, batch: Batch, area: int, up_to: int) -> int:
        """Forget the changes up to `up_to` (acknowledged by every peer); how many."""
        count = 0
        for sequence, _ in self.since(area, 0):
            if sequence > up_to:
                break
            batch.delete("history", _KEY.pack(area, sequence))
            count += 1
        return count
