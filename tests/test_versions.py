"""Per-path versions and conflicts (nfsd/peer/versions.py, nfsd/peer/conflicts.py): each
decision for an incoming version, the winning rule, conflict names, renames with
preconditions, and, by property, that peers receiving the same changes in any order show the
same tree, the same conflict copies and pin the same blobs, and that no content a peer wrote
and nobody superseded disappears."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfsd.peer.conflicts import (
    EMPTY,
    Action,
    PathState,
    Rename,
    conflict_name,
    conflict_names,
    decide,
    local_change,
    make_rename,
    pinned,
    plan_rename,
    rank,
    resolve,
    tree,
)
from nfsd.peer.versions import (
    Kind,
    Order,
    Residency,
    ResidencyChange,
    Version,
    VersionError,
    VersionVector,
    next_version,
)
from nfsd.store.paths import path_problem
from xdr import versions as wire
from xdr.codec import Array, XdrError, decode, encode
from xdr.nfs3 import NAME_MAX

pytestmark = pytest.mark.inproc

PROPERTY = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)

A, B, C = "AAAA-1111", "BBBB-2222", "CCCC-3333"


def blob(n: int) -> bytes:
    return bytes([n]) * 32


def vv(**counters: int) -> VersionVector:
    return VersionVector.of({p.upper(): c for p, c in counters.items()})


def file(vector: VersionVector, content: int, author: str = A, mtime: int = 0) -> Version:
    return Version(vector, Kind.FILE, blob(content), 1, mtime, author)


def tomb(vector: VersionVector, author: str = A) -> Version:
    return Version(vector, Kind.DELETED, author=author)


def receive_all(versions: list[Version], state: PathState = EMPTY) -> PathState:
    for v in versions:
        state = decide(state, v).state
    return state


# --- Version vectors ---


def test_compare_tells_the_four_orders_apart() -> None:
    assert vv(a=1, b=2).compare(vv(a=1, b=2)) is Order.EQUAL
    assert vv(a=2, b=2).compare(vv(a=1, b=2)) is Order.NEWER
    assert vv(a=1).compare(vv(a=1, b=1)) is Order.OLDER
    assert vv(a=2).compare(vv(a=1, b=1)) is Order.CONCURRENT
    assert VersionVector().compare(vv(a=1)) is Order.OLDER


def test_join_is_the_pointwise_max_and_bump_supersedes() -> None:
    assert vv(a=3, b=1).join(vv(b=4, c=2)) == vv(a=3, b=4, c=2)
    base = vv(a=3, b=1)
    assert base.bump("A") == vv(a=4, b=1)
    assert base.bump("C").compare(base) is Order.NEWER


def test_a_wiped_peer_counts_from_its_clock_not_from_zero() -> None:
    # Syncthing's rule: counter = max(own + 1, clock), so a store reset never reuses counters.
    before_reset = VersionVector().bump("A", clock=1_700_000_000)
    after_reset = VersionVector().bump("A", clock=1_700_000_100)
    assert after_reset.compare(before_reset) is Order.NEWER


def test_vector_encoding_is_canonical_and_strict() -> None:
    v = vv(b=7, a=2**40)
    assert VersionVector.decode(v.encode()) == v
    assert VersionVector.of({"B": 7, "A": 2**40}).encode() == v.encode()
    assert VersionVector.of({"A": 1, "B": 0}) == vv(a=1)  # zero counters are not kept

    def raw(*entries: tuple[bytes, int]) -> bytes:  # a vector packed without the checks
        return encode(Array(wire.peer_counter), [wire.peer_counter(p, c) for p, c in entries])

    not_canonical = [
        raw((b"B", 1), (b"A", 1)),  # unsorted
        raw((b"A", 1), (b"A", 2)),  # a peer twice
        raw((b"A", 0)),  # a zero counter
        v.encode()[:-1],
    ]
    for bad in not_canonical:  # the wire type alone refuses these
        with pytest.raises(XdrError):
            decode(wire.version_vector, bad)
    not_peer_ids = [raw((b"../x", 1)), raw((b"a", 1))]  # "../x" would reach a conflict name
    for bad in not_canonical + not_peer_ids:
        with pytest.raises(XdrError):
            VersionVector.decode(bad)


def test_versions_refuse_what_they_cannot_be() -> None:
    with pytest.raises(VersionError):
        Version(vv(a=1), Kind.FILE, b"short", author=A)
    with pytest.raises(VersionError):
        Version(vv(a=1), Kind.DELETED, blob(1), author=A)
    with pytest.raises(VersionError):
        Version(vv(a=1), Kind.SYMLINK, b"a\0b", author=A)
    with pytest.raises(VersionError):
        Version(vv(a=1), Kind.FILE, blob(1), author="a/b")
    with pytest.raises(VersionError):
        VersionVector((("B", 1), ("A", 1)))


# --- Decisions ---


def test_older_and_equal_are_ignored() -> None:
    held = file(vv(a=2), 2)
    state = receive_all([held])
    assert decide(state, file(vv(a=1), 1)).action is Action.IGNORE
    assert decide(state, held).action is Action.IGNORE
    assert decide(state, file(vv(a=1), 1)).state == state


def test_newer_is_applied_and_replaces() -> None:
    state = receive_all([file(vv(a=1), 1)])
    newer = file(vv(a=1, b=1), 2, author=B)
    d = decide(state, newer)
    assert d.action is Action.APPLY
    assert d.state.versions == (newer,)
    assert decide(EMPTY, newer).action is Action.APPLY


def test_concurrent_identical_content_merges_to_the_pointwise_max() -> None:
    ours, theirs = file(vv(a=1), 5, A, mtime=10), file(vv(b=1), 5, B, mtime=20)
    d = decide(receive_all([ours]), theirs)
    assert d.action is Action.MERGE
    r = resolve(b"f", d.state)
    assert not r.conflicted and r.pinned == frozenset()
    assert r.shown is not None and r.shown.content == blob(5)
    assert r.shown.vector == vv(a=1, b=1)
    # Both sides of the merge are superseded by what supersedes the merged version.
    assert decide(d.state, file(vv(a=1, b=2), 6, B)).state.versions == (file(vv(a=1, b=2), 6, B),)


def test_concurrent_deletes_merge_and_show_nothing() -> None:
    d = decide(receive_all([tomb(vv(a=2))]), tomb(vv(a=1, b=1), B))
    assert d.action is Action.MERGE
    r = resolve(b"f", d.state)
    assert not r.exists and not r.conflicted


def test_concurrent_different_content_is_a_conflict_with_a_pinned_copy() -> None:
    ours, theirs = file(vv(a=1), 1, A, mtime=10), file(vv(b=1), 2, B, mtime=20)
    d = decide(receive_all([ours]), theirs)
    assert d.action is Action.CONFLICT
    r = resolve(b"docs/report.odt", d.state)
    assert r.shown is not None and r.shown.content == blob(2)  # the later mtime keeps the name
    assert [c.version.content for c in r.copies] == [blob(1)]
    assert r.copies[0].name == b"docs/report.conflict-AAAA-" + blob(1).hex()[:8].encode() + b".odt"
    assert r.pinned == {blob(1)}


def test_equal_vectors_with_other_content_are_never_dropped() -> None:
    # Only a peer whose store was reset reuses a vector; keep both sides rather than guess.
    d = decide(receive_all([file(vv(a=1), 1)]), file(vv(a=1), 2))
    assert d.action is Action.CONFLICT
    assert len(resolve(b"f", d.state).copies) == 1


def test_eviction_and_unrealize_are_not_history() -> None:
    with pytest.raises(TypeError):
        decide(receive_all([file(vv(a=1), 1)]), ResidencyChange(b"f", Residency.UNREAL))  # type: ignore[arg-type]
    assert {k.name for k in Kind} == {"FILE", "SYMLINK", "DIRECTORY", "DELETED"}
    assert {k.name for k in wire.content_kind} == {k.name for k in Kind}


# --- The winning rule ---


def test_an_edit_beats_a_concurrent_delete_in_either_order() -> None:
    base = vv(a=1)
    delete = tomb(base.bump("A"), A)
    edit = file(base.bump("C"), 9, C, mtime=0)  # older mtime: the kind decides first
    for order in ([delete, edit], [edit, delete]):
        r = resolve(b"f", receive_all(order))
        assert r.exists and r.shown is not None and r.shown.content == blob(9)
        assert not r.copies and not r.pinned


def test_later_mtime_then_author_decide_between_edits() -> None:
    early, late = file(vv(b=1), 2, B, mtime=5), file(vv(a=1), 1, A, mtime=6)
    assert max([early, late], key=rank) is late  # though its author's id is the smaller
    assert resolve(b"f", receive_all([late, early])).shown == late
    same_a, same_b = file(vv(a=1), 1, A, mtime=5), file(vv(b=1), 2, B, mtime=5)
    assert max([same_a, same_b], key=rank) is same_b  # larger peer id


def test_a_directory_beats_a_file_and_two_directories_merge() -> None:
    directory = Version(vv(a=1), Kind.DIRECTORY, author=A, mtime_ns=0)
    f = file(vv(b=1), 3, B, mtime=99)
    r = resolve(b"x", receive_all([f, directory]))
    assert r.shown is not None and r.shown.kind is Kind.DIRECTORY
    assert [c.version.content for c in r.copies] == [blob(3)]
    other = Version(vv(b=1), Kind.DIRECTORY, author=B)
    assert decide(receive_all([directory]), other).action is Action.MERGE


def test_symlink_losers_are_copies_but_pin_nothing() -> None:
    one = Version(vv(a=1), Kind.SYMLINK, b"one", author=A, mtime_ns=1)
    two = Version(vv(b=1), Kind.SYMLINK, b"two", author=B, mtime_ns=2)
    r = resolve(b"link", receive_all([one, two]))
    assert r.shown is not None and r.shown.content == b"two"
    assert [c.version.content for c in r.copies] == [b"one"] and not r.pinned


concurrent_sets = st.lists(
    st.tuples(
        st.sampled_from([A, B, C, "DDDD", "EEEE"]),
        st.integers(1, 6),  # content: collisions make merges
        st.integers(0, 3),  # mtime: collisions exercise the tie-breaks
        st.booleans(),  # a delete
    ),
    min_size=1,
    max_size=6,
    unique_by=lambda t: t[0],
)


@PROPERTY
@given(concurrent_sets, st.data())
def test_the_outcome_is_a_function_of_the_set_not_the_order(rows, data) -> None:  # type: ignore[no-untyped-def]
    base = vv(a=1)
    versions = [
        tomb(base.bump(peer), peer)
        if deleted
        else Version(base.bump(peer), Kind.FILE, blob(content), 1, mtime, peer)
        for peer, content, mtime, deleted in rows
    ]
    expected = resolve(b"d/report.odt", receive_all(versions))
    shuffled = data.draw(st.permutations(versions))
    assert resolve(b"d/report.odt", receive_all(shuffled)) == expected
    # One name per losing content, none equal to the path or to another; losers pinned.
    live = {v.content for v in versions if not v.deleted}
    assert expected.exists == bool(live)
    assert len(expected.copies) == max(len(live) - 1, 0)
    assert len({c.name for c in expected.copies} | {b"d/report.odt"}) == len(expected.copies) + 1
    shown = expected.shown.content if expected.exists and expected.shown else None
    assert expected.pinned == live - {shown}
    # The winner is the best-ranked content.
    if live:
        assert shown == max((v for v in versions if not v.deleted), key=rank).content


# --- Conflict names ---

LONG_ID = "ABCD-EFGH-IJKL-MNOP-QRST-UVWX-YZ23"


def loser(content: int, author: str = LONG_ID) -> Version:
    return file(vv(b=1), content, author)


def test_conflict_names_keep_the_extension_and_the_directory() -> None:
    h = blob(7).hex()[:8].encode()
    assert conflict_name(b"a/b/report.odt", loser(7)) == b"a/b/report.conflict-ABCD-" + h + b".odt"
    assert conflict_name(b"x.tar.gz", loser(7)) == b"x.tar.conflict-ABCD-" + h + b".gz"
    assert conflict_name(b".bashrc", loser(7)) == b".bashrc.conflict-ABCD-" + h
    assert conflict_name(b"Makefile", loser(7)) == b"Makefile.conflict-ABCD-" + h
    assert conflict_name(b"odd.", loser(7)) == b"odd..conflict-ABCD-" + h


def test_long_names_are_shortened_within_name_max_without_splitting_characters() -> None:
    name = b"x" + "é".encode() * 125 + b".odt"  # 255 bytes; an even cut would split a "é"
    made = conflict_name(b"dir/" + name, loser(7))
    leaf = made.rpartition(b"/")[2]
    assert len(leaf) <= NAME_MAX and leaf.endswith(b".odt")
    leaf.decode("utf-8")  # no character cut in half
    assert path_problem(made) is None


def test_names_of_losers_sharing_a_hash_prefix_do_not_collide() -> None:
    one = bytes.fromhex("abcdef01") + bytes(28)
    two = bytes.fromhex("abcdef01") + b"\1" * 28
    losers = [
        Version(vv(b=1), Kind.FILE, one, author=B),
        Version(vv(c=1), Kind.FILE, two, author=B),
    ]
    names = conflict_names(b"f.txt", losers)
    assert len(set(names)) == 2
    assert names[0] == conflict_name(b"f.txt", losers[0], 16)


def test_a_name_made_to_equal_its_conflict_name_still_gets_another() -> None:
    v = loser(7)
    plain = conflict_name(b"x" * 251 + b".odt", v)  # 255 bytes: its stem was shortened
    assert len(plain) == NAME_MAX
    names = conflict_names(plain, [v])  # a path whose copy would be named like itself
    assert names[0] != plain and len(names[0]) <= NAME_MAX


names = st.binary(min_size=1, max_size=NAME_MAX).filter(
    lambda n: b"/" not in n and b"\0" not in n and n not in (b".", b"..")
)


@PROPERTY
@given(st.lists(names, min_size=0, max_size=3), names, st.integers(1, 9), st.integers(1, 9))
def test_conflict_names_are_always_valid_new_names(parents, name, c1, c2) -> None:  # type: ignore[no-untyped-def]
    path = b"/".join([*parents, name])
    losers = [loser(c1), loser(c2, B)] if c1 != c2 else [loser(c1)]
    made = conflict_names(path, losers)
    assert len(set(made)) == len(made) and path not in made
    for m in made:
        parent, _, leaf = m.rpartition(b"/")
        assert parent == path.rpartition(b"/")[0]
        assert 0 < len(leaf) <= NAME_MAX and leaf not in (b".", b"..") and b"\0" not in leaf
        assert b".conflict-" in leaf


# --- Local changes while conflicted ---


def test_a_change_while_conflicted_keeps_every_copy_but_the_dismissed_one() -> None:
    one, two, three = (
        file(vv(**{p: 1}), n, p.upper(), mtime=n) for p, n in (("a", 1), ("b", 2), ("c", 3))
    )
    state = receive_all([one, two, three])
    before = resolve(b"f.txt", state)
    assert len(before.copies) == 2
    dismissed = before.copies[0]
    winner = before.shown
    assert winner is not None
    entries = local_change(
        b"f.txt", state, A, Kind.FILE, winner.content, size=1, clock=0, dismissed=[dismissed.name]
    )
    states = {b"f.txt": state}
    for path, v in entries:
        states[path] = decide(states.get(path, EMPTY), v).state
    shown = tree(states)
    kept = before.copies[1]
    assert set(shown) == {b"f.txt", kept.name}
    assert shown[kept.name].content == kept.version.content
    assert not resolve(b"f.txt", states[b"f.txt"]).conflicted
    assert pinned(states) == frozenset()


def test_a_copy_whose_name_is_taken_moves_to_a_free_name() -> None:
    state = receive_all([file(vv(a=1), 1, A, 1), file(vv(b=1), 2, B, 2)])
    copy = resolve(b"f", state).copies[0]
    squatter = file(vv(c=1), 3, C)  # a file someone made under that very name
    states = {b"f": state, copy.name: receive_all([squatter])}
    entries = local_change(b"f", state, A, Kind.FILE, blob(2), size=1, copy_states=states)
    assert entries[0][0] == b"f" and len(entries) == 2
    for path, v in entries:
        states[path] = decide(states.get(path, EMPTY), v).state
    shown = tree(states)
    assert shown[copy.name] == squatter
    assert sorted(v.content for v in shown.values()) == [blob(1), blob(2), blob(3)]
    # Where the name shows the copy's content already, nothing is made twice.
    same = {b"f": state, copy.name: receive_all([file(vv(c=1), 1, C)])}
    assert len(local_change(b"f", state, A, Kind.FILE, blob(2), copy_states=same)) == 1


# --- Renames ---


def test_a_rename_whose_preconditions_hold_moves() -> None:
    f = file(vv(a=1), 1)
    rename, copies = make_rename(b"f", b"g", receive_all([f]), EMPTY, A)
    assert copies == [] and rename.source == f and rename.replaced is None
    plan = plan_rename(rename, receive_all([f]), EMPTY)
    assert plan.move
    assert not resolve(b"f", plan.source.state).exists
    g = resolve(b"g", plan.target.state)
    assert g.shown is not None and g.shown.content == blob(1)


def test_rename_vs_edit_keeps_the_edit_on_every_peer() -> None:
    f = file(vv(a=1), 1)
    rename, _ = make_rename(b"f", b"g", receive_all([f]), EMPTY, A)  # on A
    edit = next_version([f], B, Kind.FILE, blob(2), size=1)  # on B, cut off
    # B receives the rename after its edit: the precondition on the source fails.
    plan = plan_rename(rename, receive_all([f, edit]), EMPTY)
    assert not plan.move
    assert plan.source.action is Action.CONFLICT
    views = []
    for entries in ([f, edit, rename], [f, rename, edit], [rename, edit, f], [edit, rename]):
        states: dict[bytes, PathState] = {}
        for e in entries:
            if isinstance(e, Rename):
                p = plan_rename(e, states.get(b"f", EMPTY), states.get(b"g", EMPTY))
                states[b"f"], states[b"g"] = p.source.state, p.target.state
            else:
                states[b"f"] = decide(states.get(b"f", EMPTY), e).state
        views.append({p: v.content for p, v in tree(states).items()})
    assert views == [{b"f": blob(2), b"g": blob(1)}] * 4


def test_a_stale_source_degrades_to_delete_and_create() -> None:
    old, new = file(vv(a=1), 1), file(vv(a=2), 2)
    rename, _ = make_rename(b"f", b"g", receive_all([new]), EMPTY, A)
    plan = plan_rename(rename, receive_all([old]), EMPTY)  # has not seen `new` yet
    assert not plan.move
    assert plan.source.action is Action.APPLY and plan.target.action is Action.APPLY
    assert not resolve(b"f", plan.source.state).exists
    g = resolve(b"g", plan.target.state).shown
    assert g is not None and g.content == blob(2)


def test_a_rename_onto_an_existing_name_records_what_it_replaced() -> None:
    f, g = file(vv(a=1), 1), file(vv(b=1), 2, B)
    rename, _ = make_rename(b"f", b"g", receive_all([f]), receive_all([g]), A)
    assert rename.replaced == g
    assert plan_rename(rename, receive_all([f]), receive_all([g])).move
    # A peer whose g changed meanwhile gets a conflict at g, not a loss.
    g2 = next_version([g], C, Kind.FILE, blob(3), size=1, mtime_ns=50)
    plan = plan_rename(rename, receive_all([f]), receive_all([g, g2]))
    assert not plan.move and plan.target.action is Action.CONFLICT
    r = resolve(b"g", plan.target.state)
    contents = {r.shown.content if r.shown else None} | {c.version.content for c in r.copies}
    assert contents == {blob(1), blob(3)}


def test_renaming_a_conflicted_file_keeps_its_copies() -> None:
    state = receive_all([file(vv(a=1), 1, A, 1), file(vv(b=1), 2, B, 2)])
    copy = resolve(b"f", state).copies[0]
    rename, copies = make_rename(b"f", b"g", state, EMPTY, C)
    assert [(name, v.content) for name, v in copies] == [(copy.name, copy.version.content)]
    assert rename.source.content == blob(2)


# --- Wire round trips ---

peer_ids = st.sampled_from([A, B, C, LONG_ID, "Z"])
vectors = st.dictionaries(peer_ids, st.integers(0, 2**64 - 1), max_size=5).map(VersionVector.of)


@st.composite
def versions(draw: st.DrawFn) -> Version:
    kind = draw(st.sampled_from(list(Kind)))
    content = {
        Kind.FILE: draw(st.binary(min_size=32, max_size=32)),
        Kind.SYMLINK: draw(st.binary(max_size=40).filter(lambda b: b"\0" not in b)),
    }.get(kind, b"")
    size = draw(st.integers(0, 2**64 - 1)) if kind in (Kind.FILE, Kind.SYMLINK) else 0
    return Version(
        draw(vectors), kind, content, size, draw(st.integers(-(2**63), 2**63 - 1)), draw(peer_ids)
    )


@PROPERTY
@given(vectors, versions(), st.lists(versions(), max_size=4))
def test_versions_round_trip_through_xdr(vector, version, pool) -> None:  # type: ignore[no-untyped-def]
    assert VersionVector.decode(vector.encode()) == vector
    assert Version.decode(version.encode()) == version
    assert decode(wire.path_version, version.encode()) == version.to_xdr()
    state = PathState.of(pool)
    assert PathState.decode(state.encode()) == state
    encoded = version.encode()
    for cut in range(len(encoded)):
        with pytest.raises(XdrError):
            Version.decode(encoded[:cut])


def test_a_rename_round_trips_and_a_non_canonical_state_is_refused() -> None:
    f, g = file(vv(a=1), 1), file(vv(b=1), 2, B)
    rename, _ = make_rename(b"f", b"d/g", receive_all([f]), receive_all([g]), A, clock=7)
    assert Rename.decode(rename.encode()) == rename
    older, newer = file(vv(a=1), 1), file(vv(a=2), 2)
    stale = encode(wire.path_state, [older.to_xdr(), newer.to_xdr()])  # a superseded member
    with pytest.raises(XdrError):
        PathState.decode(stale)
    bad = rename.to_xdr()
    bad.removed = f.to_xdr()  # not a tombstone
    with pytest.raises(XdrError):
        Rename.from_xdr(bad)


# --- Several peers, random histories, every order ---

PEERS = (A, B, C)
PATHS = (b"f.odt", b"g.odt", b"d/h")

peers_ = st.sampled_from(PEERS)
paths_ = st.sampled_from(PATHS)
OPERATIONS = {
    "write": st.tuples(st.just("write"), peers_, paths_, st.integers(1, 3), st.integers(0, 2)),
    "rename": st.tuples(st.just("rename"), peers_, paths_, paths_),
    "delete": st.tuples(st.just("delete"), peers_, paths_),
    "dismiss": st.tuples(st.just("dismiss"), peers_, paths_),
    "sync": st.tuples(st.just("sync"), peers_, peers_),
}
# Mostly writes, so that peers cut off from each other write the same paths concurrently.
WEIGHTS = ["write"] * 5 + ["rename"] * 2 + ["delete", "dismiss", "sync", "sync"]
operations = st.lists(
    st.sampled_from(WEIGHTS).flatmap(OPERATIONS.__getitem__), min_size=8, max_size=40
)

Entry = tuple[bytes, Version] | Rename


class SimPeer:
    """A peer's states and the entries it has applied, through the functions above only."""

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.states: dict[bytes, PathState] = {}
        self.seen: list[Entry] = []

    def state(self, path: bytes) -> PathState:
        return self.states.get(path, EMPTY)

    def receive(self, entry: Entry) -> None:
        if entry in self.seen:
            return
        self.seen.append(entry)
        if isinstance(entry, Rename):
            plan = plan_rename(entry, self.state(entry.source_path), self.state(entry.target_path))
            self.states[entry.source_path] = plan.source.state
            self.states[entry.target_path] = plan.target.state
        else:
            path, version = entry
            self.states[path] = decide(self.state(path), version).state

    def local(self, op: tuple) -> None:  # type: ignore[type-arg]
        kind, _, *args = op
        made: list[Entry] = []
        if kind == "write":
            path, content, mtime = args
            made = [
                *local_change(
                    path,
                    self.state(path),
                    self.peer,
                    Kind.FILE,
                    blob(content),
                    size=1,
                    mtime_ns=mtime,
                    copy_states=self.states,
                )
            ]
        elif kind == "delete" and resolve(args[0], self.state(args[0])).exists:
            made = [
                *local_change(
                    args[0], self.state(args[0]), self.peer, Kind.DELETED, copy_states=self.states
                )
            ]
        elif kind == "rename":
            source, target = args
            if source != target and resolve(source, self.state(source)).exists:
                rename, copies = make_rename(
                    source,
                    target,
                    self.state(source),
                    self.state(target),
                    self.peer,
                    copy_states=self.states,
                )
                made = [rename, *copies]
        elif kind == "dismiss":
            r = resolve(args[0], self.state(args[0]))
            if r.copies and r.shown is not None:
                w = r.shown
                made = [
                    *local_change(
                        args[0],
                        self.state(args[0]),
                        self.peer,
                        w.kind,
                        w.content,
                        size=w.size,
                        mtime_ns=w.mtime_ns,
                        dismissed=[r.copies[0].name],
                        copy_states=self.states,
                    )
                ]
        for entry in made:
            self.receive(entry)

    def view(self) -> dict[bytes, object]:
        return {p: resolve(p, s) for p, s in sorted(self.states.items()) if s}


