"""ONC RPC record marking over byte streams (RFC 5531 §11), without I/O.

`RecordReader` turns received bytes into complete records, reassembling multi-fragment
records and refusing any record larger than its bound (the connection is then closed).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

LAST_FRAGMENT = 0x80000000
_MARK = struct.Struct(">I")

# A 1 MiB WRITE plus its RPC and NFS headers fits with room to spare.
DEFAULT_MAX_RECORD = 2 * 1024 * 1024 + 64 * 1024


class RecordTooLarge(Exception):
    """A peer announced a record beyond the bound; the stream cannot be trusted further."""


class RecordReader:
    """Accumulates stream bytes and yields whole records."""

    def __init__(self, max_record: int = DEFAULT_MAX_RECORD) -> None:
        self.max_record = max_record
        self._buf = bytearray()
        self._fragments: list[bytes] = []
        self._record_size = 0

    @property
    def partial(self) -> bool:
        """True while a record has started but not completed."""
        return bool(self._buf) or bool(self._fragments)

    def feed(self, data: bytes) -> list[bytes]:
        self._buf += data
        records: list[bytes] = []
        buf = self._buf
        pos = 0
        while len(buf) - pos >= 4:
            (mark,) = _MARK.unpack_from(buf, pos)
            length = mark & ~LAST_FRAGMENT
            if self._record_size + length > self.max_record:
                raise RecordTooLarge(f"record of {self._record_size + length}+ bytes")
            if len(buf) - pos - 4 < length:
                break
            with memoryview(buf) as view:
                fragment = bytes(view[pos + 4 : pos + 4 + length])
            pos += 4 + length
            if mark & LAST_FRAGMENT:
                if self._fragments:
                    self._fragments.append(fragment)
                    fragment = b"".join(self._fragments)
                    self._fragments = []
                records.append(fragment)
                self._record_size = 0
            else:
                self._fragments.append(fragment)
                self._record_size += length
        if pos:
            del buf[:pos]
        return records


def record_mark(length: int) -> bytes:
    """The header of a single-fragment record of `length` bytes."""
    return _MARK.pack(LAST_FRAGMENT | length)


def frame(parts: Iterable[bytes | memoryview]) -> list[bytes | memoryview]:
    """Buffers of one record holding `parts`, ready for a gathered send."""
    parts = list(parts)
    return [record_mark(sum(len(p) for p in parts)), *parts]
