"""The operating-system seams of the local layer: each Linux-only call once, with a portable
fallback beside it.

- `O_PATH` descriptors (Linux) name a directory or file without opening it for reading, so a
  directory one may only search can still be walked, and acting on a file never opens a
  device. Elsewhere directories are opened O_RDONLY.
- Attribute changes by descriptor: on Linux an O_PATH descriptor's inode is reached through
  `/proc/self/fd/N`, which names that very inode, never a path looked up again. Elsewhere the
  `*at` calls with AT_SYMLINK_NOFOLLOW on the single name (lchmod exists on macOS).
- `RWF_NOWAIT` reads and writes (Linux ≥ 4.14): done at once when the page cache allows, else
  left to a worker thread. Elsewhere everything goes to the thread.
- File identities (`identity`, `birth_ns`): what tells a file from a later one that reuses
  its inode number; the kernel's file handle on Linux, birth times elsewhere (see below).

REALIZE_FORCE_FALLBACKS=1 in the environment makes every seam take its portable branch, so the
fast test tier can run once more on them.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import struct
import sys
from collections.abc import Callable

FORCED_FALLBACKS = os.environ.get("REALIZE_FORCE_FALLBACKS") == "1"

_PROC_FD = "/proc/self/fd/"
HAVE_O_PATH = hasattr(os, "O_PATH") and os.path.isdir(_PROC_FD) and not FORCED_FALLBACKS
RWF_NOWAIT = 0 if FORCED_FALLBACKS else getattr(os, "RWF_NOWAIT", 0)
_LCHMOD = os.chmod in os.supports_follow_symlinks

_CLOEXEC = os.O_CLOEXEC
# How a directory is held for walking: O_PATH needs only search permission on the way.
DIR_FLAGS = (os.O_PATH if HAVE_O_PATH else os.O_RDONLY) | os.O_DIRECTORY | _CLOEXEC
_NODE_FLAGS = os.O_PATH | os.O_NOFOLLOW | _CLOEXEC if HAVE_O_PATH else 0


def open_dir(name: bytes, dir_fd: int) -> int:
    """A descriptor of the directory `name` in `dir_fd`; ELOOP/ENOTDIR for anything else
    (a symlink is never followed)."""
    return os.open(name, DIR_FLAGS | os.O_NOFOLLOW, dir_fd=dir_fd)


def open_listable(dir_fd: int) -> int:
    """A descriptor of the same directory that can be read for its entries."""
    return os.open(b".", os.O_RDONLY | os.O_DIRECTORY | _CLOEXEC, dir_fd=dir_fd)


class Pinned:
    """One object of a directory, held so that changes reach that inode and no other.

    With O_PATH the object is held by a descriptor; without it, changes go by name with
    AT_SYMLINK_NOFOLLOW (a name swapped meanwhile can only make them fail or reach another
    object of the same directory, never follow a symlink out of it)."""

    __slots__ = ("dir_fd", "fd", "is_link", "name", "st")

    def __init__(self, dir_fd: int, name: bytes, expected: tuple[int, int] | None) -> None:
        """Raises OSError, or FileNotFoundError when the name is not (or no longer) the
        expected (dev, ino)."""
        self.dir_fd, self.name, self.fd = dir_fd, name, -1
        if HAVE_O_PATH:
            self.fd = os.open(name, _NODE_FLAGS, dir_fd=dir_fd)
            try:
                self.st = os.fstat(self.fd)
            except OSError:
                os.close(self.fd)
                raise
        else:
            self.st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        self.is_link = stat.S_ISLNK(self.st.st_mode)
        if expected is not None and (self.st.st_dev, self.st.st_ino) != expected:
            self.close()
            raise FileNotFoundError(0, "replaced")

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> Pinned:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _proc(self) -> str:
        return _PROC_FD + str(self.fd)

    def chmod(self, mode: int) -> None:
        if self.is_link:
            return  # symlinks have no mode of their own
        if self.fd >= 0:
            os.chmod(self._proc(), mode)
        elif _LCHMOD:
            os.chmod(self.name, mode, dir_fd=self.dir_fd, follow_symlinks=False)
        else:
            self._by_open(lambda fd: os.fchmod(fd, mode))

    def chown(self, uid: int, gid: int) -> None:
        if self.fd >= 0 and not self.is_link:
            os.chown(self._proc(), uid, gid)
        else:
            os.chown(self.name, uid, gid, dir_fd=self.dir_fd, follow_symlinks=False)

    def utime(self, atime_ns: int, mtime_ns: int) -> None:
        if self.fd >= 0 and not self.is_link:
            os.utime(self._proc(), ns=(atime_ns, mtime_ns))
        else:
            os.utime(self.name, ns=(atime_ns, mtime_ns), dir_fd=self.dir_fd, follow_symlinks=False)

    def link_as(self, dir_fd: int, name: bytes) -> None:
        """A new name `name` in `dir_fd` for this object."""
        if self.fd >= 0 and not self.is_link:
            os.link(self._proc(), name, dst_dir_fd=dir_fd, follow_symlinks=True)
        else:
            os.link(
                self.name, name, src_dir_fd=self.dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False
            )

    def _by_open(self, change) -> None:
        """Without lchmod or O_PATH: open regular files and directories (never following,
        never blocking) to change them through the descriptor; special files refuse."""
        mode = self.st.st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise OSError(errno.EOPNOTSUPP, "cannot change a special file's mode safely here")
        flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
        fd = os.open(self.name, flags, dir_fd=self.dir_fd)
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) != (self.st.st_dev, self.st.st_ino):
                raise FileNotFoundError(0, "replaced")
            change(fd)
        finally:
            os.close(fd)


def open_regular(dir_fd: int, name: bytes, flags: int) -> tuple[int, os.stat_result]:
    """Open the regular file `name` of `dir_fd` with `flags` (O_RDONLY, O_RDWR...), never
    following a symlink and never blocking; EISDIR for a directory, EINVAL for anything else
    that is not a regular file.

    With O_PATH the name is held first and checked, then opened again through that very
    inode, so a device or FIFO swapped in is never opened."""
    flags |= os.O_NOFOLLOW | os.O_NONBLOCK | _CLOEXEC
    if HAVE_O_PATH:
        held = os.open(name, _NODE_FLAGS, dir_fd=dir_fd)
        try:
            st = os.fstat(held)
            _require_regular(st)
            fd = os.open(_PROC_FD + str(held), flags & ~os.O_NOFOLLOW)
        finally:
            os.close(held)
    else:
        fd = os.open(name, flags, dir_fd=dir_fd)
    try:
        opened = os.fstat(fd)
        _require_regular(opened)
        if HAVE_O_PATH and (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
            raise FileNotFoundError(0, "replaced")
    except OSError:
        os.close(fd)
        raise
    return fd, opened


def _require_regular(st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "a directory")
    if not stat.S_ISREG(st.st_mode):
        raise OSError(errno.EINVAL, "not a regular file")


# ---- which file, not only which inode number ----
#
# A file deleted and a new one made may get the same (st_dev, st_ino). What tells them apart:
# - Linux: the kernel's own file handle (`name_to_handle_at`: inode number and generation,
#   as knfsd uses), for any file type, without opening the file or needing read permission;
#   FS_IOC_GETVERSION would need an open descriptor, which symlinks and special files lack.
#   Where the file system encodes none, the FID flavour (overlayfs, Linux >= 6.5), then the
#   `statx` birth time (coarse on older kernels: two files born in one clock tick may share
#   it).
# - Elsewhere (and with REALIZE_FORCE_FALLBACKS=1), `st_birthtime` where the platform's stat
#   has it (macOS, the BSDs); else nothing (b""), and (st_dev, st_ino) alone name a file.
# What was found to work on a device is kept, so a file system is always asked the same way.

_AT_SYMLINK_NOFOLLOW = 0x100
_AT_EMPTY_PATH = 0x1000
_AT_HANDLE_FID = 0x200
_STATX_BTIME = 0x800
_HANDLE_ROOM = 128  # MAX_HANDLE_SZ
_BY_HANDLE, _BY_FID, _BY_BIRTH, _BY_NOTHING = range(4)
_WAY_BY_DEV: dict[int, int] = {}


def _linux_calls() -> tuple[Callable[..., int], Callable[..., int]] | None:
    if FORCED_FALLBACKS or not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.name_to_handle_at, libc.statx
    except (OSError, AttributeError):
        return None


_LINUX = _linux_calls()
if _LINUX is not None:
    _handle_buf = ctypes.create_string_buffer(8 + _HANDLE_ROOM)
    _handle_bytes = ctypes.c_uint.from_buffer(_handle_buf)
    _mount_id = ctypes.c_int()
    _mount_id_ref = ctypes.byref(_mount_id)
    _statx_buf = ctypes.create_string_buffer(256)
_STATX_MASK = struct.Struct("=I")
_STATX_BIRTH = struct.Struct("=qI")  # stx_btime at offset 0x50: seconds, nanoseconds
_BIRTH = struct.Struct(">q")


def _kernel_handle(dir_fd: int, name: bytes, flags: int) -> bytes:
    """The kernel's handle of `name` in `dir_fd` (of `dir_fd` itself when name is b"")."""
    assert _LINUX is not None
    _handle_bytes.value = _HANDLE_ROOM
    if name == b"":
        flags |= _AT_EMPTY_PATH
    if _LINUX[0](dir_fd, name, _handle_buf, _mount_id_ref, flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))
    return _handle_buf.raw[: 8 + _handle_bytes.value]


