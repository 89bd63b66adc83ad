"""NFS version 3 protocol, transcribed from RFC 1813 (sections 2 and 3).

Every constant, enum, struct and union of the RFC is declared here once, named as the RFC
names it. Conventions of the transcription:

- Unions on a bool that carry one value or nothing (`post_op_attr`, `pre_op_attr`,
  `post_op_fh3`, `sattrguard3`, `set_mode3`, `set_uid3`, `set_gid3`, `set_size3`) are
  `Optional`: the value is None or the carried value.
- Other unions decode to `Arm(tag, value)`; `XXX3res` is `Arm(nfsstat3.NFS3_OK, XXX3resok)` or
  `Arm(<error>, XXX3resfail)`.
- Linked lists (`entry3 *nextentry`) are declared without their `next` pointer and wrapped in
  `LinkedList`, so `dirlist3.entries` is a Python list of `entry3`.
- `filename3` and `nfspath3` are unbounded in the RFC; here at most `FILENAME3_MAX` and
  `NFSPATH3_MAX` bytes on the wire (the server itself enforces the name limit `NAME_MAX`).
- The RFC's field `RENAME3args.from` is `from_` (`from` is a Python keyword).
- `fattr3` and `wcc_attr`, which are in nearly every reply, are packed and unpacked with one
  precompiled `struct.Struct` each (`Fattr3Type`, `WccAttrType`) instead of field by field.
"""

from __future__ import annotations

import struct
from enum import IntEnum
from typing import Any

from .codec import (
    Arm,
    Enum,
    FixedOpaque,
    Gather,
    LinkedList,
    Opaque,
    Optional,
    Packer,
    String,
    Union,
    Unpacker,
    XdrError,
    XdrType,
    as_type,
    boolean,
    uint32,
    uint64,
    void,
    xdr_struct,
    xf,
)

# --- Program, version, procedures ---

NFS_PROGRAM = 100003
NFS_V3 = 3


class NFSPROC3(IntEnum):
    NULL = 0
    GETATTR = 1
    SETATTR = 2
    LOOKUP = 3
    ACCESS = 4
    READLINK = 5
    READ = 6
    WRITE = 7
    CREATE = 8
    MKDIR = 9
    SYMLINK = 10
    MKNOD = 11
    REMOVE = 12
    RMDIR = 13
    RENAME = 14
    LINK = 15
    READDIR = 16
    READDIRPLUS = 17
    FSSTAT = 18
    FSINFO = 19
    PATHCONF = 20
    COMMIT = 21


# --- Constants (section 2.4) ---

NFS3_FHSIZE = 64
NFS3_COOKIEVERFSIZE = 8
NFS3_CREATEVERFSIZE = 8
NFS3_WRITEVERFSIZE = 8

# Wire bounds of this implementation for types the RFC leaves unbounded.
FILENAME3_MAX = 1024
NFSPATH3_MAX = 4096
DATA3_MAX = 4 * 1024 * 1024  # READ/WRITE payload

# Not in the RFC: this server's PATHCONF name_max, the longest file name it takes (that of
# the local file systems under its areas).
NAME_MAX = 255

# The port NFS is served on by convention (IANA assigned), where clients look without asking
# a portmapper.
NFS_PORT = 2049

# ACCESS3args.access / ACCESS3resok.access bits (section 3.3.4)
ACCESS3_READ = 0x0001
ACCESS3_LOOKUP = 0x0002
ACCESS3_MODIFY = 0x0004
ACCESS3_EXTEND = 0x0008
ACCESS3_DELETE = 0x0010
ACCESS3_EXECUTE = 0x0020

# FSINFO3resok.properties bits (section 3.3.19)
FSF3_LINK = 0x0001
FSF3_SYMLINK = 0x0002
FSF3_HOMOGENEOUS = 0x0008
FSF3_CANSETTIME = 0x0010

# --- Basic data types (section 2.5) ---

filename3 = String(FILENAME3_MAX)
nfspath3 = String(NFSPATH3_MAX)
fileid3 = uint64
cookie3 = uint64
cookieverf3 = FixedOpaque(NFS3_COOKIEVERFSIZE)
createverf3 = FixedOpaque(NFS3_CREATEVERFSIZE)
writeverf3 = FixedOpaque(NFS3_WRITEVERFSIZE)
uid3 = uint32
gid3 = uint32
size3 = uint64
offset3 = uint64
mode3 = uint32
count3 = uint32


