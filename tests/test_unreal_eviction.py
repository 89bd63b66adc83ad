"""Reads of Unreal files under cache pressure: a READ whose chunks are partly cached, and
whose missing chunks would evict the cached ones to make room, still answers with the data
instead of NFS3ERR_IO: the cached chunks it needs are used last, and what was evicted
meanwhile is fetched again."""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

from tests.conftest import Nfs, run_on
from tests.support.server import ServerProcess, start_server
from tests.support.source import make_source, run_realize

CHUNK = 256 * 1024


def serve(tmp_path: Path, files: dict[str, bytes]) -> ServerProcess:
    """A server whose area lists `files` from an attached source, with room for four chunks
    in its cache."""
    source = make_source(tmp_path, files)
    area, state = tmp_path / "area", tmp_path / "state"
    area.mkdir()
    state.mkdir()
    (state / "config.json").write_text(json.dumps({"areas": {"area": str(area)}}))
    done = run_realize(state, "import", "area", str(source))
    assert done.returncode == 0, done.stderr
    return start_server({"area": area}, state, sources=[source], extra=["--cache-max", "1M"])


def test_read_spanning_an_evicted_chunk_is_answered(tmp_path: Path) -> None:
    content = random.Random(7).randbytes(6 * CHUNK)
    server = serve(tmp_path, {"a.bin": content})

    async def body(nfs: Nfs) -> None:
        root = await nfs.mount(b"/area")
        fh = await nfs.lookup(root, b"a.bin")
        # Chunk 3 is fetched (and chunks 4 and 5 read ahead after it): 3 is now the least
        # recently used chunk in the cache.
        res = await nfs.read(fh, 3 * CHUNK, CHUNK)
        assert bytes(res.data) == content[3 * CHUNK : 4 * CHUNK]
        time.sleep(1)  # the read-ahead lands
        # Chunks 0..3: fetching 0, 1 and 2 evicts 3, which the READ needs as well.
        res = await nfs.read(fh, 0, 4 * CHUNK)
        assert bytes(res.data) == content[: 4 * CHUNK]

    try:
        run_on(server.nfs_port, body)
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()


def test_read_of_the_least_recently_used_chunks_is_answered(tmp_path: Path) -> None:
    a, b = random.Random(8).randbytes(8 * CHUNK), random.Random(9).randbytes(4 * CHUNK)
    server = serve(tmp_path, {"a.bin": a, "b.bin": b})

    async def body(nfs: Nfs) -> None:
        root = await nfs.mount(b"/area")
        fa, fb = await nfs.lookup(root, b"a.bin"), await nfs.lookup(root, b"b.bin")
        # The cache then holds, least recently used first: a7, a5, a6 (read ahead), b3.
        for fh, index in ((fa, 7), (fa, 5), (fb, 3)):
            await nfs.read(fh, index * CHUNK, CHUNK)
            time.sleep(0.5)  # the read-ahead lands
        # Chunks 4..7 of a: 5, 6 and 7 are here, but the oldest in the cache. Fetching 4
        # must evict b3, not them (else each retry evicts the next one the READ needs).
        res = await nfs.read(fa, 4 * CHUNK, 4 * CHUNK)
        assert bytes(res.data) == a[4 * CHUNK :]

    try:
        run_on(server.nfs_port, body)
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()
