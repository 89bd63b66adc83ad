"""Versions arriving for paths a peer holds Real (nfsd/peer/exchange.py, nfsd/peer/landing.py),
in-process: two servers' own assemblies (store, tree, journal, exchange) over real area
directories, their history pages handed across directly. A remote edit of a clean Real file
makes it Unreal, a remote delete removes it, a remote rename moves it; a local change not yet
published meets a remote one as a conflict resolved alike on both peers; conflict copies are
shown beside their path, pinned while shown, and resolved by an ordinary delete; and a crash
between the index and the disk is finished at the next start."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blake3
import pytest
import trio

from nfsd.peer import exchange as xchg
from nfsd.peer.conflicts import CONFLICT_TAG
from nfsd.peer.exchange import Exchange
from nfsd.peer.landing import Landing
from nfsd.peer.versions import Version
from nfsd.store.index import Layer
from nfsd.vfs.errors import FsError
from tests.support.inproc import InProcessServer, make_dispatcher
from xdr import peer as wire
from xdr.nfs3 import nfsstat3

pytestmark = pytest.mark.inproc

AREA = "docs"


def blob(data: bytes) -> bytes:
    return blake3.blake3(data).digest()


class Side:
    """One peer: its server's assembly, area `docs`, and a way to publish what its disk holds."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.open()

    def open(self) -> None:
        self.inproc: InProcessServer = make_dispatcher(self.base, areas=(AREA,))
        server = self.inproc.server
        assert server.tree is not None and server.peers is not None
        self.tree = server.tree
        assert server.peers.exchange is not None
        self.exchange: Exchange = server.peers.exchange
        # Pulls here follow changes at once: a delete is published without its grace (the
        # grace has tests of its own, test_delete_grace.py).
        self.exchange.delete_grace = 0.0
        self.id = self.exchange.me
        self.dir = self.inproc.areas[AREA]
        self.area = self.tree.area_by_name[AREA].id

    def close(self) -> None:
        self.inproc.close()

    def publish(self) -> None:
        """What the journal does at start and once files rest: scan, hash, record."""

        async def scan() -> None:
            await self.tree.journal.scan(self.area, self.tree.hidden)
            await self.tree.journal.settle()

        trio.run(scan)

    def pull(self, other: Side, page: int = 1000) -> Any:
        async def call(procedure: int, args: Any) -> Any:
            if procedure == wire.PEERPROC.HISTORY:
                return other.exchange.serve(self.id, args)
            return other.exchange.acknowledge(self.id, args)

        return trio.run(self.exchange.pull, other.id, AREA, call, page)

    def view(self) -> dict[bytes, tuple[int, bytes]]:
        """What every peer must agree on: path, size, blob id."""
        return {p: (e.size, e.blob) for p, e in self.tree.index.walk(self.area)}

    def layer(self, path: bytes) -> Layer | None:
        entry = self.tree.index.get(self.area, path)
        return None if entry is None else entry.layer

    def write(self, name: str, data: bytes, mtime_s: int | None = None) -> None:
        path = self.dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        if mtime_s is not None:
            os.utime(path, (mtime_s, mtime_s))


@pytest.fixture
def sides(tmp_path: Path) -> Iterator[tuple[Side, Side]]:
    a, b = Side(tmp_path / "a"), Side(tmp_path / "b")
    yield a, b
    a.close()
    b.close()


def converge(a: Side, b: Side) -> None:
    for _ in range(3):
        b.pull(a)
        a.pull(b)


def copies(view: dict[bytes, tuple[int, bytes]]) -> dict[bytes, tuple[int, bytes]]:
    return {p: v for p, v in view.items() if CONFLICT_TAG in p}


def b_loses(a: Side, b: Side, name: str, at_s: int) -> bytes:
    """Both peers write `name`, a's later (so a's wins), and converge: the name of the
    conflict copy of b's version, Unreal on a, Real on b (moved aside)."""
    a.write(name, b"a's\n", mtime_s=at_s + 100)
    b.write(name, b"b's\n", mtime_s=at_s)
    a.publish()
    b.publish()
    converge(a, b)
    (copy,) = copies(a.view())
    assert a.layer(copy) == Layer.UNREAL and b.layer(copy) == Layer.REAL
    return copy


