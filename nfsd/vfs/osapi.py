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

REALIZE_FORCE_FALLBACKS=1 in the environment makes every seam take its portable branch, so the
fast test tier can run once more on them.
"""

from __future__ import annotations

import errno
import os
import stat

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
