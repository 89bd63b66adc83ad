"""The portmapper (100000): PMAP v2 and rpcbind v3/v4, as RFC 1833 describes.

Windows `mount.exe` and default Linux/macOS mounts ask port 111 where NFS and MOUNT live.
The registry holds this server's own programs; SET and UNSET are accepted from loopback only
(so other local RPC services can register), never from the network.
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass
from typing import Any

from nfsd.rpc.dispatch import CallContext, Procedure, Program
from xdr.codec import String, boolean, uint32, void
from xdr.portmap import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    PMAP_PROG,
    PMAPPROC,
    RPCBPROC_DUMP,
    RPCBPROC_GETADDR,
    RPCBPROC_GETTIME,
    RPCBPROC_NULL,
    RPCBPROC_SET,
    RPCBPROC_UNSET,
    mapping,
    parse_uaddr,
    pmaplist,
    rpcb,
    rpcblist_ptr,
    uaddr,
)

NETIDS = {IPPROTO_TCP: "tcp", IPPROTO_UDP: "udp"}
PROTOCOLS = {"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP, "tcp6": IPPROTO_TCP, "udp6": IPPROTO_UDP}


@dataclass(frozen=True)
class Registration:
    prog: int
    vers: int
    netid: str  # "tcp", "udp", "tcp6", "udp6"
    host: str
    port: int
    owner: str = "realize"


def _local(ctx: CallContext) -> bool:
    try:
        return ipaddress.ip_address(ctx.client[0]).is_loopback
    except ValueError:
        return False


class Portmapper:
    def __init__(self) -> None:
        self.registrations: dict[tuple[int, int, str], Registration] = {}

    def register(self, reg: Registration) -> None:
        self.registrations[(reg.prog, reg.vers, reg.netid)] = reg

    def unregister(self, prog: int, vers: int, netid: str | None = None) -> bool:
        keys = [
            k
            for k in self.registrations
            if k[0] == prog and k[1] == vers and (netid is None or k[2] == netid)
        ]
        for key in keys:
            del self.registrations[key]
        return bool(keys)

    def find(self, prog: int, vers: int, netid: str) -> Registration | None:
        """The registration of `prog` `vers` on `netid`, else of another version of `prog`.

        Like rpcbind and the classic portmap (and RFC 1833's GETADDR): a client asking for a
        version that is not registered still gets the program's address, calls it, and learns
        the supported versions from the PROG_MISMATCH reply (`rpcinfo -t HOST 100003 4`).
        """
        reg = self.registrations.get((prog, vers, netid))
        if reg is not None:
            return reg
        others = [r for (p, _, n), r in self.registrations.items() if p == prog and n == netid]
        return max(others, key=lambda r: r.vers) if others else None

    def port_of(self, prog: int, vers: int, protocol: int) -> int:
        for netid in (NETIDS.get(protocol, ""), NETIDS.get(protocol, "") + "6"):
            reg = self.find(prog, vers, netid)
            if reg is not None:
                return reg.port
        return 0

    # ---- PMAP v2 ----

    async def null(self, ctx: CallContext, args: Any) -> None:
        return None

    async def pmap_set(self, ctx: CallContext, m: mapping) -> bool:
        netid = NETIDS.get(m.prot)
        if not _local(ctx) or netid is None or (m.prog, m.vers, netid) in self.registrations:
            return False
        self.register(Registration(m.prog, m.vers, netid, "0.0.0.0", m.port, "local"))
        return True

    async def pmap_unset(self, ctx: CallContext, m: mapping) -> bool:
        return _local(ctx) and self.unregister(m.prog, m.vers)

    async def pmap_getport(self, ctx: CallContext, m: mapping) -> int:
        return self.port_of(m.prog, m.vers, m.prot)

    async def pmap_dump(self, ctx: CallContext, args: Any) -> list[mapping]:
        return [
            mapping(r.prog, r.vers, PROTOCOLS[r.netid], r.port)
            for r in self.registrations.values()
            if not r.netid.endswith("6")
        ]

    # ---- rpcbind v3 / v4 ----

    async def rpcb_set(self, ctx: CallContext, r: rpcb) -> bool:
        netid = r.r_netid.decode(errors="replace")
        if not _local(ctx) or netid not in PROTOCOLS:
            return False
        if (r.r_prog, r.r_vers, netid) in self.registrations:
            return False
        try:
            host, port = parse_uaddr(r.r_addr)
        except ValueError:
            return False
        self.register(
            Registration(r.r_prog, r.r_vers, netid, host, port, r.r_owner.decode(errors="replace"))
        )
        return True

    async def rpcb_unset(self, ctx: CallContext, r: rpcb) -> bool:
        netid = r.r_netid.decode(errors="replace") or None
        return _local(ctx) and self.unregister(r.r_prog, r.r_vers, netid)

    async def rpcb_getaddr(self, ctx: CallContext, r: rpcb) -> bytes:
        netid = r.r_netid.decode(errors="replace")
        reg = self.find(r.r_prog, r.r_vers, netid)
        if reg is None:
            return b""
        # A wildcard registration is reached at the address the caller used to ask.
        host = ctx.client[0] if reg.host in ("0.0.0.0", "::") else reg.host
        if reg.host in ("0.0.0.0", "::") and ctx.server is not None:
            host = ctx.server
        return uaddr(host, reg.port).encode()

    async def rpcb_dump(self, ctx: CallContext, args: Any) -> list[rpcb]:
        return [
            rpcb(r.prog, r.vers, r.netid.encode(), uaddr(r.host, r.port).encode(), r.owner.encode())
            for r in self.registrations.values()
        ]

    async def gettime(self, ctx: CallContext, args: Any) -> int:
        return int(time.time()) & 0xFFFFFFFF

    def program(self) -> Program:
        v2 = {
            PMAPPROC.NULL: Procedure("NULL", void, void, self.null),
            PMAPPROC.SET: Procedure("SET", mapping, boolean, self.pmap_set, idempotent=False),
            PMAPPROC.UNSET: Procedure("UNSET", mapping, boolean, self.pmap_unset, idempotent=False),
            PMAPPROC.GETPORT: Procedure("GETPORT", mapping, uint32, self.pmap_getport),
            PMAPPROC.DUMP: Procedure("DUMP", void, pmaplist, self.pmap_dump),
        }
        rpcbind = {
            RPCBPROC_NULL: Procedure("NULL", void, void, self.null),
            RPCBPROC_SET: Procedure("SET", rpcb, boolean, self.rpcb_set, idempotent=False),
            RPCBPROC_UNSET: Procedure("UNSET", rpcb, boolean, self.rpcb_unset, idempotent=False),
            RPCBPROC_GETADDR: Procedure("GETADDR", rpcb, String(), self.rpcb_getaddr),
            RPCBPROC_DUMP: Procedure("DUMP", void, rpcblist_ptr, self.rpcb_dump),
            RPCBPROC_GETTIME: Procedure("GETTIME", void, uint32, self.gettime),
        }
        return Program(PMAP_PROG, "PORTMAP", {2: v2, 3: rpcbind, 4: dict(rpcbind)})
