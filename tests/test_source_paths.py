"""An imported source is input too: a source state directory whose index was crafted to hold
paths that climb out of the area ("../x", "a/../b"), empty, "." or NUL-bearing components,
over-long names or the state directory's name. `realize import` into a running server refuses
those entries, says how many and why, and imports the rest: the good entries are listed and
readable through NFS, the bad ones are nowhere (neither in the index nor in a listing), and
nothing outside the source's area is opened. The path check's rules themselves are in the
fast tier."""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path

import blake3
import pytest

from nfsd.store.areas import AreaTable
from nfsd.store.db import Store
from nfsd.store.index import AreaIndex, Entry, Kind, Layer
from nfsd.store.paths import BadPath, check_path, path_problem, target_problem
from nfsd.store.source import StateDirSource
from nfsd.vfs.watch import Inotify
from tests.conftest import ZERO_VERF, Nfs, run_on
from tests.support.server import start_server
from tests.support.source import make_source, run_realize
from xdr.nfs3 import NFSPROC3, READDIRPLUS3args, nfs_fh3

GOOD = {"good.txt": b"good content\n", "docs/note.txt": b"a note\n"}
SECRET = b"outside the area: never to be read\n"
IN_ACCESS, IN_OPEN = 0x1, 0x20


def crafted_entries(outside_name: str) -> dict[bytes, Entry]:
    """Keys' (parent, name) -> entry: bad paths, each written so that walking the source's
    index from its root reaches it."""
    secret_blob = blake3.blake3(SECRET).digest()
    secret_file = Entry(Kind.FILE, Layer.REAL, 0o644, len(SECRET), 0, secret_blob)
    link = Entry(Kind.SYMLINK, Layer.REAL, 0o777, 1, 0, b"", b"x")
    directory = Entry(Kind.DIR, Layer.REAL, 0o755, 0, 0)
    return {
        # A name holding "/" at the root: the walk joins it into these paths.
        b"\0../" + outside_name.encode() + b"/secret.txt": secret_file,
        b"\0../../etc/shadow": link,
        b"\0a/../b": link,
        b"\0a//b": link,
        b"\0./x": link,
        b"\0a/\0b": link,
        b"\0" + b"n" * 300: link,
        b"\0.realize": directory,
        # Names of the source's real directory "docs" that are no names.
        b"docs\0..": directory,
        b"docs\0.": link,
        b"docs\0": link,
        # A good path, a bad target.
        b"\0nul-target": Entry(Kind.SYMLINK, Layer.REAL, 0o777, 3, 0, b"", b"a\0b"),
    }


def tamper(source_state: Path, area_name: str, entries: dict[bytes, Entry]) -> None:
    """Write `entries` into the source's index, under its area's id, as an attacker would."""
    store = Store(source_state / "db")
    try:
        record = AreaTable(store).get(area_name)
        assert record is not None
        batch = store.batch()
        for key, entry in entries.items():
            batch.put("entries", struct.pack(">I", record.id) + key, entry.pack())
        batch.commit()
    finally:
        store.close()


def index_paths(state: Path, area_name: str) -> dict[bytes, Layer]:
    """Every path of the area's index, with its layer."""
    store = Store(state / "db", read_only=True)
    try:
        record = AreaTable(store).get(area_name)
        assert record is not None
        return {path: entry.layer for path, entry in AreaIndex(store).walk(record.id)}
    finally:
        store.close()


async def listing(nfs: Nfs, directory: nfs_fh3) -> dict[bytes, nfs_fh3 | None]:
    """Name -> handle of every entry READDIRPLUS lists."""
    found: dict[bytes, nfs_fh3 | None] = {}
    cookie, verf = 0, ZERO_VERF
    while True:
        res = await nfs.ok(
            NFSPROC3.READDIRPLUS, READDIRPLUS3args(directory, cookie, verf, 4096, 65536)
        )
        for entry in res.reply.entries:
            found[entry.name] = entry.name_handle
            cookie = entry.cookie
        verf = res.cookieverf
        if res.reply.eof:
            return found


