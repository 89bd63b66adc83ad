"""The pacing of background transfers (nfsd/peer/pace.py), on trio's mock clock: chunks come
at the rate per peer after the first burst, each peer has a bucket of its own, a fetch a
reader comes to wait for goes at once, and no rate means no wait."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from nfsd.peer.pace import Pace

pytestmark = pytest.mark.inproc

CHUNK = 256 * 1024


def _run(job) -> float:
    clock = trio.testing.MockClock(autojump_threshold=0)
    return trio.run(job, clock=clock)


def test_chunks_come_at_the_rate_after_the_first_burst() -> None:
    pace = Pace(1 << 20, CHUNK)  # 1 MiB/s: a burst of half a second, two chunks

    async def job() -> float:
        for _ in range(10):
            await pace.take("a", CHUNK, lambda: True)
        return trio.current_time()

    elapsed = _run(job)
    assert elapsed == pytest.approx((10 * CHUNK - (1 << 19)) / (1 << 20), abs=0.06)


def test_each_peer_has_a_bucket_of_its_own() -> None:
    pace = Pace(1 << 20, CHUNK)

    async def job() -> float:
        async with trio.open_nursery() as nursery:
            for peer in ("a", "b"):
                for _ in range(6):
                    nursery.start_soon(pace.take, peer, CHUNK, lambda: True)
        return trio.current_time()

    assert _run(job) == pytest.approx((6 * CHUNK - (1 << 19)) / (1 << 20), abs=0.06)


def test_a_fetch_a_reader_waits_for_goes_at_once() -> None:
    pace = Pace(1 << 20, CHUNK)

    async def job() -> float:
        for _ in range(2):
            await pace.take("a", CHUNK, lambda: True)  # the burst, spent
        waiting = {"reader": False}

        async def reader_comes() -> None:
            await trio.sleep(0.1)
            waiting["reader"] = True

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reader_comes)
            await pace.take("a", 4 * CHUNK, lambda: not waiting["reader"])
        return trio.current_time()

    assert _run(job) == pytest.approx(0.1, abs=0.06)


def test_no_rate_means_no_wait() -> None:
    pace = Pace(None, CHUNK)

    async def job() -> float:
        for _ in range(100):
            await pace.take("a", CHUNK, lambda: True)
        return trio.current_time()

    assert _run(job) == 0
