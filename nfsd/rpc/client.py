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

from nfsd.rpc.record import RecordReader, frame
from xdr.codec import Packer, as_type, decode
from xdr.rpc import accept_stat
from xdr.rpc_fast import Credential, ReplyHeader, encode_call, parse_reply


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


class RpcClient:
    def __init__(self, stream: trio.abc.Stream, cred: Credential | None = None) -> None:
        self.stream = stream
        self.cred = cred
        self._xid = random.getrandbits(31)
        self._waiting: dict[int, trio.MemorySendChannel] = {}
        self._send_lock = trio.Lock()
        self.closed = trio.Event()

    def next_xid(self) -> int:
        self._xid = (self._xid + 1) & 0xFFFFFFFF
        return self._xid

    async def _read_replies(self) -> None:
        reader = RecordReader(64 << 20)
        try:
            while True:
                data = await self.stream.receive_some(1 << 18)
                if not data:
                    break
                for record in reader.feed(data):
                    (xid,) = struct.unpack_from(">I", record)
                    channel = self._waiting.pop(xid, None)
                    if channel is not None:
                        channel.send_nowait(record)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.closed.set()
            for channel in self._waiting.values():
                channel.close()
            self._waiting.clear()

    async def send_record(self, record: bytes) -> None:
        """Send one record as it is (for tests of malformed input)."""
        async with self._send_lock:
            await self.stream.send_all(b"".join(frame([record])))

    async def send_bytes(self, data: bytes) -> None:
        async with self._send_lock:
            await self.stream.send_all(data)

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
            header = encode_call(xid, prog, vers, proc, cred or self.cred)
        if self.closed.is_set():
            # The reply reader has ended: nothing would ever answer this call.
            raise ConnectionError("connection closed")
        send, receive = trio.open_memory_channel(1)
        self._waiting[xid] = send
        try:
            try:
                await self.send_record(header + args)
                record = await receive.receive()
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
