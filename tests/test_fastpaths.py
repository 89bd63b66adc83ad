"""The hand-tuned encoders give exactly the bytes of the declarative XDR types."""

from __future__ import annotations

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
