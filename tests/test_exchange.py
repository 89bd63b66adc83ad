"""The history exchange between two peers' stores, in-process (nfsd/peer/exchange.py): deltas,
full catch-ups with tombstones, bad entries, atomic pages, acknowledgements and trimming,
and a long log streamed in bounded pages."""

from __future__ import annotations

import hashlib
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from nfsd.peer import exchange as xchg
from nfsd.peer.conflicts import PathState
from nfsd.peer.exchange import Exchange, ExchangeError
from nfsd.peer.versions import Kind as VKind
from nfsd.peer.versions import Version, VersionVector
from nfsd.store.areas import AreaTable
from nfsd.store.db import Store
from nfsd.store.history import Change, History, Op
from nfsd.store.index import AreaIndex, Entry, Kind, Layer
from xdr import peer as wire

pytestmark = pytest.mark.inproc

AREA = "docs"


def blob(text: str) -> bytes:
    return hashlib.sha256(text.encode()).digest()


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Page:
    """What a test needs of a page (holding the pages themselves would hold the whole log)."""

    catchup: bool
    entries: int
    first: int  # the lowest sequence in it (0 for a catch-up or an empty page)

    @classmethod
    def of(cls, res: wire.history_res) -> Page:
        return cls(res.catchup, len(res.entries), min((e.sequence for e in res.entries), default=0))


class Peer:
    """One peer's store with the area `docs`, its history and its exchange."""

    def __init__(self, root: Path, peer_id: str, clock: Clock) -> None:
        self.id = peer_id
        self.store = Store(root / peer_id)
        batch = self.store.batch()
        self.area = AreaTable(self.store).register(batch, AREA, str(root).encode(), lambda b: 1).id
        batch.commit()
        self.history = History(self.store)
        self.index = AreaIndex(self.store)
        self.exchange = Exchange(self.store, self.history, peer_id, silent_after=3600, clock=clock)
        self.pages: list[Page] = []  # the HISTORY pages this peer served, in short

    def publish(self, op: Op, path: bytes, content: str = "", new_path: bytes = b"") -> None:
        """What the journal does once a change has rested: index and history in one batch."""
        batch = self.store.batch()
        if op in (Op.CREATE, Op.CHANGE):
            data = blob(content)
            entry = Entry(Kind.FILE, Layer.REAL, 0o644, len(content), 5_000, data, b"", 0, 0)
            self.index.put(batch, self.area, path, entry)
            change = Change(op, path, new_blob=data, size=len(content))
        elif op is Op.DELETE:
            old = self.index.get(self.area, path)
            self.index.delete(batch, self.area, path)
            change = Change(op, path, old_blob=old.blob if old else b"")
        elif op is Op.RENAME:
            self.index.move(batch, self.area, path, new_path)
            change = Change(op, path, new_path)
        else:
            raise AssertionError(op)
        self.history.append(batch, self.area, change)
        batch.commit()

    def view(self) -> dict[bytes, tuple[int, bytes]]:
        return {p: (e.size, e.blob) for p, e in self.index.walk(self.area)}

    def states(self) -> dict[bytes, PathState]:
        return dict(self.exchange.states(self.area))

    def caller(self, server: Peer) -> Any:
        async def call(procedure: int, args: Any) -> Any:
            if procedure != wire.PEERPROC.HISTORY:
                return server.exchange.acknowledge(self.id, args)
            answer = server.exchange.serve(self.id, args)
            server.pages.append(Page.of(answer))
            return answer

        return call

    def pull(self, server: Peer, page: int = 1000) -> xchg.Applied:
        server.pages.clear()
        return trio.run(self.exchange.pull, server.id, AREA, self.caller(server), page)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def peers(tmp_path: Path, clock: Clock) -> Iterator[tuple[Peer, Peer]]:
    a, b = Peer(tmp_path, "PEERA", clock), Peer(tmp_path, "PEERB", clock)
    yield a, b
    a.store.close()
    b.store.close()


def shared_view(a: Peer) -> dict[bytes, tuple[int, bytes]]:
    return a.view()


