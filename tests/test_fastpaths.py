"""The hand-tuned encoders give exactly the bytes of the declarative XDR types."""

from __future__ import annotations

import pytest

from xdr.codec import Arm, encode
from xdr.nfs3 import (
    READ3res,
    READ3resok,
    encode_read3res_ok,
    fattr3,
    ftype3,
    nfsstat3,
    nfstime3,
    specdata3,
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
