"""A connection's bytes in and out, yielding to trio only when the kernel says to wait.

trio's socket methods pass through the scheduler twice on every call, even when the data or
the room is there at once; at one call outstanding that is most of an RPC's fixed cost. For a
trio SocketStream, `SocketIO` calls `recv_into` and `sendmsg` on a second socket object over
the same descriptor (set non-blocking, as trio keeps it) and waits for readiness only on
EAGAIN. The stream keeps owning the descriptor: `detach` before closing the stream. Any other
trio Stream (the in-memory ones of tests) gets `StreamIO`, the same calls over `receive_some`
and `send_all`, unless it offers `receive_into`, `send` and `detach` itself.

Both raise trio.BrokenResourceError when the peer is gone. A caller that never waits (a
client pipelining quick calls) would never let other tasks run, so `SocketIO` passes through
the scheduler once every `YIELD_EVERY` seconds of receiving without waiting.
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from typing import Any

import trio

IOV_MAX = 1024  # buffers one sendmsg takes (Linux UIO_MAXIOV)
# Buffers to send up to this many bytes in all are joined into one.
_JOIN_UP_TO = 8 * 1024
# Received data handled without waiting for this long lets other tasks run.
YIELD_EVERY = 0.005

Buffer = bytes | bytearray | memoryview


class SocketIO:
    """Non-blocking I/O on the descriptor of a trio SocketStream."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self._owner = stream.socket
        self._sock = socket.socket(fileno=self._owner.fileno())
        self._sock.setblocking(False)
        self._busy_since = trio.current_time()

    def detach(self) -> None:
        """Forget the descriptor (the stream closes it)."""
        self._sock.detach()

    def _check_open(self) -> None:
        # Another task may have closed the stream while this one was not waiting on it (a
        # wait would have been woken with ClosedResourceError); its number may be reused.
        if self._owner.fileno() < 0 or self._sock.fileno() < 0:
            raise trio.ClosedResourceError("the stream is closed")

    async def receive_into(self, view: memoryview) -> int:
        """Bytes received into `view`, waiting until some arrive; 0 at end of stream."""
        if trio.current_time() - self._busy_since > YIELD_EVERY:
            # Before receiving, so a cancellation here loses nothing.
            await trio.lowlevel.checkpoint()
            self._busy_since = trio.current_time()
        self._check_open()
        sock = self._sock
        try:
            return sock.recv_into(view)
        except BlockingIOError:
            pass
        except OSError as e:
            raise trio.BrokenResourceError(f"cannot receive: {e}") from e
        # A wait ends with ClosedResourceError if the stream is closed meanwhile.
        while True:
            await trio.lowlevel.wait_readable(sock)
            try:
                n = sock.recv_into(view)
            except BlockingIOError:
                continue
            except OSError as e:
                raise trio.BrokenResourceError(f"cannot receive: {e}") from e
            self._busy_since = trio.current_time()
            return n

    def send_nowait(self, views: list[memoryview]) -> None:
        """Send what the socket takes now from the front of `views`, removing it."""
        self._check_open()
        while views:
            try:
                sent = self._sock.sendmsg(views[:IOV_MAX])
            except BlockingIOError:
                return
            except OSError as e:
                raise trio.BrokenResourceError(f"cannot send: {e}") from e
            _consume(views, sent)

    async def send(self, parts: Sequence[Buffer]) -> None:
        """Send buffers in order, gathered: as few system calls as the socket needs, and a
        wait only when it is full. Small ones are joined: one `send` of a few hundred bytes
        costs less than a `sendmsg` of their views."""
        if sum(len(part) for part in parts) <= _JOIN_UP_TO:
            data = b"".join(parts)
            self._check_open()
            try:
                sent = self._sock.send(data)
            except BlockingIOError:
                sent = 0
            except OSError as e:
                raise trio.BrokenResourceError(f"cannot send: {e}") from e
            if sent == len(data):
                return
            views = [memoryview(data)[sent:]]
        else:
            views = [memoryview(part) for part in parts if len(part)]
            self.send_nowait(views)
        while views:
            await trio.lowlevel.wait_writable(self._sock)
            self.send_nowait(views)


def _consume(views: list[memoryview], sent: int) -> None:
    while sent:
        first = views[0]
        if sent >= first.nbytes:
            sent -= first.nbytes
            del views[0]
        else:
            views[0] = first[sent:]
            sent = 0


class StreamIO:
    """The same calls over any trio Stream."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream

    def detach(self) -> None:
        pass

    async def receive_into(self, view: memoryview) -> int:
        try:
            data = await self._stream.receive_some(len(view))
        except trio.ClosedResourceError as e:
            raise trio.BrokenResourceError("stream closed") from e
        view[: len(data)] = data
        return len(data)

    async def send(self, parts: Sequence[Buffer]) -> None:
        await self._stream.send_all(b"".join(parts))


def stream_io(stream: trio.abc.Stream) -> Any:
    """The fastest I/O `stream` allows: a stream that offers `receive_into`, `send` and
    `detach` itself (the peer links' TLS, nfsd/peer/tlsstream.py) is its own."""
    if isinstance(stream, trio.SocketStream):
        return SocketIO(stream)
    if all(hasattr(stream, name) for name in ("receive_into", "send", "detach")):
        return stream
    return StreamIO(stream)
