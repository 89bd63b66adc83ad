"""Connection slots: how many TCP connections the server holds, how many of them one client
host may hold, and which idle connection is closed to make room for a new one. Pure policy,
no sockets: nfsd/rpc/transport.py asks `ConnectionSlots.admit` at each accept and calls
`release` when a connection ends.

A host may hold a share of the slots (an eighth by default), so no single host can take them
all. When the host's share or all slots are taken, the connection idle longest (waiting for a
call, with no call in progress and no partial record) is closed and the new one takes its
slot: a client with real work is served, and a flood of idle connections only closes its own
oldest. A connection in the middle of a call is never chosen; when none is idle the new
connection is refused.

What counts as one host (`host_key`):
- an IPv4 address (an IPv4-mapped IPv6 one as the IPv4 it is);
- an IPv6 /64, the block one machine gets and can pick addresses from at will;
- on this machine (loopback), the uid owning the client's socket, as the kernel says
  (nfsd/identity.py), whichever 127.x address it uses. The kernel client, qemu and every local
  tool all connect from 127.0.0.1; keyed by address alone, any local user could hold the
  share with trickled records and lock the kernel client out. Keyed by owner, each local user
  has a share of their own, and root's (the kernel client's, qemu's) is out of their reach.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import math
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Protocol

from nfsd.identity import client_address

log = logging.getLogger("realize.rpc")

# The share of all slots one host may hold.
HOST_SHARE = 8


class Holder(Protocol):
    """A connection holding a slot, as the policy sees it."""

    def idle_since(self) -> float | None:
        """When it started waiting for a call with nothing in progress; None while busy."""
        ...

    def quiet(self) -> bool:
        """Whether no bytes of a new call have arrived unread: the last check before it is
        closed."""
        ...


class Cause(enum.Enum):
    """Why a connection was refused, or another closed for it; each logged once a window."""

    NOT_ALLOWED = "refused connections from hosts no export allows"
    HOST_BUSY = "refused connections from a host whose every slot is busy with calls"
    ALL_BUSY = "refused connections: every connection slot is busy with calls"
    HOST_FULL = "closed a host's longest idle connections to make room for its new ones"
    ALL_FULL = "closed the longest idle connections to make room: all slots were taken"


@dataclass(frozen=True)
class Admission:
    admitted: bool
    evict: Holder | None = None  # close this one: its slot is the new connection's now
    cause: Cause | None = None  # why refused, or why `evict` is closed


def host_key(host: str, owner: int | None) -> Hashable:
    """The client host a connection from `host` counts against (see the module's docstring);
    `owner`: the uid owning the client's socket, when this machine's kernel says."""
    address = client_address(host)
    if address is None:
        return host  # not an address: a Unix socket's "local"
    if address.is_loopback:
        return ("this machine", owner)
    if isinstance(address, ipaddress.IPv6Address):
        return ipaddress.IPv6Network((int(address) >> 64 << 64, 64))
    return address


class ConnectionSlots:
    """At most `total` connections held, at most `per_host` of them by one host."""

    def __init__(self, total: int, per_host: int | None = None) -> None:
        if total < 1:
            raise ValueError("at least one connection slot is needed")
        self.total = total
        self.per_host = max(1, min(total, per_host or total // HOST_SHARE))
        self._host_of: dict[Holder, Hashable] = {}  # in the order they were admitted
        self._by_host: dict[Hashable, dict[Holder, None]] = {}

    @property
    def held(self) -> int:
        return len(self._host_of)

    def held_by(self, key: Hashable) -> int:
        return len(self._by_host.get(key, ()))

    def admit(self, holder: Holder, key: Hashable) -> Admission:
        """Give `holder` a slot if one is free or an idle connection makes room."""
        same_host = self._by_host.get(key)
        victim = None
        cause = None
        if same_host is not None and len(same_host) >= self.per_host:
            victim = _longest_idle(same_host)
            if victim is None:
                return Admission(False, cause=Cause.HOST_BUSY)
            cause = Cause.HOST_FULL
        elif len(self._host_of) >= self.total:
            victim = _longest_idle(self._host_of)
            if victim is None:
                return Admission(False, cause=Cause.ALL_BUSY)
            cause = Cause.ALL_FULL
        if victim is not None:
            self.release(victim)
        self._host_of[holder] = key
        self._by_host.setdefault(key, {})[holder] = None
        return Admission(True, victim, cause)

    def release(self, holder: Holder) -> None:
        """The connection ended, or was chosen to make room (then this does nothing)."""
        key = self._host_of.pop(holder, None)
        if key is None:
            return
        same_host = self._by_host[key]
        del same_host[holder]
        if not same_host:
            del self._by_host[key]


def _longest_idle(holders: Iterable[Holder]) -> Holder | None:
    """The idle holder that has waited longest and is still quiet; the earliest admitted
    first among equals."""
    idle = []
    for order, holder in enumerate(holders):
        since = holder.idle_since()
        if since is not None:
            idle.append((since, order, holder))
    idle.sort(key=lambda item: item[:2])
    for _, _, holder in idle:
        if holder.quiet():
            return holder
    return None


class CauseLog:
    """Logs each cause once per window, with how many connections it hit since its last line
    and the latest host: a flood of connections costs one line a minute per cause."""

    def __init__(self, window: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.window = window
        self._clock = clock
        self._unsaid: dict[Cause, tuple[int, float]] = {}  # count since the last line, its time

    def note(self, cause: Cause, host: str) -> None:
        count, last = self._unsaid.get(cause, (0, -math.inf))
        count += 1
        now = self._clock()
        if now - last < self.window:
            self._unsaid[cause] = (count, last)
            return
        self._unsaid[cause] = (0, now)
        log.warning("%s: %d since the last report, the latest from %s", cause.value, count, host)
