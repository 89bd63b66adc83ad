"""The household end to end, with two real server processes paired as a user pairs them over
real TLS on 127.0.0.1: a file written into one peer's area shows on the other, told at once
over the link (no `realize sync`), as an Unreal entry with the same size and blob id, and
reading it through NFS there fetches its bytes, chunk list and chunks, from the first (the
only source it has), verified."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest

from nfsd.cli.output import human
from nfsd.store.areas import AreaTable
from nfsd.store.db import Store
from nfsd.store.index import AreaIndex, Entry, Layer
from nfsd.store.manifest import unpack_usage, usage_key
from tests.conftest import Nfs, run_on
from tests.test_peer_link import (  # noqa: F401 (household is a fixture)
    connected,
    household,
    ok,
    realize,
    realize_process,
    token_of,
    wait_for,
)
from xdr.nfs3 import NFSPROC3, READ3args, nfsstat3

pytestmark = pytest.mark.wire


def start(state: Path, *options: str) -> int:
    """`realize start` on ephemeral ports, files hashed 0.2 s after they rest (and `options`);
    the peer port."""
    flags = ["--port", "0", "--peer-port", "0", "--portmap", "off", "--rest", "0.2", *options]
    ok(realize_process(state, "start", *flags))
    return json.loads((state / "server.json").read_text())["peer_port"]


def paired(household: Callable[[str], Path], *b_options: str) -> tuple[Path, Path]:  # noqa: F811
    """Peers a and b started and linked (b dials a; b started with `b_options`)."""
    a, b = household("a"), household("b")
    port_a = start(a)
    ok(realize_process(a, "peer", "add", "b", token_of(b)))
    ok(realize_process(b, "peer", "add", "a", token_of(a), "--address", f"127.0.0.1:{port_a}"))
    start(b, *b_options)
    wait_for("b's link to a", lambda: connected(b, "a") == "yes (dialled)")
    return a, b


def read_through_nfs(state: Path, path: bytes) -> bytes:
    """The whole content of docs/`path` read through NFS on the running server of `state`."""

    async def read(nfs: Nfs) -> bytes:
        fh = await nfs.mount(b"/docs")
        for name in path.split(b"/"):
            fh = await nfs.lookup(fh, name)
        data = b""
        while True:
            res = await nfs.read(fh, len(data), 1 << 20)
            data += bytes(res.data)
            if res.eof:
                return data

    return run_on(json.loads((state / "server.json").read_text())["nfs_port"], read)


def area_dir(state: Path) -> Path:
    return state.parent / "docs"  # the household fixture's area "docs"


def indexed(state: Path, path: bytes) -> Entry | None:
    """The index entry of docs/`path` in a running server's store (read beside it)."""
    store = Store(state / "db", read_only=True)
    try:
        record = AreaTable(store).get("docs")
        assert record is not None
        return AreaIndex(store).get(record.id, path)
    finally:
        store.close()


def listed(state: Path, name: str) -> list[str] | None:
    """The LAYER and SIZE cells of `name` in `realize ls docs`, None if not listed."""
    for line in ok(realize(state, "ls", "docs")).splitlines()[1:]:
        cells = line.split()
        if cells[-1] == name:
            return [cells[0], " ".join(cells[-3:-1])]  # the size is "97.7 KiB"
    return None


