"""The RPC transport (nfsd.rpc.transport.RpcServer) over in-memory streams, with a small test
program: record marking across fragments and split reads, pipelined calls all answered and
out of order, calls that must wait, the limits that close a connection, garbage arguments."""

from __future__ import annotations

import itertools
import random
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from nfsd.rpc.dispatch import Dispatcher, Procedure, Program
from nfsd.rpc.record import LAST_FRAGMENT, RecordReader, frame
from nfsd.rpc.transport import Limits, RpcServer
from nfsd.waiting import about_to_wait
from tests.support.inproc import open_memory_stream
from xdr.codec import Opaque, encode, uint32, void
from xdr.rpc import accept_stat
from xdr.rpc_fast import ReplyHeader, encode_call, parse_reply

pytestmark = pytest.mark.inproc

PROG, VERS = 0x20000099, 1
ECHO, HOLD, MUST_WAIT = 1, 2, 3
data_arg = Opaque(1 << 20)


class TestProgram:
    """ECHO answers its argument inline; HOLD runs in a task and waits for `release`;
    MUST_WAIT is inline but must wait (as a write that realizes a file), so the transport
    runs it again in a task."""

    __test__ = False  # not a test class

    def __init__(self) -> None:
        self.release = trio.Event()
        self.held = 0
        self.waited = 0

    def program(self) -> Program:
        async def echo(ctx, data: bytes) -> bytes:
            return data

        async def hold(ctx, args) -> int:
            self.held += 1
            await self.release.wait()
            return 1

        async def must_wait(ctx, args) -> int:
            about_to_wait()  # before any change, as the tree does
            self.waited += 1
            await self.release.wait()
            return 2

        procedures = {
            ECHO: Procedure("ECHO", data_arg, data_arg, echo),
            HOLD: Procedure("HOLD", void, uint32, hold, inline=False),
            MUST_WAIT: Procedure("MUST_WAIT", void, uint32, must_wait, idempotent=False),
        }
        return Program(PROG, "TEST", {VERS: procedures})


def call(xid: int, proc: int, args: bytes = b"") -> bytes:
    return encode_call(xid, PROG, VERS, proc) + args


def framed(record: bytes) -> bytes:
    return b"".join(frame([record]))


def echo(xid: int, data: bytes) -> bytes:
    return framed(call(xid, ECHO, encode(data_arg, data)))


