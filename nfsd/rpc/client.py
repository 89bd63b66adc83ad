"""An async ONC RPC client over TCP (trio), with many calls outstanding on one connection.

Used by the tests, the benchmarks and (later) peers. Replies are matched to calls by xid, so
calls may be issued concurrently from several tasks and answered in any order.
"""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from nfsd.rpc.record import Record, RecordReader, frame, record_mark
from nfsd.rpc.streamio import stream_io
from xdr.codec import Packer, as_type, decode
from xdr.rpc import accept_stat
from xdr.rpc_fast import (
    Credential,
    ReplyHeader,
    call_head,
    encode_auth,
    encode_call,
    parse_reply,
)

_XID = struct.Struct(">I")


class RpcError(Exception):
    """The server did not accept the call (PROG_UNAVAIL, GARBAGE_ARGS, AUTH_ERROR, ...)."""

    def __init__(self, header: ReplyHeader) -> None:
        kind = "accepted" if header.accepted else "denied"
        super().__init__(f"RPC {kind} with status {header.stat} {header.detail}")
        self.header = header


def encode_args(t: Any, value: Any) -> bytes:
    p = Packer()
    as_type(t).pack(p, value)
    return p.get_buffer()


class _Pending:
    """Where the reply to one call is delivered: the caller parks on it until the reply
    reader hands the record over (`send_nowait`) or ends (`close`).

    A memory channel per call does the same with more objects and checkpoints; this has the
    channel's two methods the reader calls, so a test may put a channel in its place."""

    __slots__ = ("_closed", "_record", "_task")

    def __init__(self) -> None:
        self._record: Record | None = None
        self._closed = False
        self._task: trio.lowlevel.Task | None = None

    def send_nowait(self, record: Record) -> None:
        self._record = record
        self._wake()

    def close(self) -> None:
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    def _abort(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        self._task = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def receive(self) -> Record:
        """The reply record; trio.EndOfChannel if the connection ended without it."""
        if self._record is None and not self._closed:
            self._task = trio.lowlevel.current_task()
            await trio.lowlevel.wait_task_rescheduled(self._abort)
        if self._record is None:
            raise trio.EndOfChannel
        return self._record


class RpcClient:
    def __init__(self, stream: trio.abc.Stream, cred: Credential | None = None) -> None:
        self.stream = stream
        self.cred = cred
        self._io = stream_io(stream)
        self._xid = random.getrandbits(31)
        self._waiting: dict[int, _Pending | trio.MemorySendChannel] = {}
        self._send_lock = trio.Lock()
        self.closed = trio.Event()

    @property
    def cred(self) -> Credential | None:
        """The credential of calls that name none."""
        return self._cred

    @cred.setter
    def cred(self, cred: Credential | None) -> None:
        self._cred = cred
        self._auth = encode_auth(cred)  # the call header after its fixed part

    def next_xid(self) -> int:
        self._xid = (self._xid + 1) & 0xFFFFFFFF
        return self._xid

    async def _read_replies(self) -> None:
        reader = RecordReader(64 << 20)
        io = self._io
        waiting = self._waiting
        try:
            while True:
                received = await io.receive_into(reader.receive_buffer())
                if not received:
                    break
                for record in reader.received(received):
                    (xid,) = _XID.unpack_from(record)
                    pending = waiting.pop(xid, None)
                    if pending is not None:
                        pending.send_nowait(record)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.closed.set()
            for pending in waiting.values():
                pending.close()
            waiting.clear()

    async def _send(self, parts: list[bytes | memoryview]) -> None:
        """Send buffers as one piece of the stream. The lock is taken without a checkpoint
        when it is free, and a send the socket takes at once does not wait at all."""
        lock = self._send_lock
        if lock.locked():
            await lock.acquire()
        else:
            lock.acquire_nowait()
        try:
            await self._io.send(parts)
        finally:
            lock.release()

    async def send_record(self, record: bytes) -> None:
        """Send one record as it is (for tests of malformed input)."""
        await self._send(frame([record]))

    async def send_bytes(self, data: bytes) -> None:
        await self._send([data])

    async def call_raw(
        self,
        prog: int,
        vers: int,
        proc: int,
        args: bytes,
        *,
        xid: int | None = None,
        cred: Credential | None = None,
        header: bytes | None = None,
    ) -> tuple[ReplyHeader, bytes]:
        """Send a call and return the parsed reply header and the reply body bytes.

        ConnectionError when the connection is (or gets) closed before the reply."""
        xid = self.next_xid() if xid is None else xid
        if header is None:
            auth = self._auth if cred is None else encode_auth(cred)
            header = call_head(xid, prog, vers, proc) + auth
        if self.closed.is_set():
            # The reply reader has ended: nothing would ever answer this call.
            raise ConnectionError("connection closed")
        pending = _Pending()
        self._waiting[xid] = pending
        try:
            try:
                await self._send([record_mark(len(header) + len(args)), header, args])
                record = await pending.receive()
            except (trio.EndOfChannel, trio.BrokenResourceError, trio.ClosedResourceError):
                raise ConnectionError("connection closed before the reply") from None
        finally:
            self._waiting.pop(xid, None)
        reply = parse_reply(record)
        return reply, record[reply.body_offset :]

    async def call(
        self,
        prog: int,
        vers: int,
        proc: int,
        args_type: Any,
        args: Any,
        res_type: Any,
        *,
        cred: Credential | None = None,
    ) -> Any:
        reply, body = await self.call_raw(prog, vers, proc, encode_args(args_type, args), cred=cred)
        if not reply.accepted or reply.stat != accept_stat.SUCCESS:
            raise RpcError(reply)
        return decode(res_type, body)

    async def aclose(self) -> None:
        self._io.detach()
        await self.stream.aclose()


@asynccontextmanager
async def open_client(
    host: str, port: int, cred: Credential | None = None
) -> AsyncIterator[RpcClient]:
    stream = await trio.open_tcp_stream(host, port)
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)
    async with _running(RpcClient(stream, cred)) as client:
        yield client