def test_import_refuses_bad_paths_and_keeps_the_rest(tmp_path: Path) -> None:
    source = make_source(tmp_path, GOOD)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    # make_source's area is tmp_path/source-area: "../outside" is beside it.
    tamper(source, "area", crafted_entries("outside"))

    # Ours sits deeper, so "../outside" names nothing here and is not skipped as existing.
    area, state = tmp_path / "ours" / "area", tmp_path / "ours" / "state"
    # A Real "docs" here: the source's docs/note.txt joins a Real directory's listing.
    (area / "docs").mkdir(parents=True)
    (area / "local.txt").write_bytes(b"real here\n")
    server = start_server({"area": area}, state, sources=[source])
    try:
        watch = None
        try:
            watch = Inotify()
            watch.add(os.fsencode(outside), IN_OPEN | IN_ACCESS)
        except OSError as e:
            assert e.errno == errno.ENOSYS, e  # inotify left out: the rest still holds

        done = run_realize(state, "import", "area", str(source))
        assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
        out = done.stdout
        assert "2 files" in out and "0 directories" in out, out
        assert "12 entries of the source refused" in out, out
        for reason in ("'..' component", "a NUL byte"):
            assert reason in out, out

        async def check(nfs: Nfs) -> None:
            root = await nfs.mount(b"/area")
            top = await listing(nfs, root)
            assert set(top) - {b".", b".."} == {b"local.txt", b"good.txt", b"docs"}
            docs = top[b"docs"]
            assert docs is not None
            inside = await listing(nfs, docs)
            assert set(inside) - {b".", b".."} == {b"note.txt"}
            for directory, name in ((root, b"good.txt"), (docs, b"note.txt")):
                fh = await nfs.lookup(directory, name)
                data = (await nfs.read(fh)).data
                assert data in GOOD.values()

        run_on(server.nfs_port, check)
        if watch is not None:
            opened = watch.read()
            watch.close()
            assert opened == [], f"something outside the area was opened: {opened}"
    finally:
        server.stop()

    paths = index_paths(state, "area")
    unreal = {path for path, layer in paths.items() if layer == Layer.UNREAL}
    assert unreal == {b"good.txt", b"docs/note.txt"}
    assert set(paths) <= {b"local.txt", b"docs", b"good.txt", b"docs/note.txt"}
    assert all(path_problem(path) is None for path in paths)


def test_the_source_reads_nothing_through_a_refused_path(tmp_path: Path) -> None:
    """Attached as a source (no import), a crafted index still names no file to read."""
    source = make_source(tmp_path, GOOD)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    tamper(source, "area", crafted_entries("outside"))
    attached = StateDirSource(source)
    try:
        secret_blob = blake3.blake3(SECRET).digest()
        assert not attached.has(secret_blob)
        assert attached.read_chunk(secret_blob, 0, len(SECRET)) is None
        good_blob = blake3.blake3(GOOD["good.txt"]).digest()
        assert attached.read_chunk(good_blob, 0, 4) == b"good"
    finally:
        attached.close()


@pytest.mark.inproc
@pytest.mark.parametrize(
    ("path", "problem"),
    [
        (b"../../etc/shadow", "'..' component"),
        (b"a/../b", "'..' component"),
        (b"a/..", "'..' component"),
        (b"a//b", "empty component"),
        (b"/a", "empty component"),
        (b"a/", "empty component"),
        (b"./x", "'.' component"),
        (b"a/\0b", "NUL"),
        (b"n" * 256, "longer than 255"),
        (b"a/" * 2048 + b"b", "longer than 4096 bytes"),
        (b"", "empty path"),
        (b".realize", "state directory"),
        (b"docs/.realize/db", "state directory"),
        (b"x/.realize-tmp-12", "temporary files"),
    ],
)
def test_the_path_check_refuses(path: bytes, problem: str) -> None:
    found = path_problem(path)
    assert found is not None and problem in found, found
    with pytest.raises(BadPath) as raised:
        check_path(path)
    assert raised.value.path == path and raised.value.reason == found


@pytest.mark.inproc
@pytest.mark.parametrize(
    "path",
    [
        b"a",
        b"a/b/c",
        b"...",
        b"..a",
        b".hidden",
        b"n" * 255,
        b"/".join([b"n" * 255] * 16),
        b"a b/\xff",
    ],
)
def test_the_path_check_takes(path: bytes) -> None:
    assert path_problem(path) is None
    check_path(path)


@pytest.mark.inproc
def test_a_symlink_target_is_data_but_holds_no_nul() -> None:
    assert target_problem(b"../../anywhere/at/all") is None
    assert target_problem(b"a\0b") is not None
