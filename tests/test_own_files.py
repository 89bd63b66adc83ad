"""An Unreal entry whose content a Real file of this very peer holds under another name is read
from that file (nfsd/peer/fetch.py `OwnFiles`), checked as a peer's FETCH is: a conflict
copy of a version its own user has since renamed to another path, or a file a peer copied,
reads with every other peer gone. In-process, two peers' assemblies (tests/test_exchange_real.py
`Side`), no link between them."""

from __future__ import annotations

import os

import pytest
import trio

from nfsd.peer import source as peer_source
from nfsd.peer.fetch import ChunkServer, OwnFiles
from nfsd.store.index import Layer
from nfsd.vfs.errors import FsError
from tests.test_exchange_real import Side, blob, sides  # noqa: F401 (sides is a fixture)
from xdr.nfs3 import nfsstat3
from xdr.peer import FETCH_CHUNK_SIZE

pytestmark = pytest.mark.inproc


def read_whole(side: Side, name: bytes, size: int) -> bytes:
    async def read() -> bytes:
        with trio.fail_after(60):  # a source waiting for a link that never comes fails here
            got = await side.tree.read(side.tree.fid_of_path(side.area, name), 0, size + 1)
        assert got.eof
        return bytes(got.data)

    return trio.run(read)


@pytest.fixture(autouse=True)
def no_peer_comes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The peers' source gives up at once: no link will come up in these tests."""
    monkeypatch.setattr(peer_source, "NO_PEER_GRACE", 0.0)


def test_an_unreal_file_whose_content_a_real_file_here_holds_reads_with_no_peer(
    sides: tuple[Side, Side],  # noqa: F811
) -> None:
    a, b = sides
    data = os.urandom(3 * FETCH_CHUNK_SIZE + 1234)  # several chunks, a short last one
    a.write("kept/orig.bin", data)
    a.publish()
    b.write("copy.bin", data)  # b's user made the same content under another name
    b.publish()
    a.pull(b)
    assert a.layer(b"copy.bin") == Layer.UNREAL
    assert a.layer(b"kept/orig.bin") == Layer.REAL

    assert read_whole(a, b"copy.bin", len(data)) == data
    assert a.tree.unreal is not None
    assert not a.tree.unreal.blobs.missing(blob(data))  # in the cache now, verified
    assert (a.dir / "kept" / "orig.bin").read_bytes() == data  # the Real file is untouched


def test_a_real_file_changed_since_it_was_indexed_is_not_read_for_another_entry(
    sides: tuple[Side, Side],  # noqa: F811
) -> None:
    a, b = sides
    data = os.urandom(2 * FETCH_CHUNK_SIZE + 99)
    a.write("orig.bin", data)
    a.publish()
    b.write("copy.bin", data)
    b.publish()
    a.pull(b)
    # Changed on the disk, not indexed again yet: its bytes are not the blob's any more.
    a.write("orig.bin", os.urandom(len(data)))

    with pytest.raises(FsError) as failed:
        read_whole(a, b"copy.bin", len(data))
    assert failed.value.status == nfsstat3.NFS3ERR_IO
    assert a.tree.unreal is not None
    manifest = a.tree.unreal.blobs.manifest(blob(data))
    assert manifest is None or a.tree.unreal.blobs.missing(blob(data))  # nothing wrong kept


def test_a_peer_with_no_link_reads_its_own_copy_without_waiting_for_one(
    sides: tuple[Side, Side],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the peers' grace as it is (a fetch waits for a link that may come), a peer that
    has none scans its own files first: the read answers at once, not JUKEBOX."""
    monkeypatch.setattr(peer_source, "NO_PEER_GRACE", 600.0)
    a, b = sides
    data = os.urandom(FETCH_CHUNK_SIZE + 5)
    a.write("orig.bin", data)
    a.publish()
    b.write("copy.bin", data)
    b.publish()
    a.pull(b)
    assert read_whole(a, b"copy.bin", len(data)) == data


def test_own_files_say_cheaply_where_asking_would_find_nothing(
    sides: tuple[Side, Side],  # noqa: F811
) -> None:
    """Every cold read asks these sources before the peers' FETCH: `might_have`, on the
    event loop, spares the worker-thread hop where nothing can be found."""
    a, _ = sides
    data = os.urandom(FETCH_CHUNK_SIZE + 5)
    a.write("orig.bin", data)
    a.publish()
    assert a.tree.blobs is not None
    chunks = ChunkServer(a.tree, a.tree.blobs)
    found_before, scan = OwnFiles(chunks, walk=False), OwnFiles(chunks, walk=True)
    alone = [False]
    first = scan.only_while(lambda: alone[0])
    unknown = blob(b"content nobody here has")
    assert not found_before.might_have(blob(data))  # never found yet: no scan from this one
    assert scan.might_have(blob(data)) and scan.might_have(unknown)  # a scan may find it
    assert scan.chunk_hashes(unknown, 10) is None  # scanned, found nothing ...
    assert not scan.might_have(unknown) and not first.might_have(unknown)  # ... remembered
    assert not first.might_have(blob(data))  # a peer is connected: not asked first
    alone[0] = True
    assert first.might_have(blob(data))
    assert scan.chunk_hashes(blob(data), len(data)) is not None  # found: remembered where
    assert found_before.might_have(blob(data))