def test_a_file_written_on_one_peer_shows_unreal_on_the_other_at_once(
    household: Callable[[str], Path],  # noqa: F811
) -> None:
    a, b = household("a"), household("b")
    port_a = start(a)
    ok(realize_process(a, "peer", "add", "b", token_of(b)))  # deaf: b dials in
    ok(realize_process(b, "peer", "add", "a", token_of(a), "--address", f"127.0.0.1:{port_a}"))
    start(b)
    wait_for("b's link to a", lambda: connected(b, "a") == "yes (dialled)")

    content = os.urandom(5 * 256 * 1024 + 1234)  # six chunks: b needs their list from a
    blob = blake3.blake3(content).digest()
    (area_dir(a) / "report.bin").write_bytes(content)
    # Published once it rested and was hashed, then a tells b, which pulls: no sync needed.
    wait_for("report.bin shows on b", lambda: listed(b, "report.bin") is not None)
    assert f"blob {blob.hex()[:16]}" in ok(realize(a, "history", "docs"))
    assert listed(b, "report.bin") == ["unreal", human(len(content))]
    entry = indexed(b, b"report.bin")
    assert entry is not None and entry.layer == Layer.UNREAL
    assert (entry.size, entry.blob) == (len(content), blob)
    assert not (area_dir(b) / "report.bin").exists()  # nothing was copied

    # A sync has nothing new; one limited to an area that does not exist is refused.
    assert "a docs: 0 applied" in ok(realize(b, "sync", "docs"))
    refused = realize(b, "sync", "nosuch")
    assert refused.returncode != 0 and "no area named nosuch" in refused.stderr

    # Read through NFS on b: the content comes from a over the link, chunk by verified chunk.
    async def read(nfs: Nfs) -> bytes:
        root = await nfs.mount(b"/docs")
        fh = await nfs.lookup(root, b"report.bin")
        assert (await nfs.getattr(fh)).size == len(content)
        data = b""
        while True:
            res = await nfs.read(fh, len(data), 1 << 20)
            data += bytes(res.data)
            if res.eof:
                return data

    nfs_port = json.loads((b / "server.json").read_text())["nfs_port"]
    assert run_on(nfs_port, read) == content
    assert not (area_dir(b) / "report.bin").exists()  # cached, not realized


def test_a_link_coming_up_pulls_what_the_other_peer_published_meanwhile(
    household: Callable[[str], Path],  # noqa: F811
) -> None:
    a, b = household("a"), household("b")
    port_a = start(a)
    content = b"written while b was away\n"
    (area_dir(a) / "note.txt").write_bytes(content)
    blob = blake3.blake3(content).digest()
    wait_for(
        "a hashed note.txt",
        lambda: f"blob {blob.hex()[:16]}" in ok(realize(a, "history", "docs")),
    )
    ok(realize_process(a, "peer", "add", "b", token_of(b)))
    ok(realize_process(b, "peer", "add", "a", token_of(a), "--address", f"127.0.0.1:{port_a}"))
    start(b)  # no `realize sync`: the new link pulls by itself
    wait_for("note.txt shows on b", lambda: listed(b, "note.txt") is not None)
    assert listed(b, "note.txt") == ["unreal", human(len(content))]


def test_with_every_peer_gone_cached_content_reads_and_the_rest_is_jukebox_then_an_io_error(
    household: Callable[[str], Path],  # noqa: F811
) -> None:
    a, b = household("a"), household("b")
    port_a = start(a)
    ok(realize_process(a, "peer", "add", "b", token_of(b)))
    ok(realize_process(b, "peer", "add", "a", token_of(a), "--address", f"127.0.0.1:{port_a}"))
    start(b)
    read_once, never_read = os.urandom(3 * 256 * 1024), os.urandom(2 * 256 * 1024 + 5)
    (area_dir(a) / "read-once.bin").write_bytes(read_once)
    (area_dir(a) / "never-read.bin").write_bytes(never_read)
    for name in ("read-once.bin", "never-read.bin"):
        wait_for(f"{name} shows on b", lambda n=name: listed(b, n) is not None)
    nfs_port = json.loads((b / "server.json").read_text())["nfs_port"]

    async def read_whole(nfs: Nfs, name: str) -> bytes:
        root = await nfs.mount(b"/docs")
        fh = await nfs.lookup(root, name)
        data = b""
        while True:
            res = await nfs.read(fh, len(data), 1 << 20)
            data += bytes(res.data)
            if res.eof:
                return data

    assert run_on(nfs_port, lambda nfs: read_whole(nfs, "read-once.bin")) == read_once
    ok(realize_process(a, "stop"))

    async def after(nfs: Nfs) -> tuple[bytes, list[nfsstat3], float]:
        cached = await read_whole(nfs, "read-once.bin")
        root = await nfs.mount(b"/docs")
        fh = await nfs.lookup(root, "never-read.bin")
        statuses: list[nfsstat3] = []
        started = time.monotonic()
        while not statuses or statuses[-1] == nfsstat3.NFS3ERR_JUKEBOX:
            assert time.monotonic() - started < 60, statuses
            statuses.append(await nfs.status(NFSPROC3.READ, READ3args(fh, 0, 4096)))
        return cached, statuses, time.monotonic() - started

    cached, statuses, seconds = run_on(nfs_port, after)
    assert cached == read_once  # from b's cache: a is gone
    # The uncached file: retried while a might come back, then an I/O error, not forever.
    assert statuses[0] == nfsstat3.NFS3ERR_JUKEBOX
    assert statuses[-1] == nfsstat3.NFS3ERR_IO and seconds < 30
    # And b goes on serving: a later read of the cached file still works.
    assert run_on(nfs_port, lambda nfs: read_whole(nfs, "read-once.bin")) == read_once


