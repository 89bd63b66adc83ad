"""The tree interface the NFS procedures call: one set of operations on fileids.

Procedures never touch storage; they call a `Tree`. The merged tree (nfsd/vfs/merged.py)
implements it over local directories; the Unreal layer joins behind the same interface.
Operations raise FsError with an nfsstat3; those that may block for long are async.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from dataclasses import dataclass

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


class Tree(abc.ABC):
    """The merged tree, addressed by fileid."""

    @abc.abstractmethod
    def area_of(self, fid: int) -> int | None:
        """The area holding `fid`; None for the virtual root."""

    @abc.abstractmethod
    def area_root(self, area: int) -> int: ...

    @abc.abstractmethod
    def getattr(self, fid: int) -> Attr: ...

    @abc.abstractmethod
    def lookup(self, dir_fid: int, name: bytes) -> int: ...

    @abc.abstractmethod
    def parent(self, dir_fid: int) -> int: ...

    @abc.abstractmethod
    def readlink(self, fid: int) -> bytes: ...

    @abc.abstractmethod
    async def read(
        self, fid: int, offset: int, count: int
    ) -> tuple[bytes | bytearray | memoryview | Gather, bool]:
        """Data at offset (at most count bytes) and whether it reaches the end of file; the
        data may stay in several buffers (`Gather`) when joining them would only copy."""

    @abc.abstractmethod
    async def write(self, fid: int, offset: int, data: bytes, stable: stable_how) -> stable_how:
        """Write all of data; return how stable it now is."""

    @abc.abstractmethod
    async def commit(self, fid: int) -> None: ...

    async def prepare_change(self, fid: int) -> None:  # noqa: B027 (a no-op by default)
        """Make `fid` changeable (an Unreal file is realized first); called before WRITE,
        SETATTR and LINK."""

    @abc.abstractmethod
    def create(
        self,
        dir_fid: int,
        name: bytes,
        mode: int,
        owner: Owner,
        *,
        exclusive: bool,
        verifier: bytes | None = None,
    ) -> tuple[int, bool]:
        """Create a regular file; returns (fid, created). `verifier`: EXCLUSIVE create."""

    @abc.abstractmethod
    def mkdir(self, dir_fid: int, name: bytes, mode: int, owner: Owner) -> int: ...

    @abc.abstractmethod
    def symlink(self, dir_fid: int, name: bytes, target: bytes, owner: Owner) -> int: ...

    @abc.abstractmethod
    def mknod(
        self,
        dir_fid: int,
        name: bytes,
        kind: ftype3,
        mode: int,
        owner: Owner,
        rdev: tuple[int, int] = (0, 0),
    ) -> int: ...

    @abc.abstractmethod
    def remove(self, dir_fid: int, name: bytes) -> None: ...

    @abc.abstractmethod
    def rmdir(self, dir_fid: int, name: bytes) -> None: ...

    @abc.abstractmethod
    def rename(self, from_dir: int, from_name: bytes, to_dir: int, to_name: bytes) -> None: ...

    @abc.abstractmethod
    def link(self, fid: int, dir_fid: int, name: bytes) -> None: ...

    @abc.abstractmethod
    def setattr(self, fid: int, changes: SetAttr) -> None: ...

    @abc.abstractmethod
    def readdir(self, dir_fid: int, cookie: int) -> Iterator[DirEntry]:
        """Entries after `cookie` (0: from the start), in a stable order."""

    @abc.abstractmethod
    def fsstat(self, fid: int) -> FsStat: ...
