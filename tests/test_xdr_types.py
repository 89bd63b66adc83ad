"""The protocol types of xdr.rpc, xdr.portmap, xdr.mount and xdr.nfs3: round trips, strict
decoding, byte-exact encodings and the precompiled fattr3/wcc_attr encoders."""

from __future__ import annotations

import dataclasses
import struct
from typing import Any

import pytest

from xdr import mount, nfs3, portmap, rpc
from xdr.codec import Arm, Packer, StructType, Unpacker, XdrError, as_type, decode, encode
from xdr.nfs3 import (
    DONT_CHANGE,
    Fattr3Type,
    WccAttrType,
    createmode3,
    fattr3,
    ftype3,
    nfs_fh3,
    nfsstat3,
    nfstime3,
    sattr3,
    specdata3,
    stable_how,
    time_how,
    wcc_attr,
    wcc_data,
)

pytestmark = pytest.mark.inproc

OK = nfsstat3.NFS3_OK


def roundtrip(t: Any, v: Any) -> bytes:
    data = encode(t, v)
    assert len(data) % 4 == 0
    back = decode(t, data)
    assert back == v
    assert encode(t, back) == data
    return data


def generic(cls: type) -> StructType[Any]:
    """The field-by-field StructType @xdr_struct would have given `cls`."""
    specs = [(f.name, as_type(f.metadata["xdr"])) for f in dataclasses.fields(cls)]
    return StructType(cls, specs)


# --- Representative values ---

FH = nfs_fh3(b"\x01\x02\x03\x04\x05")
FH2 = nfs_fh3(bytes(range(64)))
T1 = nfstime3(1_700_000_000, 123_456_789)
T2 = nfstime3(0xFFFFFFFF, 999_999_999)
ATTR = fattr3(
    ftype3.NF3REG,
    0o100644,
    1,
    1000,
    100,
    12345,
    16384,
    specdata3(0, 0),
    0xDEADBEEF00000001,
    42,
    T1,
    T1,
    T2,
)
DIRATTR = dataclasses.replace(ATTR, type=ftype3.NF3DIR, mode=0o40755, nlink=3, fileid=1)
CHRATTR = dataclasses.replace(ATTR, type=ftype3.NF3CHR, rdev=specdata3(4, 64))
WCC_ATTR = wcc_attr(12345, T1, T2)
WCC = wcc_data(WCC_ATTR, ATTR)
WCC_NONE = wcc_data(None, None)
SATTR_ALL = sattr3(
    0o644,
    1000,
    1000,
    0,
    Arm(time_how.SET_TO_SERVER_TIME),
    Arm(time_how.SET_TO_CLIENT_TIME, T1),
)
SATTR_NONE = sattr3()
WHERE = nfs3.diropargs3(FH, b"hello.txt")
VERF = b"\x00\x11\x22\x33\x44\x55\x66\x77"


def _res(
    name: str, ok: Any, fails: list[Any], statuses: tuple[nfsstat3, ...] = ()
) -> list[tuple[str, Any]]:
    t = getattr(nfs3, f"{name}3res")
    cases = [(t, Arm(OK, ok))]
    for fail in fails:
        for st in statuses or (nfsstat3.NFS3ERR_IO,):
            cases.append((t, Arm(st, fail)))
    return cases