@asynccontextmanager
async def open_unix_client(path: str, cred: Credential | None = None) -> AsyncIterator[RpcClient]:
    """A client on a Unix socket (the control channel)."""
    stream = await trio.open_unix_socket(path)
    async with _running(RpcClient(stream, cred)) as client:
        yield client


@asynccontextmanager
async def _running(client: RpcClient) -> AsyncIterator[RpcClient]:
    """The client with its reply reader running, closed on the way out."""
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client._read_replies)
            try:
                yield client
            finally:
                nursery.cancel_scope.cancel()
                # Shielded: in the cancelled scope a bare await would raise Cancelled, which
                # the nursery then absorbs, and an exception from the caller's block would be
                # lost.
                with trio.CancelScope(shield=True):
                    await client.aclose()
    except BaseExceptionGroup as group:
        # The caller's own exception, not wrapped by the reader's nursery (trio groups every
        # error of a nursery): `async with open_client(...)` behaves like a plain block.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


async def udp_call(
    host: str,
    port: int,
    prog: int,
    vers: int,
    proc: int,
    args: bytes,
    *,
    cred: Credential | None = None,
    timeout: float = 2.0,
    tries: int = 3,
) -> tuple[ReplyHeader, bytes]:
    """One call over UDP, retransmitted up to `tries` times."""
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        xid = random.getrandbits(32)
        message = encode_call(xid, prog, vers, proc, cred) + args
        for _ in range(tries):
            await sock.sendto(message, (host, port))
            with trio.move_on_after(timeout):
                while True:
                    data = await sock.recv(1 << 16)
                    reply = parse_reply(data)
                    if reply.xid == xid:
                        return reply, data[reply.body_offset :]
        raise TimeoutError(f"no UDP reply from {host}:{port}")
    finally:
        sock.close()
