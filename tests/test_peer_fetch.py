"""FETCH and CHUNKS by blob id against a real server over real TLS: this process is a roster member
that dials in (with the project's own TLS and duplex RPC, so it answers the server's
heartbeats) and asks for chunks of the server's Real files by their BLAKE3 ids."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import pytest
import trio

from nfsd.peer import identity, tls
from nfsd.peer.program import peer_program
from nfsd.rpc.client import RpcError
from nfsd.rpc.dispatch import Dispatcher
from nfsd.rpc.duplex import DuplexConnection
from tests.support.server import start_server
from tests.test_peer_link import (  # noqa: F401 (household is a fixture)
    _roster_of,
    household,
    ok,
    realize,
    token_of,
)
from xdr.codec import encode, void
from xdr.peer import (
    FETCH_CHUNK_SIZE,
    PEER_PROGRAM,
    PEER_V1,
    PEERPROC,
    chunks_args,
    chunks_res,
    fetch_args,
    fetch_res,
    fetch_status,
    history_args,
    history_res,
    history_status,
)
from xdr.rpc import accept_stat

pytestmark = pytest.mark.wire

CHUNK = FETCH_CHUNK_SIZE


async def _session(port: int, state: Path, member_state: Path, work: Callable) -> Any:
    member = identity.load(member_state)
    server_roster = _roster_of(state, member)
    stream = await tls.dial(("127.0.0.1", port), member, server_roster)
    link = DuplexConnection(stream.stream, Dispatcher([peer_program()]), stream.remote, "127.0.0.1")
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.run)
            with trio.fail_after(30):
                result = await work(link.client)
            nursery.cancel_scope.cancel()
    finally:
        await trio.aclose_forcefully(stream.stream)
    return result


def fetch(client: Any, blob: bytes, chunk: int) -> Any:
    return client.call(
        PEER_PROGRAM, PEER_V1, PEERPROC.FETCH, fetch_args, fetch_args(blob, chunk), fetch_res
    )


@pytest.mark.parametrize("seams", ["linux", "fallbacks"])
def test_fetch_serves_shared_real_files_by_blob_id_and_refuses_the_rest(
    tmp_path: Path,
    household: Callable[[str], Path],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    seams: str,
) -> None:
    """On Linux a FETCH whose chunk the page cache holds is answered on the event loop
    (RWF_NOWAIT); with the portable fallbacks (as on macOS) every FETCH goes to a thread."""
    if seams == "fallbacks":
        monkeypatch.setenv("REALIZE_FORCE_FALLBACKS", "1")  # the server inherits it
    else:
        monkeypatch.delenv("REALIZE_FORCE_FALLBACKS", raising=False)
    docs, private = tmp_path / "docs", tmp_path / "private"
    docs.mkdir()
    private.mkdir()
    content = os.urandom(2 * CHUNK + 12345)  # three chunks, the last one short
    (docs / "big.bin").write_bytes(content)
    secret = os.urandom(1000)
    (private / "secret.bin").write_bytes(secret)
    changing = os.urandom(CHUNK + 10)
    (docs / "changing.bin").write_bytes(changing)
    state = tmp_path / "server"
    # A long rest: a file changed below keeps its old index entry while the test runs.
    server = start_server(
        {"docs": docs, "private": private}, state, extra=["--peer-port", "0", "--rest", "600"]
    )
    try:
        port = json.loads((state / "server.json").read_text())["peer_port"]
        member_state = household("member")
        ok(realize(state, "peer", "add", "member", token_of(member_state), "--areas", "docs"))
        blob = blake3.blake3(content).digest()

        async def until_indexed(client: Any) -> None:
            while (await fetch(client, blob, 0)).status != fetch_status.OK:
                await trio.sleep(0.1)  # the start scan hashes the files at once

        trio.run(_session, port, state, member_state, until_indexed)

        async def reads(client: Any) -> dict[str, Any]:
            got: dict[str, Any] = {}
            async with trio.open_nursery() as nursery:  # several FETCHes in flight at once

                async def one(key: str, blob_id: bytes, chunk: int) -> None:
                    got[key] = await fetch(client, blob_id, chunk)

                for i in range(3):
                    nursery.start_soon(one, f"chunk{i}", blob, i)
                nursery.start_soon(one, "past", blob, 3)
                nursery.start_soon(one, "unknown", blake3.blake3(b"nobody").digest(), 0)
                nursery.start_soon(one, "private", blake3.blake3(secret).digest(), 0)
            return got

        got = trio.run(_session, port, state, member_state, reads)
        assert all(got[f"chunk{i}"].status == fetch_status.OK for i in range(3))
        assert b"".join(got[f"chunk{i}"].data for i in range(3)) == content
        assert got["chunk0"].size == len(content)
        assert got["past"].status == fetch_status.NO_CHUNK and got["past"].size == len(content)
        assert got["unknown"].status == fetch_status.NO_BLOB
        # The server has it, in an area not shared with this peer.
        assert got["private"].status == fetch_status.NO_BLOB

        # A Real file changed after it was hashed: refused, never a mix of two versions.
        old_blob = blake3.blake3(changing).digest()

        async def before_and_after(client: Any) -> tuple[Any, Any]:
            first = await fetch(client, old_blob, 1)
            fd = os.open(docs / "changing.bin", os.O_WRONLY)
            try:
                os.pwrite(fd, b"X" * 10, CHUNK)  # same size, new bytes in chunk 1
                os.utime(fd, ns=(time.time_ns(), time.time_ns() + 10**9))
            finally:
                os.close(fd)
            return first, [await fetch(client, old_blob, i) for i in (0, 1)]

        first, later = trio.run(_session, port, state, member_state, before_and_after)
        assert first.status == fetch_status.OK and first.data == changing[CHUNK:]
        assert [r.status for r in later] == [fetch_status.CHANGED, fetch_status.CHANGED]

        # Malformed and oversized requests: an RPC error each, and the link still serves.
        async def bad_input(client: Any) -> list[Any]:
            answers = []
            for args in (blob[:31], encode(fetch_args, fetch_args(blob, 0)) + b"\0" * 65536):
                reply, _ = await client.call_raw(PEER_PROGRAM, PEER_V1, PEERPROC.FETCH, args)
                answers.append(reply.stat)
            try:
                await client.call(PEER_PROGRAM, PEER_V1, PEERPROC.FETCH, void, None, void)
            except RpcError as e:
                answers.append(e.header.stat)
            answers.append((await fetch(client, blob, 2)).data == content[2 * CHUNK :])
            return answers

        answers = trio.run(_session, port, state, member_state, bad_input)
        assert answers == [accept_stat.GARBAGE_ARGS] * 3 + [True]
        assert server.process.poll() is None
    finally:
        server.stop()


def chunk_list(client: Any, blob: bytes, first: int, count: int) -> Any:
    args = chunks_args(blob, first, count)
    return client.call(PEER_PROGRAM, PEER_V1, PEERPROC.CHUNKS, chunks_args, args, chunks_res)


def test_chunks_lists_a_real_files_chunk_hashes_checked_against_its_id(
    tmp_path: Path,
    household: Callable[[str], Path],  # noqa: F811
) -> None:
    docs, private = tmp_path / "docs", tmp_path / "private"
    docs.mkdir()
    private.mkdir()
    content = os.urandom(4 * CHUNK + 999)  # five chunks
    (docs / "big.bin").write_bytes(content)
    (private / "secret.bin").write_bytes(os.urandom(2 * CHUNK))
    changing = os.urandom(3 * CHUNK)
    (docs / "changing.bin").write_bytes(changing)
    state = tmp_path / "server"
    server = start_server(
        {"docs": docs, "private": private}, state, extra=["--peer-port", "0", "--rest", "600"]
    )
    try:
        port = json.loads((state / "server.json").read_text())["peer_port"]
        member_state = household("member")
        ok(realize(state, "peer", "add", "member", token_of(member_state), "--areas", "docs"))
        blob = blake3.blake3(content).digest()
        expected = [
            blake3.blake3(content[i : i + CHUNK]).digest() for i in range(0, len(content), CHUNK)
        ]
        secret_blob = blake3.blake3((private / "secret.bin").read_bytes()).digest()
        old_blob = blake3.blake3(changing).digest()

        async def lists(client: Any) -> dict[str, Any]:
            while (await chunk_list(client, blob, 0, 100)).status != fetch_status.OK:
                await trio.sleep(0.1)  # the start scan hashes the files at once
            got = {
                "all": await chunk_list(client, blob, 0, 100),
                "page": await chunk_list(client, blob, 3, 1),
                "past": await chunk_list(client, blob, 9, 1),
                "private": await chunk_list(client, secret_blob, 0, 10),
                "unknown": await chunk_list(client, blake3.blake3(b"x").digest(), 0, 10),
            }
            # Changed after it was hashed, though its size and mtime are the index's: the
            # whole content no longer has the blob id, so no list (and no chunk) is given.
            st = os.stat(docs / "changing.bin")
            fd = os.open(docs / "changing.bin", os.O_WRONLY)
            try:
                os.pwrite(fd, b"Y" * 8, CHUNK)
                os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(fd)
            got["changed"] = await chunk_list(client, old_blob, 0, 10)
            return got

        got = trio.run(_session, port, state, member_state, lists)
        assert got["all"].status == fetch_status.OK and got["all"].size == len(content)
        assert got["all"].hashes == b"".join(expected)
        assert got["page"].hashes == expected[3]
        assert got["past"].status == fetch_status.NO_CHUNK
        assert got["private"].status == fetch_status.NO_BLOB  # an area not shared with it
        assert got["unknown"].status == fetch_status.NO_BLOB
        assert got["changed"].status == fetch_status.CHANGED

        # A list once given stays checked: a chunk read from the file after it changed with
        # size and mtime kept is refused because its hash is not the listed one.
        async def after_listing(client: Any) -> Any:
            again = blake3.blake3(content).digest()
            assert (await chunk_list(client, again, 0, 100)).status == fetch_status.OK
            st = os.stat(docs / "big.bin")
            fd = os.open(docs / "big.bin", os.O_WRONLY)
            try:
                os.pwrite(fd, b"Z" * 8, 2 * CHUNK)
                os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(fd)
            return [(await fetch(client, blob, i)).status for i in (0, 2)]

        statuses = trio.run(_session, port, state, member_state, after_listing)
        assert statuses == [fetch_status.OK, fetch_status.CHANGED]
        assert server.process.poll() is None
    finally:
        server.stop()


def test_history_is_served_only_of_the_areas_the_roster_shares_with_the_caller(
    tmp_path: Path,
    household: Callable[[str], Path],  # noqa: F811
) -> None:
    docs, private = tmp_path / "docs", tmp_path / "private"
    docs.mkdir()
    private.mkdir()
    (docs / "open.txt").write_bytes(b"for the household\n")
    (private / "diary.txt").write_bytes(b"for this machine\n")
    state = tmp_path / "server"
    server = start_server(
        {"docs": docs, "private": private}, state, extra=["--peer-port", "0", "--rest", "0.1"]
    )
    try:
        port = json.loads((state / "server.json").read_text())["peer_port"]
        member_state = household("member")
        ok(realize(state, "peer", "add", "member", token_of(member_state), "--areas", "docs"))

        async def pages(client: Any) -> dict[str, Any]:
            got = {}
            for area in ("docs", "private", "nosuch"):
                args = history_args(area.encode(), b"", 0, 100, False, 0, b"")
                got[area] = await client.call(
                    PEER_PROGRAM, PEER_V1, PEERPROC.HISTORY, history_args, args, history_res
                )
            return got

        got = trio.run(_session, port, state, member_state, pages)
        assert got["docs"].status == history_status.OK
        # Not shared with this peer: answered as an area that does not exist, no entry.
        assert got["private"].status == history_status.NO_AREA and not got["private"].entries
        assert got["nosuch"].status == history_status.NO_AREA
        assert server.process.poll() is None
    finally:
        server.stop()


def test_a_real_file_found_changed_while_serving_a_peer_is_indexed_again(
    tmp_path: Path,
    household: Callable[[str], Path],  # noqa: F811
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    old = os.urandom(3 * CHUNK)
    (docs / "edited.bin").write_bytes(old)
    state = tmp_path / "server"
    extra = ["--peer-port", "0", "--rest", "0.2"]
    member_state = household("member")
    old_blob, new_blob = blake3.blake3(old).digest(), b""

    async def until_listed(client: Any, blob: bytes) -> Any:
        while (res := await chunk_list(client, blob, 0, 10)).status != fetch_status.OK:
            await trio.sleep(0.1)
        return res

    server = start_server({"docs": docs}, state, extra=extra)
    try:
        ok(realize(state, "peer", "add", "member", token_of(member_state)))
        port = json.loads((state / "server.json").read_text())["peer_port"]
        trio.run(_session, port, state, member_state, lambda c: until_listed(c, old_blob))
    finally:
        server.stop()
    # Edited while the server was down, size and mtime kept: its start scan sees nothing.
    st = os.stat(docs / "edited.bin")
    new = old[:CHUNK] + os.urandom(CHUNK) + old[2 * CHUNK :]
    new_blob = blake3.blake3(new).digest()
    fd = os.open(docs / "edited.bin", os.O_WRONLY)
    try:
        os.pwrite(fd, new[CHUNK : 2 * CHUNK], CHUNK)
        os.utime(fd, ns=(st.st_atime_ns, st.st_mtime_ns))
    finally:
        os.close(fd)

    server = start_server({"docs": docs}, state, extra=extra)
    try:
        port = json.loads((state / "server.json").read_text())["peer_port"]

        async def after(client: Any) -> tuple[Any, Any]:
            stale = await chunk_list(client, old_blob, 0, 10)
            with trio.fail_after(20):  # hashed again once it rested: served by its new id
                fresh = await until_listed(client, new_blob)
            return stale, fresh

        stale, fresh = trio.run(_session, port, state, member_state, after)
        assert stale.status == fetch_status.CHANGED
        assert fresh.hashes[32:64] == blake3.blake3(new[CHUNK : 2 * CHUNK]).digest()
    finally:
        server.stop()