ARGS: list[tuple[Any, Any]] = [
    (nfs3.GETATTR3args, nfs3.GETATTR3args(FH)),
    (nfs3.GETATTR3args, nfs3.GETATTR3args(FH2)),
    (nfs3.GETATTR3args, nfs3.GETATTR3args(nfs_fh3(b""))),
    (nfs3.SETATTR3args, nfs3.SETATTR3args(FH, SATTR_ALL, T1)),
    (nfs3.SETATTR3args, nfs3.SETATTR3args(FH, SATTR_NONE, None)),
    (nfs3.SETATTR3args, nfs3.SETATTR3args(FH, sattr3(size=2**64 - 1), None)),
    (nfs3.LOOKUP3args, nfs3.LOOKUP3args(WHERE)),
    (nfs3.ACCESS3args, nfs3.ACCESS3args(FH, nfs3.ACCESS3_READ | nfs3.ACCESS3_EXECUTE)),
    (nfs3.READLINK3args, nfs3.READLINK3args(FH)),
    (nfs3.READ3args, nfs3.READ3args(FH, 2**63, 65536)),
    (nfs3.WRITE3args, nfs3.WRITE3args(FH, 0, 5, stable_how.UNSTABLE, b"abcde")),
    (nfs3.WRITE3args, nfs3.WRITE3args(FH, 8, 0, stable_how.DATA_SYNC, b"")),
    (nfs3.WRITE3args, nfs3.WRITE3args(FH, 8, 4, stable_how.FILE_SYNC, b"wxyz")),
    (nfs3.CREATE3args, nfs3.CREATE3args(WHERE, Arm(createmode3.UNCHECKED, SATTR_ALL))),
    (nfs3.CREATE3args, nfs3.CREATE3args(WHERE, Arm(createmode3.GUARDED, SATTR_NONE))),
    (nfs3.CREATE3args, nfs3.CREATE3args(WHERE, Arm(createmode3.EXCLUSIVE, VERF))),
    (nfs3.MKDIR3args, nfs3.MKDIR3args(WHERE, sattr3(mode=0o755))),
    (
        nfs3.SYMLINK3args,
        nfs3.SYMLINK3args(WHERE, nfs3.symlinkdata3(SATTR_NONE, b"../target/file")),
    ),
    (
        nfs3.MKNOD3args,
        nfs3.MKNOD3args(WHERE, Arm(ftype3.NF3CHR, nfs3.devicedata3(SATTR_ALL, specdata3(1, 3)))),
    ),
    (
        nfs3.MKNOD3args,
        nfs3.MKNOD3args(WHERE, Arm(ftype3.NF3BLK, nfs3.devicedata3(SATTR_NONE, specdata3(8, 0)))),
    ),
    (nfs3.MKNOD3args, nfs3.MKNOD3args(WHERE, Arm(ftype3.NF3SOCK, SATTR_ALL))),
    (nfs3.MKNOD3args, nfs3.MKNOD3args(WHERE, Arm(ftype3.NF3FIFO, SATTR_NONE))),
    (nfs3.MKNOD3args, nfs3.MKNOD3args(WHERE, Arm(ftype3.NF3REG))),
    (nfs3.MKNOD3args, nfs3.MKNOD3args(WHERE, Arm(ftype3.NF3DIR))),
    (nfs3.REMOVE3args, nfs3.REMOVE3args(WHERE)),
    (nfs3.RMDIR3args, nfs3.RMDIR3args(WHERE)),
    (nfs3.RENAME3args, nfs3.RENAME3args(WHERE, nfs3.diropargs3(FH2, b"new name"))),
    (nfs3.LINK3args, nfs3.LINK3args(FH2, WHERE)),
    (nfs3.READDIR3args, nfs3.READDIR3args(FH, 0, bytes(8), 4096)),
    (nfs3.READDIRPLUS3args, nfs3.READDIRPLUS3args(FH, 77, VERF, 4096, 32768)),
    (nfs3.FSSTAT3args, nfs3.FSSTAT3args(FH)),
    (nfs3.FSINFO3args, nfs3.FSINFO3args(FH)),
    (nfs3.PATHCONF3args, nfs3.PATHCONF3args(FH)),
    (nfs3.COMMIT3args, nfs3.COMMIT3args(FH, 0, 0)),
]

ENTRIES = [nfs3.entry3(1, b".", 1), nfs3.entry3(2, b"..", 2), nfs3.entry3(99, b"a" * 255, 3)]
ENTRIES_PLUS = [
    nfs3.entryplus3(1, b".", 1, DIRATTR, FH),
    nfs3.entryplus3(7, b"x", 2, None, None),
    nfs3.entryplus3(8, b"yy", 3, ATTR, None),
    nfs3.entryplus3(9, b"zzz", 4, None, FH2),
]

