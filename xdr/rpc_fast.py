"""Precompiled encoders and decoders for the RPC headers on the hot path.

Every call and reply passes through here, so the fixed parts of `rpc_msg` (xdr/rpc.py, RFC
5531) are read and written with `struct` in one step. The results are the same bytes as the
declarative types give; tests/test_rpc.py checks that.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from xdr.codec import Unpacker, XdrError, encode
from xdr.rpc import (
    RPC_VERS,
    accept_stat,
    auth_flavor,
    auth_stat,
    authsys_parms,
    msg_type,
    reject_stat,
    reply_stat,
)

_CALL_FIXED = struct.Struct(">6I")  # xid, mtype, rpcvers, prog, vers, proc
_AUTH_HEAD = struct.Struct(">2I")  # flavor, body length
_MAX_AUTH_BODY = 400


@dataclass(slots=True)
class Credential:
    """Who is calling: the AUTH_SYS fields, or nobody for AUTH_NONE."""

    flavor: int = auth_flavor.AUTH_NONE
    uid: int = 65534
    gid: int = 65534
    gids: list[int] = field(default_factory=list)
    machinename: bytes = b""


@dataclass(slots=True)
class CallHeader:
    xid: int
    prog: int
    vers: int
    proc: int
    cred: Credential
    args_offset: int


class NotACall(Exception):
    """Too short to hold a call header, or a reply: nothing to answer."""


class BadRpcVersion(Exception):
    """rpcvers is not 2: answer RPC_MISMATCH."""


class BadCredential(Exception):
    """The credential cannot be accepted: answer AUTH_ERROR with `stat`."""

    def __init__(self, stat: auth_stat) -> None:
        super().__init__(stat.name)
        self.stat = stat


def peek_xid(record: bytes) -> int | None:
    return struct.unpack_from(">I", record)[0] if len(record) >= 4 else None


_PROCEDURE = struct.Struct(">3I")  # prog, vers, proc, after xid, mtype and rpcvers


def peek_procedure(record: bytes) -> tuple[int, int, int] | None:
    """(prog, vers, proc) of a call record, without decoding it; None if too short."""
    if len(record) < 24:
        return None
    return _PROCEDURE.unpack_from(record, 12)


_U32 = struct.Struct(">I")
_IDS = struct.Struct(">3I")  # uid, gid, number of gids
_MAX_MACHINENAME = 255
_MAX_GIDS = 16


def _parse_authsys(body: bytes) -> Credential:
    """authsys_parms (RFC 5531 appendix A) read with struct: on every call, so it matters."""
    try:
        (name_length,) = _U32.unpack_from(body, 4)
        if name_length > _MAX_MACHINENAME:
            raise BadCredential(auth_stat.AUTH_BADCRED)
        pos = 8 + ((name_length + 3) & ~3)
        uid, gid, count = _IDS.unpack_from(body, pos)
        pos += _IDS.size
        if count > _MAX_GIDS or pos + 4 * count != len(body):
            raise BadCredential(auth_stat.AUTH_BADCRED)
        gids = list(struct.unpack_from(f">{count}I", body, pos))
    except struct.error:
        raise BadCredential(auth_stat.AUTH_BADCRED) from None
    return Credential(auth_flavor.AUTH_SYS, uid, gid, gids, bytes(body[8 : 8 + name_length]))


# A client sends the same credential on every call: the fields of the ones seen lately, by
# their bytes (only valid ones are kept).
_authsys_seen: dict[bytes, tuple[int, int, tuple[int, ...], bytes]] = {}
_AUTHSYS_SEEN_MAX = 256


def _authsys(body: bytes) -> Credential:
    if type(body) is not bytes:
        body = bytes(body)
    seen = _authsys_seen.get(body)
    if seen is not None:
        uid, gid, gids, name = seen
        return Credential(auth_flavor.AUTH_SYS, uid, gid, list(gids), name)
    cred = _parse_authsys(body)
    if len(_authsys_seen) >= _AUTHSYS_SEEN_MAX:
        _authsys_seen.clear()
    _authsys_seen[body] = (cred.uid, cred.gid, tuple(cred.gids), cred.machinename)
    return cred


def parse_call(record: bytes) -> CallHeader:
    """Decode the call header; raise NotACall, BadRpcVersion or BadCredential."""
    if len(record) < _CALL_FIXED.size + 2 * _AUTH_HEAD.size:
        raise NotACall("short")
    xid, mtype, rpcvers, prog, vers, proc = _CALL_FIXED.unpack_from(record)
    if mtype != msg_type.CALL:
        raise NotACall("not a call")
    if rpcvers != RPC_VERS:
        raise BadRpcVersion()
    pos = _CALL_FIXED.size
    flavor, length = _AUTH_HEAD.unpack_from(record, pos)
    pos += _AUTH_HEAD.size
    if length > _MAX_AUTH_BODY or pos + length > len(record):
        raise BadCredential(auth_stat.AUTH_BADCRED)
    body = record[pos : pos + length]
    pos += (length + 3) & ~3
    if flavor == auth_flavor.AUTH_SYS:
        cred = _authsys(body)
    elif flavor == auth_flavor.AUTH_NONE:
        cred = Credential()
    else:
        # RPCSEC_GSS, AUTH_DH, ...: not offered by MNT, so a client must not use them.
        raise BadCredential(auth_stat.AUTH_REJECTEDCRED)
    if pos + _AUTH_HEAD.size > len(record):
        raise BadCredential(auth_stat.AUTH_BADVERF)
    _vflavor, vlength = _AUTH_HEAD.unpack_from(record, pos)
    pos += _AUTH_HEAD.size
    if vlength > _MAX_AUTH_BODY or pos + vlength > len(record):
        raise BadCredential(auth_stat.AUTH_BADVERF)
    pos += (vlength + 3) & ~3
    return CallHeader(xid, prog, vers, proc, cred, pos)


# Replies: xid, REPLY, then the accepted or denied body. Our verifier is always AUTH_NONE.
_ACCEPTED = struct.Struct(">6I")  # xid, REPLY, MSG_ACCEPTED, verf flavor, verf len, accept_stat
_MISMATCH = struct.Struct(">8I")  # ... + low, high
_DENIED_RPC = struct.Struct(">6I")  # xid, REPLY, MSG_DENIED, RPC_MISMATCH, low, high
_DENIED_AUTH = struct.Struct(">5I")  # xid, REPLY, MSG_DENIED, AUTH_ERROR, auth_stat


def accepted_reply(xid: int, stat: accept_stat = accept_stat.SUCCESS) -> bytes:
    return _ACCEPTED.pack(
        xid, msg_type.REPLY, reply_stat.MSG_ACCEPTED, auth_flavor.AUTH_NONE, 0, stat
    )


def prog_mismatch_reply(xid: int, low: int, high: int) -> bytes:
    return _MISMATCH.pack(
        xid,
        msg_type.REPLY,
        reply_stat.MSG_ACCEPTED,
        auth_flavor.AUTH_NONE,
        0,
        accept_stat.PROG_MISMATCH,
        low,
        high,
    )


def rpc_mismatch_reply(xid: int) -> bytes:
    return _DENIED_RPC.pack(
        xid, msg_type.REPLY, reply_stat.MSG_DENIED, reject_stat.RPC_MISMATCH, RPC_VERS, RPC_VERS
    )


def auth_error_reply(xid: int, stat: auth_stat) -> bytes:
    return _DENIED_AUTH.pack(
        xid, msg_type.REPLY, reply_stat.MSG_DENIED, reject_stat.AUTH_ERROR, stat
    )


def call_head(xid: int, prog: int, vers: int, proc: int) -> bytes:
    """The fixed start of a call header: xid, CALL, rpcvers and the procedure's numbers."""
    return _CALL_FIXED.pack(xid, msg_type.CALL, RPC_VERS, prog, vers, proc)