def test_a_remote_edit_of_a_clean_real_file_makes_it_unreal_with_the_new_version(
    sides: tuple[Side, Side],
) -> None:
    a, b = sides
    a.write("report.txt", b"first draft\n")
    a.publish()
    b.pull(a)
    assert b.layer(b"report.txt") == Layer.UNREAL
    fid_before = a.tree.fid_of_path(a.area, b"report.txt")

    b.write("report.txt", b"second draft, longer\n")  # B now holds it Real, edited
    b.publish()
    a.pull(b)

    entry = a.tree.index.get(a.area, b"report.txt")
    assert entry is not None and entry.layer == Layer.UNREAL
    assert (entry.size, entry.blob) == (21, blob(b"second draft, longer\n"))
    assert not (a.dir / "report.txt").exists()  # the outdated bytes are gone
    assert a.tree.fid_of_path(a.area, b"report.txt") == fid_before  # the handle stays
    assert a.view() == b.view()
    assert not copies(a.view())
    high = a.tree.journal.history.high(a.area)
    a.publish()  # the journal sees nothing to publish: no echo, no resurrection
    assert a.tree.journal.history.high(a.area) == high
    assert a.view() == b.view()


def test_a_remote_delete_removes_the_real_file_and_the_emptied_directory(
    sides: tuple[Side, Side],
) -> None:
    a, b = sides
    a.write("d/note.txt", b"note\n")
    a.write("keep.txt", b"kept\n")
    a.publish()
    b.pull(a)

    async def delete_on_b() -> None:
        d = b.tree.fid_of_path(b.area, b"d")
        await b.tree.remove(d, b"note.txt")
        await b.tree.rmdir(b.tree.area_root(b.area), b"d")

    trio.run(delete_on_b)
    a.pull(b)
    assert not (a.dir / "d").exists()
    assert (a.dir / "keep.txt").read_bytes() == b"kept\n"
    assert a.view() == b.view() == {b"keep.txt": (5, blob(b"kept\n"))}
    a.publish()
    b.pull(a)
    assert a.view() == b.view()  # nothing came back


def test_a_remote_rename_moves_the_real_file_as_one(sides: tuple[Side, Side]) -> None:
    a, b = sides
    a.write("old.txt", b"content that moves\n")
    a.publish()
    b.pull(a)
    inode = (a.dir / "old.txt").stat().st_ino

    async def rename_on_b() -> None:
        root = b.tree.area_root(b.area)
        await b.tree.rename(root, b"old.txt", root, b"new.txt")

    trio.run(rename_on_b)
    b.exchange.stamp_pending(b.area)
    a.pull(b)
    assert not (a.dir / "old.txt").exists()
    assert (a.dir / "new.txt").stat().st_ino == inode  # moved, not fetched again
    assert a.layer(b"new.txt") == Layer.REAL
    assert a.view() == b.view()


def test_an_unpublished_local_edit_and_a_remote_one_end_as_the_same_conflict(
    sides: tuple[Side, Side],
) -> None:
    a, b = sides
    a.write("plan.txt", b"v1\n", mtime_s=1_000_000)
    a.publish()
    b.pull(a)
    # A edits its Real file; before it is hashed and published, B's edit arrives.
    a.write("plan.txt", b"v2 from a\n", mtime_s=1_000_200)
    b.write("plan.txt", b"v2 from b, later\n", mtime_s=1_000_300)
    b.publish()
    a.pull(b)
    assert (a.dir / "plan.txt").read_bytes() == b"v2 from a\n"  # never overwritten
    a.publish()  # A's edit published after B's was applied: still concurrent with it
    converge(a, b)

    assert a.view() == b.view()
    view = a.view()
    assert view[b"plan.txt"] == (17, blob(b"v2 from b, later\n"))  # the later mtime keeps it
    assert list(copies(view).values()) == [(10, blob(b"v2 from a\n"))]
    (name,) = copies(view)
    # A's losing edit is kept Real under its conflict name, its bytes never re-fetched.
    assert (a.dir / os.fsdecode(name)).read_bytes() == b"v2 from a\n"
    assert a.layer(name) == Layer.REAL and b.layer(name) == Layer.UNREAL


