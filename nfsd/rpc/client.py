"""An async ONC RPC client over TCP (trio), with many calls outstanding on one connection.

Used by the tests, the benchmarks and peer links. Replies are matched to calls by xid, so
calls may be issued concurrently from several tasks and answered in any order. A connection
that carries calls both ways (nfsd/rpc/duplex.py) has one reader of its own, which hands the
replies in (`read_elsewhere`, `deliver`, `ended`).
"""

from __future__ import annotations

import random
import socket
import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from nfsd.rpc.record import Record, RecordReader, RecordTooLarge, frame, record_mark
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
    """One call waiting for its reply: the record once it is in, or closed when the
    connection ended without it. Its task parks here while another call's task reads."""

    __slots__ = ("_task", "closed", "record")

    def __init__(self) -> None:
        self.record: Record | None = None
        self.closed = False
        self._task: trio.lowlevel.Task | None = None

    def deliver(self, record: Record) -> None:
        self.record = record
        self.wake()

    def close(self) -> None:
        self.closed = True
        self.wake()

    @property
    def parked(self) -> bool:
        return self._task is not None

    def wake(self) -> None:
        """Let the parked task look again (its reply came, or it is its turn to read)."""
        task, self._task = self._task, None
        if task is not None:
            trio.lowlevel.reschedule(task)

    def _abort(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        self._task = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def park(self) -> None:
        self._task = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)


class RpcClient:
    """Calls over one connection, any number outstanding, from any number of tasks.

    There is no reader task: the task of a waiting call reads the connection itself when no
    other does, hands the replies of other calls to their tasks, and passes the reading on
    to one of them when its own reply is in. At one call outstanding a reply thus reaches
    its caller without a task switch. A reply whose call is no longer waiting is dropped."""

    def __init__(self, stream: trio.abc.Stream, cred: Credential | None = None) -> None:
        self.stream = stream
        self.cred = cred
        self._io = stream_io(stream)
        self._records = RecordReader(64 << 20)
        self._xid = random.getrandbits(31)
        self._waiting: dict[int, _Pending] = {}
        self._reading = False  # a call's task is reading the connection
        self._send_lock = trio.Lock()
        self.closed = trio.Event()  # set once the connection is seen to have ended

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

    def expect(self, xid: int) -> _Pending:
        """Wait for the reply to `xid` (a call sent by other means, as tests do); then
        `await reply(pending)`. ConnectionError if the connection has ended."""
        if self.closed.is_set():
            raise ConnectionError("connection closed")
        pending = self._waiting[xid] = _Pending()
        return pending

    async def reply(self, pending: _Pending) -> Record:
        """The reply record `pending` waits for, reading the connection while no other task
        does; ConnectionError if the connection ends first."""
        while True:
            if pending.record is not None:
                return pending.record
            if pending.closed:
                raise ConnectionError("connection closed before the reply")
            if self._reading:
                await pending.park()
                continue
            self._reading = True
            try:
                await self._read_until(pending)
            finally:
                self._reading = False
                self._hand_over()

    async def _read_until(self, pending: _Pending) -> None:
        io, records, waiting = self._io, self._records, self._waiting
        try:
            while pending.record is None:
                received = await io.receive_into(records.receive_buffer())
                if not received:
                    break
                for record in records.received(received):
                    (xid,) = _XID.unpack_from(record)
                    other = waiting.pop(xid, None)
                    if other is not None:
                        other.deliver(record)
            else:
                return
        except (trio.BrokenResourceError, trio.ClosedResourceError, RecordTooLarge):
            pass
        self.ended()
        pending.close()

    # ---- a connection read by someone else (nfsd/rpc/duplex.py) ----

    def read_elsewhere(self) -> None:
        """From now on another task reads the connection and hands each reply to `deliver`;
        calls only wait for theirs. Only before the first call."""
        assert not self._reading and not self._waiting
        self._reading = True  # for good: no call's task ever reads

    def deliver(self, record: Record) -> None:
        """A reply record, to the call waiting for its xid (dropped if none waits)."""
        (xid,) = _XID.unpack_from(record)
        pending = self._waiting.pop(xid, None)
        if pending is not None:
            pending.deliver(record)

    def ended(self) -> None:
        """The connection has ended: no call will get a reply."""
        self.closed.set()
        for other in self._waiting.values():
            other.close()
        self._waiting.clear()

    async def receive_into(self, view: memoryview) -> int:
        """Bytes of the connection into `view` (for the reader of `read_elsewhere`)."""
        return await self._io.receive_into(view)

    async def send_parts(self, parts: list[bytes | memoryview]) -> None:
        """Send one record made of `parts` (a reply, on a connection that also serves)."""
        await self._send(frame(parts))

    def _hand_over(self) -> None:
        """Wake one parked call to read in this one's place (one not parked yet will see
        that nobody reads when it gets to wait)."""
        for other in self._waiting.values():
            if other.parked:
                other.wake()
                return

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
        pending = self.expect(xid)
        try:
            try:
                await self._send([record_mark(len(header) + len(args)), header, args])
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                raise ConnectionError("connection closed before the reply") from None
            record = await self.reply(pending)
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
    """The client, closed on the way out."""
    try:
        yield client
    finally:
        # Shielded: the block may be leaving because it was cancelled.
        with trio.CancelScope(shield=True):
            await client.aclose()


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
