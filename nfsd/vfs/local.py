"""The local layer: the areas' ordinary files, reached only through directory descriptors.

Each area root is opened once. Every other directory is reached from it name by name with
`openat(O_NOFOLLOW | O_DIRECTORY)` (O_PATH on Linux), each step checked against the inode the
fileid table recorded, and every change is an `*at` call on one name in such a descriptor:
no operation a client can reach hands the kernel a path of several components, so a name
swapped for a symlink mid-call can only fail the call, never reach outside the area.

Directory descriptors are kept in a small cache by fileid (a descriptor follows its
directory when it is renamed). The cache is emptied when the namespace changes in a way that
could move a directory (a rename or rmdir through NFS, or an outside change the watcher
saw). Descriptors handed to worker threads are duplicates the caller closes.

Each object reached for a fileid is checked to be the very file recorded: its (dev, ino), and
its identity (see nfsd/vfs/inodes.py), so a file that took a deleted one's inode number is
STALE to the old handle. The check costs one `name_to_handle_at` per GETATTR or LOOKUP.

The layer knows nothing of the Unreal layer or the index; the merged tree routes to it.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections import OrderedDict
from dataclasses import dataclass

from nfsd.vfs import osapi
from nfsd.vfs.errors import FsError, from_os_error
from nfsd.vfs.inodes import UNIDENTIFIED, InodeTable, Node
from nfsd.vfs.names import TEMP_PREFIX
from nfsd.vfs.tree import Attr
from xdr.nfs3 import ftype3, nfsstat3

log = logging.getLogger("realize.local")

_DIR_CACHE = 128
_MAX_DEPTH = 4096


_KIND = {
    stat.S_IFREG: ftype3.NF3REG,
    stat.S_IFDIR: ftype3.NF3DIR,
    stat.S_IFLNK: ftype3.NF3LNK,
    stat.S_IFCHR: ftype3.NF3CHR,
    stat.S_IFBLK: ftype3.NF3BLK,
    stat.S_IFSOCK: ftype3.NF3SOCK,
    stat.S_IFIFO: ftype3.NF3FIFO,
}

_KIND_BY_FORMAT = [_KIND.get(fmt << 12, ftype3.NF3REG) for fmt in range(16)]
_NO_RDEV = (0, 0)


def attr_from_stat(st: os.stat_result, fid: int) -> Attr:
    """The attributes of an lstat; in a READDIRPLUS this runs once per entry."""
    mode = st.st_mode
    kind = _KIND_BY_FORMAT[(mode >> 12) & 15]
    nlink = st.st_nlink
    if nlink < 2 and kind == ftype3.NF3DIR:
        nlink = 2  # macOS skips READDIR of a directory that claims one link
    rdev = st.st_rdev
    return Attr(
        kind,
        mode & 0o7777,
        nlink,
        st.st_uid,
        st.st_gid,
        st.st_size,
        st.st_blocks * 512,
        (os.major(rdev), os.minor(rdev)) if rdev else _NO_RDEV,
        fid,
        st.st_atime_ns,
        st.st_mtime_ns,
        st.st_ctime_ns,
    )


def identities(paths: set[bytes] | set[str]) -> set[tuple[int, int]]:
    """(st_dev, st_ino) of the directories at `paths` that exist: how hidden ones are known."""
    found = set()
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            continue
        found.add((st.st_dev, st.st_ino))
    return found


@dataclass(slots=True)
class _Root:
    fd: int
    path: bytes


class AreaRoots:
    """The area root directories, each opened once, and what is reached from them by a path
    inside the area, walked name by name (for the journal's scans and hashing).

    `hidden`: (st_dev, st_ino) of directories clients must never see (the state directory),
    wherever they sit."""

    def __init__(self, hidden: set[tuple[int, int]] | None = None) -> None:
        self.hidden = hidden or set()
        self._roots: dict[int, _Root] = {}

    def add(self, area: int, path: bytes) -> os.stat_result:
        """Open the area's root directory (the configured path may pass through symlinks:
        it is the administrator's); its stat."""
        fd = os.open(path, osapi.DIR_FLAGS)
        st = os.fstat(fd)
        old = self._roots.pop(area, None)
        if old is not None:
            os.close(old.fd)
        self._roots[area] = _Root(fd, path)
        return st

    def __contains__(self, area: object) -> bool:
        return area in self._roots

    def areas(self) -> list[int]:
        return list(self._roots)

    def path(self, area: int) -> bytes:
        return self._roots[area].path

    def fd(self, area: int) -> int:
        root = self._roots.get(area)
        if root is None:
            raise FsError(nfsstat3.NFS3ERR_STALE, "area removed")
        return root.fd

    def is_hidden(self, st: os.stat_result) -> bool:
        return (st.st_dev, st.st_ino) in self.hidden

    def dir_relative(self, area: int, rel: bytes) -> int:
        """A descriptor (the caller closes it) of the directory at `rel` in `area`; OSError
        when a step is not a directory (symlinks are never followed)."""
        fd = os.dup(self.fd(area))
        try:
            for name in rel.split(b"/") if rel else ():
                if name in (b"", b".", b".."):
                    raise OSError(errno.EINVAL, "not a plain path")
                step = osapi.open_dir(name, fd)
                os.close(fd)
                fd = step
                if self.hidden and self.is_hidden(os.fstat(fd)):
                    raise OSError(errno.ENOENT, "hidden")
        except BaseException:
            os.close(fd)
            raise
        return fd

    def names(self, dir_fd: int) -> list[tuple[bytes, int]]:
        """(name, inode) of a directory's entries, without realize temporaries and hidden
        directories."""
        listable = osapi.open_listable(dir_fd)
        try:
            with os.scandir(listable) as it:
                rows = [(os.fsencode(e.name), e.inode()) for e in it]
        finally:
            os.close(listable)
        rows = [row for row in rows if not row[0].startswith(TEMP_PREFIX)]
        if self.hidden:
            inodes = {ino for _, ino in self.hidden}
            rows = [
                row for row in rows if row[1] not in inodes or not self._hidden_at(dir_fd, row[0])
            ]
        return rows

    def _hidden_at(self, dir_fd: int, name: bytes) -> bool:
        try:
            return self.is_hidden(os.stat(name, dir_fd=dir_fd, follow_symlinks=False))
        except OSError:
            return False

    def open_relative(self, area: int, rel: bytes) -> int:
        """A read-only descriptor of the regular file at `rel` in `area`, never blocking;
        OSError when there is none."""
        directory, _, name = rel.rpartition(b"/")
        dir_fd = self.dir_relative(area, directory)
        try:
            return osapi.open_regular(dir_fd, name, os.O_RDONLY)[0]
        finally:
            os.close(dir_fd)

    def look(self, area: int, rel: bytes) -> tuple[os.stat_result, bytes] | None:
        """lstat and symlink target of `rel` now; None when it is gone (or hidden)."""
        directory, _, name = rel.rpartition(b"/")
        try:
            dir_fd = self.dir_relative(area, directory)
        except (OSError, FsError):
            return None
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if self.is_hidden(st):
                return None
            return st, os.readlink(name, dir_fd=dir_fd) if stat.S_ISLNK(st.st_mode) else b""
        except OSError:
            return None
        finally:
            os.close(dir_fd)

    def walk(
        self,
        area: int,
        below: bytes = b"",
        deep: bool = True,
        temporaries: list[tuple[bytes, bytes]] | None = None,
        hidden: set[tuple[int, int]] = frozenset(),
        unreadable: list[bytes] | None = None,
    ) -> dict[bytes, tuple[os.stat_result, bytes]]:
        """lstat (and symlink target) of everything below `below` (all of it, or its direct
        children when not deep), by path relative to the root, skipping hidden directories
        (these and `hidden`) and realize temporaries, which go to `temporaries` as (directory,
        name). Descends by descriptor: a directory swapped for a symlink is not followed.
        Directories that cannot be read go to `unreadable`. Raises OSError when `below`
        itself cannot be opened."""
        hidden = self.hidden | hidden
        found: dict[bytes, tuple[os.stat_result, bytes]] = {}
        pending = [(below, self.dir_relative(area, below))]
        try:
            while pending:
                relative, fd = pending.pop()
                try:
                    read = self._walk_one(relative, fd, deep, hidden, found, pending, temporaries)
                    if not read and unreadable is not None:
                        unreadable.append(relative)
                finally:
                    os.close(fd)
        finally:
            for _, fd in pending:
                os.close(fd)
        return found

    @staticmethod
    def _walk_one(
        relative: bytes,
        fd: int,
        deep: bool,
        hidden: set[tuple[int, int]],
        found: dict[bytes, tuple[os.stat_result, bytes]],
        pending: list[tuple[bytes, int]],
        temporaries: list[tuple[bytes, bytes]] | None,
    ) -> bool:
        """Read one directory; False when it cannot be read."""
        try:
            listable = osapi.open_listable(fd)
            with os.scandir(listable) as it:
                names = [os.fsencode(e.name) for e in it]
            os.close(listable)
        except OSError as e:
            log.warning("cannot scan %s: %s", os.fsdecode(relative) or ".", e.strerror)
            return False
        subdirs = []
        for name in names:
            if name.startswith(TEMP_PREFIX):
                if temporaries is not None:
                    temporaries.append((relative, name))
                continue
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                if (st.st_dev, st.st_ino) in hidden:
                    continue
                target = os.readlink(name, dir_fd=fd) if stat.S_ISLNK(st.st_mode) else b""
            except OSError:
                continue
            path = relative + b"/" + name if relative else name
            found[path] = (st, target)
            if deep and stat.S_ISDIR(st.st_mode):
                subdirs.append((path, name))
        # Held one directory level at a time: a wide tree does not hold a descriptor per
        # directory waiting to be read.
        for path, name in subdirs:
            try:
                child = osapi.open_dir(name, fd)
            except OSError:
                continue  # replaced since it was seen: its parent's next reconcile sees it
            pending.append((path, child))
        return True

    def remove_temporary(self, area: int, directory: bytes, name: bytes, before_ns: int) -> bool:
        """Delete a realize temporary older than `before_ns`; whether it was."""
        try:
            dir_fd = self.dir_relative(area, directory)
        except (OSError, FsError):
            return False
        try:
            if os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mtime_ns >= before_ns:
                return False
            os.unlink(name, dir_fd=dir_fd)
            return True
        except OSError:
            return False
        finally:
            os.close(dir_fd)

    def statvfs(self, area: int) -> os.statvfs_result:
        return os.statvfs(self.fd(area))

    def close(self) -> None:
        for root in self._roots.values():
            os.close(root.fd)
        self._roots.clear()


class LocalLayer:
    def __init__(self, inodes: InodeTable, roots: AreaRoots) -> None:
        self.inodes = inodes
        self.roots = roots
        self._dirs: OrderedDict[int, int] = OrderedDict()
        inodes.identify = self.identify

    def is_hidden(self, st: os.stat_result) -> bool:
        return self.roots.is_hidden(st)

    # ---- directories ----

    def dir_fd(self, fid: int) -> int:
        """A descriptor of the Real directory `fid` (cached: do not close it, and use it
        before the next call here or dup it). STALE when the recorded inode is gone."""
        fd = self._dirs.get(fid)
        if fd is not None:
            self._dirs.move_to_end(fid)
            return fd
        chain: list[Node] = []  # from `fid` up to the first directory held already
        node = self._node(fid)
        while node.parent != 0 and node.fid not in self._dirs:
            chain.append(node)
            if len(chain) > _MAX_DEPTH:
                raise FsError(nfsstat3.NFS3ERR_STALE, "cycle")
            node = self._node(node.parent)
        fd = self.roots.fd(node.area) if node.parent == 0 else self._dirs[node.fid]
        opened: list[tuple[int, int]] = []
        try:
            for step in reversed(chain):
                try:
                    fd = osapi.open_dir(step.name, fd)
                except OSError as e:
                    raise _stale_or(e) from None
                opened.append((step.fid, fd))
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != (step.dev, step.ino):
                    raise FsError(nfsstat3.NFS3ERR_STALE, "replaced")
                self._verify(step, fd, b"")
        except BaseException:
            for _, held in opened:
                os.close(held)
            raise
        for step_fid, held in opened:
            self._remember(step_fid, held)
        return fd

    def _remember(self, fid: int, fd: int) -> None:
        old = self._dirs.pop(fid, None)
        if old is not None and old != fd:
            os.close(old)
        self._dirs[fid] = fd
        while len(self._dirs) > _DIR_CACHE:
            _, evicted = self._dirs.popitem(last=False)
            os.close(evicted)

    def dup_dir_fd(self, fid: int) -> int:
        """A descriptor of the directory `fid` that the caller owns (and closes)."""
        return os.dup(self.dir_fd(fid))

    def forget_dirs(self) -> None:
        """Drop every cached directory descriptor (a directory may have moved)."""
        while self._dirs:
            _, fd = self._dirs.popitem()
            os.close(fd)

    def forget_dir(self, fid: int) -> None:
        fd = self._dirs.pop(fid, None)
        if fd is not None:
            os.close(fd)

    def entries(self, fid: int) -> list[tuple[bytes, int]]:
        """(name, inode) of the directory's entries, without the server's temporaries and
        hidden directories."""
        try:
            return self.roots.names(self.dir_fd(fid))
        except OSError as e:
            raise from_os_error(e) from None

    # ---- objects ----

    def _node(self, fid: int) -> Node:
        node = self.inodes.node(fid)
        if node is None or node.area not in self.roots:
            raise FsError(nfsstat3.NFS3ERR_STALE)
        return node

    def where(self, node: Node) -> tuple[int, bytes]:
        """(directory descriptor, name) of a node's primary name; an area root is "." of
        itself. The descriptor is cached: use it at once."""
        if node.parent == 0:
            return self.roots.fd(node.area), b"."
        return self.dir_fd(node.parent), node.name

    def lstat(self, node: Node) -> os.stat_result:
        """The node's lstat, checked to be the very inode recorded (STALE otherwise)."""
        if node.parent == 0:
            return os.fstat(self.roots.fd(node.area))
        cached = self._dirs.get(node.fid)
        if cached is not None:
            return os.fstat(cached)  # follows the directory wherever it was renamed
        dir_fd, name = self.where(node)
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError:
            raise FsError(nfsstat3.NFS3ERR_STALE) from None
        if (st.st_dev, st.st_ino) != (node.dev, node.ino):
            raise FsError(nfsstat3.NFS3ERR_STALE, "replaced")
        self._verify(node, dir_fd, name)  # after the stat: then both saw the recorded file
        return st

    def child_stat(self, dir_fid: int, name: bytes) -> os.stat_result | None:
        """lstat of the entry `name` of a Real directory; None when there is none (or it is
        hidden from clients)."""
        try:
            st = os.stat(name, dir_fd=self.dir_fd(dir_fid), follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise from_os_error(e) from None
        return None if self.is_hidden(st) else st

    def pin(self, node: Node) -> osapi.Pinned:
        """The node held for attribute changes (see osapi.Pinned); STALE when its name no
        longer holds the recorded inode."""
        dir_fd, name = self.where(node)
        expected = None if node.parent == 0 else (node.dev, node.ino)
        try:
            pinned = osapi.Pinned(dir_fd, name, expected)
        except FileNotFoundError:
            raise FsError(nfsstat3.NFS3ERR_STALE, "replaced") from None
        except OSError as e:
            raise from_os_error(e) from None
        if expected is not None:
            try:
                if pinned.fd >= 0:
                    self._verify(node, pinned.fd, b"")
                else:
                    self._verify(node, dir_fd, name)
            except FsError:
                pinned.close()
                raise
        return pinned

    def open_file(self, node: Node, writable: bool) -> tuple[int, bool]:
        """A descriptor of the regular file `node`, read-write when allowed (read-only when
        not, unless `writable`); (fd, is_writable)."""
        dir_fd, name = self.where(node)
        try:
            try:
                fd, st = osapi.open_regular(dir_fd, name, os.O_RDWR)
                writable = True
            except PermissionError:
                if writable:
                    raise
                fd, st = osapi.open_regular(dir_fd, name, os.O_RDONLY)
                writable = False
        except FileNotFoundError:
            raise FsError(nfsstat3.NFS3ERR_STALE) from None
        except OSError as e:
            raise from_os_error(e) from None
        try:
            if (st.st_dev, st.st_ino) != (node.dev, node.ino):
                raise FsError(nfsstat3.NFS3ERR_STALE, "replaced")
            self._verify(node, fd, b"")
        except FsError:
            os.close(fd)
            raise
        return fd, writable

    # ---- identities: which file, not only which inode number ----

    def identify(self, node: Node) -> bytes:
        """The identity of the file at the node's name now (for the table to record), found
        with the node's dev; UNIDENTIFIED when there is none."""
        try:
            if node.parent == 0:
                return osapi.identity(self.roots.fd(node.area), b"", node.dev)
            return osapi.identity(self.dir_fd(node.parent), node.name, node.dev)
        except (OSError, FsError):
            return UNIDENTIFIED

    def identity_in(self, dir_fid: int, name: bytes, dev: int) -> bytes:
        """The identity of the entry `name` of the Real directory `dir_fid` (found on `dev`
        by a stat just before); UNIDENTIFIED when there is none."""
        try:
            return osapi.identity(self.dir_fd(dir_fid), name, dev)
        except (OSError, FsError):
            return UNIDENTIFIED

    def recognizes(self, node: Node, current: bytes, dir_fd: int, name: bytes) -> bool:
        """Whether the file `name` of `dir_fd` (`dir_fd` itself when name is b""), found with
        the node's dev and ino and whose identity is `current`, is the node's file."""
        if current == UNIDENTIFIED:
            return False
        if node.identity == current:
            return True

        def birth() -> int | None:
            try:
                return osapi.birth_ns(dir_fd, name)
            except OSError:
                return None

        return self.inodes.recognizes(node, current, birth)

    def _verify(self, node: Node, dir_fd: int, name: bytes) -> None:
        """STALE unless the file `name` of `dir_fd` (`dir_fd` itself when name is b""),
        found with the node's dev and ino, is the node's file and not a later one that took
        its inode number."""
        try:
            current = osapi.identity(dir_fd, name, node.dev)
        except OSError:
            raise FsError(nfsstat3.NFS3ERR_STALE, "gone") from None
        if current != node.identity and not self.recognizes(node, current, dir_fd, name):
            raise FsError(nfsstat3.NFS3ERR_STALE, "its inode number now names another file")

    def readlink(self, node: Node) -> bytes:
        dir_fd, name = self.where(node)
        try:
            return os.readlink(name, dir_fd=dir_fd)
        except OSError as e:
            raise from_os_error(e) from None

    def close(self) -> None:
        self.forget_dirs()


def _stale_or(e: OSError) -> FsError:
    """A directory on the recorded way that is gone or no longer a directory: STALE."""
    if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
        return FsError(nfsstat3.NFS3ERR_STALE, "the way there changed")
    return from_os_error(e)