def versions_by_path(entries: list[Entry]) -> dict[bytes, list[Version]]:
    by_path: dict[bytes, list[Version]] = {}
    for e in entries:
        if isinstance(e, Rename):
            by_path.setdefault(e.source_path, []).append(e.removed)
            by_path.setdefault(e.target_path, []).append(e.created)
        else:
            by_path.setdefault(e[0], []).append(e[1])
    return by_path


@PROPERTY
@given(operations, st.data())
def test_peers_converge_whatever_order_the_entries_arrive_in(ops, data) -> None:  # type: ignore[no-untyped-def]
    peers = {p: SimPeer(p) for p in PEERS}
    for op in ops:
        if op[0] == "sync":
            for entry in list(peers[op[1]].seen):
                peers[op[2]].receive(entry)
        else:
            peers[op[1]].local(op)
    everything = list(dict.fromkeys(e for p in peers.values() for e in p.seen))
    observer = SimPeer("OBSERVER")
    for peer in [*peers.values(), observer]:
        for entry in data.draw(st.permutations(everything)):
            peer.receive(entry)

    by_path = versions_by_path(everything)
    expected_states = {p: PathState.of(vs) for p, vs in by_path.items()}
    views = [p.view() for p in (*peers.values(), observer)]
    for peer in (*peers.values(), observer):
        assert {p: s for p, s in peer.states.items() if s} == expected_states
    assert all(v == views[0] for v in views)
    assert all(tree(p.states) == tree(observer.states) for p in peers.values())
    assert all(pinned(p.states) == pinned(observer.states) for p in peers.values())

    # Nothing lost: every content some peer wrote and nobody superseded is still shown, at
    # its path or as one of its conflict copies; nothing everyone deleted is back.
    shown = tree(observer.states)
    for path in by_path:
        r = resolve(path, expected_states[path])
        visible = {
            v.content
            for name, v in shown.items()
            if name == path or name in {c.name for c in r.copies}
        }
        for v in expected_states[path].versions:
            if not v.deleted:
                assert v.content in visible
        if all(v.deleted for v in expected_states[path].versions):
            assert path not in shown


