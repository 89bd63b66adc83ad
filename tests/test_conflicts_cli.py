"""`realize conflicts [AREA]`: the same path created on two peers while they were apart is a
conflict, listed alike on both (the version keeping the path, the copy beside it under its
conflict name, author, size, content hash), as a table and with --json; `realize status`
counts it. The control procedure behind it pages through any number of path states."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest
import trio

from nfsd.control import ControlService
from nfsd.peer.exchange import Exchange
from nfsd.peer.versions import Kind as VKind
from nfsd.peer.versions import next_version
from nfsd.rpc.dispatch import CallContext
from nfsd.store.blobs import BlobStore
from nfsd.store.db import Store
from nfsd.vfs.merged import MergedTree
from tests.test_household import area_dir, start
from tests.test_peer_link import (  # noqa: F401 (household is a fixture)
    connected,
    household,
    ok,
    realize,
    token_of,
    wait_for,
)
from xdr import peer as wire
from xdr.control import CONFLICTS_PAGE, CONTROL_PROGRAM, CONTROL_V1, CONTROLPROC, conflictsargs
from xdr.rpc_fast import Credential


def _conflicts(state: Path, *args: str) -> list[dict]:
    return json.loads(ok(realize(state, "conflicts", *args, "--json")))["conflicts"]


def _hashed(state: Path, content: bytes) -> Callable[[], bool]:
    blob = blake3.blake3(content).hexdigest()[:16]
    return lambda: f"blob {blob}" in ok(realize(state, "history", "docs"))


@pytest.mark.wire
def test_the_same_path_created_apart_is_one_conflict_listed_alike_on_both_peers(
    household: Callable[[str], Path],  # noqa: F811
) -> None:
    a, b = household("a"), household("b")
    port_a = start(a)
    start(b)
    from_a, from_b = b"written on a\n", b"written on b, longer\n"
    (area_dir(a) / "report.txt").write_bytes(from_a)
    (area_dir(b) / "report.txt").write_bytes(from_b)
    wait_for("a hashed report.txt", _hashed(a, from_a))
    wait_for("b hashed report.txt", _hashed(b, from_b))
    assert ok(realize(b, "conflicts")) == "no conflicts\n"
    assert ok(realize(b, "conflicts", "docs")) == "no conflicts in docs\n"

    # Paired only now: each learns the other's version, concurrent with its own.
    ok(realize(a, "peer", "add", "b", token_of(b)))
    ok(realize(b, "peer", "add", "a", token_of(a), "--address", f"127.0.0.1:{port_a}"))
    wait_for("b's link to a", lambda: connected(b, "a") == "yes (dialled)")
    ok(realize(b, "sync"))
    wait_for("a pulled b's log", lambda: bool(_conflicts(a)))
    on_a, on_b = _conflicts(a), _conflicts(b)

    [conflict] = on_b
    assert (conflict["area"], conflict["path"], conflict["more_copies"]) == (
        "docs",
        "report.txt",
        0,
    )
    shown, [copy] = conflict["shown"], conflict["copies"]
    assert shown["name"] == "report.txt"
    assert re.fullmatch(r"report\.conflict-[A-Z0-9]+-[0-9a-f]{8}\.txt", copy["name"]), copy
    blobs = {blake3.blake3(from_a).hexdigest(): "a", blake3.blake3(from_b).hexdigest(): "b"}
    assert {shown["content"], copy["content"]} == set(blobs)
    assert copy["name"].split("-")[-1] == copy["content"][:8] + ".txt"
    for version in (shown, copy):
        made_by = blobs[version["content"]]
        assert version["kind"] == "file"
        assert version["size"] == len(from_a if made_by == "a" else from_b)
        # On b, its own version is "mine" and a's carries the roster's name for a.
        assert version["mine"] == (made_by == "b")
        assert version["author_name"] == (None if made_by == "b" else "a")

    # Resolved alike on a: the same version keeps the path, the same copy name beside it.
    def alike(found: list[dict]) -> list[tuple]:
        return [
            (c["area"], c["path"], v["name"], v["author"], v["size"], v["content"])
            for c in found
            for v in (c["shown"], *c["copies"])
        ]

    assert alike(on_a) == alike(on_b)

    table = ok(realize(b, "conflicts")).splitlines()
    assert re.fullmatch(r"AREA\s+PATH\s+VERSION\s+AUTHOR\s+SIZE\s+HASH", table[0])
    rows = {line.split()[2]: line.split() for line in table[1:-1]}
    assert rows["(keeps"][0:2] == ["docs", "report.txt"]
    copy_row = rows[copy["name"]]
    assert copy_row[-1] == copy["content"][:8]
    assert copy_row[3] in ("a", "this")  # the author: "a", or "this peer"
    assert table[-1] == "1 conflict"
    # Limited to the area, by its name or its directory; an unknown one is refused.
    assert _conflicts(b, "docs") == on_b
    assert _conflicts(b, str(area_dir(b))) == on_b
    assert "a docs: " in ok(realize(b, "sync", str(area_dir(b))))  # sync names areas alike
    refused = realize(b, "conflicts", "nosuch")
    assert refused.returncode == 2 and "no area named nosuch" in refused.stderr

    # `realize status` counts it.
    status = json.loads(ok(realize(b, "status", "--json")))
    assert [(x["name"], x["conflicts"]) for x in status["areas"]] == [("docs", 1)]


def test_conflicts_without_a_running_server_say_so(household: Callable[[str], Path]) -> None:  # noqa: F811
    a = household("a")
    result = realize(a, "conflicts")
    assert result.returncode == 2 and "no server is running" in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.inproc
def test_conflicts_are_paged_through_however_many_there_are(tmp_path: Path) -> None:
    """More conflicts than one reply holds: every one is listed once, page after page."""
    area = tmp_path / "docs"
    area.mkdir()
    store = Store(tmp_path / "db")
    tree = MergedTree(store, {"docs": str(area)})
    try:
        exchange = Exchange(store, tree.journal.history, "HERE")
        count = CONFLICTS_PAGE + 30
        for peer, text in (("PEERA", b"a"), ("PEERB", b"b")):
            entries = []
            for i in range(count):
                content = blake3.blake3(text + str(i).encode()).digest()
                version = next_version((), peer, VKind.FILE, content, size=1, mtime_ns=i)
                entries.append(
                    wire.history_entry(i + 1, f"f{i:04}".encode(), 0o644, version.encode())
                )
            uuid = peer.encode().ljust(wire.LOG_UUID_SIZE, b"\0")
            page = wire.history_res(wire.history_status.OK, uuid, False, count, b"", False, entries)
            exchange.apply(peer, "docs", page)
        exchange.apply(  # one path that only one peer made: no conflict
            "PEERA",
            "docs",
            wire.history_res(
                wire.history_status.OK,
                b"PEERA".ljust(wire.LOG_UUID_SIZE, b"\0"),
                False,
                count + 1,
                b"",
                False,
                [
                    wire.history_entry(
                        count + 1,
                        b"alone",
                        0o644,
                        next_version((), "PEERA", VKind.FILE, bytes(32), size=1).encode(),
                    )
                ],
            ),
        )
        service = ControlService(tree, BlobStore(store))
        context = CallContext(
            0, CONTROL_PROGRAM, CONTROL_V1, CONTROLPROC.CONFLICTS, Credential(), ("", 0), "local"
        )
        paths, pages = [], 0
        args = conflictsargs(b"", b"", b"")
        while True:
            res = trio.run(service.conflicts, context, args)
            pages += 1
            paths += [c.path for c in res.conflicts]
            if not res.more:
                break
            args = conflictsargs(b"", res.next_area, res.next_path)
        status = trio.run(service.status, context, None)
    finally:
        tree.close()
        store.close()
    assert paths == [f"f{i:04}".encode() for i in range(count)]
    assert pages >= 2
    for c in res.conflicts:
        assert len(c.copies) == 1 and c.shown.name == c.path
    assert [(x.name, x.conflicts, x.conflicts_counted) for x in status.areas] == [
        (b"docs", count, True)
    ]
