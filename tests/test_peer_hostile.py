"""A hostile member of the household against a real server over real TLS: this process holds
a roster key of the server and dials in, and from then on serves the server lies (history
entries with paths that would leave the area, versions that do not parse, wrong chunk bytes)
and floods it with calls and an oversized record. Each gets an error; the good entries around
the bad ones still apply; no wrong byte reaches an NFS client; the server keeps serving its
clients, and its memory stays bounded."""

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
from nfsd.peer.versions import Kind, Version, VersionVector
from nfsd.rpc.dispatch import CallContext, Dispatcher, Procedure, Program
from nfsd.rpc.duplex import DuplexConnection
from nfsd.store.index import Layer
from tests.conftest import Nfs, NfsStatusError, run_on
from tests.test_household import indexed, start
from tests.test_peer_link import (  # noqa: F401 (household is a fixture)
    _roster_of,
    household,
    ok,
    realize,
    realize_process,
    token_of,
    wait_for,
)
from xdr import peer as wire
from xdr.codec import String, encode, void
from xdr.peer import PEER_PROGRAM, PEER_V1, PEERPROC, PROCEDURES

pytestmark = pytest.mark.wire

GOOD = b"good from the household\n"
AFTER = b"still applied after the bad ones\n"
BAD_PATHS = [b"../escape.txt", b"/etc/passwd", b"a\0b.txt", b".realize/peers.json", b"x//y"]


def _entry(path: bytes, content: bytes, author: str, counter: int) -> wire.history_entry:
    version = Version(
        VersionVector.of({author: counter}),
        Kind.FILE,
        blake3.blake3(content).digest(),
        len(content),
        1_700_000_000 * 10**9,
        author,
    )
    return wire.history_entry(counter, path, 0o644, version.encode())


class Liar:
    """The peer program as a hostile peer serves it; counts what the server asked."""

    def __init__(self, author: str) -> None:
        entries = [_entry(b"good.txt", GOOD, author, 1)]
        entries += [_entry(p, GOOD, author, 2 + i) for i, p in enumerate(BAD_PATHS)]
        entries.append(wire.history_entry(10, b"garbage.txt", 0o644, b"\xff" * 64))
        entries.append(_entry(b"after.txt", AFTER, author, 11))
        self.page = wire.history_res(
            wire.history_status.OK, b"L" * 16, False, 11, b"", False, entries
        )
        self.history_calls = 0
        self.fetches = 0

    async def null(self, ctx: CallContext, args: Any) -> None:
        return None

    async def history(self, ctx: CallContext, args: wire.history_args) -> wire.history_res:
        self.history_calls += 1
        if args.last_seen >= 11:  # nothing new since
            return wire.history_res(wire.history_status.OK, b"L" * 16, False, 11, b"", False, [])
        return self.page

    async def ack(self, ctx: CallContext, args: Any) -> None:
        return None

    async def fetch(self, ctx: CallContext, args: wire.fetch_args) -> wire.fetch_res:
        self.fetches += 1  # right length, wrong bytes
        return wire.fetch_res(wire.fetch_status.OK, len(GOOD), b"X" * len(GOOD))

    async def chunks(self, ctx: CallContext, args: Any) -> wire.chunks_res:
        return wire.chunks_res(wire.fetch_status.NO_BLOB, 0, b"")

    async def notify(self, ctx: CallContext, args: Any) -> None:
        return None

    async def cuts(self, ctx: CallContext, args: Any) -> wire.cuts_res:
        return wire.cuts_res(wire.fetch_status.NO_BLOB, 0, 0, b"")

    async def holds(self, ctx: CallContext, blob_ids: Any) -> bytes:
        return b"\x01" * len(blob_ids)  # "I keep all of it": then serves wrong bytes

    def program(self) -> Program:
        handlers = {
            PEERPROC.NULL: self.null,
            PEERPROC.HISTORY: self.history,
            PEERPROC.ACK: self.ack,
            PEERPROC.FETCH: self.fetch,
            PEERPROC.CHUNKS: self.chunks,
            PEERPROC.NOTIFY: self.notify,
            PEERPROC.HOLDS: self.holds,
            PEERPROC.CUTS: self.cuts,
        }
        procedures = {
            number: Procedure(name, args, res, handlers[number])
            for number, (name, args, res) in PROCEDURES.items()
        }
        return Program(PEER_PROGRAM, "PEER", {PEER_V1: procedures})


def _rss_peak_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    line = next(x for x in status.splitlines() if x.startswith("VmHWM"))
    return int(line.split()[1]) / 1024