# --- The fast codec (xdr/versions.py): the general codec's bytes, and its refusals ---


@PROPERTY
@given(st.lists(versions(), min_size=1, max_size=4))
def test_the_fast_codec_gives_and_takes_what_the_general_codec_does(vs: list[Version]) -> None:
    for v in vs:
        general = encode(wire.path_version, v.to_xdr())
        fresh = Version(v.vector, v.kind, v.content, v.size, v.mtime_ns, v.author)
        assert fresh.encode() == general
        assert Version.decode(general) == v == Version.from_xdr(decode(wire.path_version, general))
    state = PathState.of(vs)
    general = encode(wire.path_state, [v.to_xdr() for v in state.versions])
    assert state.encode() == general
    assert PathState.decode(general) == state


def test_the_fast_codec_refuses_what_is_not_one_canonical_version() -> None:
    good = file(vv(a=1, b=2), 3).encode()
    for bad in (
        good[:-1],  # truncated
        good + b"\0\0\0\0",  # trailing bytes
        good[:9] + b"\1" + good[10:],  # the first peer id's padding is not zero
        b"\xff\xff\xff\xff" + good[4:],  # a vector count beyond what follows
    ):
        with pytest.raises(XdrError):
            Version.decode(bad)
    swapped = encode(
        Array(wire.peer_counter),
        [wire.peer_counter(b"B", 2), wire.peer_counter(b"A", 1)],
    )
    with pytest.raises(XdrError):
        Version.decode(swapped + good[len(vv(a=1, b=2).encode()) :])
