"""Who a call may act as: the credential policy, and the owner of a loopback connection.

AUTH_SYS is a claim, not a proof. The policy, per call:

- From this machine, the kernel knows which user owns the client's socket
  (`loopback_owner` for TCP, from sock_diag (nfsd/sockdiag.py) or else /proc/net on Linux;
  `loopback_udp_owner` for UDP, from /proc/net). Root
  there may claim anyone (it can read the files anyway; the kernel NFS client and qemu run
  as root). Anyone else may claim only
  their own uid and groups: a claim beyond them is replaced by the owner's own identity.
- From other machines (and where the owner cannot be known), knfsd's defaults: `secure`, the
  call must come from a reserved port (below 1024, which only root can bind), and
  `root_squash`, uid 0 acts as the anonymous user. `--insecure` and `--no-root-squash` turn
  them off.
- `all_squash` and AUTH_NONE make everyone the anonymous user.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import pwd
import socket

from nfsd import sockdiag
from xdr.rpc import auth_flavor
from xdr.rpc_fast import Credential

log = logging.getLogger("realize.identity")

RESERVED_PORTS = 1024  # ports below this only root may bind
_TCP_TABLES = ("/proc/net/tcp", "/proc/net/tcp6")
_UDP_TABLES = ("/proc/net/udp", "/proc/net/udp6")
_ESTABLISHED = "01"
_MAX_GROUPS = 16  # what AUTH_SYS carries


def client_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """A caller's address as a value (an IPv4-mapped IPv6 one as the IPv4 it is); None for
    what is not an address (a Unix socket's peer)."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def is_loopback(host: str) -> bool:
    address = client_address(host)
    return address is not None and address.is_loopback


def _proc_address(text: str) -> tuple[bytes, int]:
    """/proc/net/tcp's "0100007F:1F90" as (address bytes in network order, port)."""
    host, port = text.split(":")
    raw = bytes.fromhex(host)
    # The kernel prints each 32-bit word of the address in host byte order.
    words = [raw[i : i + 4][::-1] for i in range(0, len(raw), 4)]
    return b"".join(words), int(port, 16)


def _packed(host: str) -> bytes:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.inet_pton(family, host)


def loopback_owner(client: tuple[str, int], server: tuple[str, int]) -> int | None:
    """The uid owning the client end of an established loopback TCP connection from
    `client` to `server`; None when it cannot be known (not Linux, /proc missing, no such
    or more than one such socket)."""
    from nfsd.vfs.osapi import FORCED_FALLBACKS

    if not FORCED_FALLBACKS and is_loopback(client[0]):
        try:
            return sockdiag.tcp_owner(client, server)  # one socket, found at once
        except sockdiag.Unknown:
            pass  # no sock_diag here: /proc, which lists every socket of the machine
    return _owner(_TCP_TABLES, client, server)


def loopback_udp_owner(client: tuple[str, int]) -> int | None:
    """The uid owning the loopback UDP socket a datagram came from (bound to `client`)."""
    return _owner(_UDP_TABLES, client, None)


def _owner(
    tables: tuple[str, ...], client: tuple[str, int], server: tuple[str, int] | None
) -> int | None:
    from nfsd.vfs.osapi import FORCED_FALLBACKS

    if FORCED_FALLBACKS or not is_loopback(client[0]):
        return None
    try:
        want_local = (_packed(client[0]), client[1])
        want_remote = None if server is None else (_packed(server[0]), server[1])
    except OSError:
        return None
    found: set[int] = set()
    for table in tables:
        try:
            with open(table) as f:
                next(f, None)  # the header
                for line in f:
                    fields = line.split()
                    if len(fields) < 8:
                        continue
                    if want_remote is not None and fields[3] != _ESTABLISHED:
                        continue
                    local = _proc_address(fields[1])
                    if not _same(local, want_local) and not _unbound_match(local, want_local):
                        continue
                    if want_remote is not None and not _same(_proc_address(fields[2]), want_remote):
                        continue
                    found.add(int(fields[7]))
        except (OSError, ValueError):
            continue
    return found.pop() if len(found) == 1 else None


def _unbound_match(local: tuple[bytes, int], want: tuple[bytes, int]) -> bool:
    """A UDP socket bound to the wildcard address sends from loopback too."""
    return local[1] == want[1] and local[0].strip(b"\0") == b""


def _same(a: tuple[bytes, int], b: tuple[bytes, int]) -> bool:
    """Equal addresses, an IPv4 one also matching its IPv4-mapped IPv6 form."""
    if a[1] != b[1]:
        return False
    return _as_v6(a[0]) == _as_v6(b[0])


def _as_v6(raw: bytes) -> bytes:
    return b"\0" * 10 + b"\xff\xff" + raw if len(raw) == 4 else raw


def identity_of(uid: int) -> Credential:
    """The credential of a local user as this machine knows it: primary group and groups."""
    try:
        entry = pwd.getpwuid(uid)
    except KeyError:
        return Credential(auth_flavor.AUTH_SYS, uid, uid, [], b"")
    try:
        groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
    except OSError:
        groups = [entry.pw_gid]
    others = [g for g in groups if g != entry.pw_gid][:_MAX_GROUPS]
    return Credential(auth_flavor.AUTH_SYS, uid, entry.pw_gid, others, b"")


def claims_fit(cred: Credential, owner: Credential) -> bool:
    """Whether a claimed identity is within what the socket's owner is."""
    allowed = {owner.gid, *owner.gids}
    return cred.uid == owner.uid and cred.gid in allowed and set(cred.gids) <= allowed
