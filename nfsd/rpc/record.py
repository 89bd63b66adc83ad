"""ONC RPC record marking over byte streams (RFC 5531 §11), without I/O.

`RecordReader` turns received bytes into complete records, reassembling multi-fragment
records and refusing any record larger than its bound (the connection is then closed).
Bytes are received straight into its buffers (`receive_buffer`, then `received`): small
records are cut out of one reused buffer, and a large fragment (a 1 MiB WRITE) gets a buffer
of its own that the socket fills in place and that becomes the record, so its payload is
copied once, from the kernel. `feed` takes bytes already received.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

LAST_FRAGMENT = 0x80000000
_MARK = struct.Struct(">I")

# A 1 MiB WRITE plus its RPC and NFS headers fits with room to spare.
DEFAULT_MAX_RECORD = 2 * 1024 * 1024 + 64 * 1024
# The shared buffer: a burst of small calls arrives in one receive.
_BUFFER_SIZE = 64 * 1024
# A fragment at least this long that has not all arrived is received into its own buffer;
# shorter ones wait in the shared buffer, which always has room for one.
_OWN_BUFFER_FROM = 16 * 1024
# An own buffer starts at most this big and takes the fragment's announced length only once
# that much has arrived: memory follows what a client sends, not what it announces (512
# connections that each announce 2 MiB and send 16 KiB hold 32 MiB, not 1 GiB).
_OWN_BUFFER_FIRST = 64 * 1024

Record = bytes | bytearray


class RecordTooLarge(Exception):
    """A peer announced a record beyond the bound; the stream cannot be trusted further."""


class RecordReader:
    """Accumulates stream bytes and yields whole records."""

    def __init__(self, max_record: int = DEFAULT_MAX_RECORD) -> None:
        self.max_record = max_record
        self._buf = bytearray(_BUFFER_SIZE)
        self._view = memoryview(self._buf)
        self._start = 0  # the first byte not yet parsed
        self._end = 0  # the end of the received bytes
        self._own: bytearray | None = None  # a large fragment being received in place
        self._own_length = 0  # the whole fragment's length (the buffer may be shorter yet)
        self._own_filled = 0
        self._own_last = False
        self._fragments: list[Record] = []
        self._record_size = 0  # bytes of the earlier fragments of the current record

    @property
    def partial(self) -> bool:
        """True while a record has started but not completed."""
        return self._end > self._start or self._own is not None or bool(self._fragments)

    def receive_buffer(self) -> memoryview:
        """Where the next received bytes go (then call `received` with their number)."""
        if self._own is not None:
            return memoryview(self._own)[self._own_filled :]
        if len(self._buf) - self._end < _OWN_BUFFER_FROM + 4:
            # Move the unparsed tail (less than one short fragment) to the front.
            tail = self._end - self._start
            self._buf[:tail] = self._view[self._start : self._end]
            self._start, self._end = 0, tail
        return self._view[self._end :]

    def received(self, n: int) -> list[Record]:
        """The records completed by `n` bytes just put into `receive_buffer()`."""
        records: list[Record] = []
        if self._own is not None:
            self._own_filled += n
            if self._own_filled < len(self._own):
                return records
            if len(self._own) < self._own_length:
                whole = bytearray(self._own_length)  # the client sent its first part
                whole[: self._own_filled] = self._own
                self._own = whole
                return records
            fragment, self._own = self._own, None
            self._complete(fragment, self._own_last, records)
            return records
        self._end += n
        buf = self._buf
        pos, end = self._start, self._end
        while end - pos >= 4:
            (mark,) = _MARK.unpack_from(buf, pos)
            length = mark & ~LAST_FRAGMENT
            if self._record_size + length > self.max_record:
                raise RecordTooLarge(f"record of {self._record_size + length}+ bytes")
            available = end - pos - 4
            if available < length:
                if length >= _OWN_BUFFER_FROM:
                    own = bytearray(min(length, max(_OWN_BUFFER_FIRST, available)))
                    own[:available] = self._view[pos + 4 : end]
                    self._own, self._own_filled, self._own_length = own, available, length
                    self._own_last = bool(mark & LAST_FRAGMENT)
                    pos = end
                break
            fragment = bytes(self._view[pos + 4 : pos + 4 + length])
            pos += 4 + length
            self._complete(fragment, bool(mark & LAST_FRAGMENT), records)
        if pos == end:
            self._start = self._end = 0
        else:
            self._start = pos
        return records

    def _complete(self, fragment: Record, last: bool, records: list[Record]) -> None:
        if not last:
            self._fragments.append(fragment)
            self._record_size += len(fragment)
            return
        if self._fragments:
            self._fragments.append(fragment)
            fragment = b"".join(self._fragments)
            self._fragments = []
        records.append(fragment)
        self._record_size = 0

    def feed(self, data: bytes) -> list[Record]:
        """The records completed by `data`."""
        records: list[Record] = []
        view = memoryview(data)
        while view:
            target = self.receive_buffer()
            n = min(len(target), len(view))
            target[:n] = view[:n]
            view = view[n:]
            records += self.received(n)
        return records


def record_mark(length: int) -> bytes:
    """The header of a single-fragment record of `length` bytes."""
    return _MARK.pack(LAST_FRAGMENT | length)


def frame(parts: Iterable[bytes | memoryview]) -> list[bytes | memoryview]:
    """Buffers of one record holding `parts`, ready for a gathered send."""
    parts = list(parts)
    return [record_mark(sum(len(p) for p in parts)), *parts]