class nfsstat3(IntEnum):
    NFS3_OK = 0
    NFS3ERR_PERM = 1
    NFS3ERR_NOENT = 2
    NFS3ERR_IO = 5
    NFS3ERR_NXIO = 6
    NFS3ERR_ACCES = 13
    NFS3ERR_EXIST = 17
    NFS3ERR_XDEV = 18
    NFS3ERR_NODEV = 19
    NFS3ERR_NOTDIR = 20
    NFS3ERR_ISDIR = 21
    NFS3ERR_INVAL = 22
    NFS3ERR_FBIG = 27
    NFS3ERR_NOSPC = 28
    NFS3ERR_ROFS = 30
    NFS3ERR_MLINK = 31
    NFS3ERR_NAMETOOLONG = 63
    NFS3ERR_NOTEMPTY = 66
    NFS3ERR_DQUOT = 69
    NFS3ERR_STALE = 70
    NFS3ERR_REMOTE = 71
    NFS3ERR_BADHANDLE = 10001
    NFS3ERR_NOT_SYNC = 10002
    NFS3ERR_BAD_COOKIE = 10003
    NFS3ERR_NOTSUPP = 10004
    NFS3ERR_TOOSMALL = 10005
    NFS3ERR_SERVERFAULT = 10006
    NFS3ERR_BADTYPE = 10007
    NFS3ERR_JUKEBOX = 10008


class ftype3(IntEnum):
    NF3REG = 1
    NF3DIR = 2
    NF3BLK = 3
    NF3CHR = 4
    NF3LNK = 5
    NF3SOCK = 6
    NF3FIFO = 7


@xdr_struct
class specdata3:
    specdata1: int = xf(uint32)
    specdata2: int = xf(uint32)


@xdr_struct
class nfs_fh3:
    data: bytes = xf(Opaque(NFS3_FHSIZE))


_UINT = struct.Struct(">I")
_PAD = (b"", b"\0\0\0", b"\0\0", b"\0")
_TRUE, _FALSE = b"\0\0\0\1", b"\0\0\0\0"


class NfsFh3Type(XdrType[nfs_fh3]):
    """`nfs_fh3` read straight from the buffer: nearly every call starts with one."""

    _declared = nfs_fh3.XDR  # type: ignore[attr-defined]

    def pack(self, p: Packer, v: nfs_fh3) -> None:
        self._declared.pack(p, v)

    def unpack(self, u: Unpacker) -> nfs_fh3:
        buf, pos = u.get_buffer(), u.get_position()
        if pos + 4 > len(buf):
            raise XdrError("truncated")
        (n,) = _UINT.unpack_from(buf, pos)
        if n > NFS3_FHSIZE:
            raise XdrError(f"nfs_fh3 of {n} bytes")
        end = pos + 4 + n
        padded = end + (-n & 3)
        if padded > len(buf):
            raise XdrError("truncated")
        u.set_position(padded)
        return nfs_fh3(bytes(buf[pos + 4 : end]))


nfs_fh3.XDR = NfsFh3Type()  # type: ignore[attr-defined]


@xdr_struct
class nfstime3:
    seconds: int = xf(uint32)
    nseconds: int = xf(uint32)


# --- Server data types (section 2.6) ---


@xdr_struct
class fattr3:
    type: ftype3 = xf(Enum(ftype3))
    mode: int = xf(mode3)
    nlink: int = xf(uint32)
    uid: int = xf(uid3)
    gid: int = xf(gid3)
    size: int = xf(size3)
    used: int = xf(size3)
    rdev: specdata3 = xf(specdata3)
    fsid: int = xf(uint64)
    fileid: int = xf(fileid3)
    atime: nfstime3 = xf(nfstime3)
    mtime: nfstime3 = xf(nfstime3)
    ctime: nfstime3 = xf(nfstime3)


_FTYPE3 = {int(m): m for m in ftype3}


class Fattr3Type(XdrType[fattr3]):
    """`fattr3` in one `struct` call: the 21 numbers of its 84 bytes."""

    # type mode nlink uid gid | size used | rdev(2) | fsid fileid | atime mtime ctime (2 each)
    codec = struct.Struct(">5I2Q2I2Q6I")

    def pack(self, p: Packer, v: fattr3 | bytes) -> None:
        """`v` may be its 84 bytes already encoded (by `codec`), as the server makes them."""
        if type(v) is bytes and len(v) == self.codec.size:
            p.pack_raw(v)
            return
        rdev, at, mt, ct = v.rdev, v.atime, v.mtime, v.ctime
        try:
            raw = self.codec.pack(
                v.type,
                v.mode,
                v.nlink,
                v.uid,
                v.gid,
                v.size,
                v.used,
                rdev.specdata1,
                rdev.specdata2,
                v.fsid,
                v.fileid,
                at.seconds,
                at.nseconds,
                mt.seconds,
                mt.nseconds,
                ct.seconds,
                ct.nseconds,
            )
        except struct.error as e:
            raise XdrError(f"fattr3: {e}") from None
        p.pack_raw(raw)

    def unpack(self, u: Unpacker) -> fattr3:
        (t, mode, nlink, uid, gid, size, used, r1, r2, fsid, fileid, as_, ans, ms, mns, cs, cns) = (
            self.codec.unpack(u.unpack_raw(self.codec.size))
        )
        try:
            ftype = _FTYPE3[t]
        except KeyError:
            raise XdrError(f"{t} is not a ftype3") from None
        return fattr3(
            ftype,
            mode,
            nlink,
            uid,
            gid,
            size,
            used,
            specdata3(r1, r2),
            fsid,
            fileid,
            nfstime3(as_, ans),
            nfstime3(ms, mns),
            nfstime3(cs, cns),
        )


