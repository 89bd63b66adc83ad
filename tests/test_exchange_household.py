"""A peer's edit of a file another peer holds Real, end to end: two real server processes
paired over TLS on 127.0.0.1. After `realize sync`, the peer that held the file Real shows the
other's version (Unreal, its outdated bytes gone from its disk), and reading it through NFS
there fetches the new content, verified by checksum."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest

from tests.conftest import Nfs, run_on
from tests.test_household import area_dir, indexed, start
from tests.test_peer_link import (  # noqa: F401 (household is a fixture)
    connected,
    household,
    ok,
    realize,
    realize_process,
    token_of,
    wait_for,
)

pytestmark = pytest.mark.wire


def test_an_edit_on_one_peer_replaces_the_real_file_on_the_other(
    household: Callable[[str], Path],  # noqa: F811
) -> None:
    a, b = household("a"), household("b")
    port_a = start(a)
    ok(realize_process(a, "peer", "add", "b", token_of(b)))
    ok(realize_process(b, "peer", "add", "a", token_of(a), "--address", f"127.0.0.1:{port_a}"))
    start(b)
    wait_for("b's link to a", lambda: connected(b, "a") == "yes (dialled)")

    first = os.urandom(50_000)
    (area_dir(a) / "report.bin").write_bytes(first)
    wait_for(
        "a published report.bin",
        lambda: (
            f"blob {blake3.blake3(first).hexdigest()[:16]}" in ok(realize(a, "history", "docs"))
        ),
    )
    ok(realize(b, "sync"))
    wait_for("report.bin on b", lambda: indexed(b, b"report.bin") is not None)

    second = os.urandom(70_000)
    (area_dir(b) / "report.bin").write_bytes(second)  # b edits it: Real there now
    blob = blake3.blake3(second).digest()
    wait_for(
        "b published its edit",
        lambda: f"blob {blob.hex()[:16]}" in ok(realize(b, "history", "docs")),
    )
    ok(realize(a, "sync"))

    def a_shows_it() -> bool:
        entry = indexed(a, b"report.bin")
        return entry is not None and entry.blob == blob

    wait_for("a shows b's version", a_shows_it)
    entry = indexed(a, b"report.bin")
    assert entry is not None and entry.size == len(second)
    assert not (area_dir(a) / "report.bin").exists()  # the outdated bytes are gone

    async def read(nfs: Nfs) -> bytes:
        root = await nfs.mount(b"/docs")
        fh = await nfs.lookup(root, b"report.bin")
        data = bytearray()
        while True:
            res = await nfs.read(fh, len(data), 1 << 20)
            data += res.data
            if res.eof:
                return bytes(data)

    nfs_port = json.loads((a / "server.json").read_text())["nfs_port"]
    got = run_on(nfs_port, read)
    assert hashlib.sha256(got).digest() == hashlib.sha256(second).digest()