def encode_auth(cred: Credential | None = None) -> bytes:
    """The rest of a call header: the credential (AUTH_SYS when one is given) and an
    AUTH_NONE verifier. The same for every call with `cred`, so a client encodes it once."""
    if cred is None or cred.flavor == auth_flavor.AUTH_NONE:
        auth = _AUTH_HEAD.pack(auth_flavor.AUTH_NONE, 0)
    else:
        body = encode(
            authsys_parms, authsys_parms(0, cred.machinename, cred.uid, cred.gid, cred.gids)
        )
        auth = _AUTH_HEAD.pack(auth_flavor.AUTH_SYS, len(body)) + body
    return auth + _AUTH_HEAD.pack(auth_flavor.AUTH_NONE, 0)


def encode_call(xid: int, prog: int, vers: int, proc: int, cred: Credential | None = None) -> bytes:
    """A call header (used by the client), AUTH_SYS when a credential is given."""
    return call_head(xid, prog, vers, proc) + encode_auth(cred)


@dataclass(slots=True)
class ReplyHeader:
    xid: int
    accepted: bool
    stat: int  # accept_stat when accepted, reject_stat otherwise
    detail: tuple[int, ...]  # (low, high) for mismatches, (auth_stat,) for auth errors
    body_offset: int


_REPLY_START = struct.Struct(">5I")  # xid, mtype, reply_stat, verf flavor, verf length
_U32_AT = struct.Struct(">I").unpack_from


def parse_reply(record: bytes) -> ReplyHeader:
    """Decode a reply header (client side); raises XdrError when malformed."""
    # The common case in one step: accepted, an empty verifier, anything but PROG_MISMATCH.
    if len(record) >= 24:
        xid, mtype, rstat, _flavor, vlength = _REPLY_START.unpack_from(record)
        if mtype == msg_type.REPLY and rstat == reply_stat.MSG_ACCEPTED and vlength == 0:
            (stat,) = _U32_AT(record, 20)
            if stat != accept_stat.PROG_MISMATCH:
                return ReplyHeader(xid, True, stat, (), 24)
    u = Unpacker(record)
    try:
        xid, mtype, rstat = u.unpack_uint(), u.unpack_uint(), u.unpack_uint()
        if mtype != msg_type.REPLY:
            raise XdrError("not a reply")
        if rstat == reply_stat.MSG_ACCEPTED:
            u.unpack_uint()
            u.unpack_opaque()
            stat = u.unpack_uint()
            detail: tuple[int, ...] = ()
            if stat == accept_stat.PROG_MISMATCH:
                detail = (u.unpack_uint(), u.unpack_uint())
            return ReplyHeader(xid, True, stat, detail, u.get_position())
        if rstat == reply_stat.MSG_DENIED:
            stat = u.unpack_uint()
            if stat == reject_stat.RPC_MISMATCH:
                detail = (u.unpack_uint(), u.unpack_uint())
            else:
                detail = (u.unpack_uint(),)
            return ReplyHeader(xid, False, stat, detail, u.get_position())
    except EOFError:
        raise XdrError("truncated reply") from None
    raise XdrError("bad reply_stat")
