"""The server's side of the household transport: the peer listener, a dialler per peer that
has an address, one link per peer (nfsd/peer/links.py), and the roster re-read on demand.

- Incoming connections are authenticated (nfsd/peer/tls.py) before anything else; then the
  peer program (`programs`, NULL at least) is served over the link by the same RpcServer and
  Dispatcher as NFS, with the link's heartbeat as its idle timeout: a link with no call for
  `HEARTBEAT_TIMEOUT` seconds is dead and closed.
- Each peer with an address is dialled, again after a link ends, with jittered exponential
  backoff; `wake()` dials at once. A deaf peer (no address) is never dialled: it dials in. The
  dialling side calls NULL every `HEARTBEAT_INTERVAL` seconds and closes the link when one
  goes unanswered for `HEARTBEAT_TIMEOUT`.
- `reload()` re-reads peers.json: new trust anchors for the handshakes that follow, the link of
  a removed (or re-keyed) peer closed at once, diallers started and stopped to match.
- `status()` says, per peer, whether it is connected, which side dialled, since when, and
  when it was last connected (kept in peers-seen.json across restarts).

For now the link carries calls one way: the side that was dialled serves, the dialler calls.
Calls both ways on one link (what a deaf peer needs to serve its files) come with the history
exchange, which builds on `_run_link`.
"""

from __future__ import annotations

import errno
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from nfsd.peer import roster as rosters
from nfsd.peer.identity import Identity
from nfsd.peer.links import Link, Links
from nfsd.peer.program import peer_program
from nfsd.peer.roster import Roster
from nfsd.peer.tls import (
    PeerRefused,
    PeerStream,
    client_context,
    confirmed,
    dial,
    handshake,
    server_context,
)
from nfsd.rpc.client import RpcClient
from nfsd.rpc.dispatch import Dispatcher, OncePerWindow, Program
from nfsd.rpc.transport import Limits, RpcServer
from xdr.codec import void
from xdr.peer import PEER_PROGRAM, PEER_V1, PEERPROC

log = logging.getLogger("realize.peer")

HEARTBEAT_INTERVAL = 10.0
HEARTBEAT_TIMEOUT = 30.0
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
MAX_HANDSHAKES = 32  # connections authenticating at once; more are closed unread


def backoff(failures: int) -> float:
    """Seconds to wait before the next dial after `failures` failed ones: doubling up to a
    minute, each a random half to whole of that so peers that lost a link together do not
    all dial together."""
    ceiling = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(failures, 16))
    return ceiling * random.uniform(0.5, 1.0)


@dataclass(frozen=True)
class PeerState:
    name: str
    peer_id: str
    connected: bool
    outgoing: bool  # this side dialled the live link
    since: float  # unix time the live link was made, 0 if none
    last_contact: float  # unix time a link last existed, 0 if never