RESULTS: list[tuple[Any, Any]] = [
    (nfs3.GETATTR3res, Arm(OK, nfs3.GETATTR3resok(ATTR))),
    (nfs3.GETATTR3res, Arm(nfsstat3.NFS3ERR_STALE)),
    (nfs3.GETATTR3res, Arm(nfsstat3.NFS3ERR_BADHANDLE)),
    *_res(
        "SETATTR",
        nfs3.SETATTR3resok(WCC),
        [nfs3.SETATTR3resfail(WCC_NONE), nfs3.SETATTR3resfail(WCC)],
        (nfsstat3.NFS3ERR_NOT_SYNC, nfsstat3.NFS3ERR_PERM),
    ),
    *_res(
        "LOOKUP",
        nfs3.LOOKUP3resok(FH, ATTR, DIRATTR),
        [nfs3.LOOKUP3resfail(DIRATTR), nfs3.LOOKUP3resfail(None)],
        (nfsstat3.NFS3ERR_NOENT, nfsstat3.NFS3ERR_NAMETOOLONG),
    ),
    (nfs3.LOOKUP3res, Arm(OK, nfs3.LOOKUP3resok(FH, None, None))),
    *_res(
        "ACCESS",
        nfs3.ACCESS3resok(ATTR, nfs3.ACCESS3_READ | nfs3.ACCESS3_LOOKUP),
        [nfs3.ACCESS3resfail(None)],
    ),
    *_res(
        "READLINK",
        nfs3.READLINK3resok(ATTR, b"/some/where"),
        [nfs3.READLINK3resfail(ATTR)],
        (nfsstat3.NFS3ERR_INVAL,),
    ),
    *_res(
        "READ",
        nfs3.READ3resok(ATTR, 3, True, b"abc"),
        [nfs3.READ3resfail(None)],
        (nfsstat3.NFS3ERR_ISDIR, nfsstat3.NFS3ERR_JUKEBOX),
    ),
    (nfs3.READ3res, Arm(OK, nfs3.READ3resok(None, 0, False, b""))),
    *_res(
        "WRITE",
        nfs3.WRITE3resok(WCC, 5, stable_how.FILE_SYNC, VERF),
        [nfs3.WRITE3resfail(WCC)],
        (nfsstat3.NFS3ERR_NOSPC, nfsstat3.NFS3ERR_DQUOT, nfsstat3.NFS3ERR_FBIG),
    ),
    *_res(
        "CREATE",
        nfs3.CREATE3resok(FH, ATTR, WCC),
        [nfs3.CREATE3resfail(WCC)],
        (nfsstat3.NFS3ERR_EXIST,),
    ),
    (nfs3.CREATE3res, Arm(OK, nfs3.CREATE3resok(None, None, WCC_NONE))),
    *_res("MKDIR", nfs3.MKDIR3resok(FH, DIRATTR, WCC), [nfs3.MKDIR3resfail(WCC_NONE)]),
    *_res(
        "SYMLINK",
        nfs3.SYMLINK3resok(FH2, None, WCC),
        [nfs3.SYMLINK3resfail(WCC)],
        (nfsstat3.NFS3ERR_NOTSUPP,),
    ),
    *_res(
        "MKNOD",
        nfs3.MKNOD3resok(FH, CHRATTR, WCC),
        [nfs3.MKNOD3resfail(WCC)],
        (nfsstat3.NFS3ERR_BADTYPE,),
    ),
    *_res("REMOVE", nfs3.REMOVE3resok(WCC), [nfs3.REMOVE3resfail(WCC)]),
    *_res(
        "RMDIR",
        nfs3.RMDIR3resok(WCC),
        [nfs3.RMDIR3resfail(WCC)],
        (nfsstat3.NFS3ERR_NOTEMPTY, nfsstat3.NFS3ERR_NOTDIR),
    ),
    *_res(
        "RENAME",
        nfs3.RENAME3resok(WCC, WCC_NONE),
        [nfs3.RENAME3resfail(WCC_NONE, WCC)],
        (nfsstat3.NFS3ERR_XDEV,),
    ),
    *_res(
        "LINK",
        nfs3.LINK3resok(ATTR, WCC),
        [nfs3.LINK3resfail(None, WCC)],
        (nfsstat3.NFS3ERR_MLINK,),
    ),
    *_res(
        "READDIR",
        nfs3.READDIR3resok(DIRATTR, VERF, nfs3.dirlist3(ENTRIES, True)),
        [nfs3.READDIR3resfail(DIRATTR)],
        (nfsstat3.NFS3ERR_BAD_COOKIE, nfsstat3.NFS3ERR_TOOSMALL),
    ),
    (nfs3.READDIR3res, Arm(OK, nfs3.READDIR3resok(None, VERF, nfs3.dirlist3([], False)))),
    *_res(
        "READDIRPLUS",
        nfs3.READDIRPLUS3resok(DIRATTR, VERF, nfs3.dirlistplus3(ENTRIES_PLUS, False)),
        [nfs3.READDIRPLUS3resfail(None)],
        (nfsstat3.NFS3ERR_NOTSUPP,),
    ),
    (
        nfs3.READDIRPLUS3res,
        Arm(OK, nfs3.READDIRPLUS3resok(None, VERF, nfs3.dirlistplus3([], True))),
    ),
    *_res(
        "FSSTAT",
        nfs3.FSSTAT3resok(ATTR, 2**40, 2**39, 2**38, 10**6, 10**5, 10**5, 0),
        [nfs3.FSSTAT3resfail(ATTR)],
    ),
    *_res(
        "FSINFO",
        nfs3.FSINFO3resok(
            DIRATTR,
            1 << 20,
            1 << 20,
            4096,
            1 << 20,
            1 << 20,
            4096,
            65536,
            2**63 - 1,
            nfstime3(0, 1),
            nfs3.FSF3_LINK | nfs3.FSF3_SYMLINK | nfs3.FSF3_HOMOGENEOUS | nfs3.FSF3_CANSETTIME,
        ),
        [nfs3.FSINFO3resfail(None)],
        (nfsstat3.NFS3ERR_SERVERFAULT,),
    ),
    *_res(
        "PATHCONF",
        nfs3.PATHCONF3resok(ATTR, 32000, 255, True, True, False, True),
        [nfs3.PATHCONF3resfail(None)],
    ),
    *_res(
        "COMMIT",
        nfs3.COMMIT3resok(WCC, VERF),
        [nfs3.COMMIT3resfail(WCC_NONE)],
        (nfsstat3.NFS3ERR_IO, nfsstat3.NFS3ERR_ROFS),
    ),
]


@pytest.mark.parametrize(("t", "v"), ARGS + RESULTS)
def test_nfs3_roundtrip(t: Any, v: Any) -> None:
    roundtrip(t, v)


@pytest.mark.parametrize(("t", "v"), ARGS + RESULTS)
def test_every_proper_prefix_is_truncated(t: Any, v: Any) -> None:
    data = encode(t, v)
    for n in range(0, len(data), 4):
        with pytest.raises(XdrError):
            decode(t, data[:n])
    with pytest.raises(XdrError):
        decode(t, data[:-1])


