"""Atomic name swaps for race tests: renameat2(RENAME_EXCHANGE) through ctypes, and a thread
that keeps swapping two names until told to stop.

A swap of a directory with a symlink is what a local user does to make a path-based server
follow the link between checking a name and using it; these helpers let a test do the same.
"""

from __future__ import annotations

import ctypes
import os
import platform
import threading
from types import TracebackType

AT_FDCWD = -100
RENAME_EXCHANGE = 2
# The system call's number where libc has no renameat2 wrapper (glibc < 2.28).
_SYSCALL_NUMBERS = {"x86_64": 316, "aarch64": 276}

_libc = ctypes.CDLL(None, use_errno=True)


def _bind_renameat2():  # -> a callable (olddirfd, oldpath, newdirfd, newpath, flags) -> int
    wrapper = getattr(_libc, "renameat2", None)
    if wrapper is not None:
        wrapper.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p]
        wrapper.argtypes += [ctypes.c_uint]
        wrapper.restype = ctypes.c_int
        return wrapper
    number = _SYSCALL_NUMBERS.get(platform.machine())
    if number is None:
        return None
    syscall = _libc.syscall
    syscall.restype = ctypes.c_long

    def by_number(old_dir: int, old: bytes, new_dir: int, new: bytes, flags: int) -> int:
        args = (ctypes.c_int(old_dir), old, ctypes.c_int(new_dir), new, ctypes.c_uint(flags))
        return syscall(ctypes.c_long(number), *args)

    return by_number


_renameat2 = _bind_renameat2()


def exchange(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> None:
    """Swap the names `a` and `b` in one step: each now names what the other named."""
    if _renameat2 is None:
        raise OSError(38, f"renameat2 is unknown on {platform.machine()}")
    if _renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno), os.fsdecode(a), None, os.fsdecode(b))


class Swapper:
    """A thread that exchanges two names as fast as it can, from `with` to its end.

    On leaving, the thread stops and one more exchange is made if needed so that the names
    are as they were at the start. `swaps` counts the exchanges made; an error from one
    stops the thread and is raised on leaving."""

    def __init__(self, a: str | os.PathLike[str], b: str | os.PathLike[str]) -> None:
        self.a, self.b = os.fsencode(a), os.fsencode(b)
        self.swaps = 0
        self._stop = threading.Event()
        self._error: OSError | None = None
        self._thread = threading.Thread(target=self._loop, name="name-swapper", daemon=True)

    def _loop(self) -> None:
        stop = self._stop
        try:
            while not stop.is_set():
                exchange(self.a, self.b)
                self.swaps += 1
        except OSError as e:
            self._error = e

    def __enter__(self) -> Swapper:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(10)
        if self._thread.is_alive():
            raise RuntimeError("the name-swapping thread did not stop")
        if self.swaps % 2:
            exchange(self.a, self.b)
        if self._error is not None and kind is None:
            raise self._error
