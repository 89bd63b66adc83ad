"""The tree contract the NFS procedures call: one set of operations on fileids.

Procedures never touch storage; they call a `Tree`. The merged tree (nfsd/vfs/merged.py)
implements it over a local layer of ordinary files and an Unreal layer of index entries whose
content lives in the blob cache.

The rules every implementation keeps:
- Errors are values: every failure is an FsError carrying one nfsstat3 (STALE for a fileid
  whose object is gone, NOENT for a missing name, ...). Nothing else escapes for a condition a
  client can cause.
- Methods that are not `async` never block for long: at most a few system calls on local
  metadata and RocksDB point lookups. `async` methods may wait: on the disk, on a fetch.
  Before a long wait (realizing an Unreal file, a fetch, an fsync) they call
  `nfsd.waiting.about_to_wait`, which raises WouldWait, before changing anything, when the
  call runs where waiting is not allowed.
- Operations return the attributes they already hold, so that a procedure never asks again:
  a change returns the changed object's attributes after it, a read returns them with the
  data, READDIRPLUS's listing yields them with each entry.
- Names given are single components; "." and ".." mean what they do in a directory.
- Changes act as the current call's user (`nfsd.vfs.acting.act_for`, set by the procedures):
  the local layer makes its changing system calls with that user's fsuid, fsgid and groups,
  so the kernel's own permission rules apply on top of the procedures' checks.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass

from nfsd.vfs.errors import FsError
from xdr.codec import Gather
from xdr.nfs3 import ftype3, stable_how

SERVER_TIME = -1  # a SetAttr time meaning "the server's clock now"


@dataclass(slots=True)
class Attr:
    kind: ftype3
    mode: int  # permission bits only (07777)
    nlink: int
    uid: int
    gid: int
    size: int
    used: int
    rdev: tuple[int, int]
    fileid: int
    atime_ns: int
    mtime_ns: int
    ctime_ns: int


@dataclass(slots=True)
class SetAttr:
    mode: int | None = None
    uid: int | None = None
    gid: int | None = None
    size: int | None = None
    atime_ns: int | None = None  # None: leave; SERVER_TIME: now; else nanoseconds
    mtime_ns: int | None = None


@dataclass(slots=True)
class DirEntry:
    name: bytes
    fileid: int
    cookie: int


@dataclass(slots=True)
class FsStat:
    total_bytes: int
    free_bytes: int
    avail_bytes: int
    total_files: int
    free_files: int
    avail_files: int


@dataclass(slots=True)
class Owner:
    """Who new objects belong to (the caller after squashing)."""

    uid: int
    gid: int


@dataclass(slots=True)
class ReadResult:
    data: bytes | bytearray | memoryview | Gather  # several buffers when joining would copy
    eof: bool  # the data reaches the end of the file
    attr: Attr | None  # the file's attributes as read, when known


class Tree(abc.ABC):
    """The merged tree, addressed by fileid (ROOT_FID is the virtual root of the areas)."""

    @abc.abstractmethod
    def area_of(self, fid: int) -> int | None:
        """The area holding `fid`; None for the virtual root. STALE if it is gone."""

    @abc.abstractmethod
    def area_root(self, area: int) -> int:
        """The fileid of an area's root directory."""

    @abc.abstractmethod
    def getattr(self, fid: int) -> Attr:
        """The object's attributes; an Unreal file's are the same before and after its
        content arrives. STALE if it is gone."""

    @abc.abstractmethod
    def lookup(self, dir_fid: int, name: bytes) -> tuple[int, Attr | None]:
        """The fileid of `name` in the directory (recorded if new) and its attributes when
        they were at hand. NOENT, NOTDIR, NAMETOOLONG, INVAL (a bad name)."""

    @abc.abstractmethod
    def parent(self, dir_fid: int) -> int:
        """The directory's parent (the virtual root for an area root and for itself)."""

    @abc.abstractmethod
    def readlink(self, fid: int) -> bytes:
        """A symlink's target. INVAL for anything else."""

    @abc.abstractmethod
    async def read(self, fid: int, offset: int, count: int) -> ReadResult:
        """At most `count` bytes at `offset`. May wait: on the disk (in a worker thread), for
        an Unreal file's missing chunks (JUKEBOX when they take too long, IO when no source
        has them). ISDIR, INVAL for what is not a regular file."""

    @abc.abstractmethod
    async def write(
        self, fid: int, offset: int, data: bytes, stable: stable_how
    ) -> tuple[stable_how, Attr | None]:
        """Write all of `data`; how stable it now is, and the attributes after. May wait on
        the disk (FILE_SYNC and DATA_SYNC are synced before it returns). NOSPC, FBIG..."""

    @abc.abstractmethod
    async def commit(self, fid: int) -> Attr | None:
        """Make everything written to the file durable (fsync); its attributes after."""

    async def prepare_change(self, fid: int) -> None:  # noqa: B027 (a no-op by default)
        """Make `fid` changeable: an Unreal file is realized first (may wait long: it calls
        about_to_wait first). Called before WRITE, SETATTR and LINK."""

    @abc.abstractmethod
    async def create(
        self,
        dir_fid: int,
        name: bytes,
        mode: int,
        owner: Owner,
        *,
        exclusive: bool,
        verifier: bytes | None = None,
    ) -> tuple[int, Attr, bool]:
        """Create a regular file: (fid, its attributes, whether it was created). An
        existing file is returned as it is unless `exclusive` (EXIST). `verifier`: CREATE
        EXCLUSIVE; a retransmission with the same verifier gets the same file."""

    @abc.abstractmethod
    async def mkdir(self, dir_fid: int, name: bytes, mode: int, owner: Owner) -> tuple[int, Attr]:
        """Make a directory: its fid and attributes. EXIST, NOSPC, ACCES (the root)..."""

    @abc.abstractmethod
    async def symlink(
        self, dir_fid: int, name: bytes, target: bytes, owner: Owner
    ) -> tuple[int, Attr]:
        """Make a symlink to `target` (never followed by the server)."""

    @abc.abstractmethod
    async def mknod(
        self,
        dir_fid: int,
        name: bytes,
        kind: ftype3,
        mode: int,
        owner: Owner,
        rdev: tuple[int, int] = (0, 0),
    ) -> tuple[int, Attr]:
        """Make a FIFO, socket or device node. BADTYPE for other kinds."""

    @abc.abstractmethod
    async def remove(self, dir_fid: int, name: bytes) -> None:
        """Remove a name that is not a directory (ISDIR otherwise)."""

    @abc.abstractmethod
    async def rmdir(self, dir_fid: int, name: bytes) -> None:
        """Remove an empty directory (NOTEMPTY, NOTDIR otherwise)."""

    @abc.abstractmethod
    async def rename(self, from_dir: int, from_name: bytes, to_dir: int, to_name: bytes) -> None:
        """rename(2) between two directories of one area (XDEV across areas); the object
        keeps its fileid."""

    @abc.abstractmethod
    async def link(self, fid: int, dir_fid: int, name: bytes) -> Attr | None:
        """A new name for a file (not a directory: ISDIR); the file's attributes after."""

    @abc.abstractmethod
    def setattr(self, fid: int, changes: SetAttr) -> Attr | None:
        """Apply the changes (size, owner, mode, times); the attributes after."""

    @abc.abstractmethod
    def readdir(self, dir_fid: int, cookie: int) -> Iterator[DirEntry]:
        """Entries after `cookie` (0: from the start, "." and ".." first), in an order that
        stays stable while the directory changes: resuming from a cookie repeats and skips
        nothing that stayed."""

    def readdirplus(self, dir_fid: int, cookie: int) -> Iterator[tuple[DirEntry, Attr | None]]:
        """As readdir, each entry with its attributes (None when they cannot be had)."""
        for entry in self.readdir(dir_fid, cookie):
            try:
                yield entry, self.getattr(entry.fileid)
            except FsError:
                yield entry, None

    @abc.abstractmethod
    def fsstat(self, fid: int) -> FsStat:
        """Space and file counts of the file system holding `fid`."""