@pytest.mark.parametrize(("t", "v"), ARGS + RESULTS)
def test_trailing_bytes_rejected(t: Any, v: Any) -> None:
    with pytest.raises(XdrError):
        decode(t, encode(t, v) + b"\0\0\0\0")


def test_procedure_table_covers_every_procedure() -> None:
    assert sorted(nfs3.PROCEDURES) == list(range(22))
    for proc, (name, args, res) in nfs3.PROCEDURES.items():
        assert nfs3.NFSPROC3(proc).name == name
        if proc == nfs3.NFSPROC3.NULL:
            assert encode(args, None) == b"" and encode(res, None) == b""
            continue
        assert args is as_type(getattr(nfs3, f"{name}3args"))
        assert res is getattr(nfs3, f"{name}3res")
    tested_args = {as_type(t) for t, _ in ARGS}
    tested_res = {as_type(t) for t, _ in RESULTS}
    for proc, (_, args, res) in nfs3.PROCEDURES.items():
        if proc != nfs3.NFSPROC3.NULL:
            assert args in tested_args and res in tested_res


def test_nfs3_constants() -> None:
    assert (nfs3.NFS_PROGRAM, nfs3.NFS_V3, nfs3.NFS3_FHSIZE) == (100003, 3, 64)
    assert nfs3.NFS3_COOKIEVERFSIZE == nfs3.NFS3_CREATEVERFSIZE == nfs3.NFS3_WRITEVERFSIZE == 8
    codes = {0, 1, 2, 5, 6, 13, 17, 18, 19, 20, 21, 22, 27, 28, 30, 31, 63, 66, 69, 70, 71}
    assert {int(s) for s in nfsstat3} == codes | set(range(10001, 10009))
    assert [int(t) for t in ftype3] == list(range(1, 8))
    assert nfs3.ACCESS3_EXECUTE == 0x20 and nfs3.FSF3_CANSETTIME == 0x10
    assert nfs3.NFSPROC3.COMMIT == 21 and nfs3.NFSPROC3.READDIRPLUS == 17


def test_write_data_is_a_view() -> None:
    v = nfs3.WRITE3args(FH, 0, 5, stable_how.UNSTABLE, b"abcde")
    buf = memoryview(bytearray(encode(nfs3.WRITE3args, v)))
    back = decode(nfs3.WRITE3args, buf)
    assert isinstance(back.data, memoryview) and back.data.obj is buf.obj
    assert back == v


# --- Byte-exact encodings, computed by hand from the RFC layouts ---


def h(s: str) -> bytes:
    return bytes.fromhex(s.replace(" ", "").replace("\n", ""))


def test_getattr3res_bytes() -> None:
    attr = fattr3(
        ftype3.NF3REG,
        0o644,
        1,
        1000,
        1000,
        0x1234,
        0x2000,
        specdata3(0, 0),
        7,
        0x42,
        nfstime3(1, 2),
        nfstime3(3, 4),
        nfstime3(5, 6),
    )
    expected = h(
        "00000000"  # status NFS3_OK
        "00000001 000001a4 00000001 000003e8 000003e8"  # type mode nlink uid gid
        "0000000000001234 0000000000002000"  # size used
        "00000000 00000000"  # rdev
        "0000000000000007 0000000000000042"  # fsid fileid
        "00000001 00000002 00000003 00000004 00000005 00000006"  # atime mtime ctime
    )
    assert encode(nfs3.GETATTR3res, Arm(OK, nfs3.GETATTR3resok(attr))) == expected
    assert decode(nfs3.GETATTR3res, expected) == Arm(OK, nfs3.GETATTR3resok(attr))
    assert encode(nfs3.GETATTR3res, Arm(nfsstat3.NFS3ERR_STALE)) == h("00000046")


def test_lookup3args_bytes() -> None:
    v = nfs3.LOOKUP3args(nfs3.diropargs3(nfs_fh3(b"\x01\x02\x03\x04\x05"), b"foo"))
    expected = h("00000005 01020304 05000000 00000003 666f6f00")
    assert encode(nfs3.LOOKUP3args, v) == expected
    assert decode(nfs3.LOOKUP3args, expected) == v


def test_lookup3res_fail_and_wcc_bytes() -> None:
    assert encode(nfs3.LOOKUP3res, Arm(nfsstat3.NFS3ERR_NOENT, nfs3.LOOKUP3resfail(None))) == h(
        "00000002 00000000"
    )
    wcc = wcc_data(wcc_attr(0x10, nfstime3(1, 2), nfstime3(3, 4)), None)
    assert encode(nfs3.REMOVE3res, Arm(OK, nfs3.REMOVE3resok(wcc))) == h(
        "00000000 00000001 0000000000000010 00000001 00000002 00000003 00000004 00000000"
    )


