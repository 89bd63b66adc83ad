"""A few ONC RPC calls over TCP for test setup: is a service there, what does the portmapper say.

This module owns only what the test harness needs to check its surroundings before it trusts
them (a NULL ping, a portmapper GETPORT); it is deliberately independent of the project's own
``xdr``/``nfsd`` code, so it can judge any server, including a broken one.
"""

from __future__ import annotations

import os
import socket
import struct

PMAP_PROG = 100000
NFS_PROG = 100003
MOUNT_PROG = 100005
IPPROTO_TCP = 6
IPPROTO_UDP = 17


def rpc_call(
    host: str, port: int, prog: int, vers: int, proc: int, args: bytes = b"",
    timeout: float = 2.0,
) -> bytes | None:  # fmt: skip
    """One call with AUTH_NONE; the reply's results, or None on any failure or error reply."""
    xid = int.from_bytes(os.urandom(4), "big")
    # xid, CALL, rpcvers 2, prog, vers, proc, AUTH_NONE credential and verifier
    call = struct.pack(">IIIIIIIIII", xid, 0, 2, prog, vers, proc, 0, 0, 0, 0) + args
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(struct.pack(">I", 0x80000000 | len(call)) + call)
            reply = b""
            last = False
            while not last:
                header = _recv_exactly(sock, 4)
                (mark,) = struct.unpack(">I", header)
                last = bool(mark & 0x80000000)
                reply += _recv_exactly(sock, mark & 0x7FFFFFFF)
    except (OSError, EOFError):
        return None
    if len(reply) < 24:
        return None
    rxid, mtype, stat, _flavor, length = struct.unpack(">IIIII", reply[:20])
    offset = 20 + ((length + 3) & ~3)
    if rxid != xid or mtype != 1 or stat != 0 or len(reply) < offset + 4:
        return None
    (accept,) = struct.unpack(">I", reply[offset : offset + 4])
    return reply[offset + 4 :] if accept == 0 else None


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def rpc_null(host: str, port: int, prog: int, vers: int, timeout: float = 2.0) -> bool:
    """True if a NULL call to ``prog``/``vers`` at host:port over TCP succeeds."""
    return rpc_call(host, port, prog, vers, 0, timeout=timeout) is not None


def portmapper_answers(host: str = "127.0.0.1") -> bool:
    return rpc_null(host, 111, PMAP_PROG, 2)


def pmap_getport(
    prog: int, vers: int, prot: int = IPPROTO_TCP, host: str = "127.0.0.1"
) -> int | None:
    """The port the portmapper on host:111 gives for ``prog``/``vers``/``prot`` (0: none)."""
    result = rpc_call(host, 111, PMAP_PROG, 2, 3, struct.pack(">IIII", prog, vers, prot, 0))
    if result is None or len(result) < 4:
        return None
    return struct.unpack(">I", result[:4])[0]


def portmap_mismatch(nfs_port: int, mount_port: int, host: str = "127.0.0.1") -> str | None:
    """None if the portmapper on host:111 maps NFSv3 and MOUNTv3 over TCP to these ports,
    else what it says instead (another server may own port 111)."""
    if not portmapper_answers(host):
        return f"no portmapper answers on {host}:111"
    nfs = pmap_getport(NFS_PROG, 3, host=host)
    mount = pmap_getport(MOUNT_PROG, 3, host=host)
    if (nfs, mount) == (nfs_port, mount_port):
        return None
    return (
        f"the portmapper on {host}:111 maps NFSv3/TCP to {nfs} and MOUNTv3/TCP to {mount},"
        f" not {nfs_port} and {mount_port} (does another server own port 111?)"
    )