def test_a_published_local_edit_against_a_remote_one_keeps_both_alike(
    sides: tuple[Side, Side],
) -> None:
    a, b = sides
    a.write("same.txt", b"mine\n", mtime_s=2_000_000)
    b.write("same.txt", b"theirs, written later\n", mtime_s=2_000_100)
    a.publish()
    b.publish()
    converge(a, b)
    assert a.view() == b.view()
    assert a.view()[b"same.txt"][1] == blob(b"theirs, written later\n")
    (name,) = copies(a.view())
    assert a.view()[name][1] == blob(b"mine\n")
    assert (a.dir / os.fsdecode(name)).read_bytes() == b"mine\n"
    assert (b.dir / "same.txt").read_bytes() == b"theirs, written later\n"


def test_conflict_copies_are_pinned_and_a_delete_resolves_them_everywhere(
    sides: tuple[Side, Side],
) -> None:
    a, b = sides
    name = b_loses(a, b, "c.txt", 3_000_000)
    blobs = a.tree.blobs
    assert blobs is not None
    loser = blob(b"b's\n")
    blobs.ingest(b"b's\n")  # as a read of the copy fetches it
    a.exchange.stamp_pending(a.area)
    manifest = blobs.manifest(loser)
    assert manifest is not None and manifest.pinned  # kept while the conflict stands

    async def delete_copy_on_a() -> None:
        await a.tree.remove(a.tree.area_root(a.area), name)

    trio.run(delete_copy_on_a)
    a.exchange.stamp_pending(a.area)
    manifest = blobs.manifest(loser)
    assert manifest is not None and not manifest.pinned  # resolved: evictable again
    b.pull(a)
    assert not copies(b.view()) and not (b.dir / os.fsdecode(name)).exists()
    assert a.view() == b.view() == {b"c.txt": (4, blob(b"a's\n"))}
    assert (b.dir / "c.txt").exists() is False  # b shows a's version, Unreal
    assert b.layer(b"c.txt") == Layer.UNREAL