def birth_ns(dir_fd: int, name: bytes) -> int | None:
    """When the file `name` of `dir_fd` (`dir_fd` itself when name is b"") was born, in ns
    since the epoch; None where the file system or platform does not say."""
    if _LINUX is not None:
        flags = _AT_SYMLINK_NOFOLLOW | (_AT_EMPTY_PATH if name == b"" else 0)
        if _LINUX[1](dir_fd, name, flags, _STATX_BTIME, _statx_buf) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        if not _STATX_MASK.unpack_from(_statx_buf, 0)[0] & _STATX_BTIME:
            return None
        seconds, nanoseconds = _STATX_BIRTH.unpack_from(_statx_buf, 0x50)
        return seconds * 1_000_000_000 + nanoseconds
    st = os.fstat(dir_fd) if name == b"" else os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    birth = getattr(st, "st_birthtime", None)
    return None if birth is None else int(birth * 1_000_000_000)


def identity(dir_fd: int, name: bytes, dev: int) -> bytes:
    """What tells the file `name` of `dir_fd` (`dir_fd` itself when name is b"") from any
    later file on the device `dev` that reuses its inode number; b"" where nothing does.
    OSError when there is no such file."""
    way = _WAY_BY_DEV.get(dev)
    if way is None:
        way = _find_way(dir_fd, name)
        _WAY_BY_DEV[dev] = way
    if way == _BY_HANDLE:
        return b"h" + _kernel_handle(dir_fd, name, 0)
    if way == _BY_FID:
        return b"f" + _kernel_handle(dir_fd, name, _AT_HANDLE_FID)
    if way == _BY_BIRTH:
        birth = birth_ns(dir_fd, name)
        return b"" if birth is None else b"b" + _BIRTH.pack(birth)
    return b""