# Installed before any type below captures fattr3's XdrType.
fattr3.XDR = Fattr3Type()  # type: ignore[attr-defined]

FATTR3_SIZE = Fattr3Type.codec.size  # 84: every field of fattr3 has a fixed size
FATTR3_CODEC = Fattr3Type.codec
"""Encodes an fattr3 from its 21 numbers (type, mode, nlink, uid, gid, size, used, rdev as
two, fsid, fileid, then seconds and nanoseconds of atime, mtime, ctime); the bytes stand for
an `fattr3` wherever one is packed."""

post_op_attr = Optional(fattr3)
"""`union post_op_attr switch (bool attributes_follow)`: None or a `fattr3`."""


@xdr_struct
class wcc_attr:
    size: int = xf(size3)
    mtime: nfstime3 = xf(nfstime3)
    ctime: nfstime3 = xf(nfstime3)


class WccAttrType(XdrType[wcc_attr]):
    """`wcc_attr` in one `struct` call."""

    codec = struct.Struct(">Q4I")

    def pack(self, p: Packer, v: wcc_attr | bytes) -> None:
        """`v` may be its 24 bytes already encoded (by `codec`)."""
        if type(v) is bytes and len(v) == self.codec.size:
            p.pack_raw(v)
            return
        mt, ct = v.mtime, v.ctime
        try:
            raw = self.codec.pack(v.size, mt.seconds, mt.nseconds, ct.seconds, ct.nseconds)
        except struct.error as e:
            raise XdrError(f"wcc_attr: {e}") from None
        p.pack_raw(raw)

    def unpack(self, u: Unpacker) -> wcc_attr:
        size, ms, mns, cs, cns = self.codec.unpack(u.unpack_raw(self.codec.size))
        return wcc_attr(size, nfstime3(ms, mns), nfstime3(cs, cns))


wcc_attr.XDR = WccAttrType()  # type: ignore[attr-defined]
WCC_ATTR_CODEC = WccAttrType.codec  # size, mtime and ctime as seconds and nanoseconds

pre_op_attr = Optional(wcc_attr)
"""`union pre_op_attr switch (bool attributes_follow)`: None or a `wcc_attr`."""


@xdr_struct
class wcc_data:
    before: wcc_attr | None = xf(pre_op_attr)
    after: fattr3 | None = xf(post_op_attr)


post_op_fh3 = Optional(nfs_fh3)
"""`union post_op_fh3 switch (bool handle_follows)`: None or a `nfs_fh3`."""


class time_how(IntEnum):
    DONT_CHANGE = 0
    SET_TO_SERVER_TIME = 1
    SET_TO_CLIENT_TIME = 2


set_mode3 = Optional(mode3)
set_uid3 = Optional(uid3)
set_gid3 = Optional(gid3)
set_size3 = Optional(size3)
set_atime = Union(
    Enum(time_how),
    {
        time_how.DONT_CHANGE: void,
        time_how.SET_TO_SERVER_TIME: void,
        time_how.SET_TO_CLIENT_TIME: nfstime3,
    },
    default=void,
)
set_mtime = Union(
    Enum(time_how),
    {
        time_how.DONT_CHANGE: void,
        time_how.SET_TO_SERVER_TIME: void,
        time_how.SET_TO_CLIENT_TIME: nfstime3,
    },
    default=void,
)

DONT_CHANGE = Arm(time_how.DONT_CHANGE)
"""The `set_atime`/`set_mtime` value that leaves the time alone."""


@xdr_struct
class sattr3:
    """Attributes to set; every field defaults to "don't change"."""

    mode: int | None = xf(set_mode3, default=None)
    uid: int | None = xf(set_uid3, default=None)
    gid: int | None = xf(set_gid3, default=None)
    size: int | None = xf(set_size3, default=None)
    atime: Arm = xf(set_atime, default=DONT_CHANGE)
    mtime: Arm = xf(set_mtime, default=DONT_CHANGE)


@xdr_struct
class diropargs3:
    dir: nfs_fh3 = xf(nfs_fh3)
    name: bytes = xf(filename3)


# --- GETATTR (3.3.1) ---