class PeerService:
    def __init__(
        self,
        state_dir: Path,
        identity: Identity,
        bind: str,
        port: int,
        *,
        port_required: bool = True,
        programs: list[Program] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.identity = identity
        self.bind = bind
        self.requested_port = port
        self.port_required = port_required  # else a port in use means: no listener
        self.port: int | None = None
        self.roster = rosters.load(self.state_dir)
        self.links = Links(identity.peer_id)
        self.dispatcher = Dispatcher([peer_program(), *(programs or [])])
        self.rpc = RpcServer(
            self.dispatcher,
            Limits(first_call_timeout=HEARTBEAT_TIMEOUT, idle_timeout=HEARTBEAT_TIMEOUT),
        )
        self.contacts = rosters.load_contacts(self.state_dir)
        self.refusals = OncePerWindow()
        self._contexts()
        self._handshakes = trio.CapacityLimiter(MAX_HANDSHAKES)
        self._nursery: trio.Nursery | None = None
        self._diallers: dict[str, trio.CancelScope] = {}
        self._wake = trio.Event()

    def _contexts(self) -> None:
        self._server_context = server_context(self.identity, self.roster)
        self._client_context = client_context(self.identity, self.roster)

    # ---- running ----

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Listen and dial until cancelled; reports the port listened on (None if none)."""
        listeners: list[trio.SocketListener] = []
        try:
            listeners = await trio.open_tcp_listeners(self.requested_port, host=self.bind)
        except OSError as e:
            if self.port_required or e.errno != errno.EADDRINUSE:
                raise
            log.warning(
                "peer port %d is in use: not listening for peers (give --peer-port)",
                self.requested_port,
            )
        if listeners:
            self.port = listeners[0].socket.getsockname()[1]
            log.info("listening for peers on %s port %d", self.bind, self.port)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for listener in listeners:
                nursery.start_soon(self._accept, listener)
            self._start_diallers()
            task_status.started(self.port)

    async def _accept(self, listener: trio.SocketListener) -> None:
        assert self._nursery is not None
        async with listener:
            while True:
                transport = await listener.accept()
                if self._handshakes.available_tokens == 0:
                    await trio.aclose_forcefully(transport)
                    continue
                self._nursery.start_soon(self._accepted, transport)

    async def _accepted(self, transport: trio.SocketStream) -> None:
        async with self._handshakes:
            try:
                host = transport.socket.getpeername()[0]
            except OSError:
                await trio.aclose_forcefully(transport)
                return
            try:
                stream = await handshake(
                    transport, self._server_context, self.roster, server_side=True
                )
            except PeerRefused as e:
                self.refusals.warn("peer refused", host, str(e))
                return
        await self._run_link(stream)

    async def _run_link(self, stream: PeerStream, client: RpcClient | None = None) -> None:
        """Serve one authenticated link until it ends or is closed; `client`: the dialler's
        RPC client on it (see tls.confirmed)."""
        current = self.roster.peers.get(stream.peer.name)
        if current is None or current.public_key != stream.peer.public_key:
            await trio.aclose_forcefully(stream.stream)  # removed during its handshake
            return
        link = Link(stream)
        if not self.links.add(link):
            await trio.aclose_forcefully(stream.stream)
            return
        name = stream.peer.name
        log.info(
            "peer %s (%s) connected, %s %s",
            name,
            stream.peer.peer_id,
            "dialled at" if stream.outgoing else "from",
            stream.remote[0],
        )
        self._contact(stream)
        try:
            with link.scope:
                if client is not None:
                    await self._heartbeat(client)
                else:
                    local = stream.stream.transport_stream.socket.getsockname()[0]
                    await self.rpc.serve_stream(stream.stream, stream.remote, local)
        finally:
            self.links.discard(link)
            self._contact(stream)
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream.stream)
            log.info("peer %s disconnected: %s", name, link.closed_because or "link ended")

    async def _heartbeat(self, client: RpcClient) -> None:
        try:
            while True:
                with trio.move_on_after(HEARTBEAT_TIMEOUT) as waited:
                    await client.call(PEER_PROGRAM, PEER_V1, PEERPROC.NULL, void, None, void)
                if waited.cancelled_caught:
                    return  # half-open, or the other side is stuck
                await trio.sleep(HEARTBEAT_INTERVAL)
        except (ConnectionError, trio.BrokenResourceError, trio.ClosedResourceError):
            return

    def _contact(self, stream: PeerStream) -> None:
        self.contacts[stream.peer.peer_id] = time.time()
        rosters.record_contact(self.state_dir, self.contacts)

    # ---- dialling ----

    def _start_diallers(self) -> None:
        """One dialler per peer with an address; those of peers gone or changed stopped."""
        if self._nursery is None:
            return
        for name, scope in list(self._diallers.items()):
            if self.roster.peers.get(name) is None or self.roster.peers[name].address is None:
                scope.cancel()
                del self._diallers[name]
        for name, peer in self.roster.peers.items():
            if peer.address is not None and name not in self._diallers:
                scope = trio.CancelScope()
                self._diallers[name] = scope
                self._nursery.start_soon(self._dial_loop, name, scope)

    async def _dial_loop(self, name: str, scope: trio.CancelScope) -> None:
        failures = 0
        with scope:
            while True:
                while self.links.connected(name) is not None:
                    await self.links.changed.wait()
                peer = self.roster.peers.get(name)
                if peer is None or peer.address is None:
                    return
                try:
                    stream = await dial(
                        peer.address, self.identity, self.roster, peer, self._client_context
                    )
                    client = await confirmed(stream)
                except (OSError, PeerRefused) as e:
                    failures += 1
                    self.refusals.warn("cannot reach peer", name, str(e))
                else:
                    started = trio.current_time()
                    await self._run_link(stream, client)
                    # A link that lasted was a success; one closed at once counts as a failure.
                    failures = 0 if trio.current_time() - started > HEARTBEAT_TIMEOUT else 1
                with trio.move_on_after(backoff(failures)):
                    await self._wake.wait()

    def wake(self) -> None:
        """Dial every peer that is not connected now (`realize sync`)."""
        self._wake.set()
        self._wake = trio.Event()

    # ---- the roster ----

    def reload(self) -> list[str]:
        """Re-read the roster (RosterError if it is damaged: the old one stays in force);
        the names of the peers whose links were closed."""
        new = rosters.load(self.state_dir)
        self._apply(new)
        closed = []
        for name, link in list(self.links.live.items()):
            peer = new.peers.get(name)
            if peer is None or peer.public_key != link.stream.peer.public_key:
                self.links.close(name, "removed from the roster")
                closed.append(name)
        for name, scope in list(self._diallers.items()):
            peer = new.peers.get(name)
            if peer is None or peer.address is None:
                scope.cancel()
                del self._diallers[name]
        self._start_diallers()
        self.wake()
        return closed

    def _apply(self, new: Roster) -> None:
        self.roster = new
        self._contexts()

    def status(self) -> list[PeerState]:
        states = []
        for name, peer in sorted(self.roster.peers.items()):
            link = self.links.connected(name)
            states.append(
                PeerState(
                    name,
                    peer.peer_id,
                    link is not None,
                    link.outgoing if link else False,
                    link.since if link else 0.0,
                    self.contacts.get(peer.peer_id, 0.0),
                )
            )
        return states
