"""Registering with a portmapper that another process runs on port 111 (a system rpcbind).

Debian's rpcbind (pulled in by nfs-common) takes SET and UNSET over UDP from 127.0.0.1, but
records such entries with owner "unknown" and refuses to UNSET an entry that a daemon (knfsd's
mountd, nfs-ganesha, an earlier Realize) registered through its local socket
(`/run/rpcbind.sock`, where rpcbind knows the caller's uid): the SET that follows then fails.
So registration speaks rpcbind v4 on that socket, like libtirpc's `rpcb_set`, replacing older
entries, and falls back to PMAP v2 over UDP on 127.0.0.1:111 for portmappers without one
(another Realize server serving 111). Every answer is checked: a registration that the
portmapper refused is reported as such. Unregistering removes only entries that still point at
our ports, so a server that took over the program numbers since keeps its registration.
"""

from __future__ import annotations

import logging
import os
import random
from dataclasses import dataclass

import trio

from nfsd.rpc.client import encode_args, udp_call
from nfsd.rpc.record import RecordReader, frame
from xdr.codec import boolean, decode, uint32
from xdr.portmap import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    PMAP_PORT,
    PMAP_PROG,
    PMAPPROC,
    RPCBPROC_DUMP,
    RPCBPROC_SET,
    RPCBPROC_UNSET,
    RPCBVERS4,
    mapping,
    parse_uaddr,
    rpcb,
    rpcblist_ptr,
    uaddr,
)
from xdr.rpc import accept_stat
from xdr.rpc_fast import encode_call, parse_reply

log = logging.getLogger("realize.rpcbind")

RPCBIND_SOCKETS = ("/run/rpcbind.sock", "/var/run/rpcbind.sock")
OWNER = b"realize"
PROTOCOLS = {"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP, "tcp6": IPPROTO_TCP, "udp6": IPPROTO_UDP}


class PortmapperRefused(Exception):
    """The portmapper answered, but not with success."""


@dataclass(frozen=True)
class Wanted:
    prog: int
    vers: int
    netid: str  # "tcp", "udp", "tcp6" or "udp6"
    host: str
    port: int


def local_socket() -> str | None:
    for path in RPCBIND_SOCKETS:
        if os.path.exists(path):
            return path
    return None


class _LocalRpcbind:
    """rpcbind v4 calls, one at a time, on the local stream socket."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.reader = RecordReader(1 << 20)

    async def call(self, proc: int, args: bytes) -> bytes:
        xid = random.getrandbits(32)
        header = encode_call(xid, PMAP_PROG, RPCBVERS4, proc)
        await self.stream.send_all(b"".join(frame([header, args])))
        while True:
            data = await self.stream.receive_some(1 << 16)
            if not data:
                raise PortmapperRefused("rpcbind closed its local socket")
            for record in self.reader.feed(data):
                reply = parse_reply(record)
                if reply.xid != xid:
                    continue
                if not reply.accepted or reply.stat != accept_stat.SUCCESS:
                    raise PortmapperRefused(f"rpcbind answered status {reply.stat}")
                return record[reply.body_offset :]

    async def set(self, w: Wanted) -> bool:
        await self.call(
            RPCBPROC_UNSET, encode_args(rpcb, rpcb(w.prog, w.vers, w.netid.encode(), b"", OWNER))
        )
        args = rpcb(w.prog, w.vers, w.netid.encode(), uaddr(w.host, w.port).encode(), OWNER)
        return bool(decode(boolean, await self.call(RPCBPROC_SET, encode_args(rpcb, args))))

    async def dump(self) -> list[rpcb]:
        return decode(rpcblist_ptr, await self.call(RPCBPROC_DUMP, b""))

    async def unset_if_ours(self, w: Wanted, current: list[rpcb]) -> bool:
        """UNSET `w` if `current` (a DUMP) still maps it to our port.

        (GETADDR cannot tell: on the local socket rpcbind looks the program up for the caller's
        own transport, "local", whatever netid is asked.)
        """
        for entry in current:
            if (entry.r_prog, entry.r_vers, entry.r_netid) != (w.prog, w.vers, w.netid.encode()):
                continue
            try:
                if parse_uaddr(entry.r_addr)[1] != w.port:
                    return False
            except ValueError:
                return False
            query = rpcb(w.prog, w.vers, w.netid.encode(), b"", OWNER)
            return bool(decode(boolean, await self.call(RPCBPROC_UNSET, encode_args(rpcb, query))))
        return False


async def _udp_pmap(proc: int, m: mapping) -> int:
    reply, body = await udp_call(
        "127.0.0.1", PMAP_PORT, PMAP_PROG, 2, proc, encode_args(mapping, m), timeout=0.5, tries=2
    )
    if not reply.accepted or reply.stat != accept_stat.SUCCESS:
        raise PortmapperRefused(f"portmapper answered status {reply.stat}")
    return decode(uint32 if proc == PMAPPROC.GETPORT else boolean, body)


async def register(wanted: list[Wanted], timeout: float = 5.0) -> bool:
    """Register every entry (replacing older ones); True if the portmapper accepted them all."""
    path = local_socket()
    with trio.move_on_after(timeout):
        try:
            if path is not None:
                async with await trio.open_unix_socket(path) as stream:
                    local = _LocalRpcbind(stream)
                    refused = [w for w in wanted if not await local.set(w)]
            else:
                # PMAP UNSET drops every transport of prog/vers: once each, before any SET.
                for prog, vers in dict.fromkeys((w.prog, w.vers) for w in wanted):
                    await _udp_pmap(PMAPPROC.UNSET, mapping(prog, vers, 0, 0))
                refused = []
                for w in wanted:
                    m = mapping(w.prog, w.vers, PROTOCOLS[w.netid], w.port)
                    if not await _udp_pmap(PMAPPROC.SET, m):
                        refused.append(w)
        except (OSError, TimeoutError, PortmapperRefused) as e:
            log.info("could not register with the portmapper on port 111: %s", e)
            return False
        if refused:
            names = ", ".join(f"{w.prog} v{w.vers} {w.netid}" for w in refused)
            log.warning("the portmapper on port 111 refused to register %s", names)
            return False
        log.info("registered with the portmapper on port 111 (%s)", path or "PMAP over UDP")
        return True
    log.info("the portmapper on port 111 did not answer in %.0f s", timeout)
    return False


async def unregister(wanted: list[Wanted], timeout: float = 5.0) -> None:
    """Remove the entries that still point at our ports (best effort)."""
    path = local_socket()
    with trio.move_on_after(timeout):
        try:
            if path is not None:
                async with await trio.open_unix_socket(path) as stream:
                    local = _LocalRpcbind(stream)
                    current = await local.dump()
                    for w in wanted:
                        await local.unset_if_ours(w, current)
            else:
                done = set()
                for w in wanted:
                    key = (w.prog, w.vers)
                    m = mapping(w.prog, w.vers, PROTOCOLS[w.netid], 0)
                    if key not in done and await _udp_pmap(PMAPPROC.GETPORT, m) == w.port:
                        await _udp_pmap(PMAPPROC.UNSET, m)  # all transports of prog/vers
                        done.add(key)
            log.info("unregistered from the portmapper on port 111")
        except (OSError, TimeoutError, PortmapperRefused) as e:
            log.info("could not unregister from the portmapper on port 111: %s", e)