def test_sattr3_and_createhow3_bytes() -> None:
    v = nfs3.CREATE3args(
        nfs3.diropargs3(nfs_fh3(b"\xaa\xbb\xcc\xdd"), b"f"),
        Arm(
            createmode3.GUARDED,
            sattr3(mode=0o600, atime=Arm(time_how.SET_TO_CLIENT_TIME, nfstime3(9, 10))),
        ),
    )
    expected = h(
        "00000004 aabbccdd 00000001 66000000"  # where
        "00000001"  # GUARDED
        "00000001 00000180"  # mode set
        "00000000 00000000 00000000"  # uid gid size: not set
        "00000002 00000009 0000000a"  # atime SET_TO_CLIENT_TIME
        "00000000"  # mtime DONT_CHANGE
    )
    assert encode(nfs3.CREATE3args, v) == expected
    assert decode(nfs3.CREATE3args, expected) == v
    excl = nfs3.CREATE3args(v.where, Arm(createmode3.EXCLUSIVE, VERF))
    assert encode(nfs3.CREATE3args, excl)[16:] == h("00000002 0011223344556677")


def test_readdir3res_bytes() -> None:
    v = Arm(
        OK,
        nfs3.READDIR3resok(None, bytes(8), nfs3.dirlist3([nfs3.entry3(5, b"ab", 1)], True)),
    )
    expected = h(
        "00000000 00000000 0000000000000000"  # status, no dir attrs, cookieverf
        "00000001 0000000000000005 00000002 61620000 0000000000000001"  # one entry
        "00000000 00000001"  # end of list, eof
    )
    assert encode(nfs3.READDIR3res, v) == expected
    assert decode(nfs3.READDIR3res, expected) == v


def test_mountres3_bytes() -> None:
    ok = Arm(mount.mountstat3.MNT3_OK, mount.mountres3_ok(b"\xde\xad\xbe\xef", [1, 0]))
    expected = h("00000000 00000004 deadbeef 00000002 00000001 00000000")
    assert encode(mount.mountres3, ok) == expected
    assert decode(mount.mountres3, expected) == ok
    denied = Arm(mount.mountstat3.MNT3ERR_ACCES)
    assert encode(mount.mountres3, denied) == h("0000000d")
    assert decode(mount.mountres3, h("0000000d")) == denied


def test_pmap_mapping_bytes() -> None:
    m = portmap.mapping(nfs3.NFS_PROGRAM, 3, portmap.IPPROTO_TCP, 2049)
    expected = h("000186a3 00000003 00000006 00000801")
    assert encode(portmap.mapping, m) == expected
    assert decode(portmap.mapping, expected) == m
    assert encode(portmap.pmaplist, [m]) == h("00000001") + expected + h("00000000")


def test_rpc_call_header_bytes() -> None:
    null = rpc.opaque_auth(rpc.auth_flavor.AUTH_NONE, b"")
    msg = rpc.rpc_msg(
        0x12345678,
        Arm(rpc.msg_type.CALL, rpc.call_body(rpc.RPC_VERS, 100003, 3, 1, null, null)),
    )
    expected = h(
        "12345678 00000000 00000002 000186a3 00000003 00000001 00000000 00000000 00000000 00000000"
    )
    assert encode(rpc.rpc_msg, msg) == expected
    assert decode(rpc.rpc_msg, expected) == msg


# --- Decode errors ---


def _u32(*xs: int) -> bytes:
    return struct.pack(f">{len(xs)}I", *xs)


def test_overlong_name_rejected() -> None:
    fh = _u32(4) + b"abcd"
    assert decode(nfs3.LOOKUP3args, fh + _u32(1024) + b"n" * 1024).what.name == b"n" * 1024
    with pytest.raises(XdrError):
        decode(nfs3.LOOKUP3args, fh + _u32(1025) + b"n" * 1028)
    with pytest.raises(XdrError):
        encode(nfs3.LOOKUP3args, nfs3.LOOKUP3args(nfs3.diropargs3(nfs_fh3(b"ab"), b"n" * 1025)))
    with pytest.raises(XdrError):
        decode(nfs3.READLINK3res, _u32(0, 0, 4097) + b"p" * 4100)
    with pytest.raises(XdrError):  # a length beyond the input
        decode(nfs3.LOOKUP3args, fh + _u32(1000) + b"n" * 8)


def test_overlong_handle_rejected() -> None:
    assert decode(nfs3.GETATTR3args, _u32(64) + b"h" * 64) == nfs3.GETATTR3args(nfs_fh3(b"h" * 64))
    with pytest.raises(XdrError):
        decode(nfs3.GETATTR3args, _u32(65) + b"h" * 68)
    with pytest.raises(XdrError):
        encode(nfs3.GETATTR3args, nfs3.GETATTR3args(nfs_fh3(b"h" * 65)))
    with pytest.raises(XdrError):
        decode(mount.mountres3, _u32(0, 65) + b"h" * 68 + _u32(0))


