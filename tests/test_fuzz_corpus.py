"""The fuzz corpus replayed: every input kept in tests/fuzz/corpus (the seeds and what the
fuzzer found) goes through record marking and the dispatcher over a real tree, as
tests/fuzz/fuzz_dispatch.py sends it, and is answered without a crash, a logged traceback or
a hang, with a reply to every call record. The quick regression pass of the long fuzz run
(scripts/fuzz)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from nfsd.rpc.record import RecordReader, RecordTooLarge
from tests.fuzz.harness import DispatchTarget, expects_reply
from tests.fuzz.seeds import CORPUS, seeds
from tests.support.inproc import server_umask
from xdr.rpc import accept_stat
from xdr.rpc_fast import parse_reply

pytestmark = pytest.mark.inproc

INPUTS = sorted(CORPUS.glob("*.bin"))


@pytest.fixture
def target(tmp_path: Path) -> Iterator[DispatchTarget]:
    with server_umask():
        target = DispatchTarget(tmp_path / "target", loop_thread=False)
        try:
            yield target
        finally:
            target.close()


def test_the_corpus_is_small() -> None:
    assert 20 <= len(INPUTS) <= 100
    assert all(path.stat().st_size <= 16 * 1024 for path in INPUTS)


def test_the_seeds_are_valid_calls(target: DispatchTarget) -> None:
    """The seeds' handles are the ones every build makes: each seed call succeeds (a status
    of 0: NFS3_OK, MNT3_OK, or a portmapper's empty answer), so the fuzzer starts deep."""
    made = seeds(target.handles)
    for name, data in made.items():
        kept = CORPUS / f"seed-{name}.bin"
        assert kept.exists() and kept.read_bytes() == data, (
            f"seed {name} is stale: run python -m tests.fuzz.seeds"
        )

    async def replay() -> None:
        for name, data in made.items():
            for record in RecordReader().feed(data):
                reply = await target.answer(bytes(record))
                assert reply is not None, name
                body = b"".join(reply)
                header = parse_reply(body)
                assert header.accepted and header.stat == accept_stat.SUCCESS, name
                status = body[header.body_offset : header.body_offset + 4]
                assert status in (b"", b"\0\0\0\0", b"\0\0\0\1"), (name, status)

    trio.run(replay)


def test_every_corpus_input_is_answered(target: DispatchTarget) -> None:
    async def replay() -> None:
        for path in INPUTS:
            try:
                records = RecordReader().feed(path.read_bytes())
            except RecordTooLarge:
                continue
            for record in records:
                record = bytes(record)
                started = time.monotonic()
                reply = await target.answer(record)
                target.check_reply(record, reply, time.monotonic() - started)
                if not expects_reply(record):
                    assert reply is None, path.name

    trio.run(replay)
