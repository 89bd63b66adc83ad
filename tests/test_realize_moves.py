"""Files moving between the layers while clients act, in-process (two servers' own
assemblies, tests/test_exchange_real.py `Side`):

- a file realized (its content fetched from a peer and written as a Real file) while a
  client renames or removes it, or while a peer's newer version arrives for it: the
  realization follows the file where it went, takes the newer version, or ends leaving
  nothing on the disk; the disk, the index and the fileid table keep saying the same thing;
- a directory listing served while a file of it is realized or moved into the cache (a
  READDIR lets other calls in between its entries): the file is listed, with its fileid."""

from __future__ import annotations

import os
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio

from nfsd.store.index import Layer
from nfsd.store.source import file_chunks
from nfsd.vfs.errors import FsError
from tests.test_exchange_real import AREA, Side, blob
from xdr import peer as wire
from xdr.nfs3 import nfsstat3

pytestmark = pytest.mark.inproc

OLD = b"the old version\n" * 50_000  # several chunks
NEW = b"the new version\n" * 40_000


class GatedSource:
    """The contents a peer holds, as a blob source whose reads wait until `gate` is set."""

    name = "gated"

    def __init__(self, base: Path) -> None:
        self.base = base
        self.contents: dict[bytes, bytes] = {}
        self.reached = threading.Event()  # a read is waiting at the gate
        self.gate = threading.Event()

    def add(self, data: bytes) -> None:
        self.contents[blob(data)] = data

    def has(self, blob_id: bytes) -> bool:
        return blob_id in self.contents

    def chunk_hashes(self, blob_id: bytes, size: int) -> list[bytes] | None:
        data = self.contents.get(blob_id)
        if data is None:
            return None
        path = self.base / blob_id.hex()
        path.write_bytes(data)
        with open(path, "rb") as f:
            return file_chunks(f.fileno())[2]

    def read_chunk(self, blob_id: bytes, offset: int, length: int) -> bytes | None:
        self.reached.set()
        assert self.gate.wait(20), "the test never opened the gate"
        data = self.contents.get(blob_id)
        return None if data is None else data[offset : offset + length]


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[tuple[Side, Side, GatedSource]]:
    """a holds `f` (OLD) Real; b lists it Unreal, its bytes to come from a gated source."""
    a, b = Side(tmp_path / "a"), Side(tmp_path / "b")
    (tmp_path / "blobs").mkdir()
    source = GatedSource(tmp_path / "blobs")
    source.add(OLD)
    assert b.tree.unreal is not None
    b.tree.unreal.sources.insert(0, source)
    a.write("f", OLD)
    a.publish()
    b.pull(a)
    assert b.layer(b"f") == Layer.UNREAL
    yield a, b, source
    source.gate.set()
    a.close()
    b.close()


def while_realizing(
    b: Side, source: GatedSource, meanwhile: Callable[[int], Awaitable[None]]
) -> FsError | None:
    """Start realizing `f` on b, run `meanwhile(root fid)` once its content is being fetched,
    then let the fetch go on; the realization's error, or None."""
    failed: list[FsError | None] = [None]

    async def body() -> None:
        root = b.tree.area_root(b.area)
        fid, _ = b.tree.lookup(root, b"f")

        async def realize() -> None:
            try:
                await b.tree.prepare_change(fid)
            except FsError as e:
                failed[0] = e

        async with trio.open_nursery() as nursery:
            nursery.start_soon(realize)
            while not source.reached.is_set():
                await trio.sleep(0.01)
            await meanwhile(root)
            source.gate.set()

    trio.run(body)
    return failed[0]


def disk(side: Side) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in side.dir.iterdir()}