def test_a_hostile_peer_gets_errors_and_the_server_keeps_serving(
    household: Callable[[str], Path],  # noqa: F811
) -> None:
    b, evil = household("b"), household("evil")
    port_b = start(b)
    ok(realize_process(b, "peer", "add", "evil", token_of(evil)))  # deaf: it dials in
    me = identity.load(evil)
    assert me is not None
    liar = Liar(me.peer_id)
    nfs_port = json.loads((b / "server.json").read_text())["nfs_port"]
    pid = int((b / "server.pid").read_text())
    # b's only copy of a file under `unreal`: the liar says it holds it, to have it dropped.
    mine = b.parent / "docs" / "mine"
    mine.mkdir()
    ok(realize(b, "mark", "unreal", str(mine)))
    only_copy = os.urandom(300_000)
    (mine / "only.bin").write_bytes(only_copy)

    async def hostile() -> dict[str, Any]:
        stream = await tls.dial(("127.0.0.1", port_b), me, _roster_of(b, me))
        link = DuplexConnection(
            stream.stream, Dispatcher([liar.program()]), stream.remote, "127.0.0.1"
        )
        seen: dict[str, Any] = {}
        async with trio.open_nursery() as nursery:
            nursery.start_soon(link.run)
            client = link.client
            await client.call(PEER_PROGRAM, PEER_V1, PEERPROC.NULL, void, None, void)
            with trio.fail_after(30):
                while not indexed(b, b"after.txt"):  # the link's first pull applied the page
                    await trio.sleep(0.1)
            with trio.fail_after(30):  # b asked whether the liar holds mine/only.bin
                while "says it holds" not in (b / "server.log").read_text(errors="replace"):
                    await trio.sleep(0.2)
            # A flood of notices: pulls coalesce, never one per notice.
            before = liar.history_calls
            async with trio.open_nursery() as flood:
                for _ in range(20):

                    async def notices() -> None:
                        for _ in range(100):
                            await client.call(
                                PEER_PROGRAM, PEER_V1, PEERPROC.NOTIFY,
                                String(wire.AREA_NAME_MAX), b"docs", void,
                            )  # fmt: skip

                    flood.start_soon(notices)
            await trio.sleep(1.0)  # let the pulls they asked for run
            seen["pulls after 2000 notices"] = liar.history_calls - before
            # Notices for an area not shared, and FETCHes of blobs it does not have.
            for _ in range(200):
                await client.call(
                    PEER_PROGRAM, PEER_V1, PEERPROC.NOTIFY,
                    String(wire.AREA_NAME_MAX), b"nosuch", void,
                )  # fmt: skip
            args = wire.fetch_args(b"\1" * 32, 0)
            res = await client.call(
                PEER_PROGRAM, PEER_V1, PEERPROC.FETCH, wire.fetch_args, args, wire.fetch_res
            )
            seen["unknown blob"] = res.status
            # Meanwhile its NFS clients are served, and a read of good.txt, whose only source
            # is this liar, never gets the liar's bytes.
            seen["nfs"] = await trio.to_thread.run_sync(read_on_b)
            # An oversized record: the server closes the link rather than buffer it.
            huge = encode(wire.fetch_args, args) + b"\0" * (4 << 20)
            try:
                with trio.fail_after(20):
                    await client.call_raw(PEER_PROGRAM, PEER_V1, PEERPROC.FETCH, huge)
                seen["oversized"] = "answered"
            except (ConnectionError, trio.BrokenResourceError, trio.ClosedResourceError):
                seen["oversized"] = "closed"
            nursery.cancel_scope.cancel()
        await trio.aclose_forcefully(stream.stream)
        return seen

    def read_on_b() -> dict[str, Any]:
        async def reads(nfs: Nfs) -> dict[str, Any]:
            root = await nfs.mount(b"/docs")
            names = await nfs.names(root)
            fh = await nfs.lookup(root, b"good.txt")
            try:
                data = bytes((await nfs.read(fh, 0, 4096)).data)
            except NfsStatusError as e:
                data = str(e).encode()
            return {"names": names, "good.txt": data}

        return run_on(nfs_port, reads)

    seen = trio.run(hostile)

    # The good entries applied, before and after the bad ones; none of the bad ones did.
    assert indexed(b, b"good.txt") is not None and indexed(b, b"after.txt") is not None
    assert {b"good.txt", b"after.txt"} <= seen["nfs"]["names"]
    assert not any(n in seen["nfs"]["names"] for n in (b"escape.txt", b"passwd", b"garbage.txt"))
    for path in [*BAD_PATHS, b"garbage.txt"]:
        assert indexed(b, path) is None, path
    assert not (b.parent / "escape.txt").exists()
    # The liar's bytes never reached the client: the read failed instead.
    assert seen["nfs"]["good.txt"] != b"X" * len(GOOD)
    assert b"NFS3ERR_IO" in seen["nfs"]["good.txt"] or b"JUKEBOX" in seen["nfs"]["good.txt"]
    assert liar.fetches >= 1
    assert seen["pulls after 2000 notices"] <= 10, seen
    assert seen["unknown blob"] == wire.fetch_status.NO_BLOB
    assert seen["oversized"] == "closed"
    # The server is still up, still serves, and its memory stayed bounded.
    time.sleep(0.5)
    assert (b / "server.pid").exists()
    assert {b"good.txt", b"after.txt"} <= read_on_b()["names"]
    assert _rss_peak_mb(pid) < 150
    # Each refused entry was logged once, with its reason.
    log_text = (b / "server.log").read_text(errors="replace")
    assert log_text.count("escape.txt") == 1, log_text[-3000:]
    assert "sent a wrong chunk" in log_text
    # Its word that it holds b's only copy was checked against a chunk, and not taken.
    entry = indexed(b, b"mine/only.bin")
    assert entry is not None and entry.layer == Layer.REAL
    assert (mine / "only.bin").read_bytes() == only_copy