def test_delta_after_gap_sends_only_what_was_missed(peers: tuple[Peer, Peer]) -> None:
    a, b = peers
    for i in range(5):
        a.publish(Op.CREATE, b"f%d" % i, f"one {i}")
    b.pull(a)
    assert b.view() == a.view()
    # The gap: changes B has not seen, a delete and a rename among them.
    a.publish(Op.CHANGE, b"f0", "two")
    a.publish(Op.DELETE, b"f1")
    a.publish(Op.RENAME, b"f2", new_path=b"g2")
    done = b.pull(a)
    assert not any(page.catchup for page in a.pages)
    sent = sum(page.entries for page in a.pages)
    assert sent == 4  # the edit, the delete, and the rename's tombstone and target
    assert min(page.first for page in a.pages if page.entries) > 5  # nothing sent again
    assert done.applied == sent and done.ignored == 0
    assert b.view() == a.view()
    assert b.view()[b"f0"] == (3, blob("two"))
    assert b"f1" not in b.view() and b"f2" not in b.view()
    assert all(e.layer == Layer.UNREAL for _, e in b.index.walk(b.area))


def _assert_converged_once(a: Peer, b: Peer) -> None:
    """Same states on both sides, and B's log relays each version it applied exactly once."""
    assert b.states() == a.states()
    stamps = [c.stamp for _, c in b.history.since(b.area)]
    assert len(stamps) == len(set(stamps))


def test_full_catchup_after_uuid_change_carries_tombstones(peers: tuple[Peer, Peer]) -> None:
    a, b = peers
    for i in range(6):
        a.publish(Op.CREATE, b"f%d" % i, f"v{i}")
    b.pull(a)
    a.publish(Op.DELETE, b"f3")
    a.publish(Op.CHANGE, b"f4", "edited")
    # A's log gets a new identity (a rebuilt store): B's `last seen` means nothing to it.
    a.store.family("meta").delete(b"history-uuid:" + a.area.to_bytes(4, "big"))
    relayed_before = b.history.high(b.area)
    done = b.pull(a, page=2)
    assert a.pages[0].catchup and len(a.pages) > 2  # paged, resumed by cursor
    assert all(page.entries <= 2 for page in a.pages)
    assert b"f3" not in b.view()  # the tombstone came with the catch-up: nothing resurrected
    assert b.view() == a.view()
    # Only what changed is applied; the rest was known and is ignored, not duplicated.
    assert done.applied == 2 and done.ignored == 4
    assert b.history.high(b.area) == relayed_before + 2
    _assert_converged_once(a, b)
    # The next pull is a delta with nothing in it.
    assert b.pull(a).applied == 0
    assert not any(page.catchup or page.entries for page in a.pages)


