"""Port mapper (version 2) and rpcbind (versions 3 and 4), transcribed from RFC 1833.

Program 100000 answers both protocols: version 2 is the port mapper (section 3), versions 3
and 4 are rpcbind (section 2), which speaks in netids and universal addresses. `uaddr` and
`parse_uaddr` convert between (host, port) and the universal address form of TCP/UDP over
IPv4/IPv6, "h1.h2.h3.h4.p1.p2" (section 2.2 and RFC 5665).

Linked lists (`struct X { ...; X *next; }`) are declared as the element struct without its
`next` pointer, wrapped in `LinkedList`, so they decode to Python lists.
"""

from __future__ import annotations

import ipaddress
from enum import IntEnum
from typing import Any

from .codec import (
    LinkedList,
    Opaque,
    Packer,
    String,
    Unpacker,
    XdrError,
    XdrType,
    as_type,
    boolean,
    int32,
    uint32,
    void,
    xdr_struct,
    xf,
)

# --- Port mapper, version 2 (RFC 1833 section 3) ---

PMAP_PORT = 111
PMAP_PROG = 100000
PMAP_VERS = 2

IPPROTO_TCP = 6
IPPROTO_UDP = 17


class PMAPPROC(IntEnum):
    NULL = 0
    SET = 1
    UNSET = 2
    GETPORT = 3
    DUMP = 4
    CALLIT = 5


@xdr_struct
class mapping:
    prog: int = xf(uint32)
    vers: int = xf(uint32)
    prot: int = xf(uint32)
    port: int = xf(uint32)


pmaplist = LinkedList(mapping)
"""`struct pmaplist { mapping map; pmaplist *next; }`, as a list of `mapping`."""
pmaplist_ptr = pmaplist


@xdr_struct
class call_args:
    prog: int = xf(uint32)
    vers: int = xf(uint32)
    proc: int = xf(uint32)
    args: bytes = xf(Opaque())


@xdr_struct
class call_result:
    port: int = xf(uint32)
    res: bytes = xf(Opaque())


PMAP_PROCEDURES: dict[int, tuple[str, XdrType[Any], XdrType[Any]]] = {
    PMAPPROC.NULL: ("NULL", void, void),
    PMAPPROC.SET: ("SET", as_type(mapping), boolean),
    PMAPPROC.UNSET: ("UNSET", as_type(mapping), boolean),
    PMAPPROC.GETPORT: ("GETPORT", as_type(mapping), uint32),
    PMAPPROC.DUMP: ("DUMP", void, pmaplist_ptr),
    PMAPPROC.CALLIT: ("CALLIT", as_type(call_args), as_type(call_result)),
}
"""Port mapper v2 procedure number -> (RFC name, argument type, result type)."""

# --- rpcbind, versions 3 and 4 (RFC 1833 section 2) ---

RPCB_PORT = PMAP_PORT  # rpcbind answers where the portmapper did
RPCBPROG = PMAP_PROG  # one program: rpcbind is the portmapper at versions 3 and 4
RPCBVERS = 3
RPCBVERS4 = 4

# Procedures of both versions.
RPCBPROC_NULL = 0
RPCBPROC_SET = 1
RPCBPROC_UNSET = 2
RPCBPROC_GETADDR = 3
RPCBPROC_DUMP = 4
RPCBPROC_CALLIT = 5  # version 3 only
RPCBPROC_BCAST = 5  # version 4: CALLIT renamed
RPCBPROC_GETTIME = 6
RPCBPROC_UADDR2TADDR = 7
RPCBPROC_TADDR2UADDR = 8
# Version 4 only.
RPCBPROC_GETVERSADDR = 9
RPCBPROC_INDIRECT = 10
RPCBPROC_GETADDRLIST = 11
RPCBPROC_GETSTAT = 12

# Values of rpcb_entry.r_nc_semantics (the netconfig transport semantics).
NC_TPI_CLTS = 1
NC_TPI_COTS = 2
NC_TPI_COTS_ORD = 3
NC_TPI_RAW = 4

# rpcbind statistics
rpcb_highproc_2 = PMAPPROC.CALLIT.value
rpcb_highproc_3 = RPCBPROC_TADDR2UADDR
rpcb_highproc_4 = RPCBPROC_GETSTAT
RPCBSTAT_HIGHPROC = 13
RPCBVERS_STAT = 3
RPCBVERS_4_STAT = 2
RPCBVERS_3_STAT = 1
RPCBVERS_2_STAT = 0


class _FixedArray(XdrType[list[Any]]):
    """Fixed-length array `T name[n]` (not provided by the codec)."""

    def __init__(self, inner: Any, size: int) -> None:
        self.inner = as_type(inner)
        self.size = size

    def pack(self, p: Packer, v: list[Any]) -> None:
        if len(v) != self.size:
            raise XdrError(f"expected {self.size} elements")
        for item in v:
            self.inner.pack(p, item)

    def unpack(self, u: Unpacker) -> list[Any]:
        return [self.inner.unpack(u) for _ in range(self.size)]


@xdr_struct
class rpcb:
    r_prog: int = xf(uint32)
    r_vers: int = xf(uint32)
    r_netid: bytes = xf(String())
    r_addr: bytes = xf(String())
    r_owner: bytes = xf(String())


rpcblist_ptr = LinkedList(rpcb)
"""`struct rp__list { rpcb rpcb_map; rp__list *rpcb_next; }` pointer, as a list of `rpcb`."""


