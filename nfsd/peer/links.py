"""The live links of this peer, one per member of the roster, and the rule that keeps one
when both sides dial at once.

When two peers dial each other at the same time each ends up with two connections. Both keep
the one dialled by the peer with the lower peer id (`keep_new`), so they keep the same one
and close the other, whatever order the connections came in. A new link in the same
direction as a live one replaces it (the old one is a half-open link the other side gave up).

`Links.add` registers an authenticated link and says whether to keep it; the loser's cancel
scope is cancelled, which closes its stream at once. `Links.close(name)` closes a peer's link
(a removed peer). Nothing here does I/O; the link's own task owns its stream.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import trio

from nfsd.peer.tls import PeerStream
from nfsd.rpc.client import RpcClient


def keep_new(new_outgoing: bool, live_outgoing: bool, own_id: str, their_id: str) -> bool:
    """Whether a new link should replace the live one to the same peer.

    Same direction: yes (a reconnect). Otherwise the link dialled by the lower peer id stays:
    ours when our id is the lower."""
    if new_outgoing == live_outgoing:
        return True
    we_dial = own_id < their_id
    return new_outgoing == we_dial


class CountedStream(trio.abc.Stream):
    """A stream that counts the bytes it carries each way (what `realize status` shows per
    peer): the link's RPC records, after TLS has removed its framing."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.sent = 0
        self.received = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)
        self.sent += len(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self.inner.receive_some(max_bytes)
        self.received += len(data)
        return data

    async def aclose(self) -> None:
        await self.inner.aclose()

    # streamio's protocol, when the inner stream has it (nfsd/peer/tlsstream.py)

    async def receive_into(self, view: memoryview) -> int:
        n = await self.inner.receive_into(view)  # type: ignore[attr-defined]
        self.received += n
        return n

    async def send(self, parts: Sequence[bytes | bytearray | memoryview]) -> None:
        await self.inner.send(parts)  # type: ignore[attr-defined]
        self.sent += sum(len(part) for part in parts)

    def detach(self) -> None:
        self.inner.detach()  # type: ignore[attr-defined]


@dataclass(eq=False)
class Link:
    """One authenticated connection, the scope of the task that serves it, and the client
    that calls the peer over it (calls go both ways on every link)."""

    stream: PeerStream
    client: RpcClient | None = None
    counted: CountedStream | None = None  # the bytes this link carried
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
    since: float = field(default_factory=time.time)
    closed_because: str | None = None

    @property
    def name(self) -> str:
        return self.stream.peer.name

    @property
    def outgoing(self) -> bool:
        return self.stream.outgoing

    def close(self, why: str) -> None:
        """End the link's task, which closes its stream."""
        if self.closed_because is None:
            self.closed_because = why
        self.scope.cancel()


class Links:
    def __init__(self, own_id: str) -> None:
        self.own_id = own_id
        self.live: dict[str, Link] = {}
        self.changed = trio.Event()  # set (and replaced) whenever a link comes or goes

    def _changed(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def add(self, link: Link) -> bool:
        """Register `link`; False (and the link closed) if the live one to its peer stays."""
        live = self.live.get(link.name)
        if live is not None:
            their_id = link.stream.peer.peer_id
            if not keep_new(link.outgoing, live.outgoing, self.own_id, their_id):
                link.close("a link to this peer exists (the one dialled by the lower id)")
                return False
            live.close("replaced by a newer link")
        self.live[link.name] = link
        self._changed()
        return True

    def discard(self, link: Link) -> None:
        """The link has ended (its task calls this)."""
        if self.live.get(link.name) is link:
            del self.live[link.name]
            self._changed()

    def close(self, name: str, why: str) -> bool:
        """Close the link to `name`, if there is one."""
        link = self.live.pop(name, None)
        if link is None:
            return False
        link.close(why)
        self._changed()
        return True

    def connected(self, name: str) -> Link | None:
        return self.live.get(name)