def test_keep_on_a_peers_file_fetches_all_of_it_charged_to_its_area(
    household: Callable[[str], Path],  # noqa: F811
) -> None:
    a, b = household("a"), household("b")
    port_a = start(a)
    ok(realize_process(a, "peer", "add", "b", token_of(b)))
    ok(realize_process(b, "peer", "add", "a", token_of(a), "--address", f"127.0.0.1:{port_a}"))
    start(b)
    content = os.urandom(4 * 256 * 1024 + 77)
    (area_dir(a) / "kept.bin").write_bytes(content)
    wait_for("kept.bin shows on b", lambda: listed(b, "kept.bin") is not None)

    ok(realize(b, "mark", "keep", str(area_dir(b) / "kept.bin")))
    wait_for("kept.bin cached on b", lambda: cached_in(b, "docs") >= len(content))
    ok(realize_process(a, "stop"))

    async def read(nfs: Nfs) -> bytes:
        root = await nfs.mount(b"/docs")
        fh = await nfs.lookup(root, b"kept.bin")
        data = b""
        while True:
            res = await nfs.read(fh, len(data), 1 << 20)
            data += bytes(res.data)
            if res.eof:
                return data

    nfs_port = json.loads((b / "server.json").read_text())["nfs_port"]
    assert run_on(nfs_port, read) == content  # all of it here: a is gone
    assert not (area_dir(b) / "kept.bin").exists()  # kept in the cache, not realized


def cached_in(state: Path, area: str) -> int:
    """Bytes of a running server's blob cache charged to `area` (its store, read beside it)."""
    store = Store(state / "db", read_only=True)
    try:
        raw = store.family("meta").get(usage_key(area))
        return 0 if raw is None else unpack_usage(bytes(raw))[0]
    finally:
        store.close()


def test_files_arriving_from_a_peer_take_the_mark_of_their_directory(
    household: Callable[[str], Path],  # noqa: F811
) -> None:
    """On b, `real/` is marked real, `kept/` keep and `cached/` unreal. What a writes into
    them arrives on b realized, fetched and pinned, and only listed; a new version of the
    realized file is realized again, and a file that arrives while b is stopped is realized
    after b starts again."""
    a, b = paired(household)
    for directory, mark in (("real", "real"), ("kept", "keep"), ("cached", "unreal")):
        (area_dir(b) / directory).mkdir()
        ok(realize(b, "mark", mark, str(area_dir(b) / directory)))
        (area_dir(a) / directory).mkdir(exist_ok=True)

    contents = {name: os.urandom(3 * 256 * 1024 + 99) for name in ("real", "kept", "cached")}
    for directory, data in contents.items():
        (area_dir(a) / directory / "file.bin").write_bytes(data)

    realized = area_dir(b) / "real" / "file.bin"
    wait_for("real/file.bin realized on b", lambda: realized.exists() and realized.read_bytes()
             == contents["real"])  # fmt: skip
    wait_for("kept/file.bin cached and pinned on b",
             lambda: "100% pinned" in listed_in(b, "kept", "file.bin"))  # fmt: skip
    entry = indexed(b, b"real/file.bin")
    assert entry is not None and entry.layer == Layer.REAL
    for name in ("kept", "cached"):
        entry = indexed(b, f"{name}/file.bin".encode())
        assert entry is not None and entry.layer == Layer.UNREAL, name
        assert not (area_dir(b) / name / "file.bin").exists()
    time.sleep(1)  # `unreal` caches only what is read: nothing is fetched for it
    row = listed_in(b, "cached", "file.bin").split()
    assert row[:2] == ["unreal", "unreal"] and row[4] == "0%", row

    edited = os.urandom(2 * 256 * 1024 + 5)
    (area_dir(a) / "real" / "file.bin").write_bytes(edited)
    wait_for("the new version realized on b", lambda: realized.exists() and realized.read_bytes()
             == edited)  # fmt: skip

    ok(realize_process(b, "stop"))
    later = os.urandom(300_000)
    (area_dir(a) / "real" / "later.bin").write_bytes(later)
    wait_for("a hashed later.bin", lambda: "later.bin" in ok(realize(a, "history", "docs")))
    start(b)
    arrived = area_dir(b) / "real" / "later.bin"
    wait_for("later.bin realized after b's restart", lambda: arrived.exists() and
             arrived.read_bytes() == later)  # fmt: skip


