"""Which names a client may use: the one check every tree operation applies to a name before
it reaches the file system or the index."""

from __future__ import annotations

from nfsd.vfs.errors import FsError
from xdr.nfs3 import NAME_MAX, nfsstat3

# Realized content is written beside its final name under this prefix, then renamed in:
# clients never see such names nor make them, scans skip them, the start scan removes leftovers.
TEMP_PREFIX = b".realize-tmp-"


def check_name(name: bytes) -> None:
    """Reject names no directory entry can have, before they reach the file system."""
    if not name or b"/" in name or b"\0" in name:
        raise FsError(nfsstat3.NFS3ERR_INVAL, "invalid name")
    if len(name) > NAME_MAX:
        raise FsError(nfsstat3.NFS3ERR_NAMETOOLONG)


def check_new_name(name: bytes) -> None:
    """A name to create: also not "." or "..", nor one the server keeps for itself."""
    check_name(name)
    if name in (b".", b".."):
        raise FsError(nfsstat3.NFS3ERR_EXIST, "dot name")
    if name.startswith(TEMP_PREFIX):
        raise FsError(nfsstat3.NFS3ERR_ACCES, "a name the server keeps for itself")


def check_old_name(name: bytes) -> None:
    """A name to remove or rename from: not "." or ".." (INVAL, as rmdir(2) says)."""
    if name in (b".", b".."):
        raise FsError(nfsstat3.NFS3ERR_INVAL, "dot name")
    check_name(name)
