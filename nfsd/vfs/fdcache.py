"""Open file descriptors kept between calls, so READ and WRITE do not open and close per call.

Entries are borrowed while a call (possibly in a worker thread) uses them; an entry evicted
or invalidated while borrowed is closed when its last borrower returns it, so a descriptor
number is never reused under a running read.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class _Entry:
    __slots__ = ("borrowers", "closed", "fd", "writable")

    def __init__(self, fd: int, writable: bool) -> None:
        self.fd = fd
        self.writable = writable
        self.borrowers = 0
        self.closed = False

    def release(self) -> None:
        if not self.closed:
            self.closed = True
            if self.borrowers == 0:
                os.close(self.fd)


class FdCache:
    def __init__(self, capacity: int = 256) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[int, _Entry] = OrderedDict()

    @contextmanager
    def borrow(
        self, fid: int, opener: Callable[[bool], tuple[int, bool]], writable: bool
    ) -> Iterator[int]:
        """Yield an fd for `fid`; `opener(writable)` opens one as (fd, is_writable)."""
        entry = self._entries.get(fid)
        if entry is not None and (entry.writable or not writable):
            self._entries.move_to_end(fid)
        else:
            if entry is not None:
                self.invalidate(fid)
            fd, is_writable = opener(writable)
            entry = _Entry(fd, is_writable)
            self._entries[fid] = entry
            while len(self._entries) > self.capacity:
                _, old = self._entries.popitem(last=False)
                old.release()
        entry.borrowers += 1
        try:
            yield entry.fd
        finally:
            entry.borrowers -= 1
            if entry.closed and entry.borrowers == 0:
                os.close(entry.fd)

    def busy(self, fid: int) -> bool:
        """Whether a call is using `fid`'s descriptor right now."""
        entry = self._entries.get(fid)
        return entry is not None and entry.borrowers > 0

    def invalidate(self, fid: int) -> None:
        entry = self._entries.pop(fid, None)
        if entry is not None:
            entry.release()

    def close_all(self) -> None:
        for fid in list(self._entries):
            self.invalidate(fid)