def _find_way(dir_fd: int, name: bytes) -> int:
    """How the file system of `name` is best asked for identities (OSError when it is gone)."""
    if _LINUX is not None:
        for way, flags in ((_BY_HANDLE, 0), (_BY_FID, _AT_HANDLE_FID)):
            try:
                _kernel_handle(dir_fd, name, flags)
                return way
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS, errno.EPERM):
                    raise
    return _BY_NOTHING if birth_ns(dir_fd, name) is None else _BY_BIRTH


def held_path(fd: int) -> bytes:
    """A path naming the very inode that `fd` holds, for calls that take only a path
    (inotify_add_watch): Linux's /proc/self/fd/N, which is never looked up again by name."""
    return os.fsencode(_PROC_FD + str(fd))


def read_cached(fd: int, buf: bytearray, offset: int) -> tuple[int, bool]:
    """Read into buf what the page cache holds, without waiting (RWF_NOWAIT).

    Returns the count read and whether the end of the file was reached."""
    if RWF_NOWAIT == 0:
        return 0, False
    view = memoryview(buf)
    done = 0
    while done < len(buf):
        try:
            n = os.preadv(fd, [view[done:]], offset + done, RWF_NOWAIT)
        except OSError:  # EAGAIN: it would wait; others: the thread will tell
            return done, False
        if n == 0:
            return done, True
        done += n
    return done, False


def read_into(fd: int, buf: bytearray, start: int, offset: int) -> int:
    """Read into buf[start:] until it is full or the file ends; the count read."""
    view = memoryview(buf)
    done = start
    while done < len(buf):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            break
        done += n
    return done - start


def write_cached(fd: int, data: bytes, offset: int) -> int:
    """Bytes of data written without waiting (RWF_NOWAIT); the rest goes to a thread."""
    if RWF_NOWAIT == 0:
        return 0
    try:
        return os.pwritev(fd, [data], offset, RWF_NOWAIT)
    except OSError:
        return 0