def test_bad_enum_values_rejected() -> None:
    with pytest.raises(XdrError):  # 3 is not an nfsstat3
        decode(nfs3.GETATTR3res, _u32(3))
    good = encode(nfs3.GETATTR3res, Arm(OK, nfs3.GETATTR3resok(ATTR)))
    for bad_type in (0, 8, 0xFFFFFFFF):  # ftype3, through the fast decoder
        with pytest.raises(XdrError):
            decode(nfs3.GETATTR3res, good[:4] + _u32(bad_type) + good[8:])
    write = encode(nfs3.WRITE3args, nfs3.WRITE3args(FH, 0, 0, stable_how.UNSTABLE, b""))
    with pytest.raises(XdrError):  # stable_how 3
        decode(nfs3.WRITE3args, write[:-8] + _u32(3, 0))
    where = encode(nfs3.diropargs3, WHERE)
    with pytest.raises(XdrError):  # createmode3 3
        decode(nfs3.CREATE3args, where + _u32(3) + bytes(8))
    with pytest.raises(XdrError):  # time_how 3
        decode(nfs3.MKDIR3args, where + _u32(0, 0, 0, 0, 3, 0))
    with pytest.raises(XdrError):  # ftype3 0 in mknoddata3
        decode(nfs3.MKNOD3args, where + _u32(0))
    with pytest.raises(XdrError):
        decode(mount.mountres3, _u32(3))
    with pytest.raises(XdrError):  # reject_stat 2
        decode(rpc.rejected_reply, _u32(2, 0, 0))
    with pytest.raises(XdrError):  # msg_type 2
        decode(rpc.rpc_msg, _u32(1, 2))


def test_bad_bools_rejected() -> None:
    with pytest.raises(XdrError):  # post_op_attr
        decode(nfs3.ACCESS3res, _u32(13, 2))
    with pytest.raises(XdrError):  # pre_op_attr
        decode(nfs3.REMOVE3res, _u32(0, 0xFFFFFFFF, 0))
    with pytest.raises(XdrError):  # READ3resok.eof
        decode(nfs3.READ3res, _u32(0, 0, 0, 2, 0))
    with pytest.raises(XdrError):  # entry3 list continuation
        decode(nfs3.READDIR3res, _u32(0, 0, 0, 0, 2, 1))
    with pytest.raises(XdrError):  # set_mode3 in sattr3
        decode(nfs3.MKDIR3args, encode(nfs3.diropargs3, WHERE) + _u32(7, 0, 0, 0, 0, 0))
    with pytest.raises(XdrError):  # sattrguard3
        decode(nfs3.SETATTR3args, encode(nfs_fh3, FH) + _u32(0, 0, 0, 0, 0, 0, 5))


def test_sattr3_defaults_are_dont_change() -> None:
    assert encode(sattr3, sattr3()) == bytes(24)
    assert sattr3().atime == sattr3().mtime == DONT_CHANGE == Arm(time_how.DONT_CHANGE, None)


# --- Fast fattr3 / wcc_attr encoders ---

FATTRS = [
    ATTR,
    DIRATTR,
    CHRATTR,
    fattr3(
        ftype3.NF3FIFO,
        0xFFFFFFFF,
        0xFFFFFFFF,
        0xFFFFFFFF,
        0xFFFFFFFF,
        2**64 - 1,
        2**64 - 1,
        specdata3(0xFFFFFFFF, 0xFFFFFFFF),
        2**64 - 1,
        2**64 - 1,
        nfstime3(0xFFFFFFFF, 0xFFFFFFFF),
        nfstime3(0, 0),
        nfstime3(0xFFFFFFFF, 0),
    ),
    fattr3(ftype3.NF3LNK, 0, 0, 0, 0, 0, 0, specdata3(0, 0), 0, 0, T1, T2, T1),
]


@pytest.mark.parametrize("attr", FATTRS)
def test_fast_fattr3_matches_generic(attr: fattr3) -> None:
    slow = generic(fattr3)
    fast = as_type(fattr3)
    assert isinstance(fast, Fattr3Type)
    data = encode(slow, attr)
    assert len(data) == 84
    assert encode(fast, attr) == data
    assert decode(fast, data) == decode(slow, data) == attr
    assert type(decode(fast, data).type) is ftype3


def test_fast_wcc_attr_matches_generic() -> None:
    slow = generic(wcc_attr)
    fast = as_type(wcc_attr)
    assert isinstance(fast, WccAttrType)
    for v in (WCC_ATTR, wcc_attr(0, nfstime3(0, 0), nfstime3(0, 0)), wcc_attr(2**64 - 1, T2, T2)):
        data = encode(slow, v)
        assert len(data) == 24
        assert encode(fast, v) == data
        assert decode(fast, data) == decode(slow, data) == v


def test_fast_encoders_are_used_by_containing_types() -> None:
    assert isinstance(nfs3.post_op_attr.inner, Fattr3Type)
    assert isinstance(nfs3.pre_op_attr.inner, WccAttrType)
    specs = dict(as_type(nfs3.GETATTR3resok).specs)
    assert isinstance(specs["obj_attributes"], Fattr3Type)


