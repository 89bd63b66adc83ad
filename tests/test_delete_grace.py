"""A file's delete waits `delete_grace` seconds before it is published (nfsd/peer/exchange.py
`_held`): an editor's unlink + re-create is one change, and the file never vanishes on the
other peer; a delete that stays one is published once its grace is over. Two in-process
peers, changes made through the tree as NFS makes them."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from nfsd.control import ControlService
from nfsd.store.index import Layer
from nfsd.store.source import StateDirSource, import_area
from nfsd.vfs.tree import Owner
from tests.test_exchange_real import AREA, Side, blob, converge, copies
from xdr.control import ctlstat, importargs
from xdr.nfs3 import stable_how

pytestmark = pytest.mark.inproc

GRACE = 0.4


@pytest.fixture
def sides(tmp_path: Path) -> Iterator[tuple[Side, Side]]:
    a, b = Side(tmp_path / "a"), Side(tmp_path / "b")
    a.exchange.delete_grace = GRACE
    yield a, b
    a.close()
    b.close()


def remove(side: Side, name: bytes) -> None:
    async def go() -> None:
        await side.tree.remove(side.tree.area_root(side.area), name)

    trio.run(go)


def create(side: Side, name: bytes, data: bytes) -> None:
    """CREATE and WRITE through the tree; the journal hashes it once it rests."""

    async def go() -> None:
        fid, _, _ = await side.tree.create(
            side.tree.area_root(side.area), name, 0o644, Owner(0, 0), exclusive=False
        )
        await side.tree.write(fid, 0, data, stable_how.FILE_SYNC)

    trio.run(go)


def rename(side: Side, old: bytes, new: bytes) -> None:
    async def go() -> None:
        root = side.tree.area_root(side.area)
        await side.tree.rename(root, old, root, new)

    trio.run(go)


def settle(side: Side) -> None:
    """Hash what was written, as once it has rested."""
    trio.run(side.tree.journal.settle, list(side.tree.journal.dirty))


def after_the_grace() -> None:
    time.sleep(GRACE + 0.1)


def test_an_unlink_and_re_create_is_one_change_and_never_vanishes_elsewhere(
    sides: tuple[Side, Side],
) -> None:
    a, b = sides
    a.write("draft.txt", b"first\n")
    a.publish()
    b.pull(a)
    assert b.view() == {b"draft.txt": (6, blob(b"first\n"))}

    remove(a, b"draft.txt")
    a.exchange.stamp_some(a.area)  # the server stamps what is published every 0.25 s
    b.pull(a)  # within the grace: the delete is not served
    assert b.view() == {b"draft.txt": (6, blob(b"first\n"))}
    create(a, b"draft.txt", b"second version\n")
    after_the_grace()
    b.pull(a)  # the path holds a file again: the delete publishes nothing
    assert b.view() == {b"draft.txt": (6, blob(b"first\n"))}
    settle(a)
    done = b.pull(a)
    assert b.view() == {b"draft.txt": (15, blob(b"second version\n"))}
    assert (done.applied, done.conflicts) == (1, 0)  # one change, an edit of the old version
    b.publish()
    a.pull(b)
    assert a.view() == b.view()


def test_a_delete_alone_is_published_once_its_grace_is_over(sides: tuple[Side, Side]) -> None:
    a, b = sides
    a.write("gone.txt", b"bye\n")
    a.publish()
    b.pull(a)
    remove(a, b"gone.txt")
    b.pull(a)
    assert b.view() == {b"gone.txt": (4, blob(b"bye\n"))}
    after_the_grace()
    b.pull(a)
    assert b.view() == {}


def test_a_delete_holds_the_changes_after_it_in_their_order(sides: tuple[Side, Side]) -> None:
    """Publication order is sequence order: a rename made after the delete waits with it."""
    a, b = sides
    a.write("x.txt", b"x\n")
    a.write("y.txt", b"y\n")
    a.publish()
    b.pull(a)
    remove(a, b"x.txt")
    rename(a, b"y.txt", b"z.txt")
    b.pull(a)
    assert set(b.view()) == {b"x.txt", b"y.txt"}
    after_the_grace()
    b.pull(a)
    assert b.view() == {b"z.txt": (2, blob(b"y\n"))}


def test_a_file_made_again_then_deleted_before_it_was_hashed_is_deleted_elsewhere(
    sides: tuple[Side, Side],
) -> None:
    a, b = sides
    a.write("tmp.txt", b"old\n")
    a.publish()
    b.pull(a)
    remove(a, b"tmp.txt")
    create(a, b"tmp.txt", b"never hashed\n")
    after_the_grace()
    b.pull(a)  # the first delete found the path holding a file: dropped
    assert set(b.view()) == {b"tmp.txt"}
    remove(a, b"tmp.txt")  # the file peers never saw goes: its delete stands for the old
    after_the_grace()
    b.pull(a)
    assert b.view() == {}


def test_a_file_made_again_then_renamed_before_it_was_hashed_leaves_no_old_copy(
    sides: tuple[Side, Side],
) -> None:
    a, b = sides
    a.write("f.txt", b"old\n")
    a.publish()
    b.pull(a)
    remove(a, b"f.txt")
    create(a, b"f.txt", b"new content\n")
    after_the_grace()
    b.pull(a)
    rename(a, b"f.txt", b"g.txt")
    settle(a)
    after_the_grace()
    b.pull(a)
    assert b.view() == {b"g.txt": (12, blob(b"new content\n"))}


def test_a_peers_page_stamps_a_delete_still_in_its_grace_first(sides: tuple[Side, Side]) -> None:
    """A delete made here before a peer's edit arrived is decided before that edit: the
    edit is concurrent with it and wins (an edit beats a concurrent delete)."""
    a, b = sides
    a.write("shared.txt", b"v1\n")
    a.publish()
    b.pull(a)
    remove(a, b"shared.txt")  # on a, in its grace
    b.write("shared.txt", b"v2 from b\n")
    b.publish()
    a.pull(b)
    after_the_grace()
    b.pull(a)
    assert a.view() == b.view() == {b"shared.txt": (10, blob(b"v2 from b\n"))}


def test_a_copy_deleted_as_an_edit_of_its_path_makes_it_a_file_goes_everywhere(
    sides: tuple[Side, Side],
) -> None:
    """b's losing file kept Real under its copy's name; b edits the path (which makes the
    copy a file of its own) and deletes the copy before the edit is stamped. Stamping the
    edit shows the copy's name, its file gone, as the copy's version, Unreal; the delete,
    stamped once its grace is over, takes that away too: the copy is gone here as on a
    (seed 47670 of the randomized household run)."""
    a, b = sides
    b.exchange.delete_grace = GRACE
    a.write("c.txt", b"a's\n", mtime_s=3_000_100)  # a's wins: the later mtime
    b.write("c.txt", b"b's\n", mtime_s=3_000_000)
    a.publish()
    b.publish()
    converge(a, b)
    (name,) = copies(b.view())
    assert b.layer(name) == Layer.REAL
    create(b, b"c.txt", b"b's edit of a's\n")
    settle(b)  # the edit is in b's log, not stamped yet
    remove(b, name)  # in its grace
    b.exchange.stamp_some(b.area)  # the edit: the copy a file of its own, shown Unreal
    after_the_grace()
    b.exchange.stamp_some(b.area)
    assert b.view() == {b"c.txt": (16, blob(b"b's edit of a's\n"))}
    a.pull(b)
    assert a.view() == b.view()


def deleted_where_a_source_has_it(a: Side, b: Side, tmp_path: Path, own: bytes) -> Path:
    """a's s.bin (`own`), published to b, then removed through the tree (its delete in its
    grace); a source state directory holds an s.bin of its own: its path is returned."""
    a.write("s.bin", own)
    a.publish()
    b.pull(a)
    source = Side(tmp_path / "source")
    source.write("s.bin", b"the source's\n")
    source.publish()
    source.close()
    remove(a, b"s.bin")
    return tmp_path / "source" / "state"


def test_a_file_imported_again_in_its_deletes_grace_stays(
    sides: tuple[Side, Side], tmp_path: Path
) -> None:
    """a deletes a file, then `realize import` brings the path back from a source as an
    Unreal file before the delete is stamped. The delete still reaches b, but the stamp leaves
    a's imported file alone: the history never showed it (found by the SIGKILL rounds of
    test_crash.py, where a READ of such a file answered STALE)."""
    a, b = sides
    source_state = deleted_where_a_source_has_it(a, b, tmp_path, b"a's own\n")
    opened = StateDirSource(source_state)
    try:
        root = a.tree.areas[a.area].path
        report = import_area(a.tree.store, a.tree.blobs, a.area, root, opened, AREA)
    finally:
        opened.close()
    a.tree.index_changed()
    assert report.files == 1
    after_the_grace()
    b.pull(a)
    assert b.view() == {}
    assert a.view() == {b"s.bin": (13, blob(b"the source's\n"))}
    assert a.layer(b"s.bin") == Layer.UNREAL
    a.tree.lookup(a.tree.area_root(a.area), b"s.bin")  # there: neither gone nor STALE


def test_a_file_imported_again_with_the_content_its_delete_removed_stays(
    sides: tuple[Side, Side], tmp_path: Path
) -> None:
    """As above, with the very content the delete removed, through the running server's
    `realize import` (the SIGKILL rounds of test_crash.py: a file renamed onto a source's
    name, removed, and imported again read STALE, and the next import brought it once more).
    Stamped after the entry, the delete took the entry for the version it supersedes."""
    a, b = sides
    source_state = deleted_where_a_source_has_it(a, b, tmp_path, b"the source's\n")
    control = a.inproc.server.control
    args = importargs(AREA.encode(), os.fsencode(source_state))
    report = trio.run(control.import_, None, args)
    assert (report.status, report.files) == (ctlstat.OK, 1)
    after_the_grace()
    b.pull(a)
    assert b.view() == {}
    assert a.view() == {b"s.bin": (13, blob(b"the source's\n"))}
    assert a.layer(b"s.bin") == Layer.UNREAL
    a.tree.lookup(a.tree.area_root(a.area), b"s.bin")


def test_an_import_with_no_server_leaves_a_path_whose_delete_waits_and_says_so(
    sides: tuple[Side, Side], tmp_path: Path
) -> None:
    """`realize import` while the server is stopped (the control program on the store, no
    peer service) right after a delete it had no time to stamp: there is nobody to stamp the
    delete first, and stamped at the next start it would take the entry away. The path is
    refused with the reason, and an import beside the running server brings it."""
    a, b = sides
    source_state = deleted_where_a_source_has_it(a, b, tmp_path, b"the source's\n")
    args = importargs(AREA.encode(), os.fsencode(source_state))
    offline = ControlService(a.tree, a.tree.blobs)  # as `realize import` with no server
    report = trio.run(offline.import_, None, args)
    assert (report.status, report.files, report.refused) == (ctlstat.OK, 0, 1)
    assert b"waits for the server to publish it" in report.refusals[0]
    assert a.view() == {}
    report = trio.run(a.inproc.server.control.import_, None, args)
    assert (report.status, report.files) == (ctlstat.OK, 1)
    after_the_grace()
    b.pull(a)
    assert b.view() == {} and a.view() == {b"s.bin": (13, blob(b"the source's\n"))}


def test_a_clean_stop_stamps_a_delete_still_in_its_grace(sides: tuple[Side, Side]) -> None:
    """With the server stopped nobody stamps: a delete left waiting would make `realize
    import` refuse its path (the SIGKILL rounds of test_crash.py stop a server a moment after
    its start, before its announcer looked at what the last run left)."""
    a, b = sides
    a.write("f.txt", b"soon gone\n")
    a.publish()
    b.pull(a)
    remove(a, b"f.txt")
    assert not a.exchange.all_stamped(a.area)  # in its grace
    a.inproc.server.stamp_before_stopping()  # what SIGTERM runs before the server ends
    assert a.exchange.all_stamped(a.area)
    b.pull(a)
    assert b.view() == {}
