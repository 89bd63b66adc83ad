"""The owner of one loopback TCP socket, asked of the kernel by its four addresses (Linux
sock_diag over netlink, NETLINK_SOCK_DIAG with an exact `inet_diag_req_v2`).

/proc/net/tcp lists every socket of the machine, so reading it for each accepted connection
costs time in proportion to the connections open: a flood of them would make each accept
slower than the last (tens of milliseconds at a thousand). The kernel finds one socket by its
addresses at once. `tcp_owner` answers None when it cannot ask (not Linux, netlink refused):
the caller then reads /proc (nfsd/identity.py).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLMSG_ERROR = 0x2
TCPF_ESTABLISHED = 1 << 1
INET_DIAG_NOCOOKIE = 0xFFFFFFFF

_NLMSGHDR = struct.Struct("=IHHII")  # length, type, flags, sequence, port id
# inet_diag_req_v2: family, protocol, extensions, pad, states; then inet_diag_sockid: ports
# and addresses in network order, interface, cookie.
_REQUEST = struct.Struct("=BBBxI")
_SOCKID = struct.Struct(">HH16s16s")
_SOCKID_TAIL = struct.Struct("=III")
# inet_diag_msg: family, state, timer, retransmits, the sockid (48 bytes), expires, receive
# and send queues, uid, inode.
_UID_OFFSET = 4 + 48 + 12
_TIMEOUT = 1.0


class Unknown(Exception):
    """The kernel could not be asked, or gave no usable answer."""


def tcp_owner(client: tuple[str, int], server: tuple[str, int]) -> int | None:
    """The uid owning this machine's TCP socket bound to `client` and connected to `server`;
    None when there is no such socket. Unknown when the kernel cannot be asked."""
    try:
        ends = [ipaddress.ip_address(client[0]), ipaddress.ip_address(server[0])]
    except ValueError:
        raise Unknown(f"not an address: {client[0]} or {server[0]}") from None
    forms: list[tuple[int, bytes, bytes]] = []
    # A client of an IPv6 listener seen at an IPv4-mapped address has an IPv4 socket, or an
    # IPv6 one that connected to the mapped address: ask for both.
    v4 = [_ipv4(address) for address in ends]
    if v4[0] is not None and v4[1] is not None:
        forms.append((socket.AF_INET, v4[0].packed, v4[1].packed))
    if any(address.version == 6 for address in ends):
        forms.append((socket.AF_INET6, _ipv6(ends[0]), _ipv6(ends[1])))
    for family, local, remote in forms:
        uid = _ask(family, local, client[1], remote, server[1])
        if uid is not None:
            return uid
    return None


def _ipv4(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if isinstance(address, ipaddress.IPv6Address):
        return address.ipv4_mapped
    return address


def _ipv6(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    if isinstance(address, ipaddress.IPv4Address):
        return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + address.packed).packed
    return address.packed


def _ask(family: int, local: bytes, local_port: int, remote: bytes, remote_port: int) -> int | None:
    body = (
        _REQUEST.pack(family, socket.IPPROTO_TCP, 0, TCPF_ESTABLISHED)
        + _SOCKID.pack(local_port, remote_port, local.ljust(16, b"\0"), remote.ljust(16, b"\0"))
        + _SOCKID_TAIL.pack(0, INET_DIAG_NOCOOKIE, INET_DIAG_NOCOOKIE)
    )
    message = _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, 1, 0)
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as sock:
            sock.settimeout(_TIMEOUT)
            sock.send(message + body)
            reply = sock.recv(8192)
    except (OSError, AttributeError) as e:  # AttributeError: no AF_NETLINK on this system
        raise Unknown(f"sock_diag: {e}") from None
    if len(reply) < _NLMSGHDR.size:
        raise Unknown("sock_diag: short reply")
    _, kind, _, _, _ = _NLMSGHDR.unpack_from(reply)
    if kind == NLMSG_ERROR:
        (code,) = struct.unpack_from("=i", reply, _NLMSGHDR.size)
        if -code == errno.ENOENT:
            return None  # no such socket
        raise Unknown(f"sock_diag: {errno.errorcode.get(-code, -code)}")
    if kind != SOCK_DIAG_BY_FAMILY or len(reply) < _NLMSGHDR.size + _UID_OFFSET + 4:
        raise Unknown(f"sock_diag: unexpected reply type {kind}")
    (uid,) = struct.unpack_from("=I", reply, _NLMSGHDR.size + _UID_OFFSET)
    return uid