@xdr_struct
class GETATTR3args:
    object: nfs_fh3 = xf(nfs_fh3)


@xdr_struct
class GETATTR3resok:
    obj_attributes: fattr3 = xf(fattr3)


GETATTR3res = Union(Enum(nfsstat3), {nfsstat3.NFS3_OK: GETATTR3resok}, default=void)


def encode_getattr3res_ok(obj_attributes: bytes) -> bytes:
    """`GETATTR3res` with NFS3_OK, from an fattr3 encoded by FATTR3_CODEC."""
    return _FALSE + obj_attributes


# --- SETATTR (3.3.2) ---

sattrguard3 = Optional(nfstime3)
"""`union sattrguard3 switch (bool check)`: None or the expected `obj_ctime`."""


@xdr_struct
class SETATTR3args:
    object: nfs_fh3 = xf(nfs_fh3)
    new_attributes: sattr3 = xf(sattr3)
    guard: nfstime3 | None = xf(sattrguard3)


@xdr_struct
class SETATTR3resok:
    obj_wcc: wcc_data = xf(wcc_data)


@xdr_struct
class SETATTR3resfail:
    obj_wcc: wcc_data = xf(wcc_data)


SETATTR3res = Union(Enum(nfsstat3), {nfsstat3.NFS3_OK: SETATTR3resok}, default=SETATTR3resfail)

# --- LOOKUP (3.3.3) ---


@xdr_struct
class LOOKUP3args:
    what: diropargs3 = xf(diropargs3)


@xdr_struct
class LOOKUP3resok:
    object: nfs_fh3 = xf(nfs_fh3)
    obj_attributes: fattr3 | None = xf(post_op_attr)
    dir_attributes: fattr3 | None = xf(post_op_attr)


@xdr_struct
class LOOKUP3resfail:
    dir_attributes: fattr3 | None = xf(post_op_attr)


LOOKUP3res = Union(Enum(nfsstat3), {nfsstat3.NFS3_OK: LOOKUP3resok}, default=LOOKUP3resfail)


def _post_op(out: bytearray, attributes: bytes | None) -> None:
    if attributes is None:
        out += _FALSE
    else:
        out += _TRUE
        out += attributes


def encode_lookup3res_ok(
    handle: bytes, obj_attributes: bytes | None, dir_attributes: bytes | None
) -> bytes:
    """`LOOKUP3res` with NFS3_OK; attributes encoded by FATTR3_CODEC (or None)."""
    out = bytearray(_FALSE)
    out += _UINT.pack(len(handle))
    out += handle
    out += _PAD[len(handle) & 3]
    _post_op(out, obj_attributes)
    _post_op(out, dir_attributes)
    return bytes(out)


# --- ACCESS (3.3.4) ---


@xdr_struct
class ACCESS3args:
    object: nfs_fh3 = xf(nfs_fh3)
    access: int = xf(uint32)


@xdr_struct
class ACCESS3resok:
    obj_attributes: fattr3 | None = xf(post_op_attr)
    access: int = xf(uint32)


@xdr_struct
class ACCESS3resfail:
    obj_attributes: fattr3 | None = xf(post_op_attr)


ACCESS3res = Union(Enum(nfsstat3), {nfsstat3.NFS3_OK: ACCESS3resok}, default=ACCESS3resfail)


def encode_access3res_ok(obj_attributes: bytes | None, access: int) -> bytes:
    """`ACCESS3res` with NFS3_OK; attributes encoded by FATTR3_CODEC (or None)."""
    out = bytearray(_FALSE)
    _post_op(out, obj_attributes)
    out += _UINT.pack(access)
    return bytes(out)


# --- READLINK (3.3.5) ---


@xdr_struct
class READLINK3args:
    symlink: nfs_fh3 = xf(nfs_fh3)


@xdr_struct
class READLINK3resok:
    symlink_attributes: fattr3 | None = xf(post_op_attr)
    data: bytes = xf(nfspath3)


@xdr_struct
class READLINK3resfail:
    symlink_attributes: fattr3 | None = xf(post_op_attr)


READLINK3res = Union(Enum(nfsstat3), {nfsstat3.NFS3_OK: READLINK3resok}, default=READLINK3resfail)

# --- READ (3.3.6) ---


@xdr_struct
class READ3args:
    file: nfs_fh3 = xf(nfs_fh3)
    offset: int = xf(offset3)
    count: int = xf(count3)


@xdr_struct
class READ3resok:
    file_attributes: fattr3 | None = xf(post_op_attr)
    count: int = xf(count3)
    eof: bool = xf(boolean)
    data: bytes = xf(Opaque(DATA3_MAX, view=True))


@xdr_struct
class READ3resfail:
    file_attributes: fattr3 | None = xf(post_op_attr)