@xdr_struct
class rpcb_rmtcallargs:
    prog: int = xf(uint32)
    vers: int = xf(uint32)
    proc: int = xf(uint32)
    args: bytes = xf(Opaque())


@xdr_struct
class rpcb_rmtcallres:
    addr: bytes = xf(String())
    results: bytes = xf(Opaque())


@xdr_struct
class rpcb_entry:
    r_maddr: bytes = xf(String())
    r_nc_netid: bytes = xf(String())
    r_nc_semantics: int = xf(uint32)
    r_nc_protofmly: bytes = xf(String())
    r_nc_proto: bytes = xf(String())


rpcb_entry_list_ptr = LinkedList(rpcb_entry)
"""`struct rpcb_entry_list { rpcb_entry rpcb_entry_map; ... *rpcb_entry_next; }` pointer."""


@xdr_struct
class rpcbs_addrlist:
    prog: int = xf(uint32)
    vers: int = xf(uint32)
    success: int = xf(int32)
    failure: int = xf(int32)
    netid: bytes = xf(String())


@xdr_struct
class rpcbs_rmtcalllist:
    prog: int = xf(uint32)
    vers: int = xf(uint32)
    proc: int = xf(uint32)
    success: int = xf(int32)
    failure: int = xf(int32)
    indirect: int = xf(int32)
    netid: bytes = xf(String())


rpcbs_proc = _FixedArray(int32, RPCBSTAT_HIGHPROC)
rpcbs_addrlist_ptr = LinkedList(rpcbs_addrlist)
rpcbs_rmtcalllist_ptr = LinkedList(rpcbs_rmtcalllist)


@xdr_struct
class rpcb_stat:
    info: list[int] = xf(rpcbs_proc)
    setinfo: int = xf(int32)
    unsetinfo: int = xf(int32)
    addrinfo: list[rpcbs_addrlist] = xf(rpcbs_addrlist_ptr)
    rmtinfo: list[rpcbs_rmtcalllist] = xf(rpcbs_rmtcalllist_ptr)


rpcb_stat_byvers = _FixedArray(rpcb_stat, RPCBVERS_STAT)


@xdr_struct
class netbuf:
    maxlen: int = xf(uint32)
    buf: bytes = xf(Opaque())


_str = String()

RPCB3_PROCEDURES: dict[int, tuple[str, XdrType[Any], XdrType[Any]]] = {
    RPCBPROC_NULL: ("NULL", void, void),
    RPCBPROC_SET: ("SET", as_type(rpcb), boolean),
    RPCBPROC_UNSET: ("UNSET", as_type(rpcb), boolean),
    RPCBPROC_GETADDR: ("GETADDR", as_type(rpcb), _str),
    RPCBPROC_DUMP: ("DUMP", void, rpcblist_ptr),
    RPCBPROC_CALLIT: ("CALLIT", as_type(rpcb_rmtcallargs), as_type(rpcb_rmtcallres)),
    RPCBPROC_GETTIME: ("GETTIME", void, uint32),
    RPCBPROC_UADDR2TADDR: ("UADDR2TADDR", _str, as_type(netbuf)),
    RPCBPROC_TADDR2UADDR: ("TADDR2UADDR", as_type(netbuf), _str),
}
"""rpcbind v3 procedure number -> (RFC name without RPCBPROC_, argument type, result type)."""

RPCB4_PROCEDURES: dict[int, tuple[str, XdrType[Any], XdrType[Any]]] = {
    **RPCB3_PROCEDURES,
    RPCBPROC_BCAST: ("BCAST", as_type(rpcb_rmtcallargs), as_type(rpcb_rmtcallres)),
    RPCBPROC_GETVERSADDR: ("GETVERSADDR", as_type(rpcb), _str),
    RPCBPROC_INDIRECT: ("INDIRECT", as_type(rpcb_rmtcallargs), as_type(rpcb_rmtcallres)),
    RPCBPROC_GETADDRLIST: ("GETADDRLIST", as_type(rpcb), rpcb_entry_list_ptr),
    RPCBPROC_GETSTAT: ("GETSTAT", void, rpcb_stat_byvers),
}
"""rpcbind v4 procedure number -> (RFC name without RPCBPROC_, argument type, result type)."""


# --- Universal addresses ---


def uaddr(host: str, port: int) -> str:
    """The universal address of an IPv4/IPv6 `host` and TCP/UDP `port`: "127.0.0.1.8.1"."""
    ipaddress.ip_address(host)  # ValueError unless an IP address literal
    if not 0 <= port <= 0xFFFF:
        raise ValueError(f"port {port} out of range")
    return f"{host}.{port >> 8}.{port & 0xFF}"


def parse_uaddr(s: str | bytes) -> tuple[str, int]:
    """Split a TCP/UDP universal address into (host, port); ValueError if it is not one."""
    if isinstance(s, bytes | bytearray | memoryview):
        s = bytes(s).decode("ascii")  # UnicodeDecodeError is a ValueError
    parts = s.rsplit(".", 2)
    if len(parts) != 3:
        raise ValueError(f"not a universal address: {s!r}")
    host, hi, lo = parts
    for octet in (hi, lo):
        if not (octet.isascii() and octet.isdigit() and len(octet) <= 3 and int(octet) <= 255):
            raise ValueError(f"bad port in universal address: {s!r}")
    ipaddress.ip_address(host)  # ValueError unless an IP address literal
    return host, int(hi) << 8 | int(lo)
