"""The server's side of the household transport: the peer listener, a dialler per peer that
has an address, one link per peer (nfsd/peer/links.py), and the roster re-read on demand.

- Incoming connections are authenticated (nfsd/peer/tls.py) before anything else, and a peer
  the roster gives an address must dial from that host (its name resolved): its key used from
  elsewhere is refused before any call. A deaf peer may dial from anywhere. Every
  link, whichever side dialled, carries calls both ways (nfsd/rpc/duplex.py): one reader
  hands the peer's calls to the Dispatcher of the peer program (`programs`, NULL at least;
  handlers find the calling roster `Peer` in `CallContext.caller`) and the replies to this
  side's calls to `Link.client`. So a deaf peer serves the peer it dialled.
- Each peer with an address is dialled, again after a link ends, with jittered exponential
  backoff; `wake()` dials at once. A deaf peer (no address) is never dialled: it dials in. A
  dialled link counts once the other side has answered a NULL (in TLS 1.3 only that proves
  it accepted this side's certificate).
- Both sides call NULL every `HEARTBEAT_INTERVAL` seconds and close the link when one goes
  unanswered for `HEARTBEAT_TIMEOUT`, or when nothing arrives for that long.
- `reload()` re-reads peers.json: new trust anchors for the handshakes that follow, the link of
  a removed (or re-keyed) peer closed at once, diallers started and stopped to match.
- `status()` says, per peer, whether it is connected, which side dialled, since when, and
  when it was last connected (kept in peers-seen.json across restarts).

`call(name, ...)` calls a connected peer's program; `ping(name)` times a NULL (what
`realize peer ping` shows).

History (nfsd/peer/exchange.py): the peer program serves this peer's logs to the peer on the
link, and when a link comes up this side pulls, and acknowledges, the peer's log of every area
both share (the areas here by name, limited by the roster's `areas` for that peer); `sync()`
(`realize sync`) dials every peer at once and does the same, returning when it is done. Pulls
of one peer are serialized; all of it runs on the event loop, as the Exchange requires.

Live changes: every `ANNOUNCE_EVERY` seconds the service looks whether an area's log has grown
(the journal published, or entries from a peer were applied and are relayed), stamps what was
published (`Exchange.stamp_some`, a batch at a time with the loop free between, so a peer that
asks later is not kept waiting while it is done) and sends NOTIFY to each connected peer
sharing it; a peer notified pulls that area from the notifier. A
NOTIFY while a pull of that area runs makes one more pull after it, never more, and such
pulls of one area begin `NOTICE_GAP` apart at least: a peer flooding NOTIFY costs a few pulls
a second. A log grown only by what one pull from a peer applied (no change made here, no other
pull of the area, nothing merged or in conflict meanwhile) is not announced to that peer: it
would pull its own changes back, each one already known. Every `TRIM_EVERY` seconds each log
is trimmed below what every peer of its area acknowledged (`Exchange.trim`).
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from nfsd.peer import roster as rosters
from nfsd.peer.exchange import Exchange, ExchangeError
from nfsd.peer.fetch import ChunkServer
from nfsd.peer.identity import Identity
from nfsd.peer.links import CountedStream, Link, Links
from nfsd.peer.program import peer_program
from nfsd.peer.roster import Peer, Roster
from nfsd.peer.tls import (
    HANDSHAKE_TIMEOUT,
    PeerRefused,
    PeerStream,
    client_context,
    dial,
    handshake,
    server_context,
)
from nfsd.rpc.client import RpcClient, RpcError
from nfsd.rpc.dispatch import CallContext, Dispatcher, OncePerWindow, Program
from nfsd.rpc.duplex import DuplexConnection
from xdr.codec import void
from xdr.peer import PEER_PROGRAM, PEER_V1, PEERPROC
from xdr.peer import PROCEDURES as PEER_PROCEDURES

log = logging.getLogger("realize.peer")

HEARTBEAT_INTERVAL = 10.0
HEARTBEAT_TIMEOUT = 30.0
BACKOFF_FIRST = 1.0
BACKOFF_MAX = 60.0
MAX_HANDSHAKES = 32  # connections authenticating at once; more are closed unread
SYNC_CONNECT_WAIT = 10.0  # seconds `sync()` waits for a woken dialler to connect
ANNOUNCE_EVERY = 0.25  # seconds between looks at whether a log here has grown
NOTIFY_TIMEOUT = 10.0
NOTICE_GAP = 0.25  # seconds at least between two pulls a peer's notices ask for (one area)
TRIM_EVERY = 600.0  # seconds between trims of the logs below what every peer acknowledged


def backoff(failures: int) -> float:
    """Seconds to wait before the next dial after `failures` failed ones: doubling up to a
    minute, each a random half to whole of that so peers that lost a link together do not
    all dial together."""
    ceiling = min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** min(failures, 16))
    return ceiling * random.uniform(0.5, 1.0)


def _peer_of(ctx: CallContext) -> str | None:
    """The peer id of the roster peer whose link a call came on."""
    return ctx.caller.peer_id if isinstance(ctx.caller, Peer) else None


@dataclass(frozen=True)
class PeerState:
    name: str
    peer_id: str
    connected: bool
    outgoing: bool  # this side dialled the live link
    since: float  # unix time the live link was made, 0 if none
    last_contact: float  # unix time a link last existed, 0 if never
    bytes_in: int = 0  # received from this peer since the server started
    bytes_out: int = 0  # sent to it


ADDRESS_LOOKUP_TIMEOUT = 5.0  # seconds to resolve a peer's host name when it dials in


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])  # an IPv6 zone is not the address
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


async def _is_host(source: str, host: str) -> bool:
    """Whether the address `source` is one of `host`'s (an IP literal, or a name resolved
    now); False when the name does not resolve in time."""
    wanted = _ip(host)
    if wanted is not None:
        return _ip(source) == wanted
    with trio.move_on_after(ADDRESS_LOOKUP_TIMEOUT):
        try:
            found = await trio.socket.getaddrinfo(host, None, type=trio.socket.SOCK_STREAM)
        except OSError:
            return False
        return _ip(source) in {_ip(str(info[4][0])) for info in found}
    return False


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
        chunks: ChunkServer | None = None,
        exchange: Exchange | None = None,
        areas: Callable[[], list[str]] = list,
        on_synced: Callable[[], None] | None = None,
        sync_every: float | None = None,
    ) -> None:
        """`exchange`: this peer's history exchange (None: no history served or pulled);
        `areas`: the names of the areas here; `on_synced`: called after a pull changed the
        index (listings that merge Unreal entries are then out of date); `sync_every`:
        seconds between pulls of every connected peer's logs, besides those a change or a
        link coming up starts (None: none)."""
        self.state_dir = Path(state_dir)
        self.identity = identity
        self.bind = bind
        self.requested_port = port
        self.port_required = port_required  # else a port in use means: no listener
        self.port: int | None = None
        self.roster = rosters.load(self.state_dir)
        self.links = Links(identity.peer_id)
        self.exchange = exchange
        self.areas = areas
        self.on_synced = on_synced
        self.sync_every = sync_every
        self._pulling: dict[str, trio.Lock] = {}
        self._pull_wanted: set[tuple[str, str]] = set()  # (peer, area) notified, not pulled
        self._notifying: set[tuple[str, str]] = set()  # NOTIFY calls in flight
        self._noticed_pull: dict[tuple[str, str], float] = {}  # when a notice's pull began
        # (peer, area) -> the log's heads before and after a pull that alone grew it
        self._echo: dict[tuple[str, str], tuple[int, int]] = {}
        self._area_pulls: dict[str, int] = {}  # area -> pulls of it begun so far
        self._area_pulling: dict[str, int] = {}  # area -> pulls of it running
        program = peer_program(
            exchange=exchange, peer_of=_peer_of, chunks=chunks, notified=self._notified
        )
        self.dispatcher = Dispatcher([program, *(programs or [])])
        self.contacts = rosters.load_contacts(self.state_dir)
        self.refusals = OncePerWindow()
        self._contexts()
        self._handshakes = trio.CapacityLimiter(MAX_HANDSHAKES)
        self._nursery: trio.Nursery | None = None
        self._diallers: dict[str, trio.CancelScope] = {}
        self._wake = trio.Event()
        self._carried: dict[str, list[int]] = {}  # bytes in, out of the links that ended

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
            if self.exchange is not None:
                nursery.start_soon(self._announce)
                nursery.start_soon(self._trim)
                if self.sync_every:
                    nursery.start_soon(self._sync_on_schedule, self.sync_every)
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
            peer = self.roster.peers.get(stream.peer.name)
            home = None if peer is None or peer.address is None else peer.address[0]
            if home is not None and not await _is_host(host, home):
                why = (
                    f"{stream.peer.name}'s key dialled from {host}, not from its address "
                    f"{home} (a peer added without --address may dial from anywhere)"
                )
                self.refusals.warn("peer refused", host, why)
                await trio.aclose_forcefully(stream.stream)
                return
        await self._run_link(stream)

    async def _run_link(self, stream: PeerStream) -> None:
        """Serve and call over one authenticated link until it ends or is closed. A dialled
        link whose NULL goes unanswered raises PeerRefused (the stream closed)."""
        current = self.roster.peers.get(stream.peer.name)
        if current is None or current.public_key != stream.peer.public_key:
            await trio.aclose_forcefully(stream.stream)  # removed during its handshake
            return
        local = stream.stream.transport_stream.socket.getsockname()[0]
        counted = CountedStream(stream.stream)
        duplex = DuplexConnection(
            counted,
            self.dispatcher,
            stream.remote,
            local,
            caller=stream.peer,
            idle_timeout=HEARTBEAT_TIMEOUT,
        )
        link = Link(stream, duplex.client, counted=counted)
        name = stream.peer.name
        registered = False
        refused: PeerRefused | None = None
        try:
            with link.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._read_link, duplex, nursery.cancel_scope)
                    if stream.outgoing:
                        refused = await self._confirm(stream, duplex.client)
                    if refused is not None or not self.links.add(link):
                        nursery.cancel_scope.cancel()
                        return
                    registered = True
                    log.info(
                        "peer %s (%s) connected, %s %s",
                        name,
                        stream.peer.peer_id,
                        "dialled at" if stream.outgoing else "from",
                        stream.remote[0],
                    )
                    self._contact(stream)
                    nursery.start_soon(self._pull_quietly, name)
                    await self._heartbeat(duplex.client)
                    nursery.cancel_scope.cancel()
        finally:
            self.links.discard(link)
            if registered:
                carried = self._carried.setdefault(name, [0, 0])
                carried[0] += counted.received
                carried[1] += counted.sent
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(stream.stream)
            if registered:
                self._contact(stream)
                log.info("peer %s disconnected: %s", name, link.closed_because or "link ended")
        if refused is not None:
            raise refused

    @staticmethod
    async def _read_link(duplex: DuplexConnection, done: trio.CancelScope) -> None:
        """The link's reader; when it ends the link does."""
        try:
            await duplex.run()
        finally:
            done.cancel()

    @staticmethod
    async def _confirm(stream: PeerStream, client: RpcClient) -> PeerRefused | None:
        """None once the dialled peer has answered a NULL; else why the link does not count."""
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                await client.call(PEER_PROGRAM, PEER_V1, PEERPROC.NULL, void, None, void)
        except (trio.TooSlowError, ConnectionError, RpcError) as e:
            return PeerRefused(f"{stream.peer.name} did not accept this peer: {e}")
        return None

    async def _heartbeat(self, client: RpcClient) -> None:
        try:
            while True:
                with trio.move_on_after(HEARTBEAT_TIMEOUT) as waited:
                    await client.call(PEER_PROGRAM, PEER_V1, PEERPROC.NULL, void, None, void)
                if waited.cancelled_caught:
                    return  # half-open, or the other side is stuck
                await trio.sleep(HEARTBEAT_INTERVAL)
        except (ConnectionError, RpcError, trio.BrokenResourceError, trio.ClosedResourceError):
            return

    # ---- calling a peer ----

    async def call(self, name: str, proc: int, args_type: Any, args: Any, res_type: Any) -> Any:
        """Call the peer program of the connected peer `name` over its link. LookupError if
        it is not connected; ConnectionError if the link ends first; RpcError if refused."""
        link = self.links.connected(name)
        if link is None or link.client is None:
            raise LookupError(f"peer {name} is not connected")
        return await link.client.call(PEER_PROGRAM, PEER_V1, proc, args_type, args, res_type)

    async def ping(self, name: str) -> float:
        """Seconds a NULL call to the connected peer `name` took to be answered."""
        started = trio.current_time()
        with trio.fail_after(HEARTBEAT_TIMEOUT):
            await self.call(name, PEERPROC.NULL, void, None, void)
        return trio.current_time() - started

    # ---- the history exchange ----

    def shared_areas(self, name: str) -> list[str]:
        """The names of the areas here that the peer `name` shares, by the roster."""
        peer = self.roster.peers.get(name)
        if peer is None:
            return []
        here = sorted(self.areas())
        return here if peer.areas is None else [a for a in here if a in peer.areas]

    async def pull(self, name: str, only: str | None = None) -> list[str]:
        """Pull and acknowledge the connected peer `name`'s log of each shared area (or of
        `only`); a line per area saying what it did. LookupError if not connected."""
        peer = self.roster.peers.get(name)
        if self.exchange is None or peer is None:
            return []
        lock = self._pulling.setdefault(name, trio.Lock())
        lines = []
        async with lock:
            for area in self.shared_areas(name):
                if only is not None and area != only:
                    continue
                self._pull_wanted.discard((name, area))  # a NOTIFY from now on pulls again
                lines.append(await self._pull_area(peer, area))
        return lines

    async def _pull_area(self, peer: Peer, area: str) -> str:
        assert self.exchange is not None

        async def call(proc: int, args: Any) -> Any:
            _, args_type, res_type = PEER_PROCEDURES[proc]
            return await self.call(peer.name, proc, args_type, args, res_type)

        record = self.exchange.areas.get(area)
        history = self.exchange.history
        pulls = self._area_pulls[area] = self._area_pulls.get(area, 0) + 1
        crowded = self._area_pulling.get(area, 0) > 0
        self._area_pulling[area] = self._area_pulling.get(area, 0) + 1
        before = (history.next_sequence(record.id), history.local_appends.get(record.id, 0)) \
            if record is not None else None  # fmt: skip
        try:
            done = await self.exchange.pull(peer.peer_id, area, call)
        except ExchangeError as e:
            log.info("no history of %s from %s: %s", area, peer.name, e)
            return f"{peer.name} {area}: not synced ({e})"
        finally:
            self._area_pulling[area] -= 1
        if done.applied or done.merged or done.conflicts:
            alone = not crowded and pulls == self._area_pulls[area]
            alone = alone and not (done.merged or done.conflicts)
            if record is not None and before is not None:
                after = (history.next_sequence(record.id), history.local_appends.get(record.id, 0))
                if alone and after[1] == before[1]:  # what grew the log is the peer's own
                    self._echo[(peer.name, area)] = (before[0], after[0])
                else:
                    self._echo.pop((peer.name, area), None)
            if self.on_synced is not None:
                self.on_synced()
        line = (
            f"{peer.name} {area}: {done.applied} applied, {done.merged} merged, "
            f"{done.conflicts} conflicts, {done.ignored} already known"
        )
        if done.errors:
            line += f", {len(done.errors)} refused"
        log.info("synced %s", line)
        return line

    async def _pull_quietly(self, name: str) -> None:
        """A link's first pull: a failure is logged, the link goes on."""
        try:
            await self.pull(name)
        except (LookupError, ConnectionError, RpcError, trio.BrokenResourceError) as e:
            log.info("pulling the history of %s failed: %s", name, e)

    # ---- live changes ----

    def _notified(self, ctx: CallContext, area: str) -> None:
        """A NOTIFY from the peer on the link: pull that area from it (once more at most)."""
        peer = ctx.caller
        if not isinstance(peer, Peer) or self._nursery is None:
            return
        if area not in self.shared_areas(peer.name):
            return  # an area not shared with it: nothing of its log is taken
        key = (peer.name, area)
        if key in self._pull_wanted:
            return
        self._pull_wanted.add(key)
        self._nursery.start_soon(self._pull_notified, peer.name, area)

    async def _pull_notified(self, name: str, area: str) -> None:
        key = (name, area)
        await trio.sleep_until(self._noticed_pull.get(key, -NOTICE_GAP) + NOTICE_GAP)
        self._noticed_pull[key] = trio.current_time()
        try:
            await self.pull(name, area)
        except (LookupError, ConnectionError, RpcError, trio.BrokenResourceError) as e:
            self._pull_wanted.discard((name, area))
            log.info("pulling %s from %s after its notice failed: %s", area, name, e)

    def _log_heads(self) -> dict[str, int]:
        """Area name -> the next sequence its log will give."""
        assert self.exchange is not None
        heads = {}
        for name in self.areas():
            record = self.exchange.areas.get(name)
            if record is not None:
                heads[name] = self.exchange.history.next_sequence(record.id)
        return heads

    async def _announce(self) -> None:
        """Tell the connected peers of each area whose log grew since the last look."""
        told = self._log_heads()  # a link coming up pulls what came before
        # Areas whose log holds changes not stamped yet (a delete in its grace, or left by
        # the last run): looked at again every round until stamped, then told of.
        held = set(told)
        stamped = {area: self._stamped(area) for area in told}
        while True:
            await trio.sleep(ANNOUNCE_EVERY)
            heads = self._log_heads()
            grown = {area for area, head in heads.items() if told.get(area) != head}
            told_before, told = told, heads
            published = []  # areas with entries stamped since the last look: to tell of
            for area in sorted(grown | held):
                if await self._stamp_published(area):
                    held.discard(area)
                else:
                    held.add(area)
                now = self._stamped(area)
                if stamped.get(area) != now:
                    stamped[area] = now
                    published.append(area)
            for area in published:
                for name in sorted(self.links.live):
                    if self._echoed(name, area, told_before.get(area), heads[area]):
                        continue  # grown by what was pulled from that peer, nothing else
                    if area in self.shared_areas(name) and (name, area) not in self._notifying:
                        assert self._nursery is not None
                        self._notifying.add((name, area))
                        self._nursery.start_soon(self._notify, name, area)

    def _stamped(self, area: str) -> int:
        assert self.exchange is not None
        record = self.exchange.areas.get(area)
        return 0 if record is None else self.exchange.stamped(record.id)

    async def _stamp_published(self, area: str) -> bool:
        """Stamp what was published in `area` now, a batch at a time with the loop free
        between, so a peer asking later (one that missed many changes) is not kept waiting
        while its log is stamped; whether all of it is stamped (not, while a delete waits
        in its grace)."""
        assert self.exchange is not None
        record = self.exchange.areas.get(area)
        if record is None:
            return True
        while self.exchange.stamp_some(record.id):
            await trio.sleep(0)
        return self.exchange.all_stamped(record.id)

    def _echoed(self, name: str, area: str, told: int | None, head: int) -> bool:
        """Whether the log of `area` grew from `told` to `head` by one pull from `name` alone."""
        echo = self._echo.get((name, area))
        return echo is not None and told is not None and echo[0] <= told and echo[1] == head

    async def _notify(self, name: str, area: str) -> None:
        try:
            with trio.fail_after(NOTIFY_TIMEOUT):
                await self.call(
                    name, PEERPROC.NOTIFY, PEER_PROCEDURES[PEERPROC.NOTIFY][1], area.encode(), void
                )
        except (LookupError, ConnectionError, RpcError, trio.TooSlowError) as e:
            log.info("could not tell %s that %s changed: %s", name, area, e)
        finally:
            self._notifying.discard((name, area))

    async def _trim(self) -> None:
        assert self.exchange is not None
        while True:
            await trio.sleep(TRIM_EVERY)
            for area in self.areas():
                record = self.exchange.areas.get(area)
                if record is None:
                    continue
                peers = [
                    p.peer_id
                    for p in self.roster.peers.values()
                    if p.areas is None or area in p.areas
                ]
                trimmed = self.exchange.trim(record.id, peers)
                if trimmed:
                    log.info("trimmed %d changes of %s that every peer has", trimmed, area)
                await trio.lowlevel.checkpoint()

    async def _sync_on_schedule(self, every: float) -> None:
        """Pull every connected peer's logs every `every` seconds (--sync-every): what a
        notice missed (one lost with a link that went down) is not left waiting for the
        next change."""
        while True:
            await trio.sleep(every)
            for name in sorted(self.links.live):
                try:
                    await self.pull(name)
                except (LookupError, ConnectionError, RpcError, trio.BrokenResourceError) as e:
                    log.info("scheduled sync with %s failed: %s", name, e)

    async def sync(self, only: str | None = None) -> list[str]:
        """Dial every peer now, wait a little for those with an address to connect, then
        pull each connected one (`realize sync [AREA]`); a line per peer and area."""
        self.wake()
        dialable = [n for n, p in self.roster.peers.items() if p.address is not None]
        with trio.move_on_after(SYNC_CONNECT_WAIT):
            while any(self.links.connected(n) is None for n in dialable):
                await self.links.changed.wait()
        lines = []
        for name in sorted(self.roster.peers):
            if self.links.connected(name) is None:
                lines.append(f"{name}: not connected")
                continue
            try:
                lines.extend(await self.pull(name, only))
            except (LookupError, ConnectionError, RpcError, trio.BrokenResourceError) as e:
                lines.append(f"{name}: failed ({e})")
        return lines

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
                started = trio.current_time()
                try:
                    stream = await dial(
                        peer.address, self.identity, self.roster, peer, self._client_context
                    )
                    await self._run_link(stream)
                except (OSError, PeerRefused) as e:
                    failures += 1
                    self.refusals.warn("cannot reach peer", name, str(e))
                else:
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
            received, sent = self._carried.get(name, (0, 0))
            if link is not None and link.counted is not None:
                received += link.counted.received
                sent += link.counted.sent
            states.append(
                PeerState(
                    name,
                    peer.peer_id,
                    link is not None,
                    link.outgoing if link else False,
                    link.since if link else 0.0,
                    self.contacts.get(peer.peer_id, 0.0),
                    received,
                    sent,
                )
            )
        return states