def test_the_next_page_is_asked_for_while_one_is_applied(
    peers: tuple[Peer, Peer], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The peer serves page n+1 while this side applies page n, for a delta and for a full
    catch-up alike, and what is applied is what a page at a time would give."""
    a, b = peers
    for i in range(7):
        a.publish(Op.CREATE, b"f%d" % i, f"v{i}")
    events: list[str] = []
    apply = b.exchange.apply

    def applying(peer: Any, area: str, res: wire.history_res) -> xchg.Applied:
        events.append("apply")
        return apply(peer, area, res)

    monkeypatch.setattr(b.exchange, "apply", applying)
    serve = b.caller(a)

    async def call(procedure: int, args: Any) -> Any:
        if procedure == wire.PEERPROC.HISTORY:
            events.append("ask")
        await trio.sleep(0.01)  # the peer takes a while: the other side goes on meanwhile
        return await serve(procedure, args)

    def pull() -> xchg.Applied:
        events.clear()
        a.pages.clear()
        return trio.run(b.exchange.pull, a.id, AREA, call, 2)

    assert pull().applied == 7  # the first pull of a log: a full catch-up, paged
    assert a.pages[0].catchup and len(a.pages) == 4
    assert events == ["ask", "ask", "apply", "ask", "apply", "ask", "apply", "apply"]
    for i in range(5):
        a.publish(Op.CHANGE, b"f%d" % i, f"edited {i}")
    assert pull().applied == 5  # a delta, paged the same way
    assert not a.pages[0].catchup and len(a.pages) == 3
    assert events == ["ask", "ask", "apply", "ask", "apply", "apply"]
    assert b.view() == a.view()


def test_full_catchup_after_trimming(peers: tuple[Peer, Peer], clock: Clock) -> None:
    a, b = peers
    for i in range(4):
        a.publish(Op.CREATE, b"f%d" % i, f"v{i}")
    b.pull(a)
    seen = b.exchange.seen(b.area, a.id).last_seen
    a.publish(Op.DELETE, b"f0")
    a.publish(Op.CREATE, b"new", "new")
    a.exchange.stamp_pending(a.area)
    # Another peer acknowledged everything and B fell silent: A trims past B's `last seen`.
    ack = wire.ack_args(AREA.encode(), a.history.log_uuid(a.area), a.history.high(a.area))
    assert a.exchange.acknowledge("PEERC", ack)
    clock.now += 7200
    assert a.exchange.acknowledge("PEERC", ack)
    assert a.exchange.trim(a.area, ["PEERB", "PEERC"]) == 6
    assert a.history.trimmed(a.area) > seen
    b.pull(a)
    assert a.pages[0].catchup
    assert b"f0" not in b.view() and b"new" in b.view()
    assert b.view() == a.view()
    _assert_converged_once(a, b)


def test_a_store_restored_from_backup_gives_a_catchup(peers: tuple[Peer, Peer]) -> None:
    a, b = peers
    for i in range(3):
        a.publish(Op.CREATE, b"f%d" % i, f"v{i}")
    b.pull(a)
    # B claims more than A's log ever reached (A's store is an older copy): a catch-up.
    seen = b.exchange.seen(b.area, a.id)
    seen.last_seen += 50
    b.store.family("meta").put(xchg._SEEN + xchg._peer_key(b.area, a.id), seen.pack())
    b.pull(a)
    assert a.pages[0].catchup
    assert b.exchange.seen(b.area, a.id).last_seen == a.history.high(a.area)


def _entry(path: bytes, text: str, counter: int = 1) -> wire.history_entry:
    vector = VersionVector.of({"PEERA": counter})
    version = Version(vector, VKind.FILE, blob(text), len(text), 7, "PEERA")
    return wire.history_entry(counter, path, 0o640, version.encode())


def _page(entries: list[wire.history_entry], upto: int) -> wire.history_res:
    return wire.history_res(wire.history_status.OK, b"U" * 16, False, upto, b"", False, entries)


def test_one_bad_entry_never_loses_the_ones_after_it(peers: tuple[Peer, Peer]) -> None:
    _, b = peers
    entries = [
        _entry(b"good1", "1", 1),
        wire.history_entry(2, b"../escape", 0o644, _entry(b"x", "2").version),
        wire.history_entry(3, b"a/.realize/x", 0o644, _entry(b"x", "3").version),
        wire.history_entry(4, b"fine", 0o644, b"not a version"),
        _entry(b"good2", "5", 5),
    ]
    done = b.exchange.apply("PEERA", AREA, _page(entries, 5))
    assert done.applied == 2 and len(done.errors) == 3
    assert set(b.view()) == {b"good1", b"good2"}
    assert [s for s, _ in b.exchange.errors(b.area, "PEERA")] == [2, 3, 4]
    assert b.exchange.seen(b.area, "PEERA").last_seen == 5  # the stream goes on past them
    with pytest.raises(ExchangeError):
        b.exchange.apply("PEERA", "nowhere", _page(entries, 5))
    refused = b.exchange.serve("PEERA", wire.history_args(b"nowhere", b"", 0, 10, False, 0, b""))
    assert refused.status == wire.history_status.NO_AREA


def test_apply_and_last_seen_are_one_batch(
    peers: tuple[Peer, Peer], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = peers
    for i in range(5):
        a.publish(Op.CREATE, b"f%d" % i, f"v{i}")
    page = a.exchange.serve(b.id, b.exchange.request(a.id, AREA, 100))
    real_show = b.exchange.show
    shown: list[bytes] = []

    def failing_show(batch: Any, area: int, path: bytes, *args: Any) -> None:
        shown.append(path)
        if len(shown) == 3:
            raise OSError("the process dies here")
        real_show(batch, area, path, *args)

    monkeypatch.setattr(b.exchange, "show", failing_show)
    with pytest.raises(OSError):
        b.exchange.apply(a.id, AREA, page)
    # Nothing of the page is in the store: no state, no index entry, no relay, no `last seen`.
    assert b.states() == {} and b.view() == {}
    assert b.history.high(b.area) == 0
    assert b.exchange.seen(b.area, a.id).last_seen == 0
    monkeypatch.setattr(b.exchange, "show", real_show)
    done = b.exchange.apply(a.id, AREA, page)
    assert done.applied == 5 and b.view() == a.view()
    assert [s for s, _ in b.history.since(b.area)] == [1, 2, 3, 4, 5]


def test_trimming_follows_acks_and_leaves_out_silent_peers(
    peers: tuple[Peer, Peer], clock: Clock
) -> None:
    a, b = peers
    for i in range(10):
        a.publish(Op.CREATE, b"f%d" % i, f"v{i}")
    uuid = a.history.log_uuid(a.area)
    b.pull(a)  # B applies and acknowledges all ten
    assert a.exchange.acked(a.area, b.id)[0] == 10
    assert a.exchange.acknowledge("PEERC", wire.ack_args(AREA.encode(), uuid, 4))
    assert not a.exchange.acknowledge("PEERC", wire.ack_args(AREA.encode(), b"X" * 16, 9))
    assert not a.exchange.acknowledge("PEERC", wire.ack_args(AREA.encode(), uuid, 99))
    # C holds the history from 5 on; a peer never heard of (D) holds nothing.
    assert a.exchange.trim(a.area, [b.id, "PEERC", "PEERD"]) == 4
    assert [s for s, _ in a.history.since(a.area)] == list(range(5, 11))
    # C falls silent past the limit while B keeps in touch: C no longer holds history.
    clock.now += 3000
    b.pull(a)
    clock.now += 1000
    assert a.exchange.trim(a.area, [b.id, "PEERC"]) == 6
    assert list(a.history.since(a.area)) == []
    # C comes back: its `last seen` is gone from the log, so it is given a full catch-up.
    back = a.exchange.serve("PEERC", wire.history_args(AREA.encode(), uuid, 4, 100, False, 0, b""))
    assert back.catchup and len(back.entries) == 10


def _publish_many(a: Peer, count: int) -> None:
    for start in range(0, count, 1000):
        batch = a.store.batch()
        for i in range(start, min(count, start + 1000)):
            path = b"d%03d/file-with-a-long-name-%06d" % (i % 100, i)
            entry = Entry(Kind.FILE, Layer.REAL, 0o644, i, 1, blob(str(i)))
            a.index.put(batch, a.area, path, entry)
            a.history.append(batch, a.area, Change(Op.CREATE, path, new_blob=entry.blob, size=i))
        batch.commit()
    a.exchange.stamp_pending(a.area)


def test_a_long_log_is_paged_in_bounded_memory(peers: tuple[Peer, Peer]) -> None:
    a, b = peers
    a.publish(Op.CREATE, b"first", "first")
    b.pull(a)  # subscribed: what follows is a delta
    count = 6000
    _publish_many(a, count)
    tracemalloc.start()
    try:
        done = b.pull(a, page=200)  # served and applied a page at a time
        _, delta_peak = tracemalloc.get_traced_memory()
        # A full catch-up of the same paths, served page by page to a new subscriber.
        tracemalloc.reset_peak()
        args = wire.history_args(AREA.encode(), b"", 0, 200, False, 0, b"")
        served = 0
        while True:
            res = a.exchange.serve("PEERC", args)
            served += len(res.entries)
            assert res.catchup and len(res.entries) <= 200
            if not res.more:
                break
            args = wire.history_args(
                AREA.encode(), res.log_uuid, 0, 200, True, res.upto, res.cursor
            )
            del res
        _, catchup_peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert done.applied == count and served == count + 1
    assert not any(page.catchup for page in a.pages)
    assert all(page.entries <= 200 for page in a.pages)
    # The whole log at once would be several MB of entries; a page is well under one.
    assert delta_peak < 1 << 20, delta_peak
    assert catchup_peak < 1 << 20, catchup_peak


def test_arrivals_never_touch_a_real_file(peers: tuple[Peer, Peer]) -> None:
    a, b = peers
    b.publish(Op.CREATE, b"kept", "mine")  # B holds `kept` Real
    a.publish(Op.CREATE, b"kept", "theirs")
    a.publish(Op.CREATE, b"other", "theirs")
    b.pull(a)
    kept = b.index.get(b.area, b"kept")
    assert kept is not None and kept.layer == Layer.REAL and kept.blob == blob("mine")
    other = b.index.get(b.area, b"other")
    assert other is not None and other.layer == Layer.UNREAL and other.blob == blob("theirs")
    assert other.size == 6 and other.mtime_ns == 5_000
    assert len(b.exchange.state(b.area, b"kept").versions) == 2  # concurrent: both are known
