"""Duplicate-request cache: retransmitted non-idempotent calls get the first reply.

Keyed by the client's address and port, xid, program, version, procedure, the caller's
credential (and socket owner) and a checksum of the arguments: an xid alone is reused by
other clients, and one user's cached answer must never be replayed to another. A call still
being executed is not run again: its retransmission is dropped, and the client's next
retransmission finds the finished reply.
Bounded in entries and bytes; entries older than `ttl` seconds are forgotten.
"""

from __future__ import annotations

import time
import zlib
from collections import OrderedDict
from enum import Enum

Key = tuple[tuple[str, int], int, int, int, int, tuple, int]


class Lookup(Enum):
    NEW = "new"
    IN_PROGRESS = "in-progress"
    DONE = "done"


class DuplicateRequestCache:
    def __init__(self, max_entries: int = 4096, max_bytes: int = 8 << 20, ttl: float = 300.0):
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl = ttl
        self._entries: OrderedDict[Key, tuple[float, bytes | None]] = OrderedDict()
        self._bytes = 0
        self.hits = 0

    @staticmethod
    def key(
        client: tuple[str, int],
        xid: int,
        prog: int,
        vers: int,
        proc: int,
        caller: tuple,
        args: bytes | memoryview,
    ) -> Key:
        """What makes two calls the same call: the client's address and port, the xid, the
        procedure, who the caller claims and is, and the arguments' checksum."""
        return (client, xid, prog, vers, proc, caller, zlib.crc32(args))

    def begin(self, key: Key) -> tuple[Lookup, bytes | None]:
        """Look the call up; a NEW call is recorded as in progress."""
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is not None and now - entry[0] < self.ttl:
            self.hits += 1
            if entry[1] is None:
                return Lookup.IN_PROGRESS, None
            return Lookup.DONE, entry[1]
        if entry is not None:
            self._drop(key)
        self._entries[key] = (now, None)
        self._trim()
        return Lookup.NEW, None

    def finish(self, key: Key, reply: bytes) -> None:
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (time.monotonic(), reply)
        self._bytes += len(reply)
        self._trim()

    def abandon(self, key: Key) -> None:
        """The call produced no reply (it failed before answering); let a retry run it."""
        if key in self._entries and self._entries[key][1] is None:
            self._drop(key)

    def _drop(self, key: Key) -> None:
        _, reply = self._entries.pop(key)
        if reply is not None:
            self._bytes -= len(reply)

    def _trim(self) -> None:
        while self._entries and (
            len(self._entries) > self.max_entries or self._bytes > self.max_bytes
        ):
            self._drop(next(iter(self._entries)))