def test_a_file_renamed_while_it_is_realized_is_realized_where_it_went(peers) -> None:
    _a, b, source = peers
    fid_before: list[int] = []

    async def rename(root: int) -> None:
        fid_before.append(b.tree.lookup(root, b"f")[0])
        await b.tree.rename(root, b"f", root, b"g")

    assert while_realizing(b, source, rename) is None
    assert disk(b) == {"g": OLD}
    assert b.tree.index.get(b.area, b"f") is None
    entry = b.tree.index.get(b.area, b"g")
    assert entry is not None and (entry.layer, entry.blob) == (Layer.REAL, blob(OLD))
    root = b.tree.area_root(b.area)
    assert b.tree.lookup(root, b"g")[0] == fid_before[0]  # the fileid went with it


def test_a_file_removed_while_it_is_realized_leaves_nothing(peers) -> None:
    _a, b, source = peers

    async def remove(root: int) -> None:
        await b.tree.remove(root, b"f")

    failed = while_realizing(b, source, remove)
    assert failed is not None and failed.status == nfsstat3.NFS3ERR_STALE
    assert disk(b) == {}, "the file came back, or its temporary file stayed"
    assert b.tree.index.get(b.area, b"f") is None


def test_a_newer_version_arriving_while_a_file_is_realized_is_the_one_realized(peers) -> None:
    a, b, source = peers
    source.add(NEW)
    a.write("f", NEW)
    a.publish()

    async def pull(root: int) -> None:
        async def call(procedure: int, args: object) -> object:
            if procedure == wire.PEERPROC.HISTORY:
                return a.exchange.serve(b.id, args)
            return a.exchange.acknowledge(b.id, args)

        await b.exchange.pull(a.id, AREA, call, 1000)
        entry = b.tree.index.get(b.area, b"f")
        assert entry is not None and entry.blob == blob(NEW)

    assert while_realizing(b, source, pull) is None
    assert disk(b) == {"f": NEW}
    entry = b.tree.index.get(b.area, b"f")
    assert entry is not None and (entry.layer, entry.blob) == (Layer.REAL, blob(NEW))


@pytest.mark.parametrize("move", ["realized", "moved into the cache"])
def test_a_listing_served_while_a_file_changes_layer_lists_it(peers, move: str) -> None:
    _a, b, source = peers
    source.gate.set()
    root = b.tree.area_root(b.area)
    fid, _ = b.tree.lookup(root, b"f")

    async def body() -> list[tuple[bytes, int]]:
        if move == "moved into the cache":
            await b.tree.prepare_change(fid)  # Real first
            assert b.layer(b"f") == Layer.REAL
        listed = b.tree.readdirplus(root, 0)
        seen = [next(listed)[0]]  # ".": the listing is taken
        if move == "realized":
            await b.tree.prepare_change(fid)
            assert b.layer(b"f") == Layer.REAL
        else:
            await b.tree.unrealize(fid, "test")
            assert b.layer(b"f") == Layer.UNREAL
        seen += [entry for entry, _attr in listed]
        return [(e.name, e.fileid) for e in seen]

    assert (b"f", fid) in trio.run(body)


@pytest.mark.parametrize("first", ["READDIRPLUS", "LOOKUP"])
def test_a_file_an_unrealize_left_on_the_disk_keeps_its_fileid(peers, first: str) -> None:
    """A crash between the index recording a file as Unreal and the unlink leaves its bytes
    on the disk: the old handle must keep working and the file keep its fileid, whichever
    call meets the name first."""
    _a, b, source = peers
    source.gate.set()
    root = b.tree.area_root(b.area)
    fid, _ = b.tree.lookup(root, b"f")

    async def body() -> int:
        await b.tree.prepare_change(fid)
        kept = (b.dir / "f").read_bytes(), os.stat(b.dir / "f")
        await b.tree.unrealize(fid, "test")
        data, st = kept  # what the unlink would have removed, had it run
        (b.dir / "f").write_bytes(data)
        os.utime(b.dir / "f", ns=(st.st_atime_ns, st.st_mtime_ns))
        if first == "READDIRPLUS":
            [found] = [e.fileid for e, _ in b.tree.readdirplus(root, 0) if e.name == b"f"]
        else:
            found, _ = b.tree.lookup(root, b"f")
        assert b.tree.getattr(fid).fileid == fid
        return found

    assert trio.run(body) == fid
