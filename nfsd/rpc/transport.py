"""trio transports for ONC RPC: TCP with record marking, and UDP datagrams.

One task per TCP connection reads records. Calls that never wait are answered there at once
and their replies sent together; calls that may wait (READ, WRITE, COMMIT) get a task of their
own, so slow calls do not hold up fast ones and replies go out in completion order.

Limits keep memory bounded whatever a client sends: a record size bound, calls in flight per
connection and in total, a bound on the bytes of replies waiting for a client that does not
read them, connection slots (nfsd/rpc/slots.py: a share per client host, the longest idle
connection closed to make room), and timeouts for records that trickle in and connections
that never call. A host that no export allows is closed at accept, before it takes a slot.
Quick calls answered inline yield to other connections every few milliseconds, so one
client's burst does not stall the others.

`serve_stream` serves any connected trio Stream (tests use in-memory ones): a stream without
a socket gets its replies through `send_all` instead of gathered `sendmsg` calls.
"""

from __future__ import annotations

import errno
import logging
import math
import select
import socket
from collections.abc import Callable
from dataclasses import dataclass

import trio

from nfsd.identity import loopback_owner, loopback_udp_owner
from nfsd.rpc.dispatch import DEFERRED, Dispatcher, Reply
from nfsd.rpc.record import DEFAULT_MAX_RECORD, Record, RecordReader, RecordTooLarge, frame
from nfsd.rpc.slots import Cause, CauseLog, ConnectionSlots, host_key
from nfsd.rpc.streamio import SocketIO, StreamIO, stream_io

log = logging.getLogger("realize.rpc")

UDP_MAX_DATAGRAM = 65507
# Replies are gathered into one send up to this size; bigger buffers are sent as they are.
_COALESCE_LIMIT = 256 * 1024
# Inline calls of one connection run for at most this long before other tasks get a turn.
_INLINE_SLICE = 0.005
_SEND_BUFFER = 4 * 1024 * 1024
# accept() failing for want of descriptors or memory: pause, and the backlog waits meanwhile.
_ACCEPT_EXHAUSTED = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM}
_ACCEPT_PAUSE = 0.1


@dataclass
class Limits:
    max_record: int = DEFAULT_MAX_RECORD
    max_connections: int = 512
    # Slots one client host may hold; None: an eighth of max_connections (nfsd/rpc/slots.py).
    max_connections_per_host: int | None = None
    inflight_per_connection: int = 64
    inflight_total: int = 256
    partial_record_timeout: float = 30.0  # a record must complete within this
    first_call_timeout: float = 60.0  # a new connection must send a call within this
    idle_timeout: float = 1800.0  # an established connection with no traffic is closed
    # Bytes of replies queued for one connection beyond which it stops reading calls.
    max_queued_replies: int = 4 * 1024 * 1024


