"""The dispatcher in-process, without sockets: a call that must wait is never run by a
connection's reader, and running it again later leaves the duplicate-request cache right."""

from __future__ import annotations

import pytest
import trio

from nfsd.rpc.dispatch import DEFERRED, Dispatcher, Procedure, Program
from nfsd.waiting import about_to_wait
from xdr.codec import uint32, void
from xdr.rpc_fast import encode_call, parse_reply

pytestmark = pytest.mark.inproc

PROG, VERS = 0x20000099, 1
QUICK, SLOW = 1, 2
CLIENT = ("127.0.0.1", 1000)


def _program(runs: list[str]) -> Program:
    async def quick(ctx, args) -> int:
        runs.append("quick")
        return 7

    async def slow(ctx, args) -> int:
        about_to_wait()  # before any change, as the tree does before realizing a file
        runs.append("slow")
        await trio.sleep(0)
        return 8

    procedures = {
        QUICK: Procedure("QUICK", void, uint32, quick),
        SLOW: Procedure("SLOW", void, uint32, slow, idempotent=False),
    }
    return Program(PROG, "TEST", {VERS: procedures})


def _result(reply) -> int:
    record = b"".join(reply)
    header = parse_reply(record)
    return int.from_bytes(record[header.body_offset : header.body_offset + 4], "big")


def test_inline_call_that_must_wait_is_deferred_then_run_once() -> None:
    runs: list[str] = []
    dispatcher = Dispatcher([_program(runs)])

    async def main() -> None:
        quick = encode_call(1, PROG, VERS, QUICK)
        assert _result(await dispatcher.handle(quick, CLIENT, "tcp", inline=True)) == 7
        slow = encode_call(2, PROG, VERS, SLOW)
        assert await dispatcher.handle(slow, CLIENT, "tcp", inline=True) is DEFERRED
        assert runs == ["quick"]  # deferred before it did anything
        # Run again where waiting is allowed: it runs, once, and is cached as done.
        assert _result(await dispatcher.handle(slow, CLIENT, "tcp")) == 8
        assert runs == ["quick", "slow"]
        retransmitted = await dispatcher.handle(slow, CLIENT, "tcp", inline=True)
        assert _result(retransmitted) == 8
        assert runs == ["quick", "slow"]

    trio.run(main)
