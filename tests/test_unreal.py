"""Unreal files through NFS: listed beside Real ones, read from an attached source into the
verified cache, read again from the cache once the source is gone, realized when written."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import Nfs, run_on
from tests.support.server import REPO, start_server
from tests.support.source import make_source as make_source_of
from xdr.nfs3 import (
    NFSPROC3,
    LINK3args,
    READ3args,
    READDIRPLUS3args,
    READLINK3args,
    RENAME3args,
    diropargs3,
    ftype3,
    nfsstat3,
)

BIG = 3 * 1024 * 1024 + 12345  # several chunks and a partial last one


def realize(state: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "nfsd.cli", "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def make_source(base: Path) -> tuple[Path, bytes]:
    """A state directory whose area 'area' holds files hashed into its index."""
    area, state = base / "source-area", base / "source-state"
    (area / "docs").mkdir(parents=True)
    big = os.urandom(BIG)
    (area / "big.bin").write_bytes(big)
    (area / "docs" / "note.txt").write_text("a note\n")
    (area / "link").symlink_to("docs/note.txt")
    server = start_server({"area": area}, state, extra=["--rest", "0.1"])
    try:
        deadline = time.monotonic() + 20
        while realize(state, "history", "area").count("create") < 2:
            assert time.monotonic() < deadline, "the source never hashed its files"
            time.sleep(0.2)
    finally:
        server.stop()
    return state, big


def test_unreal_files_listed_read_cached_and_realized(tmp_path):
    source, big = make_source(tmp_path)
    ours_area, ours = tmp_path / "area", tmp_path / "state"
    ours_area.mkdir()
    (ours_area / "local.txt").write_text("real here\n")
    ours.mkdir()
    (ours / "config.json").write_text(json.dumps({"areas": {"area": str(ours_area)}}))
    assert "2 files" in realize(ours, "import", "area", str(source))
    assert not (ours_area / "big.bin").exists()  # listed, not copied

    server = start_server(
        {"area": ours_area},
        ours,
        sources=[source],
        extra=["--cache-max", "1G", "--cache-free", "1%", "--area-cache-max", "area=512M"],
    )
    seen: dict[str, object] = {}

    async def first(nfs: Nfs) -> None:
        root = await nfs.mount(b"/area")
        assert await nfs.names(root) == {b"local.txt", b"big.bin", b"docs", b"link"}
        # A directory only the index holds lists its entries too.
        docs = await nfs.lookup(root, b"docs")
        assert await nfs.names(docs) == {b"note.txt"}
        plus = await nfs.ok(NFSPROC3.READDIRPLUS, READDIRPLUS3args(docs, 0, bytes(8), 8192, 65536))
        listed = {e.name: e.name_attributes for e in plus.reply.entries}
        assert listed[b"note.txt"].size == len("a note\n")
        fh = await nfs.lookup(root, b"big.bin")
        before = await nfs.getattr(fh)
        assert before.type == ftype3.NF3REG and before.size == BIG
        data = bytearray()
        while True:
            res = await nfs.read(fh, len(data), 1 << 20)
            data += res.data
            if res.eof:
                break
        assert hashlib.sha256(data).digest() == hashlib.sha256(big).digest()
        after = await nfs.getattr(fh)
        assert (after.size, after.mtime, after.fileid) == (before.size, before.mtime, before.fileid)
        seen["fileid"] = before.fileid
        # The server rewrites its status file every 2 s: poll until it counts the read.
        deadline = time.monotonic() + 20
        while True:
            status = realize(ours, "status")
            rows = [line.split() for line in status.splitlines() if line.startswith("  area ")]
            row = " ".join(rows[1]) if len(rows) > 1 else ""  # after the header: "area"
            if "3.0 MiB" in row or "3.1 MiB" in row:
                break
            assert time.monotonic() < deadline, f"the cache never showed the read:\n{status}"
            time.sleep(0.2)
        assert "cache:" in status and "1.0 GiB limit" in status, status
        assert "512.0 MiB" in row, status  # the area's own cap
        link = await nfs.lookup(root, b"link")
        target = await nfs.ok(NFSPROC3.READLINK, READLINK3args(link))
        assert target.data == b"docs/note.txt"

    try:
        run_on(server.nfs_port, first)
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()

    # The source is gone: what was read is served from the cache; writing realizes.
    server = start_server({"area": ours_area}, ours)

    async def second(nfs: Nfs) -> None:
        root = await nfs.mount(b"/area")
        fh = await nfs.lookup(root, b"big.bin")
        assert (await nfs.getattr(fh)).fileid == seen["fileid"]
        res = await nfs.read(fh, BIG - 100, 4096)
        assert bytes(res.data) == big[-100:] and res.eof
        await nfs.ok(NFSPROC3.LINK, LINK3args(fh, diropargs3(root, b"big-link.bin")))
        await nfs.write(fh, b"CHANGED", 10)
        assert (await nfs.getattr(fh)).fileid == seen["fileid"]
        docs = await nfs.lookup(root, b"docs")
        note = await nfs.lookup(docs, b"note.txt")
        res = await nfs.call(NFSPROC3.READ, READ3args(note, 0, 100))
        assert res.tag != 0  # never read before, and no source now: an error, not garbage
        await nfs.ok(
            NFSPROC3.RENAME,
            RENAME3args(diropargs3(docs, b"note.txt"), diropargs3(root, b"moved.txt")),
        )
        assert b"moved.txt" in await nfs.names(root)
        assert await nfs.names(docs) == set()
        await nfs.remove(root, b"moved.txt")
        assert b"moved.txt" not in await nfs.names(root)

    try:
        run_on(server.nfs_port, second)
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()
    on_disk = (ours_area / "big.bin").read_bytes()
    assert on_disk == big[:10] + b"CHANGED" + big[17:]
    assert (ours_area / "big-link.bin").read_bytes() == on_disk  # one file, two names
    assert not (ours_area / "docs" / "note.txt").exists()
    report = realize(ours, "fsck")  # exits 0: nothing damaged
    assert "every Unreal file has its manifest" in report


def test_renames_among_unreal_entries_follow_rename_2(tmp_path):
    files = {"a.txt": b"first\n", "b.txt": b"second\n", "d/x.txt": b"x\n", "e/y.txt": b"y\n"}
    source = make_source_of(tmp_path, files)
    area, state = tmp_path / "area", tmp_path / "state"
    area.mkdir()
    state.mkdir()
    (state / "config.json").write_text(json.dumps({"areas": {"area": str(area)}}))
    assert "4 files" in realize(state, "import", "area", str(source))
    server = start_server({"area": area}, state, sources=[source])

    async def body(nfs: Nfs) -> None:
        root = await nfs.mount(b"/area")

        async def rename(old: bytes, new: bytes) -> int:
            args = RENAME3args(diropargs3(root, old), diropargs3(root, new))
            return (await nfs.call(NFSPROC3.RENAME, args)).tag

        a = await nfs.lookup(root, b"a.txt")
        assert await rename(b"a.txt", b"b.txt") == 0  # replaces the other Unreal file
        assert await nfs.names(root) == {b"b.txt", b"d", b"e"}
        b = await nfs.lookup(root, b"b.txt")
        assert (await nfs.getattr(b)).fileid == (await nfs.getattr(a)).fileid
        assert bytes((await nfs.read(b)).data) == b"first\n"
        assert await rename(b"b.txt", b"b.txt") == 0  # onto itself: nothing happens
        assert bytes((await nfs.read(b)).data) == b"first\n"
        assert await rename(b"b.txt", b"d") == nfsstat3.NFS3ERR_ISDIR
        assert await rename(b"d", b"b.txt") == nfsstat3.NFS3ERR_NOTDIR
        assert await rename(b"d", b"e") == nfsstat3.NFS3ERR_NOTEMPTY
        assert await rename(b"b.txt", b".realize-tmp-hidden") == nfsstat3.NFS3ERR_ACCES
        assert await nfs.names(root) == {b"b.txt", b"d", b"e"}
        # A Real directory or file onto an Unreal one: the same rules, nothing dropped.
        real_dir = await nfs.mkdir(root, b"real-dir")
        await nfs.create(real_dir, b"inside.txt")
        await nfs.create(root, b"real.txt")
        assert await rename(b"real-dir", b"e") == nfsstat3.NFS3ERR_NOTEMPTY
        assert await rename(b"real-dir", b"b.txt") == nfsstat3.NFS3ERR_NOTDIR
        assert await rename(b"real.txt", b"d") == nfsstat3.NFS3ERR_ISDIR
        e = await nfs.lookup(root, b"e")
        assert await nfs.names(e) == {b"y.txt"}
        assert await nfs.names(root) == {b"b.txt", b"d", b"e", b"real-dir", b"real.txt"}

    try:
        run_on(server.nfs_port, body)
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()
    assert "rename   a.txt -> b.txt" in realize(state, "history", "area")
