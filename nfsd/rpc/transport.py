"""trio transports for ONC RPC: TCP with record marking, and UDP datagrams.

One task per TCP connection reads records. Calls that never wait are answered there at once
and their replies sent together; calls that may wait (READ, WRITE, COMMIT) get a task of their
own, so slow calls do not hold up fast ones and replies go out in completion order.

Limits keep memory bounded whatever a client sends: a record size bound, calls in flight per
connection and in total, a bound on the bytes of replies waiting for a client that does not
read them, a connection cap, and timeouts for records that trickle in and connections that
never call. Quick calls answered inline yield to other connections every few milliseconds, so
one client's burst does not stall the others.

`serve_stream` serves any connected trio Stream (tests use in-memory ones): a stream without
a socket gets its replies through `send_all` instead of gathered `sendmsg` calls.
"""

from __future__ import annotations

import logging
import math
import socket
from dataclasses import dataclass

import trio

from nfsd.identity import loopback_owner, loopback_udp_owner
from nfsd.rpc.dispatch import DEFERRED, Dispatcher, Reply
from nfsd.rpc.record import DEFAULT_MAX_RECORD, Record, RecordReader, RecordTooLarge, frame
from nfsd.rpc.streamio import SocketIO, StreamIO, stream_io

log = logging.getLogger("realize.rpc")

UDP_MAX_DATAGRAM = 65507
# Replies are gathered into one send up to this size; bigger buffers are sent as they are.
_COALESCE_LIMIT = 256 * 1024
# Inline calls of one connection run for at most this long before other tasks get a turn.
_INLINE_SLICE = 0.005
_SEND_BUFFER = 4 * 1024 * 1024


@dataclass
class Limits:
    max_record: int = DEFAULT_MAX_RECORD
    max_connections: int = 512
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


class RpcServer:
    """Serves one Dispatcher over any number of TCP listeners and UDP sockets."""

    def __init__(self, dispatcher: Dispatcher, limits: Limits | None = None) -> None:
        self.dispatcher = dispatcher
        self.limits = limits or Limits()
        self.connections = 0
        self._inflight = trio.CapacityLimiter(self.limits.inflight_total)

    # ---- TCP ----

    async def serve_tcp(
        self, listener: trio.SocketListener, *, task_status=trio.TASK_STATUS_IGNORED
    ) -> None:
        task_status.started()
        async with trio.open_nursery() as nursery:
            while True:
                stream = await listener.accept()
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
        # Who owns the client's socket, for a connection from this machine: the kernel's word,
        # which bounds what its AUTH_SYS credentials may claim (nfsd/identity.py).
        owner = None if unix else loopback_owner(peer, sockname)
        await self.serve_stream(stream, peer, sockname[0], owner)

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
        if self.connections >= self.limits.max_connections:
            self.dispatcher.bad_input.warn("connection refused", peer[0], "too many connections")
            await stream.aclose()
            return
        self.connections += 1
        try:
            if isinstance(stream, trio.SocketStream):
                if stream.socket.family != socket.AF_UNIX:
                    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
                # Room for a whole 1 MiB READ reply, so it leaves in one or two sends rather
                # than eight waits for the socket to drain.
                stream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _SEND_BUFFER)
            await self._read_calls(stream, peer, local, owner)
        finally:
            self.connections -= 1
            await stream.aclose()

    async def _read_calls(
        self, stream: trio.abc.Stream, peer: tuple[str, int], local: str, owner: int | None
    ) -> None:
        limits = self.limits
        reader = RecordReader(limits.max_record)
        per_connection = trio.Semaphore(limits.inflight_per_connection)
        outbox = _Outbox(limits.max_queued_replies)
        sending = trio.Lock()
        timer = _ReceiveTimer(
            min(limits.partial_record_timeout, limits.first_call_timeout, limits.idle_timeout)
        )
        io = stream_io(stream)
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
                            records,
                            io,
                            outbox,
                            sending,
                            nursery,
                            per_connection,
                            peer,
                            local,
                            owner,
                        )
                        if not answered:
                            break  # the writer stopped: the client is gone
                        established = True
                if timer.scope.cancel_called and (reader.partial or not established):
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
        outbox: _Outbox,
        sending: trio.Lock,
        nursery: trio.Nursery,
        per_connection: trio.Semaphore,
        peer: tuple[str, int],
        local: str,
        owner: int | None,
    ) -> bool:
        """Answer quick calls at once and start tasks for the others; False if the client
        is gone."""
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
                nursery.start_soon(
                    self._tcp_call, outbox, per_connection, record, peer, local, owner, token
                )
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
        outbox: _Outbox,
        per_connection: trio.Semaphore,
        record: bytes,
        peer: tuple[str, int],
        local: str,
        owner: int | None,
        token: object,
    ) -> None:
        try:
            reply = await self.dispatcher.handle(record, peer, "tcp", local, owner=owner)
            if reply is not None:
                outbox.put(reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self._inflight.release_on_behalf_of(token)
            per_connection.release()

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
