"""Connection slots (nfsd/rpc/slots.py): a share per client host, the longest idle connection
closed to make room, a busy one never; and the same through the real transport over memory
streams: a host no export allows never takes a slot, a flood of idle connections from one
host leaves a newcomer served and a call in progress answered."""

from __future__ import annotations

import ipaddress
import logging

import pytest
import trio
import trio.testing

from nfsd.rpc.dispatch import Dispatcher
from nfsd.rpc.slots import Cause, CauseLog, ConnectionSlots, host_key
from nfsd.rpc.transport import Limits, RpcServer
from tests.support.inproc import open_memory_stream
from tests.test_inproc_transport import HOLD, Replies, TestProgram, call, echo, framed, run

pytestmark = pytest.mark.inproc


class Fake:
    """A connection as the policy sees it: idle since a time, or busy (None)."""

    def __init__(self, idle_since: float | None = 0.0, quiet: bool = True) -> None:
        self.since = idle_since
        self.is_quiet = quiet

    def idle_since(self) -> float | None:
        return self.since

    def quiet(self) -> bool:
        return self.is_quiet


def test_a_host_holds_only_its_share_and_its_longest_idle_makes_room() -> None:
    slots = ConnectionSlots(total=16, per_host=4)
    mine = [Fake(idle_since=t) for t in (5.0, 1.0, 3.0, 2.0)]
    for holder in mine:
        assert slots.admit(holder, "a").admitted
    newcomer = Fake(None)
    admission = slots.admit(newcomer, "a")
    assert admission.admitted and admission.evict is mine[1]  # idle since 1.0, the longest
    assert admission.cause is Cause.HOST_FULL
    assert slots.held_by("a") == 4 and slots.held == 4
    # Another host is not touched by host a's flood.
    for _ in range(4):
        admission = slots.admit(Fake(), "b")
        assert admission.admitted and admission.evict is None
    assert slots.held_by("a") == 4 and slots.held_by("b") == 4


def test_busy_connections_are_never_closed_and_then_the_newcomer_is_refused() -> None:
    slots = ConnectionSlots(total=16, per_host=2)
    busy = [Fake(None), Fake(None)]
    for holder in busy:
        slots.admit(holder, "a")
    admission = slots.admit(Fake(), "a")
    assert not admission.admitted and admission.cause is Cause.HOST_BUSY
    assert slots.held_by("a") == 2


def test_an_idle_connection_with_unread_bytes_is_not_closed() -> None:
    slots = ConnectionSlots(total=16, per_host=2)
    arriving = Fake(idle_since=0.0, quiet=False)  # the oldest, but a call has just arrived
    waiting = Fake(idle_since=1.0)
    slots.admit(arriving, "a")
    slots.admit(waiting, "a")
    assert slots.admit(Fake(), "a").evict is waiting


def test_when_all_slots_are_taken_the_longest_idle_anywhere_makes_room() -> None:
    slots = ConnectionSlots(total=4, per_host=2)
    holders = {"a": [Fake(None), Fake(7.0)], "b": [Fake(2.0), Fake(None)]}
    for key, pair in holders.items():
        for holder in pair:
            slots.admit(holder, key)
    admission = slots.admit(Fake(None), "c")  # busy from its first call on
    assert admission.admitted and admission.evict is holders["b"][0]
    assert admission.cause is Cause.ALL_FULL
    assert slots.held == 4 and slots.held_by("b") == 1
    # All busy now but host a's idle one: it goes next; then nothing is idle.
    holders["b"][1].since = None
    assert slots.admit(Fake(None), "d").evict is holders["a"][1]
    refused = slots.admit(Fake(), "e")
    assert not refused.admitted and refused.cause is Cause.ALL_BUSY


def test_released_and_closed_connections_give_their_slots_back() -> None:
    slots = ConnectionSlots(total=2, per_host=2)
    first, second = Fake(), Fake(None)
    slots.admit(first, "a")
    slots.admit(second, "a")
    evicted = slots.admit(Fake(), "a").evict
    assert evicted is first
    slots.release(first)  # its task ends later: nothing more happens
    slots.release(second)
    assert slots.held == 1
    assert slots.held_by("a") == 1


