"""The area index (entries and marks) and the per-area history, on a real RocksDB."""

from __future__ import annotations

import pytest

from nfsd.store.db import Store
from nfsd.store.history import Change, History, Op
from nfsd.store.index import AreaIndex, Entry, Kind, Layer, Mark

pytestmark = pytest.mark.inproc


def file_entry(size: int = 1, blob: bytes = b"b" * 32) -> Entry:
    return Entry(Kind.FILE, Layer.UNREAL, 0o644, size, 123, blob)


def dir_entry() -> Entry:
    return Entry(Kind.DIR, Layer.REAL, 0o755, 0, 5)


def test_entries_round_trip_list_by_directory_and_survive_reopen(tmp_path):
    store = Store(tmp_path / "db")
    index = AreaIndex(store)
    batch = store.batch()
    index.put(batch, 1, b"docs", dir_entry())
    index.put(batch, 1, b"docs/a.txt", file_entry(10))
    index.put(batch, 1, b"docs/sub", dir_entry())
    index.put(batch, 1, b"docs/sub/deep", file_entry(3))
    index.put(batch, 1, b"top", Entry(Kind.SYMLINK, Layer.REAL, 0o777, 4, 9, b"", b"docs"))
    index.put(batch, 2, b"docs", dir_entry())  # another area: never mixed in
    batch.commit()
    assert [name for name, _ in index.children(1, b"")] == [b"docs", b"top"]
    assert [name for name, _ in index.children(1, b"docs")] == [b"a.txt", b"sub"]
    assert [name for name, _ in index.children(1, b"docs/sub")] == [b"deep"]
    assert index.get(1, b"top").target == b"docs"
    store.close()
    index = AreaIndex(Store(tmp_path / "db"))
    assert index.get(1, b"docs/a.txt") == file_entry(10)
    assert sorted(p for p, _ in index.walk(1)) == [
        b"docs",
        b"docs/a.txt",
        b"docs/sub",
        b"docs/sub/deep",
        b"top",
    ]


def test_moving_a_directory_moves_everything_below_it(tmp_path):
    store = Store(tmp_path / "db")
    index = AreaIndex(store)
    batch = store.batch()
    for path, entry in [
        (b"d", dir_entry()),
        (b"d/e", dir_entry()),
        (b"d/e/f", file_entry()),
        (b"dx", file_entry()),
    ]:
        index.put(batch, 1, path, entry)
    batch.commit()
    batch = store.batch()
    index.move(batch, 1, b"d", b"n/m")
    batch.commit()
    assert index.get(1, b"d") is None and index.get(1, b"d/e/f") is None
    assert index.get(1, b"n/m/e/f") == file_entry()
    assert index.get(1, b"dx") == file_entry()  # a sibling sharing the prefix stays
    batch = store.batch()
    index.remove_tree(batch, 1, b"n/m")
    batch.commit()
    assert list(index.walk(1)) == [(b"dx", file_entry())]


def test_marks_inherit_from_the_nearest_marked_parent(tmp_path):
    store = Store(tmp_path / "db")
    index = AreaIndex(store)
    batch = store.batch()
    index.set_mark(batch, 1, b"photos", Mark.UNREAL)
    index.set_mark(batch, 1, b"photos/best", Mark.KEEP)
    batch.commit()
    assert index.mark(1, b"photos/2020/x.jpg") == Mark.UNREAL
    assert index.mark(1, b"photos/best/y.jpg") == Mark.KEEP
    assert index.mark(1, b"music/z.mp3") == Mark.REAL  # the area default
    assert index.mark(1, b"music/z.mp3", default=Mark.UNREAL) == Mark.UNREAL
    batch = store.batch()
    index.set_mark(batch, 1, b"photos/best", Mark.INHERIT)
    batch.commit()
    assert index.mark(1, b"photos/best/y.jpg") == Mark.UNREAL


def test_history_is_ordered_per_area_resumable_and_trimmed(tmp_path):
    store = Store(tmp_path / "db")
    history = History(store)
    batch = store.batch()
    history.append(batch, 1, Change(Op.CREATE, b"a", new_blob=b"1" * 32, size=5))
    history.append(batch, 2, Change(Op.MKDIR, b"x"))
    history.append(batch, 1, Change(Op.RENAME, b"a", b"b"))
    history.append(batch, 1, Change(Op.CHANGE, b"b", old_blob=b"1" * 32, new_blob=b"2" * 32))
    batch.commit()
    assert [(s, c.op) for s, c in history.since(1)] == [
        (1, Op.CREATE),
        (2, Op.RENAME),
        (3, Op.CHANGE),
    ]
    assert [c.op for _, c in history.since(1, after=2)] == [Op.CHANGE]
    assert [c.op for _, c in history.since(2)] == [Op.MKDIR]
    store.close()
    store = Store(tmp_path / "db")
    history = History(store)
    batch = store.batch()
    assert history.append(batch, 1, Change(Op.DELETE, b"b")) == 4  # numbering continues
    assert history.trim(batch, 1, 2) == 2
    batch.commit()
    changes = list(history.since(1))
    assert [s for s, _ in changes] == [3, 4]
    assert changes[0][1].old_blob == b"1" * 32 and changes[0][1].new_blob == b"2" * 32