def test_a_crash_between_the_index_and_the_disk_is_finished_at_start(
    sides: tuple[Side, Side], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = sides
    a.write("f.txt", b"old\n")
    a.publish()
    b.pull(a)
    b.write("f.txt", b"new, from b\n")
    b.publish()

    def die(self: Landing, acts: list) -> list:
        raise KeyboardInterrupt  # the process ends after the synced batch, before the disk

    monkeypatch.setattr(Landing, "carry_out", die)
    with pytest.raises(KeyboardInterrupt):
        a.pull(b)
    monkeypatch.undo()
    assert (a.dir / "f.txt").exists()  # the disk is behind the index
    assert a.layer(b"f.txt") == Layer.UNREAL
    a.close()
    a.open()  # the restart: recovery runs before the journal scans
    assert not (a.dir / "f.txt").exists()
    high = a.tree.journal.history.high(a.area)
    a.publish()
    assert a.tree.journal.history.high(a.area) == high  # the old bytes never republished
    a.pull(b)
    assert a.view() == b.view()


def rename(side: Side, old: bytes, new: bytes) -> None:
    async def go() -> None:
        old_dir, old_name = old.rpartition(b"/")[::2]
        new_dir, new_name = new.rpartition(b"/")[::2]
        src = side.tree.fid_of_path(side.area, old_dir)
        dst = side.tree.fid_of_path(side.area, new_dir)
        await side.tree.rename(src, old_name, dst, new_name)

    trio.run(go)
    side.exchange.stamp_pending(side.area)


def test_a_rename_in_a_delta_moves_as_one_where_its_preconditions_hold(
    sides: tuple[Side, Side], monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = sides
    a.write("sub/one.txt", b"one\n")
    a.write("two.txt", b"two\n")
    a.publish()
    converge(a, b)  # both subscribed: what follows comes as deltas
    inode = (a.dir / "sub/one.txt").stat().st_ino
    moves: list[bool] = []
    plan = xchg.plan_rename

    def spy(*args: Any) -> Any:
        moves.append(plan(*args).move)
        return plan(*args)

    monkeypatch.setattr(xchg, "plan_rename", spy)
    rename(b, b"sub/one.txt", b"moved.txt")
    a.pull(b)
    assert moves == [True]
    assert (a.dir / "moved.txt").stat().st_ino == inode
    assert not (a.dir / "sub/one.txt").exists()
    assert a.view() == b.view()


def test_a_rename_against_an_unpublished_local_edit_loses_nothing(
    sides: tuple[Side, Side],
) -> None:
    a, b = sides
    a.write("f.txt", b"f1\n")
    a.publish()
    converge(a, b)
    a.write("f.txt", b"f1, edited on a\n")  # not yet hashed when b's rename arrives
    rename(b, b"f.txt", b"g.txt")
    a.pull(b)
    assert (a.dir / "f.txt").read_bytes() == b"f1, edited on a\n"
    a.publish()
    converge(a, b)
    assert a.view() == b.view()
    view = a.view()
    assert view[b"f.txt"] == (16, blob(b"f1, edited on a\n"))  # the edit beats the tombstone
    assert view[b"g.txt"] == (3, blob(b"f1\n"))  # and the rename's content is there too
    assert not copies(view)


def test_renaming_a_conflict_copy_resolves_it_and_keeps_its_content(
    sides: tuple[Side, Side],
) -> None:
    a, b = sides
    a.write("r.txt", b"a wins\n", mtime_s=4_000_100)
    b.write("r.txt", b"b loses\n", mtime_s=4_000_000)
    a.publish()
    b.publish()
    converge(a, b)
    (name,) = copies(b.view())
    assert b.layer(name) == Layer.REAL  # b's own loser, moved aside
    rename(b, name, b"r-from-b.txt")
    converge(a, b)
    assert a.view() == b.view()
    assert not copies(a.view())
    assert a.view()[b"r-from-b.txt"] == (8, blob(b"b loses\n"))
    assert (b.dir / "r-from-b.txt").read_bytes() == b"b loses\n"
    assert a.view()[b"r.txt"] == (7, blob(b"a wins\n"))


def test_a_directory_rename_moves_its_whole_subtree_on_the_other_peer(
    sides: tuple[Side, Side],
) -> None:
    a, b = sides
    a.write("proj/a.txt", b"a\n")
    a.write("proj/deep/b.txt", b"bb\n")
    a.publish()
    converge(a, b)
    inode = (a.dir / "proj/deep/b.txt").stat().st_ino
    rename(b, b"proj", b"work")
    a.pull(b)
    assert not (a.dir / "proj").exists()
    assert (a.dir / "work/deep/b.txt").stat().st_ino == inode  # moved as one, not fetched
    assert a.layer(b"work/a.txt") == Layer.REAL
    assert a.view() == b.view()
    assert set(a.view()) == {b"work", b"work/a.txt", b"work/deep", b"work/deep/b.txt"}
    high = a.tree.journal.history.high(a.area)
    a.publish()
    assert a.tree.journal.history.high(a.area) == high  # nothing to publish back


def test_a_create_concurrent_with_a_directory_rename_is_not_lost(
    sides: tuple[Side, Side],
) -> None:
    a, b = sides
    a.write("proj/a.txt", b"a\n")
    a.publish()
    converge(a, b)
    a.write("proj/new.txt", b"made on a meanwhile\n")  # b does not know it yet
    a.publish()
    rename(b, b"proj", b"work")
    converge(a, b)
    assert a.view() == b.view()
    view = a.view()
    assert view[b"work/a.txt"] == (2, blob(b"a\n"))
    assert view[b"proj/new.txt"] == (20, blob(b"made on a meanwhile\n"))
    assert (a.dir / "proj/new.txt").read_bytes() == b"made on a meanwhile\n"


def test_a_file_made_here_but_not_yet_indexed_is_never_overwritten_by_a_peers_create(
    sides: tuple[Side, Side],
) -> None:
    a, b = sides
    a.publish()
    converge(a, b)
    a.write("new.txt", b"made on a, not scanned yet\n", mtime_s=5_000_000)
    b.write("new.txt", b"made on b\n", mtime_s=5_000_100)
    b.publish()
    a.pull(b)
    assert a.layer(b"new.txt") is None  # neither shown Unreal over a's file nor taken
    assert (a.dir / "new.txt").read_bytes() == b"made on a, not scanned yet\n"
    a.publish()
    converge(a, b)
    assert a.view() == b.view()
    assert a.view()[b"new.txt"] == (10, blob(b"made on b\n"))
    assert list(copies(a.view()).values()) == [(27, blob(b"made on a, not scanned yet\n"))]


def test_an_edit_beats_a_concurrent_delete_of_the_real_file(sides: tuple[Side, Side]) -> None:
    a, b = sides
    a.write("f.txt", b"v1\n")
    a.publish()
    converge(a, b)

    async def delete_on_a() -> None:
        await a.tree.remove(a.tree.area_root(a.area), b"f.txt")

    trio.run(delete_on_a)
    a.exchange.stamp_pending(a.area)
    b.write("f.txt", b"v2, edited on b while a deleted it\n")  # b did not hear of the delete
    b.publish()
    converge(a, b)
    assert a.view() == b.view() == {b"f.txt": (35, blob(b"v2, edited on b while a deleted it\n"))}
    assert (b.dir / "f.txt").exists() and b.layer(b"f.txt") == Layer.REAL
    assert a.layer(b"f.txt") == Layer.UNREAL


def test_the_same_bytes_created_on_both_peers_are_one_file(sides: tuple[Side, Side]) -> None:
    a, b = sides
    a.write("same.bin", b"identical\n", mtime_s=6_000_000)
    b.write("same.bin", b"identical\n", mtime_s=6_000_050)
    a.publish()
    b.publish()
    converge(a, b)
    assert a.view() == b.view()
    assert not copies(a.view())
    assert a.layer(b"same.bin") == b.layer(b"same.bin") == Layer.REAL  # neither is dropped


@pytest.mark.parametrize("page", [2, 1000])
def test_a_directory_rename_split_over_pages_or_met_in_a_catch_up_converges(
    sides: tuple[Side, Side], page: int
) -> None:
    a, b = sides
    for i in range(5):
        a.write(f"big/f{i}.txt", b"file %d\n" % i)
    a.publish()
    b.pull(a)  # b has never been pulled from by a: a's first pull of b is a catch-up
    rename(b, b"big", b"moved")
    a.pull(b, page)
    converge(a, b)
    assert a.view() == b.view()
    assert sorted(a.view()) == [b"moved", *(b"moved/f%d.txt" % i for i in range(5))]
    assert not (a.dir / "big").exists()


def test_a_directory_rename_moves_as_one_only_if_every_path_below_moves_unchanged(
    tmp_path: Path,
) -> None:
    """b holds `d` Real (a file of its own in it) and a's older `d/g0` Unreal; a edits
    `d/g0` and renames `d` to `e`, while c edits `d/g0` too. Moving b's `d` as one would take
    b's stale `d/g0` to `e/g0` (and drop c's edit, which outlives the rename's tombstone):
    every peer must show a's edit at `e/g0` and c's at `d/g0`."""
    a, b, c = (Side(tmp_path / name) for name in "abc")
    try:
        a.write("d/g0", b"first\n")
        a.publish()
        b.write("d/g1", b"b's own\n")
        b.publish()
        for side, other in ((b, a), (c, a), (a, b), (c, b)):
            side.pull(other)
        c.write("d/g0", b"c's edit\n")
        c.publish()
        a.write("d/g0", b"a's edit\n")
        a.publish()
        rename(a, b"d", b"e")
        for _ in range(3):
            for side in (a, b, c):
                for other in (a, b, c):
                    if other is not side:
                        side.pull(other)
        assert a.view() == b.view() == c.view()
        view = b.view()
        for path, data in (
            (b"e/g0", b"a's edit\n"),
            (b"d/g0", b"c's edit\n"),
            (b"e/g1", b"b's own\n"),
        ):
            assert view[path] == (len(data), blob(data)), path
    finally:
        for side in (a, b, c):
            side.close()


def test_a_directory_listing_files_of_other_peers_is_not_empty_on_this_disks_word(
    sides: tuple[Side, Side],
) -> None:
    """b's `d` is Real but holds only a's file, Unreal: RMDIR of it, or a RENAME of a
    directory over it, is NOTEMPTY (the disk's empty directory would go, and a's file
    with it, without a delete any peer hears of)."""
    a, b = sides
    a.write("d/theirs.txt", b"a's\n")
    a.publish()
    b.write("d/mine.txt", b"b's\n")
    b.write("other/x.txt", b"x\n")
    b.publish()
    converge(a, b)
    (b.dir / "d/mine.txt").unlink()
    b.publish()
    assert b.layer(b"d") == Layer.REAL and b.layer(b"d/theirs.txt") == Layer.UNREAL

    async def refused() -> list[nfsstat3]:
        got = []
        root = b.tree.fid_of_path(b.area, b"")
        for attempt in (b.tree.rmdir(root, b"d"), b.tree.rename(root, b"other", root, b"d")):
            try:
                await attempt
                got.append(nfsstat3.NFS3_OK)
            except FsError as e:
                got.append(e.status)
        return got

    assert trio.run(refused) == [nfsstat3.NFS3ERR_NOTEMPTY, nfsstat3.NFS3ERR_NOTEMPTY]
    converge(a, b)
    assert a.view() == b.view() and b"d/theirs.txt" in a.view()


def test_a_history_entry_names_the_content_its_edit_started_from(
    tmp_path: Path,
) -> None:
    """An edit's entry names its base (the blob it replaced where it was made), an editor's
    unlink and re-create too, a relay passes it on, and a catch-up names none. The receiver
    offers that base to its bases first (nfsd/vfs/bases.py), before the old content of the
    path here, which may be another version."""
    a, b, c = (Side(tmp_path / name) for name in "abc")
    try:
        old, edited, saved = b"first draft\n", b"second draft\n", b"third draft, saved anew\n"
        a.write("r.txt", old)
        a.publish()
        b.pull(a)
        c.pull(b)
        a.write("r.txt", edited)
        a.publish()
        (a.dir / "r.txt").unlink()  # an editor's save: unlink, write anew, in the grace
        a.publish()
        a.write("r.txt", saved)
        a.publish()
        a.exchange.stamp_pending(a.area)

        def served(by: Side, to: Side) -> list[tuple[bytes, bytes, bytes]]:
            res = by.exchange.serve(to.id, to.exchange.request(by.id, AREA, 1000))
            return [(e.path, bytes(e.base), Version.decode(e.version).content)
                    for e in res.entries]  # fmt: skip

        assert served(a, b) == [(b"r.txt", blob(old), blob(edited)),
                                (b"r.txt", blob(edited), blob(saved))]  # fmt: skip
        noted: list[tuple[bytes, bytes]] = []
        b.exchange.replaced = lambda new, base: noted.append((new, base))
        b.pull(a)
        assert noted[0] == (blob(saved), blob(edited)), "the named base comes first"
        assert (blob(saved), blob(old)) in noted  # and then what b showed there
        assert [base for _, base, _ in served(b, c)] == [blob(old), blob(edited)]
        fresh = Side(tmp_path / "fresh")
        try:
            assert [base for _, base, _ in served(a, fresh)] == [b""]  # a catch-up
        finally:
            fresh.close()
    finally:
        for side in (a, b, c):
            side.close()


def test_a_file_written_over_an_unreal_entry_is_not_indexed_with_the_peers_blob(
    sides: tuple[Side, Side],
) -> None:
    """Found by the randomized household run: b's user writes a file of other bytes where b
    shows a's file Unreal, then renames it before it is hashed. The reconcile must not keep
    a's blob for those bytes (the rename would publish a's content under the new name, and
    the index would never hash the file again): until hashed, the entry names no blob."""
    a, b = sides
    a.write("f0", b"a's file\n")
    a.publish()
    b.pull(a)
    assert b.layer(b"f0") == Layer.UNREAL
    b.write("f0", b"b's other bytes, longer\n")

    async def reconcile() -> None:
        await b.tree.journal.scan(b.area, b.tree.hidden)

    trio.run(reconcile)
    entry = b.tree.index.get(b.area, b"f0")
    assert entry is not None and entry.layer == Layer.REAL
    assert entry.blob == b"", "the peer's blob kept for other bytes"
    trio.run(b.tree.journal.settle, [(b.area, b"f0")])  # hashed once it rests
    assert b.view()[b"f0"] == (24, blob(b"b's other bytes, longer\n"))


def held_loser_made_a_copy(a: Side, b: Side) -> None:
    """b's p.txt loses to a's while b's user is writing it (held Real, not moved aside: the
    bytes of b's version are gone); a then deletes the path, which makes b's version a file
    under its copy's name."""
    a.write("p.txt", b"a's version\n", mtime_s=4_000_100)  # a's wins: the later mtime
    b.write("p.txt", b"b's version\n", mtime_s=4_000_000)
    a.publish()
    b.publish()
    b.write("p.txt", b"b's user writes on\n")  # not hashed yet
    converge(a, b)
    assert (b.dir / "p.txt").read_bytes() == b"b's user writes on\n"  # held, never replaced
    (name,) = copies(a.view())
    (a.dir / "p.txt").unlink()
    a.publish()  # a's delete: the copy a file of its own
    converge(a, b)
    assert name in a.view() and name in b.view()


def test_a_losing_file_its_user_overwrote_takes_its_copy_made_a_file_with_it(
    sides: tuple[Side, Side],
) -> None:
    """Seed 29616 of the randomized household run: b's file loses to a's while b's user is
    overwriting it (held Real, not moved aside: the bytes of b's version are gone); a then
    deletes the path, which makes b's version a file under its copy's name. b's edit, once
    published, is of the version that copy shows: it takes the copy with it, or the copy
    would show on every peer with no one holding its bytes."""
    a, b = sides
    held_loser_made_a_copy(a, b)
    b.publish()
    converge(a, b)
    assert a.view() == b.view() == {b"p.txt": (19, blob(b"b's user writes on\n"))}


def test_a_losing_file_its_user_renamed_another_over_takes_its_copy_made_a_file_with_it(
    sides: tuple[Side, Side],
) -> None:
    """As above, but b's user renames another file over the held one (seed 33572 of the
    long randomized run): the rename is of the version the copy shows as well, and takes the
    copy with it."""
    a, b = sides
    b.write("q.txt", b"b's other file\n")
    b.publish()
    held_loser_made_a_copy(a, b)
    rename(b, b"q.txt", b"p.txt")
    b.publish()
    converge(a, b)
    assert a.view() == b.view() == {b"p.txt": (15, blob(b"b's other file\n"))}


def test_a_copy_whose_version_wins_its_path_back_while_its_user_writes_there_keeps_its_file(
    sides: tuple[Side, Side],
) -> None:
    """Seed 19158 of the long randomized run: b's version loses to a's and moves aside,
    Real, under its copy's name; b's user writes a new file at the path; then a's delete,
    made before a heard of b's version, gives the path back to b's version. The new file
    stands in the way of the move back, and the copy's file holds the only bytes of that
    version: it stays, and is a file of its own once b's new file is published."""
    a, b = sides
    a.write("c.txt", b"a's\n", mtime_s=6_000_100)  # a's wins: the later mtime
    b.write("c.txt", b"b's\n", mtime_s=6_000_000)
    a.publish()
    b.publish()
    b.pull(a)  # a's version: b's moves aside
    (name,) = copies(b.view())
    assert b.layer(name) == Layer.REAL
    (a.dir / "c.txt").unlink()
    a.publish()  # a's delete, of a's version alone: a never heard of b's
    b.write("c.txt", b"b's user writes a new one\n")  # not hashed yet
    b.pull(a)  # a's delete: b's version wins the path back
    assert (b.dir / os.fsdecode(name)).read_bytes() == b"b's\n"
    assert (b.dir / "c.txt").read_bytes() == b"b's user writes a new one\n"
    b.publish()
    converge(a, b)
    assert a.view() == b.view()
    assert a.view()[b"c.txt"] == (26, blob(b"b's user writes a new one\n"))
    held = {e.blob for side in (a, b) for _, e in side.tree.index.walk(side.area)
            if e.layer == Layer.REAL}  # fmt: skip
    assert {content for _size, content in a.view().values()} <= held  # every file has a holder


def deleted_as_its_changes_are_stamped(side: Side, path: bytes) -> None:
    """The user deletes the file; the changes recorded before are stamped while it is gone
    and the journal not told yet; then the journal records the delete."""
    (side.dir / os.fsdecode(path)).unlink()
    side.exchange.stamp_pending(side.area)
    trio.run(side.tree.journal.scan, side.area, side.tree.hidden)


def test_an_edit_stamped_after_its_file_went_is_superseded_by_the_delete_that_follows(
    sides: tuple[Side, Side],
) -> None:
    """Seed 32824 of the long randomized run: a path with a conflict copy beside it; a's
    user edits the file and deletes it at once. The edit is stamped while its file is gone
    and the journal not told yet, so the path is held on what it showed before the edit;
    the delete, stamped on that base within the same second, must still supersede the edit,
    or the edit stays the path's version with its bytes held nowhere."""
    a, b = sides
    a.write("d/g0", b"a's first\n", mtime_s=1_000_000)
    b.write("d/g0", b"b's first\n", mtime_s=999_000)  # loses: a conflict copy
    b.publish()
    a.publish()
    converge(a, b)
    (name,) = copies(a.view())
    a.write("d/g0", b"a's edit\n", mtime_s=1_000_200)
    a.publish()  # the edit is recorded, not stamped
    deleted_as_its_changes_are_stamped(a, b"d/g0")
    converge(a, b)
    assert a.view() == b.view()
    assert b"d/g0" not in a.view()
    assert a.view()[name] == (10, blob(b"b's first\n"))


def test_a_delete_stamped_on_a_base_still_supersedes_what_this_peer_made_at_the_path_since(
    sides: tuple[Side, Side],
) -> None:
    """Seed 15956 of the long randomized run: b dismisses the copy of its losing version,
    edits the path, and deletes it at once. The dismissal and the edit are stamped while the
    file is gone and the journal not told yet, so the path is held on what it showed before
    both; the delete, stamped on that base, must still supersede them, or the edit stays a
    copy whose bytes no peer holds (and the dismissed copy comes back)."""
    a, b = sides
    a.write("d/g1", b"a's, the winner\n", mtime_s=1_000_100)
    b.write("d/g1", b"b's first\n", mtime_s=1_000_000)
    a.publish()
    b.publish()
    converge(a, b)
    (name,) = copies(b.view())
    (b.dir / os.fsdecode(name)).unlink()  # b's user dismisses the copy of its version
    b.publish()
    b.write("d/g1", b"b's edit\n")  # over the winner, Unreal on b
    b.publish()  # the edit is recorded, not stamped
    deleted_as_its_changes_are_stamped(b, b"d/g1")
    converge(a, b)
    assert a.view() == b.view()
    assert not copies(a.view()), "a copy b dismissed or deleted shows"
    held = {e.blob for side in (a, b) for _, e in side.tree.index.walk(side.area)
            if e.layer == Layer.REAL}  # fmt: skip
    assert {content for _size, content in a.view().values() if content} <= held


def test_a_losing_file_its_user_deleted_takes_its_copy_made_a_file_with_it(
    sides: tuple[Side, Side],
) -> None:
    """As the two above, but b's user deletes the held file (seed 2374 of the long
    randomized run): its bytes were the only ones of the version the copy shows, and the
    delete is of that version too."""
    a, b = sides
    held_loser_made_a_copy(a, b)
    (b.dir / "p.txt").unlink()
    b.publish()
    converge(a, b)
    assert a.view() == b.view() == {}


def test_a_copy_its_holder_wrote_over_and_deleted_never_comes_back_without_its_bytes(
    sides: tuple[Side, Side],
) -> None:
    """Seed 29025 of the long randomized run: b's version loses to a's and moves aside,
    Real, under its copy's name; b's user writes over that file, then deletes it. Writing
    over the copy's file is an end of the copy, as a delete of it is: its version goes from
    the path it lost at, or a's next edit there makes it a file under a longer copy name,
    its bytes held by no peer (the short name is taken by the file b's user wrote)."""
    a, b = sides
    name = b_loses(a, b, "f0", 7_000_000)
    b.write(os.fsdecode(name), b"b's user writes over the copy\n")
    b.publish()
    converge(a, b)
    (b.dir / os.fsdecode(name)).unlink()
    b.publish()  # a hears of the delete only after its own edit
    a.write("f0", b"a's edit\n", mtime_s=7_000_300)
    a.publish()
    converge(a, b)
    assert a.view() == b.view() == {b"f0": (9, blob(b"a's edit\n"))}