def test_fast_encoders_range_errors() -> None:
    for bad in (
        dataclasses.replace(ATTR, mode=2**32),
        dataclasses.replace(ATTR, size=-1),
        dataclasses.replace(ATTR, atime=nfstime3(2**32, 0)),
    ):
        with pytest.raises(XdrError):
            encode(fattr3, bad)
        with pytest.raises(XdrError):
            encode(generic(fattr3), bad)
    with pytest.raises(XdrError):
        encode(wcc_attr, wcc_attr(2**64, T1, T1))
    with pytest.raises(XdrError):
        decode(fattr3, bytes(83))
    u = Unpacker(bytes(20))
    with pytest.raises((XdrError, EOFError)):
        as_type(wcc_attr).unpack(u)
    p = Packer()
    as_type(wcc_attr).pack(p, WCC_ATTR)
    assert p.get_buffer() == encode(generic(wcc_attr), WCC_ATTR)


# --- RPC ---


def test_rpc_roundtrips() -> None:
    cred = rpc.opaque_auth(
        rpc.auth_flavor.AUTH_SYS,
        encode(rpc.authsys_parms, rpc.authsys_parms(1, b"host", 1000, 1000, [1000, 4, 24])),
    )
    verf = rpc.opaque_auth(rpc.auth_flavor.AUTH_NONE, b"")
    cases: list[tuple[Any, Any]] = [
        (
            rpc.rpc_msg,
            rpc.rpc_msg(1, Arm(rpc.msg_type.CALL, rpc.call_body(2, 1, 2, 3, cred, verf))),
        ),
        (
            rpc.rpc_msg,
            rpc.rpc_msg(
                2,
                Arm(
                    rpc.msg_type.REPLY,
                    Arm(
                        rpc.reply_stat.MSG_ACCEPTED,
                        rpc.accepted_reply(verf, Arm(rpc.accept_stat.SUCCESS)),
                    ),
                ),
            ),
        ),
        (
            rpc.accepted_reply,
            rpc.accepted_reply(verf, Arm(rpc.accept_stat.PROG_MISMATCH, rpc.mismatch_info(3, 3))),
        ),
        (rpc.accepted_reply, rpc.accepted_reply(verf, Arm(rpc.accept_stat.PROG_UNAVAIL))),
        (rpc.accepted_reply, rpc.accepted_reply(verf, Arm(rpc.accept_stat.PROC_UNAVAIL))),
        (rpc.accepted_reply, rpc.accepted_reply(verf, Arm(rpc.accept_stat.GARBAGE_ARGS))),
        (rpc.accepted_reply, rpc.accepted_reply(verf, Arm(rpc.accept_stat.SYSTEM_ERR))),
        (rpc.rejected_reply, Arm(rpc.reject_stat.RPC_MISMATCH, rpc.mismatch_info(2, 2))),
        (rpc.rejected_reply, Arm(rpc.reject_stat.AUTH_ERROR, rpc.auth_stat.AUTH_TOOWEAK)),
        (
            rpc.rejected_reply,
            Arm(rpc.reject_stat.AUTH_ERROR, rpc.auth_stat.RPCSEC_GSS_CTXPROBLEM),
        ),
        (rpc.authsys_parms, rpc.authsys_parms(0, b"", 0, 0, [])),
        (rpc.authsys_parms, rpc.authsys_parms(5, b"m" * 255, 1, 2, list(range(16)))),
    ]
    for t, v in cases:
        roundtrip(t, v)
    assert rpc.RPC_VERS == 2
    assert int(rpc.auth_stat.RPCSEC_GSS_CTXPROBLEM) == 14
    assert int(rpc.auth_flavor.RPCSEC_GSS) == 6


def test_rpc_decode_errors() -> None:
    # Unknown flavors decode (the server rejects them with an auth error, not garbage).
    assert decode(rpc.opaque_auth, _u32(390004, 0)) == rpc.opaque_auth(390004, b"")
    with pytest.raises(XdrError):
        decode(rpc.opaque_auth, _u32(1, 401) + bytes(404))
    assert decode(rpc.opaque_auth, _u32(1, 400) + bytes(400)).body == bytes(400)
    with pytest.raises(XdrError):  # 17 groups
        decode(rpc.authsys_parms, _u32(0, 0, 0, 0, 17) + bytes(68))
    with pytest.raises(XdrError):  # machine name of 256 bytes
        decode(rpc.authsys_parms, _u32(0, 256) + bytes(256) + _u32(0, 0, 0))
    with pytest.raises(XdrError):  # auth_stat 15
        decode(rpc.rejected_reply, _u32(1, 15))


# --- MOUNT ---