READ3res = Union(Enum(nfsstat3), {nfsstat3.NFS3_OK: READ3resok}, default=READ3resfail)


def encode_read3res_ok(res: READ3resok) -> list[bytes]:
    """`READ3res` with NFS3_OK as buffers to send as they are: the fixed part, the data, its
    padding. The same bytes as packing `READ3res`, without copying megabytes of data."""
    p = Packer()
    p.pack_uint(nfsstat3.NFS3_OK)
    post_op_attr.pack(p, res.file_attributes)
    p.pack_uint(res.count)
    boolean.pack(p, res.eof)
    n = len(res.data)
    p.pack_uint(n)
    data = res.data
    parts = [p.get_buffer(), *data.parts] if isinstance(data, Gather) else [p.get_buffer(), data]
    if n & 3:
        parts.append(b"\0" * (4 - (n & 3)))
    return parts


# --- WRITE (3.3.7) ---


class stable_how(IntEnum):
    UNSTABLE = 0
    DATA_SYNC = 1
    FILE_SYNC = 2


@xdr_struct
class WRITE3args:
    file: nfs_fh3 = xf(nfs_fh3)
    offset: int = xf(offset3)
    count: int = xf(count3)
    stable: stable_how = xf(Enum(stable_how))
    data: bytes = xf(Opaque(DATA3_MAX, view=True))


@xdr_struct
class WRITE3resok:
    file_wcc: wcc_data = xf(wcc_data)
    count: int = xf(count3)
    committed: stable_how = xf(Enum(stable_how))
    verf: bytes = xf(writeverf3)


@xdr_struct
class WRITE3resfail:
    file_wcc: wcc_data = xf(wcc_data)


WRITE3res = Union(Enum(nfsstat3), {nfsstat3.NFS3_OK: WRITE3resok}, default=WRITE3resfail)

# --- CREATE (3.3.8) ---


class createmode3(IntEnum):
    UNCHECKED = 0
    GUARDED = 1
    EXCLUSIVE = 2


createhow3 = Union(
    Enum(createmode3),
    {
        createmode3.UNCHECKED: sattr3,  # obj_attributes
        createmode3.GUARDED: sattr3,  # obj_attributes
        createmode3.EXCLUSIVE: createverf3,  # verf
    },
)


@xdr_struct
class CREATE3args:
    where: diropargs3 = xf(diropargs3)
    how: Arm = xf(createhow3)


@xdr_struct
class CREATE3resok:
    obj: nfs_fh3 | None = xf(post_op_fh3)
    obj_attributes: fattr3 | None = xf(post_op_attr)
    dir_wcc: wcc_data = xf(wcc_data)


@xdr_struct
class CREATE3resfail:
    dir_wcc: wcc_data = xf(wcc_data)


CREATE3res = Union(Enum(nfsstat3), {nfsstat3.NFS3_OK: CREATE3resok}, default=CREATE3resfail)

# --- MKDIR (3.3.9) ---


@xdr_struct
class MKDIR3args:
    where: diropargs3 = xf(diropargs3)
    attributes: sattr3 = xf(sattr3)


@xdr_struct
class MKDIR3resok:
    obj: nfs_fh3 | None = xf(post_op_fh3)
    obj_attributes: fattr3 | None = xf(post_op_attr)
    dir_wcc: wcc_data = xf(wcc_data)


@xdr_struct
class MKDIR3resfail:
    dir_wcc: wcc_data = xf(wcc_data)


MKDIR3res = Union(Enum(nfsstat3), {nfsstat3.NFS3_OK: MKDIR3resok}, default=MKDIR3resfail)

# --- SYMLINK (3.3.10) ---


@xdr_struct
class symlinkdata3:
    symlink_attributes: sattr3 = xf(sattr3)
    symlink_data: bytes = xf(nfspath3)


@xdr_struct
class SYMLINK3args:
    where: diropargs3 = xf(diropargs3)
    symlink: symlinkdata3 = xf(symlinkdata3)


@xdr_struct
class SYMLINK3resok:
    obj: nfs_fh3 | None = xf(post_op_fh3)
    obj_attributes: fattr3 | None = xf(post_op_attr)
    dir_wcc: wcc_data = xf(wcc_data)


@xdr_struct
class SYMLINK3resfail:
    dir_wcc: wcc_data = xf(wcc_data)


SYMLINK3res = Union(Enum(nfsstat3), {nfsstat3.NFS3_OK: SYMLINK3resok}, default=SYMLINK3resfail)

# --- MKNOD (3.3.11) ---


@xdr_struct
class devicedata3:
    dev_attributes: sattr3 = xf(sattr3)
    spec: specdata3 = xf(specdata3)


