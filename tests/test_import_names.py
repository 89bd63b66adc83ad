"""`realize import` beside a running server (nfsd/store/source.py `import_area`): a source's
file is read and hashed in a thread while NFS calls go on, so a name a client takes
meanwhile (a CREATE, a RENAME onto it) stays the client's, and nothing is listed below a
name that is a file here. In-process: the tree's own calls, made at the moment the import
writes (its `place`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from nfsd.store.index import Kind, Layer
from nfsd.store.source import ImportReport, StateDirSource, import_area
from tests.test_delete_grace import create, rename
from tests.test_exchange_real import AREA, Side, blob

pytestmark = pytest.mark.inproc


def make_source(tmp_path: Path, files: dict[str, bytes]) -> Path:
    source = Side(tmp_path / "source")
    for name, data in files.items():
        source.write(name, data)
    source.publish()
    source.close()
    return tmp_path / "source" / "state"


def import_into(side: Side, source_state: Path, client: Callable[[], None]) -> ImportReport:
    """Import, running `client()` (a client's call) once, just before the first entry is
    written, as a running server's event loop may between the read and the write."""
    pending = [client]

    def place(put: Callable[[], bool], path: bytes) -> bool:
        while pending:
            pending.pop()()
        return put()

    opened = StateDirSource(source_state)
    try:
        root = side.tree.areas[side.area].path
        report = import_area(side.tree.store, side.tree.blobs, side.area, root, opened, AREA,
                             place)  # fmt: skip
    finally:
        opened.close()
    side.tree.index_changed()
    return report


@pytest.fixture
def side(tmp_path: Path) -> Iterator[Side]:
    made = Side(tmp_path / "a")
    yield made
    made.close()


def test_a_name_a_client_creates_while_the_import_reads_stays_the_clients(
    side: Side, tmp_path: Path
) -> None:
    source = make_source(tmp_path, {"s.bin": b"the source's\n", "t.bin": b"another\n"})

    report = import_into(side, source, lambda: create(side, b"s.bin", b"the client's own\n"))
    assert (report.files, report.skipped) == (1, 1)
    entry = side.tree.index.get(side.area, b"s.bin")
    assert entry is not None and entry.layer == Layer.REAL
    assert (side.dir / "s.bin").read_bytes() == b"the client's own\n"
    t = side.tree.index.get(side.area, b"t.bin")
    assert t is not None and (t.layer, t.blob) == (Layer.UNREAL, blob(b"another\n"))


def test_a_name_a_client_renames_onto_while_the_import_reads_stays_the_clients(
    side: Side, tmp_path: Path
) -> None:
    side.write("mine.bin", b"mine\n")
    side.publish()
    fid = side.tree.fid_of_path(side.area, b"mine.bin")
    source = make_source(tmp_path, {"s.bin": b"the source's\n"})

    report = import_into(side, source, lambda: rename(side, b"mine.bin", b"s.bin"))
    assert (report.files, report.skipped) == (0, 1)
    entry = side.tree.index.get(side.area, b"s.bin")
    assert entry is not None and (entry.layer, entry.blob) == (Layer.REAL, blob(b"mine\n"))
    assert side.tree.fid_of_path(side.area, b"s.bin") == fid  # the client's handle holds


def test_nothing_is_imported_below_a_name_that_is_a_file_here(side: Side, tmp_path: Path) -> None:
    side.write("d", b"a file here\n")
    side.publish()
    source = make_source(tmp_path, {"d/n.txt": b"below a directory there\n"})

    report = import_into(side, source, lambda: None)
    assert report.files == 0 and report.directories == 0
    assert side.tree.index.get(side.area, b"d/n.txt") is None
    entry = side.tree.index.get(side.area, b"d")
    assert entry is not None and (entry.kind, entry.layer) == (Kind.FILE, Layer.REAL)