def test_mount_roundtrips() -> None:
    roundtrip(mount.dirpath, b"/export/home")
    roundtrip(mount.mountres3, Arm(mount.mountstat3.MNT3_OK, mount.mountres3_ok(b"f" * 64, [])))
    roundtrip(mount.mountres3, Arm(mount.mountstat3.MNT3ERR_NOENT))
    roundtrip(mount.mountres3, Arm(mount.mountstat3.MNT3ERR_SERVERFAULT))
    roundtrip(
        mount.mountlist,
        [mount.mountbody(b"client1", b"/a"), mount.mountbody(b"client2", b"/b/c")],
    )
    roundtrip(mount.mountlist, [])
    roundtrip(
        mount.exports,
        [
            mount.exportnode(b"/", []),
            mount.exportnode(b"/pub", [mount.groupnode(b"*"), mount.groupnode(b"10.0.0.0/8")]),
        ],
    )
    assert encode(mount.exports, [mount.exportnode(b"/", [])]) == h(
        "00000001 00000001 2f000000 00000000 00000000"
    )
    with pytest.raises(XdrError):
        decode(mount.dirpath, _u32(1025) + bytes(1028))
    with pytest.raises(XdrError):
        decode(mount.mountlist, _u32(1, 256) + bytes(256) + _u32(0, 0))
    assert (mount.MOUNT_PROGRAM, mount.MOUNT_V3, mount.MOUNT_V1) == (100005, 3, 1)
    assert sorted(mount.PROCEDURES) == list(range(6))
    assert mount.PROCEDURES[mount.MOUNTPROC3.MNT] == ("MNT", mount.dirpath, mount.mountres3)


# --- Portmap / rpcbind ---


def test_portmap_roundtrips() -> None:
    m = portmap.mapping(100005, 3, portmap.IPPROTO_UDP, 20048)
    roundtrip(portmap.pmaplist, [m, portmap.mapping(100003, 3, portmap.IPPROTO_TCP, 2049)])
    roundtrip(portmap.call_args, portmap.call_args(100003, 3, 0, b""))
    roundtrip(portmap.call_result, portmap.call_result(2049, b"\x01\x02"))
    r = portmap.rpcb(100003, 3, b"tcp", b"0.0.0.0.8.1", b"superuser")
    roundtrip(portmap.rpcb, r)
    roundtrip(portmap.rpcblist_ptr, [r, portmap.rpcb(100003, 3, b"tcp6", b"::.8.1", b"")])
    roundtrip(portmap.rpcb_rmtcallargs, portmap.rpcb_rmtcallargs(1, 2, 3, b"args"))
    roundtrip(portmap.rpcb_rmtcallres, portmap.rpcb_rmtcallres(b"127.0.0.1.8.1", b"res"))
    roundtrip(portmap.netbuf, portmap.netbuf(16, b"\x00\x02\x08\x01\x7f\x00\x00\x01"))
    roundtrip(
        portmap.rpcb_entry_list_ptr,
        [portmap.rpcb_entry(b"127.0.0.1.8.1", b"tcp", portmap.NC_TPI_COTS_ORD, b"inet", b"tcp")],
    )
    stat = portmap.rpcb_stat(
        list(range(13)),
        1,
        0,
        [portmap.rpcbs_addrlist(100003, 3, 5, 1, b"tcp")],
        [portmap.rpcbs_rmtcalllist(100003, 3, 0, 1, 0, 1, b"udp")],
    )
    empty = portmap.rpcb_stat([0] * 13, 0, 0, [], [])
    roundtrip(portmap.rpcb_stat_byvers, [stat, empty, empty])
    with pytest.raises(XdrError):
        encode(portmap.rpcb_stat_byvers, [stat])
    assert portmap.PMAP_PROG == portmap.RPCBPROG == 100000
    assert sorted(portmap.PMAP_PROCEDURES) == list(range(6))
    assert sorted(portmap.RPCB3_PROCEDURES) == list(range(9))
    assert sorted(portmap.RPCB4_PROCEDURES) == list(range(13))
    assert portmap.RPCB4_PROCEDURES[5][0] == "BCAST"
    assert portmap.RPCB3_PROCEDURES[5][0] == "CALLIT"


def test_uaddr() -> None:
    assert portmap.uaddr("127.0.0.1", 2049) == "127.0.0.1.8.1"
    assert portmap.uaddr("::1", 111) == "::1.0.111"
    assert portmap.parse_uaddr("127.0.0.1.8.1") == ("127.0.0.1", 2049)
    assert portmap.parse_uaddr(b"0.0.0.0.0.111") == ("0.0.0.0", 111)
    assert portmap.parse_uaddr("fe80::1.255.255") == ("fe80::1", 65535)
    for host, port in (("10.1.2.3", 0), ("::", 65535), ("192.168.0.1", 20048)):
        assert portmap.parse_uaddr(portmap.uaddr(host, port)) == (host, port)
    for junk in (
        "",
        "127.0.0.1",
        "127.0.0.1.8",
        "127.0.0.1.8.256",
        "127.0.0.1.-1.1",
        "127.0.0.1.8.x",
        "host.name.8.1",
        "1.2.3.8.1",
        "127.0.0.1.8.0001",
        "127.0.0.1.8.\u0661",
        b"\xff.1.2",
    ):
        with pytest.raises(ValueError):
            portmap.parse_uaddr(junk)
    for host, port in (("127.0.0.1", 65536), ("127.0.0.1", -1), ("localhost", 1)):
        with pytest.raises(ValueError):
            portmap.uaddr(host, port)
