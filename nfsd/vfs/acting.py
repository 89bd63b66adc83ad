"""Whom the Real layer's system calls act as: the caller's fsuid, fsgid and groups, set on
the calling thread for just the calls that change the caller's files, so the kernel applies
its own rules (permission and sticky-directory checks, setgid cleared by chmod and chown,
setuid killed by a write, `protected_hardlinks`, the owner and group of new files).

The NFS procedures say who the caller is (`act_for`, for the rest of the call); the tree wraps
each change in `as_caller()`, which switches the thread's credentials and puts the server's
back at the end. A block never awaits, so no other task runs with a caller's credentials,
and never reaches the database: a file RocksDB made meanwhile would belong to the caller.

The seam: on Linux, `setfsuid`, `setfsgid` and the raw `setgroups` system call are per
thread (glibc's setgroups() would change every thread of the process). Dropping fsuid from 0
also drops the file capabilities (CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FOWNER, CAP_FSETID), and
setting it back to 0 restores them. Elsewhere, when the server is not root, or with
REALIZE_FORCE_FALLBACKS=1, nothing is switched: the calls run as the server, and the checks
written out in nfsd/nfs3/common.py and nfsd/nfs3/attrs.py stand alone (`KERNEL_ACTS` says which).

A thread inherits its creator's credentials: no thread may be started inside a block.
"""

from __future__ import annotations

import contextvars
import ctypes
import os
import platform
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from nfsd.vfs.osapi import FORCED_FALLBACKS

T = TypeVar("T")

_SETGROUPS_SYSCALL = {"x86_64": 116, "aarch64": 159}  # asm-generic and x86-64 numbers
_QUERY = 0xFFFFFFFF  # an id no call accepts: setfsuid/setfsgid then only report the current


@dataclass(frozen=True, slots=True)
class Caller:
    """A caller's identity as the kernel checks it."""

    uid: int
    gid: int
    groups: tuple[int, ...]


_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "realize_caller", default=None
)


class _Credentials:
    """The Linux per-thread calls, or None where they are missing or do not work."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._setfsuid = libc.setfsuid
        self._setfsgid = libc.setfsgid
        self._setfsuid.argtypes = self._setfsgid.argtypes = [ctypes.c_uint32]
        self._syscall = libc.syscall
        self._setgroups_nr = _SETGROUPS_SYSCALL[platform.machine()]
        self.server = Caller(os.geteuid(), os.getegid(), tuple(os.getgroups()))

    def setgroups(self, groups: tuple[int, ...]) -> None:
        array = (ctypes.c_uint32 * max(1, len(groups)))(*groups)
        if self._syscall(ctypes.c_long(self._setgroups_nr), ctypes.c_long(len(groups)), array):
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))

    def switch(self, caller: Caller) -> None:
        self.setgroups(caller.groups)
        self._setfsgid(caller.gid)
        self._setfsuid(caller.uid)
        if self._setfsuid(_QUERY) != caller.uid or self._setfsgid(_QUERY) != caller.gid:
            self.restore()
            raise PermissionError(1, "could not act as the caller")

    def restore(self) -> None:
        server = self.server
        self._setfsuid(server.uid)
        self._setfsgid(server.gid)
        self.setgroups(server.groups)

    def works(self) -> bool:
        """Switch to nobody and back once: only root can, and only Linux does it per thread."""
        try:
            self.switch(Caller(65534, 65534, (65534,)))
        except OSError:
            return False
        self.restore()
        return self._setfsuid(_QUERY) == self.server.uid


def _probe() -> _Credentials | None:
    if FORCED_FALLBACKS or not sys.platform.startswith("linux") or os.geteuid() != 0:
        return None
    if platform.machine() not in _SETGROUPS_SYSCALL:
        return None
    credentials = _Credentials()
    return credentials if credentials.works() else None


_credentials = _probe()
KERNEL_ACTS = _credentials is not None


def act_for(uid: int, gid: int, groups: tuple[int, ...] | list[int]) -> None:
    """The rest of the current call acts as this user (root: as the server itself)."""
    _caller.set(None if uid == 0 else Caller(uid, gid, tuple(groups)))


def act_as_server() -> None:
    """The call is over (or never had a user): the server acts as itself."""
    _caller.set(None)


def current() -> Caller | None:
    """Whom the current call acts as, None for the server itself."""
    return _caller.get()


class _AsCaller:
    """`with as_caller() as switched:` the block's system calls act as the current caller;
    `switched` is False when they run as the server (no caller, root, or the fallback), and
    the code must then give new objects their owner itself."""

    __slots__ = ()

    def __enter__(self) -> bool:
        caller = _caller.get()
        if caller is None or _credentials is None:
            return False
        _credentials.switch(caller)
        return True

    def __exit__(self, *exc: object) -> None:
        if _caller.get() is not None and _credentials is not None:
            _credentials.restore()


_AS_CALLER = _AsCaller()


def as_caller() -> _AsCaller:
    return _AS_CALLER


def bound(fn: Callable[..., T]) -> Callable[..., T]:
    """`fn`, run as the current caller wherever it is called (on a worker thread: the
    context does not travel there by itself)."""
    caller = _caller.get()
    if caller is None or _credentials is None:
        return fn

    def run(*args: Any) -> T:
        credentials = _credentials
        assert credentials is not None
        credentials.switch(caller)
        try:
            return fn(*args)
        finally:
            credentials.restore()

    return run


_PRIVILEGES = stat.S_ISUID | stat.S_ISGID


def kill_privileges_by_hand(fd: int) -> os.stat_result:
    """After a write or truncation: where the kernel did not act as the caller, do what it
    would have done, since the server keeps CAP_FSETID: a caller other than root takes away
    setuid, and setgid from a group-executable file. The file's stat, after."""
    st = os.fstat(fd)
    mode = st.st_mode
    if _caller.get() is None or _credentials is not None or not mode & _PRIVILEGES:
        return st
    kill = stat.S_ISUID | (stat.S_ISGID if mode & stat.S_IXGRP else 0)
    if mode & kill:
        os.fchmod(fd, stat.S_IMODE(mode) & ~kill)
        st = os.fstat(fd)
    return st