mknoddata3 = Union(
    Enum(ftype3),
    {
        ftype3.NF3CHR: devicedata3,  # device
        ftype3.NF3BLK: devicedata3,  # device
        ftype3.NF3SOCK: sattr3,  # pipe_attributes
        ftype3.NF3FIFO: sattr3,  # pipe_attributes
    },
    default=void,
)


@xdr_struct
class MKNOD3args:
    where: diropargs3 = xf(diropargs3)
    what: Arm = xf(mknoddata3)


@xdr_struct
class MKNOD3resok:
    obj: nfs_fh3 | None = xf(post_op_fh3)
    obj_attributes: fattr3 | None = xf(post_op_attr)
    dir_wcc: wcc_data = xf(wcc_data)


@xdr_struct
class MKNOD3resfail:
    dir_wcc: wcc_data = xf(wcc_data)


MKNOD3res = Union(Enum(nfsstat3), {nfsstat3.NFS3_OK: MKNOD3resok}, default=MKNOD3resfail)

# --- REMOVE (3.3.12) ---


@xdr_struct
class REMOVE3args:
    object: diropargs3 = xf(diropargs3)


@xdr_struct
class REMOVE3resok:
    dir_wcc: wcc_data = xf(wcc_data)


@xdr_struct
class REMOVE3resfail:
    dir_wcc: wcc_data = xf(wcc_data)


REMOVE3res = Union(Enum(nfsstat3), {nfsstat3.NFS3_OK: REMOVE3resok}, default=REMOVE3resfail)

# --- RMDIR (3.3.13) ---


@xdr_struct
class RMDIR3args:
    object: diropargs3 = xf(diropargs3)


@xdr_struct
class RMDIR3resok:
    dir_wcc: wcc_data = xf(wcc_data)


@xdr_struct
class RMDIR3resfail:
    dir_wcc: wcc_data = xf(wcc_data)


RMDIR3res = Union(Enum(nfsstat3), {nfsstat3.NFS3_OK: RMDIR3resok}, default=RMDIR3resfail)

# --- RENAME (3.3.14) ---


@xdr_struct
class RENAME3args:
    from_: diropargs3 = xf(diropargs3)  # `from` in the RFC
    to: diropargs3 = xf(diropargs3)


@xdr_struct
class RENAME3resok:
    fromdir_wcc: wcc_data = xf(wcc_data)
    todir_wcc: wcc_data = xf(wcc_data)


@xdr_struct
class RENAME3resfail:
    fromdir_wcc: wcc_data = xf(wcc_data)
    todir_wcc: wcc_data = xf(wcc_data)


RENAME3res = Union(Enum(nfsstat3), {nfsstat3.NFS3_OK: RENAME3resok}, default=RENAME3resfail)

# --- LINK (3.3.15) ---


@xdr_struct
class LINK3args:
    file: nfs_fh3 = xf(nfs_fh3)
    link: diropargs3 = xf(diropargs3)


@xdr_struct
class LINK3resok:
    file_attributes: fattr3 | None = xf(post_op_attr)
    linkdir_wcc: wcc_data = xf(wcc_data)


@xdr_struct
class LINK3resfail:
    file_attributes: fattr3 | None = xf(post_op_attr)
    linkdir_wcc: wcc_data = xf(wcc_data)


LINK3res = Union(Enum(nfsstat3), {nfsstat3.NFS3_OK: LINK3resok}, default=LINK3resfail)

# --- READDIR (3.3.16) ---


@xdr_struct
class READDIR3args:
    dir: nfs_fh3 = xf(nfs_fh3)
    cookie: int = xf(cookie3)
    cookieverf: bytes = xf(cookieverf3)
    count: int = xf(count3)


@xdr_struct
class entry3:
    fileid: int = xf(fileid3)
    name: bytes = xf(filename3)
    cookie: int = xf(cookie3)
    # entry3 *nextentry: see dirlist3.entries


@xdr_struct
class dirlist3:
    entries: list[entry3] = xf(LinkedList(entry3))
    eof: bool = xf(boolean)


@xdr_struct
class READDIR3resok:
    dir_attributes: fattr3 | None = xf(post_op_attr)
    cookieverf: bytes = xf(cookieverf3)
    reply: dirlist3 = xf(dirlist3)


@xdr_struct
class READDIR3resfail:
    dir_attributes: fattr3 | None = xf(post_op_attr)


READDIR3res = Union(Enum(nfsstat3), {nfsstat3.NFS3_OK: READDIR3resok}, default=READDIR3resfail)

# --- READDIRPLUS (3.3.17) ---


@xdr_struct
class READDIRPLUS3args:
    dir: nfs_fh3 = xf(nfs_fh3)
    cookie: int = xf(cookie3)
    cookieverf: bytes = xf(cookieverf3)
    dircount: int = xf(count3)
    maxcount: int = xf(count3)


