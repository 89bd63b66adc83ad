"""The hand-tuned encoders give exactly the bytes of the declarative XDR types."""

from __future__ import annotations

import pytest

from xdr.codec import Arm, encode
from xdr.nfs3 import (
    FATTR3_CODEC,
    WCC_ATTR_CODEC,
    ACCESS3res,
    ACCESS3resok,
    GETATTR3res,
    GETATTR3resok,
    LOOKUP3res,
    LOOKUP3resok,
    READ3res,
    READ3resok,
    READDIR3res,
    READDIR3resok,
    READDIRPLUS3res,
    READDIRPLUS3resok,
    dirlist3,
    dirlistplus3,
    encode_access3res_ok,
    encode_getattr3res_ok,
    encode_lookup3res_ok,
    encode_read3res_ok,
    encode_readdir3res_ok,
    encode_readdirplus3res_ok,
    entry3,
    entryplus3,
    fattr3,
    ftype3,
    nfs_fh3,
    nfsstat3,
    nfstime3,
    pre_op_attr,
    specdata3,
    wcc_attr,
)

pytestmark = pytest.mark.inproc

ATTRS = fattr3(
    ftype3.NF3REG,
    0o644,
    1,
    1000,
    1000,
    5,
    4096,
    specdata3(0, 0),
    7,
    42,
    nfstime3(1, 2),
    nfstime3(3, 4),
    nfstime3(5, 6),
)


def test_read_reply_buffers_equal_packed_result_for_every_padding():
    for size in range(9):
        data = bytes(range(size))
        for attrs in (ATTRS, None):
            res = READ3resok(attrs, size, size < 4, data)
            gathered = b"".join(bytes(p) for p in encode_read3res_ok(res))
            assert gathered == encode(READ3res, Arm(nfsstat3.NFS3_OK, res))


def test_read_reply_keeps_the_data_buffer_itself():
    data = bytearray(b"x" * 1024)
    parts = encode_read3res_ok(READ3resok(ATTRS, len(data), True, data))
    assert parts[1] is data  # sent as it is: no copy of bulk data


def test_authsys_fast_parser_agrees_with_the_declared_type_and_rejects_damage():
    from xdr.rpc import authsys_parms
    from xdr.rpc_fast import BadCredential, _parse_authsys

    for name, gids in [(b"", []), (b"abc", [1, 2, 3]), (b"x" * 255, list(range(16)))]:
        body = encode(authsys_parms, authsys_parms(7, name, 5, 6, gids))
        cred = _parse_authsys(body)
        assert (cred.uid, cred.gid, cred.gids, cred.machinename) == (5, 6, gids, name)
        for cut in range(len(body)):
            with pytest.raises(BadCredential):
                _parse_authsys(body[:cut])
        with pytest.raises(BadCredential):
            _parse_authsys(body + b"\0\0\0\0")
    too_many = encode(authsys_parms, authsys_parms(0, b"", 0, 0, list(range(16))))
    too_many = too_many[:16] + (17).to_bytes(4, "big") + too_many[20:] + b"\0\0\0\0"
    with pytest.raises(BadCredential):
        _parse_authsys(too_many)


def _fattr_bytes(a: fattr3) -> bytes:
    return FATTR3_CODEC.pack(
        a.type,
        a.mode,
        a.nlink,
        a.uid,
        a.gid,
        a.size,
        a.used,
        a.rdev.specdata1,
        a.rdev.specdata2,
        a.fsid,
        a.fileid,
        a.atime.seconds,
        a.atime.nseconds,
        a.mtime.seconds,
        a.mtime.nseconds,
        a.ctime.seconds,
        a.ctime.nseconds,
    )


def test_preencoded_attributes_pack_as_the_declared_types_do():
    assert encode(fattr3, _fattr_bytes(ATTRS)) == encode(fattr3, ATTRS)
    before = wcc_attr(5, nfstime3(3, 4), nfstime3(5, 6))
    raw = WCC_ATTR_CODEC.pack(5, 3, 4, 5, 6)
    assert encode(pre_op_attr, raw) == encode(pre_op_attr, before)


@pytest.mark.parametrize("eof", [True, False])
def test_directory_replies_equal_the_declared_encoding(eof: bool):
    names = [b"", b"a", b"ab", b"abc", b"abcd", "é".encode() * 3, b"x" * 255]
    verf = bytes(range(8))
    for dir_attrs in (ATTRS, None):
        raw_dir = None if dir_attrs is None else _fattr_bytes(dir_attrs)
        plain = [(i + 10, name, 2**63 - i) for i, name in enumerate(names)]
        expected = encode(
            READDIR3res,
            Arm(
                nfsstat3.NFS3_OK,
                READDIR3resok(dir_attrs, verf, dirlist3([entry3(*e) for e in plain], eof)),
            ),
        )
        assert encode_readdir3res_ok(raw_dir, verf, plain, eof) == expected
        handles = [bytes(range(n)) for n in (32, 30, 29, 0, 64, 31, 33)]
        plus, declared = [], []
        for (fileid, name, cookie), handle in zip(plain, handles, strict=True):
            attrs = None if fileid % 3 == 0 else ATTRS
            fh = None if fileid % 4 == 0 else handle
            plus.append((fileid, name, cookie, None if attrs is None else _fattr_bytes(attrs), fh))
            declared.append(
                entryplus3(fileid, name, cookie, attrs, None if fh is None else nfs_fh3(fh))
            )
        expected = encode(
            READDIRPLUS3res,
            Arm(nfsstat3.NFS3_OK, READDIRPLUS3resok(dir_attrs, verf, dirlistplus3(declared, eof))),
        )
        assert encode_readdirplus3res_ok(raw_dir, verf, plus, eof) == expected


def test_handle_decoder_agrees_with_the_declared_opaque_and_refuses_damage():
    from xdr.codec import Opaque, XdrError, decode

    for n in (0, 1, 3, 4, 31, 32, 63, 64):
        raw = encode(Opaque(64), bytes(range(n)))
        assert decode(nfs_fh3, raw) == nfs_fh3(bytes(range(n)))
        assert encode(nfs_fh3, nfs_fh3(bytes(range(n)))) == raw
        for cut in range(len(raw)):
            with pytest.raises(XdrError):
                decode(nfs_fh3, raw[:cut])
    with pytest.raises(XdrError):
        decode(nfs_fh3, (65).to_bytes(4, "big") + bytes(68))
    with pytest.raises(XdrError):
        decode(nfs_fh3, (0xFFFFFFFF).to_bytes(4, "big") + bytes(4))


def test_getattr_lookup_and_access_replies_equal_the_declared_encoding():
    raw = _fattr_bytes(ATTRS)
    assert encode_getattr3res_ok(raw) == encode(
        GETATTR3res, Arm(nfsstat3.NFS3_OK, GETATTR3resok(ATTRS))
    )
    for n in (0, 29, 30, 31, 32, 64):
        handle = bytes(range(n))
        for obj, dir_ in ((ATTRS, ATTRS), (None, ATTRS), (ATTRS, None), (None, None)):
            expected = encode(
                LOOKUP3res, Arm(nfsstat3.NFS3_OK, LOOKUP3resok(nfs_fh3(handle), obj, dir_))
            )
            got = encode_lookup3res_ok(
                handle, None if obj is None else raw, None if dir_ is None else raw
            )
            assert got == expected
    for attrs in (ATTRS, None):
        expected = encode(ACCESS3res, Arm(nfsstat3.NFS3_OK, ACCESS3resok(attrs, 0x1F)))
        assert encode_access3res_ok(None if attrs is None else raw, 0x1F) == expected