class Replies:
    """The replies arriving on the client end of a connection."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.reader = RecordReader(1 << 24)
        self.pending: list[bytes] = []

    async def next(self) -> tuple[ReplyHeader, bytes]:
        while not self.pending:
            data = await self.stream.receive_some(1 << 16)
            assert data, "the server closed the connection"
            self.pending += self.reader.feed(data)
        record = self.pending.pop(0)
        header = parse_reply(record)
        return header, record[header.body_offset :]

    async def xids(self, count: int) -> list[int]:
        return [(await self.next())[0].xid for _ in range(count)]

    async def closed(self) -> bool:
        """True when the server closes the connection before sending anything more."""
        return await self.stream.receive_some(1 << 16) == b""


def serve(limits: Limits | None = None) -> tuple[RpcServer, TestProgram]:
    test = TestProgram()
    return RpcServer(Dispatcher([test.program()]), limits), test


def run(
    main: Callable[[], Awaitable[None]],
    *,
    clock: trio.abc.Clock | None = None,
    timeout: float = 20.0,
) -> None:
    async def bounded() -> None:
        with trio.fail_after(timeout):
            await main()

    trio.run(bounded, clock=clock)


def test_a_record_in_fragments_arriving_in_pieces_is_one_call() -> None:
    rpc, _ = serve()
    data = random.Random(1).randbytes(3001)
    record = call(7, ECHO, encode(data_arg, data))
    # Three fragments, the last one marked; then the bytes cut at random points, some inside
    # a record mark, each piece read by the server before the next is sent.
    cuts = [0, 1000, 2500, len(record)]
    wire = b"".join(
        ((end - start) | (LAST_FRAGMENT if end == len(record) else 0)).to_bytes(4, "big")
        + record[start:end]
        for start, end in itertools.pairwise(cuts)
    )
    rng = random.Random(2)
    points = sorted({0, 1, 2, 3, 1003, 1005, len(wire), *rng.sample(range(len(wire)), 40)})

    async def main() -> None:
        async with open_memory_stream(rpc) as stream:
            for start, end in itertools.pairwise(points):
                await stream.send_all(wire[start:end])
                await trio.testing.wait_all_tasks_blocked()
            header, body = await Replies(stream).next()
            assert (header.xid, header.stat) == (7, accept_stat.SUCCESS)
            assert body == encode(data_arg, data)

    run(main)


def test_pipelined_calls_are_all_answered_and_a_slow_one_holds_up_none() -> None:
    rpc, test = serve()

    async def main() -> None:
        async with open_memory_stream(rpc) as stream:
            replies = Replies(stream)
            burst = framed(call(1, HOLD)) + b"".join(echo(x, b"%d" % x) for x in range(2, 42))
            await stream.send_all(burst)
            # Every quick call is answered while the first call of the burst still waits.
            assert sorted(await replies.xids(40)) == list(range(2, 42))
            assert test.held == 1
            test.release.set()
            header, body = await replies.next()
            assert header.xid == 1 and body == encode(uint32, 1)

    run(main)


def test_an_inline_call_that_must_wait_is_answered_and_others_meanwhile() -> None:
    rpc, test = serve()

    async def main() -> None:
        async with open_memory_stream(rpc) as stream:
            replies = Replies(stream)
            await stream.send_all(framed(call(1, MUST_WAIT)) + echo(2, b"a") + echo(3, b"b"))
            assert await replies.xids(2) == [2, 3]
            await stream.send_all(echo(4, b"c"))  # the connection is still read
            assert await replies.xids(1) == [4]
            assert test.waited == 1  # run once, in a task of its own
            test.release.set()
            header, body = await replies.next()
            assert header.xid == 1 and body == encode(uint32, 2)
            # A retransmission is answered from the duplicate-request cache, not run again.
            await stream.send_all(framed(call(1, MUST_WAIT)))
            header, body = await replies.next()
            assert header.xid == 1 and body == encode(uint32, 2)
            assert test.waited == 1

    run(main)


def test_a_record_over_the_size_limit_closes_only_that_connection() -> None:
    rpc, _ = serve(Limits(max_record=4096))

    async def main() -> None:
        async with open_memory_stream(rpc) as stream:
            replies = Replies(stream)
            await stream.send_all(echo(1, b"small"))
            assert await replies.xids(1) == [1]
            # A mark announcing more than the limit: closed before the record comes.
            await stream.send_all((LAST_FRAGMENT | 8192).to_bytes(4, "big") + b"\0" * 64)
            assert await replies.closed()
        async with open_memory_stream(rpc) as stream:
            # Fragments each under the limit whose sum is over it: closed too.
            fragment = (3000).to_bytes(4, "big") + b"\0" * 3000
            await stream.send_all(fragment + fragment)
            assert await Replies(stream).closed()
        async with open_memory_stream(rpc) as stream:
            await stream.send_all(echo(2, b"still served"))
            assert await Replies(stream).xids(1) == [2]

    run(main)


def test_garbage_arguments_get_garbage_args_and_the_connection_goes_on() -> None:
    rpc, _ = serve()
    truncated = call(1, ECHO, (100).to_bytes(4, "big") + b"only8byt")
    overlong = call(2, ECHO, encode(data_arg, b"abcd") + b"\0" * 8)

    async def main() -> None:
        async with open_memory_stream(rpc) as stream:
            replies = Replies(stream)
            await stream.send_all(framed(truncated) + framed(overlong) + echo(3, b"fine"))
            for xid in (1, 2):
                header, _ = await replies.next()
                assert header.accepted and (header.xid, header.stat) == (
                    xid,
                    accept_stat.GARBAGE_ARGS,
                )
            header, body = await replies.next()
            assert (header.xid, header.stat) == (3, accept_stat.SUCCESS)
            assert body == encode(data_arg, b"fine")

    run(main)


def test_beyond_the_cap_an_idle_connection_makes_room_and_a_busy_one_never() -> None:
    rpc, test = serve(Limits(max_connections=1))

    async def main() -> None:
        async with open_memory_stream(rpc) as first:
            await first.send_all(framed(call(1, HOLD)))
            await trio.testing.wait_all_tasks_blocked()
            assert test.held == 1
            # The only slot is busy with a call: the new connection is closed at once.
            async with open_memory_stream(rpc) as second:
                assert await Replies(second).closed()
            test.release.set()
            assert await Replies(first).xids(1) == [1]
            await trio.testing.wait_all_tasks_blocked()
            # Now the first one is idle: it is closed, and the new one served.
            async with open_memory_stream(rpc) as third:
                await third.send_all(echo(2, b"y"))
                assert await Replies(third).xids(1) == [2]
                assert await Replies(first).closed()
                assert rpc.connections == 1
        await trio.testing.wait_all_tasks_blocked()
        assert rpc.connections == 0

    run(main)


def test_silent_and_trickling_connections_are_closed_after_their_timeouts() -> None:
    rpc, _ = serve(Limits(first_call_timeout=60.0, partial_record_timeout=30.0))

    async def main() -> None:
        async with open_memory_stream(rpc) as silent:
            start = trio.current_time()
            assert await Replies(silent).closed()
            assert trio.current_time() - start >= 60.0
        async with open_memory_stream(rpc) as trickling:
            start = trio.current_time()
            await trickling.send_all(echo(1, b"never finished")[:20])
            assert await Replies(trickling).closed()
            assert 30.0 <= trio.current_time() - start < 60.0

    # Virtual time: the timeouts pass as soon as every task waits.
    run(main, clock=trio.testing.MockClock(autojump_threshold=0), timeout=600.0)