@xdr_struct
class entryplus3:
    fileid: int = xf(fileid3)
    name: bytes = xf(filename3)
    cookie: int = xf(cookie3)
    name_attributes: fattr3 | None = xf(post_op_attr)
    name_handle: nfs_fh3 | None = xf(post_op_fh3)
    # entryplus3 *nextentry: see dirlistplus3.entries


@xdr_struct
class dirlistplus3:
    entries: list[entryplus3] = xf(LinkedList(entryplus3))
    eof: bool = xf(boolean)


@xdr_struct
class READDIRPLUS3resok:
    dir_attributes: fattr3 | None = xf(post_op_attr)
    cookieverf: bytes = xf(cookieverf3)
    reply: dirlistplus3 = xf(dirlistplus3)


@xdr_struct
class READDIRPLUS3resfail:
    dir_attributes: fattr3 | None = xf(post_op_attr)


READDIRPLUS3res = Union(
    Enum(nfsstat3), {nfsstat3.NFS3_OK: READDIRPLUS3resok}, default=READDIRPLUS3resfail
)

# READDIR and READDIRPLUS replies of thousands of entries, packed without an object per
# entry: the same bytes as READDIR3res / READDIRPLUS3res with NFS3_OK (tests/test_fastpaths).

_ENTRY_HEAD = struct.Struct(">IQI")  # value follows (TRUE), fileid, name length
_COOKIE = struct.Struct(">Q")
_HANDLE_HEAD = struct.Struct(">II")  # handle follows (TRUE), handle length
ReaddirEntry = tuple[int, bytes, int]
"""fileid, name, cookie."""
ReaddirplusEntry = tuple[int, bytes, int, bytes | None, bytes | None]
"""fileid, name, cookie, encoded fattr3 (FATTR3_CODEC) or None, handle or None."""


def _readdir_head(out: bytearray, dir_attributes: bytes | None, cookieverf: bytes) -> None:
    out += _FALSE  # NFS3_OK
    if dir_attributes is None:
        out += _FALSE
    else:
        out += _TRUE
        out += dir_attributes
    out += cookieverf


def encode_readdir3res_ok(
    dir_attributes: bytes | None, cookieverf: bytes, entries: list[ReaddirEntry], eof: bool
) -> bytes:
    """`READDIR3res` with NFS3_OK; `dir_attributes` an encoded fattr3 or None."""
    out = bytearray()
    _readdir_head(out, dir_attributes, cookieverf)
    for fileid, name, cookie in entries:
        out += _ENTRY_HEAD.pack(1, fileid, len(name))
        out += name
        out += _PAD[len(name) & 3]
        out += _COOKIE.pack(cookie)
    out += _FALSE  # no more entries
    out += _TRUE if eof else _FALSE
    return bytes(out)


def encode_readdirplus3res_ok(
    dir_attributes: bytes | None, cookieverf: bytes, entries: list[ReaddirplusEntry], eof: bool
) -> bytes:
    """`READDIRPLUS3res` with NFS3_OK; attributes as encoded fattr3s (or None)."""
    out = bytearray()
    _readdir_head(out, dir_attributes, cookieverf)
    for fileid, name, cookie, attributes, handle in entries:
        out += _ENTRY_HEAD.pack(1, fileid, len(name))
        out += name
        out += _PAD[len(name) & 3]
        out += _COOKIE.pack(cookie)
        if attributes is None:
            out += _FALSE
        else:
            out += _TRUE
            out += attributes
        if handle is None:
            out += _FALSE
        else:
            out += _HANDLE_HEAD.pack(1, len(handle))
            out += handle
            out += _PAD[len(handle) & 3]
    out += _FALSE
    out += _TRUE if eof else _FALSE
    return bytes(out)


# --- FSSTAT (3.3.18) ---


@xdr_struct
class FSSTAT3args:
    fsroot: nfs_fh3 = xf(nfs_fh3)


@xdr_struct
class FSSTAT3resok:
    obj_attributes: fattr3 | None = xf(post_op_attr)
    tbytes: int = xf(size3)
    fbytes: int = xf(size3)
    abytes: int = xf(size3)
    tfiles: int = xf(size3)
    ffiles: int = xf(size3)
    afiles: int = xf(size3)
    invarsec: int = xf(uint32)


@xdr_struct
class FSSTAT3resfail:
    obj_attributes: fattr3 | None = xf(post_op_attr)


FSSTAT3res = Union(Enum(nfsstat3), {nfsstat3.NFS3_OK: FSSTAT3resok}, default=FSSTAT3resfail)

# --- FSINFO (3.3.19) ---


@xdr_struct
class FSINFO3args:
    fsroot: nfs_fh3 = xf(nfs_fh3)


