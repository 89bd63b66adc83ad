"""The RPC client (nfsd.rpc.client.RpcClient) against a scripted peer on an in-memory stream:
replies matched by xid whatever their order, calls that give up (cancelled) not holding up the
others, replies nobody waits for dropped, and every waiting call failed when the peer goes."""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from nfsd.rpc.client import RpcClient, _running
from nfsd.rpc.record import RecordReader, frame
from xdr.rpc_fast import accepted_reply

pytestmark = pytest.mark.inproc

PROG, VERS, PROC = 0x20000098, 1, 1


class Peer:
    """The server end: reads calls, and answers them when and as the test says."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.reader = RecordReader()
        self.calls: list[bytes] = []  # the call records, in the order they arrived

    async def read_calls(self, count: int) -> list[int]:
        """The xids of the first `count` calls, once they are in."""
        while len(self.calls) < count:
            data = await self.stream.receive_some(1 << 16)
            assert data, "the client closed the connection"
            self.calls += [bytes(r) for r in self.reader.feed(data)]
        return [struct.unpack_from(">I", r)[0] for r in self.calls[:count]]

    async def answer(self, xid: int, body: bytes) -> None:
        await self.stream.send_all(b"".join(frame([accepted_reply(xid), body])))


def run(main: Callable[[RpcClient, Peer], Awaitable[None]]) -> None:
    async def bounded() -> None:
        client_end, server_end = trio.testing.memory_stream_pair()
        with trio.fail_after(10):
            async with _running(RpcClient(client_end)) as client:
                await main(client, Peer(server_end))

    trio.run(bounded)


def test_replies_in_any_order_reach_their_own_calls() -> None:
    async def main(client: RpcClient, peer: Peer) -> None:
        got: dict[int, bytes] = {}

        async def one(i: int) -> None:
            _, body = await client.call_raw(PROG, VERS, PROC, struct.pack(">I", i))
            got[i] = bytes(body)

        async with trio.open_nursery() as nursery:
            for i in range(5):
                nursery.start_soon(one, i)
            xids = await peer.read_calls(5)
            # answer the last first, each with the argument of its call (its last 4 bytes)
            for xid, record in reversed(list(zip(xids, peer.calls, strict=True))):
                await peer.answer(xid, record[-4:])
        assert got == {i: struct.pack(">I", i) for i in range(5)}

    run(main)


def test_a_call_that_gives_up_while_reading_leaves_the_others_answered() -> None:
    """The first call's task reads for all; cancelled, it passes the reading on. Its own
    reply, arriving later, is dropped, and the next one still reaches its call."""

    async def main(client: RpcClient, peer: Peer) -> None:
        got: dict[str, bytes] = {}

        async def call(name: str, scope: trio.CancelScope) -> None:
            with scope:
                _, body = await client.call_raw(PROG, VERS, PROC, b"")
                got[name] = bytes(body)

        first = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(call, "first", first)
            await trio.testing.wait_all_tasks_blocked()  # it reads, waiting for data
            nursery.start_soon(call, "second", trio.CancelScope())
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(call, "third", trio.CancelScope())
            xids = await peer.read_calls(3)
            first.cancel()
            await trio.testing.wait_all_tasks_blocked()
            await peer.answer(xids[0], b"nobody waits")
            await peer.answer(xids[2], b"3")
            await peer.answer(xids[1], b"2")
        assert got == {"second": b"2", "third": b"3"}
        assert not client.closed.is_set()

    run(main)


def test_every_waiting_call_fails_when_the_peer_goes() -> None:
    async def main(client: RpcClient, peer: Peer) -> None:
        failed: list[str] = []

        async def call() -> None:
            with pytest.raises(ConnectionError):
                await client.call_raw(PROG, VERS, PROC, b"")
            failed.append("yes")

        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(call)
            await peer.read_calls(3)
            await peer.stream.aclose()
        assert failed == ["yes"] * 3
        assert client.closed.is_set()
        with pytest.raises(ConnectionError):
            await client.call_raw(PROG, VERS, PROC, b"")

    run(main)
