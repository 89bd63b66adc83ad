"""MOUNT protocol version 3, transcribed from RFC 1813 appendix I.

Linked lists (`mountlist`, `groups`, `exports`) are declared as the element struct without
its `next` pointer, wrapped in `LinkedList`, so they decode to Python lists.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from .codec import (
    Array,
    Enum,
    FixedOpaque,
    LinkedList,
    Opaque,
    String,
    Union,
    XdrType,
    int32,
    uint32,
    void,
    xdr_struct,
    xf,
)

MOUNT_PROGRAM = 100005
MOUNT_V1 = 1
MOUNT_V3 = 3

MNTPATHLEN = 1024  # Maximum bytes in a path name
MNTNAMLEN = 255  # Maximum bytes in a name
FHSIZE3 = 64  # Maximum bytes in a V3 file handle


class MOUNTPROC3(IntEnum):
    NULL = 0
    MNT = 1
    DUMP = 2
    UMNT = 3
    UMNTALL = 4
    EXPORT = 5


class mountstat3(IntEnum):
    MNT3_OK = 0  # no error
    MNT3ERR_PERM = 1  # Not owner
    MNT3ERR_NOENT = 2  # No such file or directory
    MNT3ERR_IO = 5  # I/O error
    MNT3ERR_ACCES = 13  # Permission denied
    MNT3ERR_NOTDIR = 20  # Not a directory
    MNT3ERR_INVAL = 22  # Invalid argument
    MNT3ERR_NAMETOOLONG = 63  # Filename too long
    MNT3ERR_NOTSUPP = 10004  # Operation not supported
    MNT3ERR_SERVERFAULT = 10006  # A failure on the server


fhandle3 = Opaque(FHSIZE3)
dirpath = String(MNTPATHLEN)
name = String(MNTNAMLEN)


@xdr_struct
class mountres3_ok:
    fhandle: bytes = xf(fhandle3)
    auth_flavors: list[int] = xf(Array(int32))


mountres3 = Union(Enum(mountstat3), {mountstat3.MNT3_OK: mountres3_ok}, default=void)
"""`union mountres3 switch (mountstat3 fhs_status) { case MNT3_OK: mountres3_ok mountinfo; ...}`"""


@xdr_struct
class mountbody:
    ml_hostname: bytes = xf(name)
    ml_directory: bytes = xf(dirpath)


mountlist = LinkedList(mountbody)


@xdr_struct
class groupnode:
    gr_name: bytes = xf(name)


groups = LinkedList(groupnode)


@xdr_struct
class exportnode:
    ex_dir: bytes = xf(dirpath)
    ex_groups: list[groupnode] = xf(groups)


exports = LinkedList(exportnode)

PROCEDURES: dict[int, tuple[str, XdrType[Any], XdrType[Any]]] = {
    MOUNTPROC3.NULL: ("NULL", void, void),
    MOUNTPROC3.MNT: ("MNT", dirpath, mountres3),
    MOUNTPROC3.DUMP: ("DUMP", void, mountlist),
    MOUNTPROC3.UMNT: ("UMNT", dirpath, void),
    MOUNTPROC3.UMNTALL: ("UMNTALL", void, void),
    MOUNTPROC3.EXPORT: ("EXPORT", void, exports),
}
"""MOUNT v3 procedure number -> (RFC name without MOUNTPROC3_, argument type, result type)."""


# --- MOUNT v1 (RFC 1094 appendix A): same procedures; MNT answers a fixed 32-byte handle ---

FHSIZE = 32
fhandle = FixedOpaque(FHSIZE)
fhstatus = Union(uint32, {0: fhandle}, default=void)
"""`union fhstatus switch (unsigned fhs_status) { case 0: fhandle fhs_fhandle; default: void; }`"""

PROCEDURES_V1: dict[int, tuple[str, XdrType[Any], XdrType[Any]]] = {
    MOUNTPROC3.NULL: ("NULL", void, void),
    MOUNTPROC3.MNT: ("MNT", dirpath, fhstatus),
    MOUNTPROC3.DUMP: ("DUMP", void, mountlist),
    MOUNTPROC3.UMNT: ("UMNT", dirpath, void),
    MOUNTPROC3.UMNTALL: ("UMNTALL", void, void),
    MOUNTPROC3.EXPORT: ("EXPORT", void, exports),
}
"""MOUNT v1 procedure number -> (name, argument type, result type)."""