def listed_in(state: Path, directory: str, name: str) -> str:
    """`name`'s row in `realize ls docs/<directory>` ("" when it is not listed)."""
    for line in ok(realize(state, "ls", f"docs/{directory}")).splitlines()[1:]:
        if line.split()[-1] == name:
            return line
    return ""


def test_background_transfers_keep_to_the_peer_rate_and_nfs_reads_are_not_limited(
    household: Callable[[str], Path],  # noqa: F811
) -> None:
    """b takes at most 2 MiB/s from a for what it realizes in the background (`--peer-rate
    2M`): a 6 MiB file arriving under `real/` takes about 3 s to come. Meanwhile an NFS
    client on b reads another 6 MiB file that only a has, at full speed."""
    rate = 2 << 20
    a, b = paired(household, "--peer-rate", "2M")
    (area_dir(b) / "real").mkdir()
    ok(realize(b, "mark", "real", str(area_dir(b) / "real")))
    (area_dir(a) / "real").mkdir(exist_ok=True)
    read_now = os.urandom(6 << 20)
    (area_dir(a) / "read-now.bin").write_bytes(read_now)
    wait_for("read-now.bin shows on b", lambda: listed(b, "read-now.bin") is not None)

    background = os.urandom(6 << 20)
    (area_dir(a) / "real" / "big.bin").write_bytes(background)
    wait_for("big.bin shows on b", lambda: indexed(b, b"real/big.bin") is not None)
    started = time.monotonic()

    async def read(nfs: Nfs) -> tuple[bytes, float]:
        root = await nfs.mount(b"/docs")
        fh = await nfs.lookup(root, b"read-now.bin")
        began = time.monotonic()
        data = b""
        while True:
            res = await nfs.read(fh, len(data), 1 << 20)
            data += bytes(res.data)
            if res.eof:
                return data, time.monotonic() - began

    nfs_port = json.loads((b / "server.json").read_text())["nfs_port"]
    data, seconds = run_on(nfs_port, read)
    assert data == read_now
    assert seconds < len(read_now) / rate / 2, f"the NFS read took {seconds:.2f} s"

    realized = area_dir(b) / "real" / "big.bin"
    wait_for("big.bin realized on b", lambda: realized.exists() and realized.stat().st_size
             == len(background), timeout=60)  # fmt: skip
    took = time.monotonic() - started
    # The bucket starts full (half a second of the rate): the rest comes at the rate.
    assert took >= (len(background) - rate / 2) / rate * 0.9, f"realized in {took:.2f} s"
    assert realized.read_bytes() == background


def test_sync_every_pulls_on_a_schedule_with_nothing_changed(
    household: Callable[[str], Path],  # noqa: F811
) -> None:
    """b started with `--sync-every 1` asks a for its log every second though nothing
    changes: a's status shows b's last ask moving on."""
    a, _ = paired(household, "--sync-every", "1")

    def last_asked() -> float:
        doc = json.loads(ok(realize(a, "status", "--json")))
        [area] = doc["areas"]
        [row] = area["peers"]
        return row["last_asked"] or 0.0

    wait_for("b asked a once", lambda: last_asked() > 0)
    first = last_asked()
    time.sleep(2.5)
    assert last_asked() >= first + 1