class _Outbox:
    """The replies of one connection waiting to be sent, bounded in bytes.

    Replies are added without waiting, so the replies of a burst leave in few sends; the
    connection's reader calls `wait_for_room` before each call it reads, and waits while more
    than `limit` bytes are queued. A client that sends calls but does not read the replies thus
    stops having its calls read (TCP pushes back on it) instead of making the server hold the
    replies in memory. At most `limit` bytes plus the replies of the calls in flight are queued.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.queued = 0
        self._send, self.receive = trio.open_memory_channel[Reply](math.inf)
        self._room = trio.Event()
        self._room.set()

    def put(self, reply: Reply) -> None:
        """Queue a reply; trio.BrokenResourceError once the writer has stopped."""
        self._send.send_nowait(reply)
        self.queued += sum(len(p) for p in reply)
        if self.queued > self.limit and self._room.is_set():
            self._room = trio.Event()

    async def wait_for_room(self) -> None:
        if self.queued > self.limit:
            await self._room.wait()

    def sent(self, size: int) -> None:
        self.queued -= size
        if self.queued <= self.limit:
            self._room.set()

    def close(self) -> None:
        """The writer has stopped: nothing waits for room any more, and puts fail."""
        self.receive.close()
        self._room.set()


ConnectionIO = SocketIO | StreamIO


class _ReceiveTimer:
    """The receive timeouts of one connection, kept by a task of its own.

    A cancel scope entered per receive costs more than the rest of a quick call's receive.
    Instead the reader notes when it starts waiting and for how long it may (`since`,
    `timeout`); this task sleeps until that moment (and never longer than the shortest
    timeout, in case a shorter wait starts meanwhile) and cancels `scope`, which the reader
    holds around its loop, if the reader is still in that wait. Outside a receive `since` is
    None, so nothing else the reader does is ever cut short."""

    def __init__(self, shortest: float) -> None:
        self.scope = trio.CancelScope()
        self.since: float | None = None
        self.timeout = math.inf
        self._shortest = shortest

    async def run(self) -> None:
        while True:
            now = trio.current_time()
            wake = now + self._shortest
            since = self.since
            if since is not None:
                deadline = since + self.timeout
                if now >= deadline:
                    self.scope.cancel()
                    return
                wake = min(wake, deadline)
            await trio.sleep_until(wake)


class _Connection:
    """One connection's state, as the slot policy asks about it (nfsd/rpc/slots.Holder).

    Nothing on the path of a call is added for it: whether the connection is idle is read,
    only when slots run out, from what the reader and its tasks keep anyway."""

    __slots__ = (
        "calls",
        "evicted",
        "last_done",
        "no_calls",
        "outbox",
        "reader",
        "sending",
        "stream",
        "timer",
    )

    def __init__(self, stream: trio.abc.Stream, limits: Limits) -> None:
        self.stream = stream
        self.timer = _ReceiveTimer(
            min(limits.partial_record_timeout, limits.first_call_timeout, limits.idle_timeout)
        )
        self.reader = RecordReader(limits.max_record)
        self.calls = trio.Semaphore(limits.inflight_per_connection)  # calls in tasks
        self.no_calls = limits.inflight_per_connection  # its value with none in flight
        self.outbox = _Outbox(limits.max_queued_replies)
        self.sending = trio.Lock()
        self.last_done = -math.inf  # when its last call answered in a task ended
        self.evicted = False

    def idle_since(self) -> float | None:
        since = self.timer.since  # set only while the reader waits for bytes
        if (
            since is None
            or self.reader.partial
            or self.calls.value < self.no_calls
            or self.outbox.queued
            or self.sending.locked()
        ):
            return None
        return max(since, self.last_done)

    def quiet(self) -> bool:
        """No bytes wait unread in the kernel: the reader may simply not have run yet."""
        if not isinstance(self.stream, trio.SocketStream):
            return True  # an in-memory stream hands its bytes to the reader at once
        try:
            poller = select.poll()
            poller.register(self.stream.socket.fileno(), select.POLLIN)
            return not poller.poll(0)
        except (OSError, ValueError):
            return True  # already closed: nothing to lose

    def evict(self) -> None:
        """Close it to make room: its reader, waiting for bytes, is stopped."""
        self.evicted = True
        self.timer.scope.cancel()


class RpcServer:
    """Serves one Dispatcher over any number of TCP listeners and UDP sockets.

    `allowed(host)`: whether any export allows a client at that address; a connection from
    any other is closed at accept, before it takes a slot. None: everyone (the control
    socket's local callers, the portmapper, which only says where the programs are)."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        limits: Limits | None = None,
        allowed: Callable[[str], bool] | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.limits = limits or Limits()
        self.allowed = allowed
        self.slots = ConnectionSlots(
            self.limits.max_connections, self.limits.max_connections_per_host
        )
        self._slot_log = CauseLog()
        self._inflight = trio.CapacityLimiter(self.limits.inflight_total)

    @property
    def connections(self) -> int:
        """Connections holding a slot now."""
        return self.slots.held

    # ---- TCP ----

    async def serve_tcp(
        self, listener: trio.SocketListener, *, task_status=trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                try:
                    stream = await listener.accept()
                except OSError as e:
                    if e.errno not in _ACCEPT_EXHAUSTED:
                        raise
                    log.warning("cannot accept connections for now: %s", e.strerror)
                    await trio.sleep(_ACCEPT_PAUSE)
                    continue
                nursery.start_soon(self._connection, stream)

    async def _connection(self, stream: trio.SocketStream) -> None:
        unix = stream.socket.family == socket.AF_UNIX
        try:
            # A Unix socket's peer has no address: the control channel's caller is local.
            peer = ("local", 0) if unix else stream.socket.getpeername()[:2]
            sockname = ("local", 0) if unix else stream.socket.getsockname()[:2]
        except OSError:
            await stream.aclose()
            return
        if not self._allows(peer[0]):
            await stream.aclose()
            return
        # Who owns the client's socket, for a connection from this machine: the kernel's word,
        # which bounds what its AUTH_SYS credentials may claim (nfsd/identity.py).
        owner = None if unix else loopback_owner(peer, sockname)
        await self._serve(stream, peer, sockname[0], owner)

    def _allows(self, host: str) -> bool:
        if self.allowed is None or self.allowed(host):
            return True
        self._slot_log.note(Cause.NOT_ALLOWED, host)
        return False

    async def serve_stream(
        self,
        stream: trio.abc.Stream,
        peer: tuple[str, int],
        local: str,
        owner: int | None = None,
    ) -> None:
        """Serve the calls of one connected stream until its client goes, then close it.

        Accepted TCP and Unix connections come here; so can any other trio Stream (an
        in-memory one in tests), given the addresses a socket would have told and, for a
        connection from this machine, the uid owning the client's socket."""
        if not self._allows(peer[0]):
            await stream.aclose()
            return
        await self._serve(stream, peer, local, owner)

    async def _serve(
        self, stream: trio.abc.Stream, peer: tuple[str, int], local: str, owner: int | None
    ) -> None:
        connection = _Connection(stream, self.limits)
        admission = self.slots.admit(connection, host_key(peer[0], owner))
        if admission.cause is not None:
            self._slot_log.note(admission.cause, peer[0])
        if not admission.admitted:
            await stream.aclose()
            return
        if admission.evict is not None:
            assert isinstance(admission.evict, _Connection)
            admission.evict.evict()
        try:
            if isinstance(stream, trio.SocketStream):
                if stream.socket.family != socket.AF_UNIX:
                    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
                # Room for a whole 1 MiB READ reply, so it leaves in one or two sends rather
                # than eight waits for the socket to drain.
                stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)
            await self._read_calls(connection, peer, local, owner)
        finally:
            self.slots.release(connection)
            await stream.aclose()

    async def _read_calls(
        self, connection: _Connection, peer: tuple[str, int], local: str, owner: int | None
    ) -> None:
        limits = self.limits
        reader, outbox, sending, timer = (
            connection.reader,
            connection.outbox,
            connection.sending,
            connection.timer,
        )
        io = stream_io(connection.stream)
        established = False
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_replies, io, outbox, sending)
                nursery.start_soon(timer.run)
                with timer.scope:
                    while True:
                        if reader.partial:
                            timer.timeout = limits.partial_record_timeout
                        elif established:
                            timer.timeout = limits.idle_timeout
                        else:
                            timer.timeout = limits.first_call_timeout
                        timer.since = trio.current_time()
                        try:
                            received = await io.receive_into(reader.receive_buffer())
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            received = 0
                        timer.since = None
                        if not received or timer.scope.cancel_called:
                            break
                        try:
                            records = reader.received(received)
                        except RecordTooLarge as e:
                            self.dispatcher.bad_input.warn("connection closed", peer[0], str(e))
                            break
                        if not records:
                            continue
                        answered = await self._dispatch(
                            records, io, connection, nursery, peer, local, owner
                        )
                        if not answered:
                            break  # the writer stopped: the client is gone
                        established = True
                if connection.evicted:
                    pass  # logged once per cause by _serve, which made room
                elif timer.scope.cancel_called and (reader.partial or not established):
                    self.dispatcher.bad_input.warn(
                        "connection closed", peer[0], "no complete call in time"
                    )
                # The client is gone or cut off: nobody will read the replies of unfinished
                # calls.
                nursery.cancel_scope.cancel()
        finally:
            io.detach()

    async def _dispatch(
        self,
        records: list[Record],
        io: ConnectionIO,
        connection: _Connection,
        nursery: trio.Nursery,
        peer: tuple[str, int],
        local: str,
        owner: int | None,
    ) -> bool:
        """Answer quick calls at once and start tasks for the others; False if the client
        is gone."""
        outbox, sending, per_connection = connection.outbox, connection.sending, connection.calls
        slice_end = trio.current_time() + _INLINE_SLICE
        ready: list[Reply] = []  # inline replies of this burst, sent together
        dispatcher = self.dispatcher
        try:
            for record in records:
                if outbox.queued > outbox.limit:
                    await outbox.wait_for_room()
                if dispatcher.is_inline(record):
                    reply = await dispatcher.handle(
                        record, peer, "tcp", local, inline=True, owner=owner
                    )
                    if reply is not DEFERRED:  # else: it must wait, so it gets a task below
                        if reply is not None:
                            ready.append(reply)
                        if trio.current_time() > slice_end:
                            await self._send_ready(io, outbox, sending, ready)
                            ready = []
                            await trio.lowlevel.checkpoint()  # let other connections run
                            slice_end = trio.current_time() + _INLINE_SLICE
                        continue
                await per_connection.acquire()
                # A token of its own per call: identical records (a retransmission) may be in
                # flight together, and the limiter refuses a borrower that holds a token.
                token = object()
                await self._inflight.acquire_on_behalf_of(token)
                nursery.start_soon(self._tcp_call, connection, record, peer, local, owner, token)
            await self._send_ready(io, outbox, sending, ready)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return True

    @staticmethod
    async def _send_ready(
        io: ConnectionIO, outbox: _Outbox, sending: trio.Lock, ready: list[Reply]
    ) -> None:
        """Send inline replies from the reader itself when nothing else is being sent (saving
        the hand-off to the writer, which is most of a quick call's latency); else queue them.
        The lock is taken without a checkpoint: it is free, and a send the socket takes at
        once does not wait at all."""
        if not ready:
            return
        if outbox.queued == 0 and not sending.locked():
            sending.acquire_nowait()
            try:
                if len(ready) == 1:
                    await io.send(frame(ready[0]))
                else:
                    await io.send([part for reply in ready for part in frame(reply)])
            finally:
                sending.release()
            return
        for reply in ready:
            outbox.put(reply)

    async def _write_replies(self, io: ConnectionIO, outbox: _Outbox, sending: trio.Lock) -> None:
        """Send replies as they come, coalescing all that are ready into one send."""
        try:
            async for reply in outbox.receive:
                batch = [*frame(reply)]
                size = sum(len(p) for p in batch)
                replies = 1
                while size < _COALESCE_LIMIT:
                    try:
                        more = outbox.receive.receive_nowait()
                    except (trio.WouldBlock, trio.EndOfChannel):
                        break
                    parts = frame(more)
                    batch += parts
                    size += sum(len(p) for p in parts)
                    replies += 1
                async with sending:
                    await io.send(batch)
                outbox.sent(size - 4 * replies)  # without the record marks frame() added
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away; its replies have nobody to read them
        finally:
            outbox.close()

    async def _tcp_call(
        self,
        connection: _Connection,
        record: bytes,
        peer: tuple[str, int],
        local: str,
        owner: int | None,
        token: object,
    ) -> None:
        try:
            reply = await self.dispatcher.handle(record, peer, "tcp", local, owner=owner)
            if reply is not None:
                connection.outbox.put(reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._inflight.release_on_behalf_of(token)
            connection.last_done = trio.current_time()
            connection.calls.release()

    # ---- UDP ----

    async def serve_udp(
        self, sock: trio.socket.SocketType, *, task_status=trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                data, addr = await sock.recvfrom(1 << 16)
                if self._inflight.available_tokens == 0:
                    continue  # overloaded: UDP clients retransmit
                token = object()  # not `data`: a retransmission is an equal datagram
                await self._inflight.acquire_on_behalf_of(token)
                nursery.start_soon(self._udp_call, sock, data, addr[:2], token)

    async def _udp_call(
        self, sock: trio.socket.SocketType, data: bytes, addr: tuple[str, int], token: object
    ) -> None:
        try:
            local = sock.getsockname()[0]
            reply = await self.dispatcher.handle(
                data,
                addr,
                "udp",
                None if local in ("0.0.0.0", "::") else local,
                owner=loopback_udp_owner(addr),
            )
            if reply is None:
                return
            payload = b"".join(reply)
            if len(payload) > UDP_MAX_DATAGRAM:
                self.dispatcher.bad_input.warn("reply dropped", addr[0], "too large for UDP")
                return
            try:
                await sock.sendto(payload, addr)
            except OSError as e:
                log.debug("udp send to %s failed: %s", addr, e)
        finally:
            self._inflight.release_on_behalf_of(token)


async def open_udp_socket(host: str, port: int) -> trio.socket.SocketType:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    await sock.bind((host, port))
    return sock