def test_the_default_share_is_an_eighth_and_never_zero() -> None:
    assert ConnectionSlots(512).per_host == 64
    assert ConnectionSlots(3).per_host == 1
    assert ConnectionSlots(10, per_host=50).per_host == 10


def test_what_counts_as_one_host() -> None:
    # Every 127.x address of this machine is one host per socket owner.
    assert host_key("127.0.0.3", 1000) == host_key("127.0.0.1", 1000) == host_key("::1", 1000)
    assert host_key("127.0.0.1", 0) != host_key("127.0.0.1", 1000)
    assert host_key("::ffff:10.1.2.3", None) == host_key("10.1.2.3", None)
    assert host_key("10.1.2.3", None) != host_key("10.1.2.4", None)
    # An IPv6 host picks addresses at will within its /64.
    assert host_key("2001:db8::1", None) == host_key("2001:db8::ffff:1", None)
    assert host_key("2001:db8::1", None) == ipaddress.ip_network("2001:db8::/64")
    assert host_key("2001:db8:0:1::1", None) != host_key("2001:db8::1", None)


def test_each_cause_is_logged_once_a_window_with_a_count(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    causes = CauseLog(window=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="realize.rpc"):
        for i in range(1000):
            causes.note(Cause.NOT_ALLOWED, f"10.0.{i // 256}.{i % 256}")
        causes.note(Cause.HOST_FULL, "10.9.9.9")
        now[0] = 61.0
        causes.note(Cause.NOT_ALLOWED, "10.0.0.1")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert lines[0].startswith(Cause.NOT_ALLOWED.value) and ": 1 since" in lines[0]
    assert lines[1].startswith(Cause.HOST_FULL.value)
    assert ": 1000 since" in lines[2]  # the 999 unsaid, and this one


# ---- through the transport, over memory streams ----

ALLOWED, OUTSIDE = ("127.0.0.1", 900), ("192.0.2.7", 900)
ROOT_UID = 0


def transport(limits: Limits | None = None) -> tuple[RpcServer, TestProgram]:
    test = TestProgram()
    rpc = RpcServer(Dispatcher([test.program()]), limits, allowed=lambda host: host == ALLOWED[0])
    return rpc, test


def test_a_host_no_export_allows_is_closed_before_it_takes_a_slot() -> None:
    rpc, _ = transport(Limits(max_connections=4))

    async def main() -> None:
        async with open_memory_stream(rpc, peer=OUTSIDE) as refused:
            # Closed at once, call or no call (an allowed host would get a minute for its first).
            assert await Replies(refused).closed()
            assert rpc.connections == 0
        async with open_memory_stream(rpc, peer=ALLOWED) as served:
            await served.send_all(echo(2, b"y"))
            assert await Replies(served).xids(1) == [2]

    run(main)


def test_idle_connections_make_room_and_a_call_in_progress_is_answered() -> None:
    rpc, test = transport(Limits(max_connections=64, max_connections_per_host=8))

    async def main() -> None:
        async with open_memory_stream(rpc, peer=ALLOWED, owner=ROOT_UID) as working:
            await working.send_all(framed(call(1, HOLD)))
            await trio.testing.wait_all_tasks_blocked()
            assert test.held == 1
            idle: list[trio.abc.Stream] = []
            async with trio.open_nursery() as nursery:
                for _ in range(40):  # five times the host's share
                    client, server = trio.testing.memory_stream_pair()
                    idle.append(client)
                    nursery.start_soon(rpc.serve_stream, server, ALLOWED, "127.0.0.1", ROOT_UID)
                    await trio.testing.wait_all_tasks_blocked()
                    assert rpc.connections <= 8
                closed = 0
                for client in idle[:-7]:  # all but the 7 newest were closed to make room
                    assert await Replies(client).closed()
                    closed += 1
                assert closed == 33
                async with open_memory_stream(rpc, peer=ALLOWED, owner=ROOT_UID) as newcomer:
                    await newcomer.send_all(echo(2, b"new"))
                    assert await Replies(newcomer).xids(1) == [2]
                test.release.set()
                assert await Replies(working).xids(1) == [1]
                for client in idle:
                    await client.aclose()
        await trio.testing.wait_all_tasks_blocked()
        assert rpc.connections == 0

    run(main)
