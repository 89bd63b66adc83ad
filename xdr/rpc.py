"""ONC RPC version 2 message protocol, transcribed from RFC 5531 (sections 8 and 9, appendix A).

Every enum, struct and union of the RFC's message protocol is declared here once, named as the
RFC names it. The anonymous unions inside `rpc_msg` and `accepted_reply` get the names
`rpc_msg_body` and `accepted_reply_data` (their field names in the RFC are `body` and
`reply_data`).

A call message on the wire is an `rpc_msg` whose `call_body` is followed by the procedure's
arguments; a successful reply's `accepted_reply` (arm SUCCESS, `opaque results[0]`) is followed
by the procedure's results. Decode such messages with an `Unpacker` and continue from its
position, rather than with `decode()`, which rejects trailing bytes.
"""

from __future__ import annotations

from enum import IntEnum

from .codec import Arm, Array, Enum, Opaque, String, Union, uint32, void, xdr_struct, xf

RPC_VERS = 2
"""The RPC protocol version, `rpcvers` of every call (RFC 5531 section 9)."""

MAX_AUTH_BYTES = 400
"""Upper bound of `opaque_auth.body` (RFC 5531 section 8.2, `opaque body<400>`)."""

AUTHSYS_MACHINENAME_MAX = 255
AUTHSYS_NGRPS = 16


class auth_flavor(IntEnum):
    AUTH_NONE = 0
    AUTH_SYS = 1
    AUTH_SHORT = 2
    AUTH_DH = 3
    RPCSEC_GSS = 6


class msg_type(IntEnum):
    CALL = 0
    REPLY = 1


class reply_stat(IntEnum):
    MSG_ACCEPTED = 0
    MSG_DENIED = 1


class accept_stat(IntEnum):
    SUCCESS = 0
    PROG_UNAVAIL = 1
    PROG_MISMATCH = 2
    PROC_UNAVAIL = 3
    GARBAGE_ARGS = 4
    SYSTEM_ERR = 5


class reject_stat(IntEnum):
    RPC_MISMATCH = 0
    AUTH_ERROR = 1


class auth_stat(IntEnum):
    AUTH_OK = 0
    # failed at remote end
    AUTH_BADCRED = 1
    AUTH_REJECTEDCRED = 2
    AUTH_BADVERF = 3
    AUTH_REJECTEDVERF = 4
    AUTH_TOOWEAK = 5
    # failed locally
    AUTH_INVALIDRESP = 6
    AUTH_FAILED = 7
    # AUTH_KERB errors; deprecated
    AUTH_KERB_GENERIC = 8
    AUTH_TIMEEXPIRE = 9
    AUTH_TKT_FILE = 10
    AUTH_DECODE = 11
    AUTH_NET_ADDR = 12
    # RPCSEC_GSS GSS related errors
    RPCSEC_GSS_CREDPROBLEM = 13
    RPCSEC_GSS_CTXPROBLEM = 14


@xdr_struct
class opaque_auth:
    # Declared `auth_flavor flavor` in the RFC; a plain uint32 here so that credentials of
    # flavors this module does not list still decode (the server answers AUTH_BADCRED/TOOWEAK).
    flavor: int = xf(uint32)
    body: bytes = xf(Opaque(MAX_AUTH_BYTES))


@xdr_struct
class authsys_parms:
    stamp: int = xf(uint32)
    machinename: bytes = xf(String(AUTHSYS_MACHINENAME_MAX))
    uid: int = xf(uint32)
    gid: int = xf(uint32)
    gids: list[int] = xf(Array(uint32, AUTHSYS_NGRPS))


@xdr_struct
class call_body:
    rpcvers: int = xf(uint32)
    prog: int = xf(uint32)
    vers: int = xf(uint32)
    proc: int = xf(uint32)
    cred: opaque_auth = xf(opaque_auth)
    verf: opaque_auth = xf(opaque_auth)
    # procedure-specific parameters start here


@xdr_struct
class mismatch_info:
    low: int = xf(uint32)
    high: int = xf(uint32)


accepted_reply_data = Union(
    Enum(accept_stat),
    {
        # `opaque results[0]`: the procedure-specific results follow the reply header.
        accept_stat.SUCCESS: void,
        accept_stat.PROG_MISMATCH: mismatch_info,
    },
    default=void,
)
"""The anonymous `reply_data` union of `accepted_reply`."""


@xdr_struct
class accepted_reply:
    verf: opaque_auth = xf(opaque_auth)
    reply_data: Arm = xf(accepted_reply_data)


rejected_reply = Union(
    Enum(reject_stat),
    {
        reject_stat.RPC_MISMATCH: mismatch_info,
        reject_stat.AUTH_ERROR: Enum(auth_stat),
    },
)

reply_body = Union(
    Enum(reply_stat),
    {
        reply_stat.MSG_ACCEPTED: accepted_reply,
        reply_stat.MSG_DENIED: rejected_reply,
    },
)

rpc_msg_body = Union(
    Enum(msg_type),
    {
        msg_type.CALL: call_body,
        msg_type.REPLY: reply_body,
    },
)
"""The anonymous `body` union of `rpc_msg`."""


@xdr_struct
class rpc_msg:
    xid: int = xf(uint32)
    body: Arm = xf(rpc_msg_body)
