"""Record marking (nfsd.rpc.record.RecordReader) on its own: records of every size, cut at
every kind of point, come out whole and in order; a large fragment is received in place."""

from __future__ import annotations

import random

import pytest

from nfsd.rpc.record import LAST_FRAGMENT, RecordReader, RecordTooLarge

pytestmark = pytest.mark.inproc


def marked(record: bytes, cuts: list[int]) -> bytes:
    """`record` as fragments ending at `cuts` (and at its end), the last one marked."""
    ends = [*cuts, len(record)]
    wire, start = b"", 0
    for end in ends:
        last = LAST_FRAGMENT if end == len(record) else 0
        wire += (last | (end - start)).to_bytes(4, "big") + record[start:end]
        start = end
    return wire


def receive(reader: RecordReader, wire: bytes, rng: random.Random, most: int) -> list:
    """The records of `wire`, put into the reader's buffers as a socket would, in pieces of
    random sizes up to `most` bytes."""
    records, pos = [], 0
    while pos < len(wire):
        target = reader.receive_buffer()
        n = min(len(target), len(wire) - pos, rng.randint(1, most))
        target[:n] = wire[pos : pos + n]
        pos += n
        records += reader.received(n)
    return records


@pytest.mark.parametrize("most", [1, 7, 1000, 1 << 20])
def test_records_of_all_sizes_come_out_whole_and_in_order(most: int) -> None:
    rng = random.Random(most)
    sizes = [0, 1, 40, 16 * 1024 - 1, 16 * 1024, 70_000, 1 << 20, 3, 200_000]
    if most == 1:
        sizes = [s for s in sizes if s < 100_000]  # byte by byte: keep it quick
    records = [rng.randbytes(size) for size in sizes]
    # some in several fragments, a large one among them
    cuts = {70_000: [5000, 30_000], 1 << 20: [100, 300_000], 200_000: [100_000]}
    wire = b"".join(marked(r, cuts.get(len(r), [])) for r in records)
    reader = RecordReader(2 << 20)
    got = receive(reader, wire, rng, most)
    assert [bytes(r) for r in got] == records
    assert not reader.partial


def test_a_large_record_is_received_in_place() -> None:
    """Past its first 64 KiB, the buffer the socket fills is the record handed on: the bulk
    of its payload is not copied."""
    record = random.Random(3).randbytes(1 << 20)
    wire = marked(record, [])
    reader = RecordReader()
    sent = 0
    targets = []
    got: list = []
    while not got:
        target = reader.receive_buffer()
        n = min(len(target), len(wire) - sent)
        target[:n] = wire[sent : sent + n]
        sent += n
        targets.append(target)
        got = reader.received(n)
    [record_got] = got
    assert record_got == record
    assert record_got is targets[-1].obj and len(targets[-1]) > len(record) - 70_000


def test_a_record_announced_but_not_sent_holds_little_memory() -> None:
    """A client that announces 2 MiB and sends 16 KiB makes the reader hold about 64 KiB."""
    reader = RecordReader()
    reader.feed(((2 << 20) | LAST_FRAGMENT).to_bytes(4, "big") + bytes(16 * 1024))
    assert reader.partial
    assert len(reader.receive_buffer().obj) <= 64 * 1024


def test_records_beyond_the_bound_are_refused_as_soon_as_announced() -> None:
    reader = RecordReader(100_000)
    with pytest.raises(RecordTooLarge):
        reader.feed((100_001 | LAST_FRAGMENT).to_bytes(4, "big"))
    reader = RecordReader(100_000)
    # two fragments, together over the bound
    reader.feed((60_000).to_bytes(4, "big") + bytes(60_000))
    with pytest.raises(RecordTooLarge):
        reader.feed((50_000 | LAST_FRAGMENT).to_bytes(4, "big"))