def test_a_file_made_under_unreal_leaves_the_disk_only_once_another_peer_holds_it(
    household: Callable[[str], Path],  # noqa: F811
) -> None:
    """On a, `out/` and `solo/` are marked unreal; on b, `out/` is marked keep. A file a makes
    in `out/` stays Real until b has fetched and pinned it (HOLDS says so), then moves into
    a's cache, evictable, and still reads there. One in `solo/`, which b only lists, stays
    Real on a: it is the only copy."""
    a, b = paired(household)
    for directory in ("out", "solo"):
        (area_dir(a) / directory).mkdir()
        ok(realize(a, "mark", "unreal", str(area_dir(a) / directory)))
    (area_dir(b) / "out").mkdir()
    ok(realize(b, "mark", "keep", str(area_dir(b) / "out")))

    shared, alone = os.urandom(3 * 256 * 1024 + 7), os.urandom(100_000)
    (area_dir(a) / "out" / "f.bin").write_bytes(shared)
    (area_dir(a) / "solo" / "g.bin").write_bytes(alone)
    wait_for("out/f.bin pinned on b", lambda: "100% pinned" in listed_in(b, "out", "f.bin"))
    wait_for("out/f.bin moved into a's cache", lambda: listed_in(a, "out", "f.bin").split()[0]
             == "unreal", timeout=60)  # fmt: skip
    assert not (area_dir(a) / "out" / "f.bin").exists()
    row = listed_in(a, "out", "f.bin").split()
    assert "100%" in row and "pinned" not in row, row  # evictable: b holds it

    entry = indexed(a, b"solo/g.bin")
    assert entry is not None and entry.layer == Layer.REAL
    time.sleep(3)  # past the first looks: b never holds it
    entry = indexed(a, b"solo/g.bin")
    assert entry is not None and entry.layer == Layer.REAL
    assert (area_dir(a) / "solo" / "g.bin").read_bytes() == alone

    assert read_through_nfs(a, b"out/f.bin") == shared


def bytes_in(state: Path) -> int:
    """Bytes the server received from its peers so far (`realize status --json`)."""
    doc = json.loads(ok(realize(state, "status", "--json")))
    return sum(peer["bytes_in"] for peer in doc["peers"])


def test_an_edit_of_a_large_file_moves_little_more_than_what_changed(
    household: Callable[[str], Path],  # noqa: F811
) -> None:
    """1 MiB inserted in the middle of a 32 MiB file on a (off the chunk boundaries, so that
    every later chunk changes): b, which holds the old version
    Real (under `real/`) or pinned in its cache (under `kept/`), builds the new one from it
    and receives a few MiB, not 33."""
    a, b = paired(household)
    for directory, mark in (("real", "real"), ("kept", "keep")):
        (area_dir(b) / directory).mkdir()
        ok(realize(b, "mark", mark, str(area_dir(b) / directory)))
        (area_dir(a) / directory).mkdir(exist_ok=True)
    # Different contents: a blob's keep pin is one, whichever paths share it.
    olds = {directory: os.urandom(32 << 20) for directory in ("real", "kept")}
    for directory, old in olds.items():
        (area_dir(a) / directory / "big.bin").write_bytes(old)
    realized = area_dir(b) / "real" / "big.bin"

    def arrived(directory: str, content: bytes) -> bool:
        entry = indexed(b, f"{directory}/big.bin".encode())
        if entry is None or entry.blob != blake3.blake3(content).digest():
            return False
        if directory == "kept":
            return "100% pinned" in listed_in(b, "kept", "big.bin")
        return realized.exists() and realized.stat().st_size == len(content)

    for directory, old in olds.items():
        wait_for(f"the old {directory}/big.bin on b", lambda d=directory, o=old: arrived(d, o),
                 timeout=60)  # fmt: skip
    news = {}
    for directory, old in olds.items():
        # Off the chunk boundaries: every fixed chunk after it shifts.
        at = (16 << 20) + 777
        new = news[directory] = old[:at] + os.urandom((1 << 20) + 12345) + old[at:]
        before = bytes_in(b)
        (area_dir(a) / directory / "big.bin").write_bytes(new)
        wait_for(f"the new {directory}/big.bin on b", lambda d=directory, n=new: arrived(d, n),
                 timeout=60)  # fmt: skip
        moved = bytes_in(b) - before
        assert moved < 4 << 20, f"{moved} bytes moved for {directory}/big.bin"
    assert realized.read_bytes() == news["real"]

    assert read_through_nfs(b, b"kept/big.bin") == news["kept"]
