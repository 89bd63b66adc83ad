"""Errors are values: every failure of the tree is an FsError carrying one nfsstat3.

`from_os_error` is the single errno → nfsstat3 table; an expected condition never becomes
NFS3ERR_SERVERFAULT.
"""

from __future__ import annotations

import errno

from xdr.nfs3 import nfsstat3

ERRNO_TO_NFSSTAT3: dict[int, nfsstat3] = {
    errno.EPERM: nfsstat3.NFS3ERR_PERM,
    errno.ENOENT: nfsstat3.NFS3ERR_NOENT,
    errno.EIO: nfsstat3.NFS3ERR_IO,
    errno.ENXIO: nfsstat3.NFS3ERR_NXIO,
    errno.EACCES: nfsstat3.NFS3ERR_ACCES,
    errno.EEXIST: nfsstat3.NFS3ERR_EXIST,
    errno.EXDEV: nfsstat3.NFS3ERR_XDEV,
    errno.ENODEV: nfsstat3.NFS3ERR_NODEV,
    errno.ENOTDIR: nfsstat3.NFS3ERR_NOTDIR,
    errno.EISDIR: nfsstat3.NFS3ERR_ISDIR,
    errno.EINVAL: nfsstat3.NFS3ERR_INVAL,
    errno.EFBIG: nfsstat3.NFS3ERR_FBIG,
    errno.ENOSPC: nfsstat3.NFS3ERR_NOSPC,
    errno.EROFS: nfsstat3.NFS3ERR_ROFS,
    errno.EMLINK: nfsstat3.NFS3ERR_MLINK,
    errno.ENAMETOOLONG: nfsstat3.NFS3ERR_NAMETOOLONG,
    errno.ENOTEMPTY: nfsstat3.NFS3ERR_NOTEMPTY,
    errno.EDQUOT: nfsstat3.NFS3ERR_DQUOT,
    errno.ESTALE: nfsstat3.NFS3ERR_STALE,
    errno.EOPNOTSUPP: nfsstat3.NFS3ERR_NOTSUPP,
    errno.ENOTSUP: nfsstat3.NFS3ERR_NOTSUPP,
    errno.ELOOP: nfsstat3.NFS3ERR_INVAL,
    errno.ETXTBSY: nfsstat3.NFS3ERR_ACCES,
    errno.EBUSY: nfsstat3.NFS3ERR_ACCES,
    errno.EAGAIN: nfsstat3.NFS3ERR_JUKEBOX,
    errno.EOVERFLOW: nfsstat3.NFS3ERR_FBIG,
}


class FsError(Exception):
    """A tree operation failed with an NFS status."""

    def __init__(self, status: nfsstat3, detail: str = "") -> None:
        super().__init__(f"{status.name} {detail}".strip())
        self.status = status
        self.detail = detail


def from_os_error(e: OSError) -> FsError:
    status = ERRNO_TO_NFSSTAT3.get(e.errno or 0, nfsstat3.NFS3ERR_IO)
    return FsError(status, e.strerror or "")