@xdr_struct
class FSINFO3resok:
    obj_attributes: fattr3 | None = xf(post_op_attr)
    rtmax: int = xf(uint32)
    rtpref: int = xf(uint32)
    rtmult: int = xf(uint32)
    wtmax: int = xf(uint32)
    wtpref: int = xf(uint32)
    wtmult: int = xf(uint32)
    dtpref: int = xf(uint32)
    maxfilesize: int = xf(size3)
    time_delta: nfstime3 = xf(nfstime3)
    properties: int = xf(uint32)


@xdr_struct
class FSINFO3resfail:
    obj_attributes: fattr3 | None = xf(post_op_attr)


FSINFO3res = Union(Enum(nfsstat3), {nfsstat3.NFS3_OK: FSINFO3resok}, default=FSINFO3resfail)

# --- PATHCONF (3.3.20) ---


@xdr_struct
class PATHCONF3args:
    object: nfs_fh3 = xf(nfs_fh3)


@xdr_struct
class PATHCONF3resok:
    obj_attributes: fattr3 | None = xf(post_op_attr)
    linkmax: int = xf(uint32)
    name_max: int = xf(uint32)
    no_trunc: bool = xf(boolean)
    chown_restricted: bool = xf(boolean)
    case_insensitive: bool = xf(boolean)
    case_preserving: bool = xf(boolean)


@xdr_struct
class PATHCONF3resfail:
    obj_attributes: fattr3 | None = xf(post_op_attr)


PATHCONF3res = Union(Enum(nfsstat3), {nfsstat3.NFS3_OK: PATHCONF3resok}, default=PATHCONF3resfail)

# --- COMMIT (3.3.21) ---


@xdr_struct
class COMMIT3args:
    file: nfs_fh3 = xf(nfs_fh3)
    offset: int = xf(offset3)
    count: int = xf(count3)


@xdr_struct
class COMMIT3resok:
    file_wcc: wcc_data = xf(wcc_data)
    verf: bytes = xf(writeverf3)


@xdr_struct
class COMMIT3resfail:
    file_wcc: wcc_data = xf(wcc_data)


COMMIT3res = Union(Enum(nfsstat3), {nfsstat3.NFS3_OK: COMMIT3resok}, default=COMMIT3resfail)

# --- Procedure table ---

PROCEDURES: dict[int, tuple[str, XdrType[Any], XdrType[Any]]] = {
    NFSPROC3.NULL: ("NULL", void, void),
    NFSPROC3.GETATTR: ("GETATTR", as_type(GETATTR3args), GETATTR3res),
    NFSPROC3.SETATTR: ("SETATTR", as_type(SETATTR3args), SETATTR3res),
    NFSPROC3.LOOKUP: ("LOOKUP", as_type(LOOKUP3args), LOOKUP3res),
    NFSPROC3.ACCESS: ("ACCESS", as_type(ACCESS3args), ACCESS3res),
    NFSPROC3.READLINK: ("READLINK", as_type(READLINK3args), READLINK3res),
    NFSPROC3.READ: ("READ", as_type(READ3args), READ3res),
    NFSPROC3.WRITE: ("WRITE", as_type(WRITE3args), WRITE3res),
    NFSPROC3.CREATE: ("CREATE", as_type(CREATE3args), CREATE3res),
    NFSPROC3.MKDIR: ("MKDIR", as_type(MKDIR3args), MKDIR3res),
    NFSPROC3.SYMLINK: ("SYMLINK", as_type(SYMLINK3args), SYMLINK3res),
    NFSPROC3.MKNOD: ("MKNOD", as_type(MKNOD3args), MKNOD3res),
    NFSPROC3.REMOVE: ("REMOVE", as_type(REMOVE3args), REMOVE3res),
    NFSPROC3.RMDIR: ("RMDIR", as_type(RMDIR3args), RMDIR3res),
    NFSPROC3.RENAME: ("RENAME", as_type(RENAME3args), RENAME3res),
    NFSPROC3.LINK: ("LINK", as_type(LINK3args), LINK3res),
    NFSPROC3.READDIR: ("READDIR", as_type(READDIR3args), READDIR3res),
    NFSPROC3.READDIRPLUS: ("READDIRPLUS", as_type(READDIRPLUS3args), READDIRPLUS3res),
    NFSPROC3.FSSTAT: ("FSSTAT", as_type(FSSTAT3args), FSSTAT3res),
    NFSPROC3.FSINFO: ("FSINFO", as_type(FSINFO3args), FSINFO3res),
    NFSPROC3.PATHCONF: ("PATHCONF", as_type(PATHCONF3args), PATHCONF3res),
    NFSPROC3.COMMIT: ("COMMIT", as_type(COMMIT3args), COMMIT3res),
}
"""NFS v3 procedure number -> (RFC name without NFSPROC3_, argument type, result type)."""
