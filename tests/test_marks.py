"""Marks through the control command on a running server: `realize import`, `ls`, and `mark
real|keep|unreal|inherit` moving content between the Real layer and the cache, with what a
client sees through NFS staying the same (content, size, fileid)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import trio

from nfsd.control import socket_address
from nfsd.rpc.client import open_unix_client
from tests.conftest import Nfs, run_on
from tests.support.server import start_server
from tests.support.source import make_source, run_realize
from xdr.control import (
    CONTROL_PROGRAM,
    CONTROL_V1,
    CONTROLPROC,
    PROCEDURES,
    ctlstat,
    importargs,
    lsargs,
)
from xdr.rpc import accept_stat

MiB = 1 << 20


def ok(state: Path, *args: str) -> str:
    done = run_realize(state, *args)
    assert done.returncode == 0, f"realize {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def ls_rows(state: Path, path: str) -> dict[str, list[str]]:
    """`realize ls PATH` as name -> its columns (layer, mark..., cached, size)."""
    rows = {}
    for line in ok(state, "ls", path).splitlines()[1:]:
        name = line[57:].strip().rstrip("/")
        rows[name] = line[:57].split()
    return rows


async def read_all(nfs: Nfs, fh) -> bytes:
    data = bytearray()
    while True:
        res = await nfs.read(fh, len(data), MiB)
        data += res.data
        if res.eof:
            return bytes(data)


async def hostile_control_calls(state: Path) -> None:
    """Malformed control calls get the protocol's errors; nothing else happens."""
    with socket_address(state) as address:
        async with open_unix_client(address) as client:

            async def call(proc: CONTROLPROC, args: object) -> object:
                _, args_type, res_type = PROCEDURES[proc]
                return await client.call(
                    CONTROL_PROGRAM, CONTROL_V1, proc, args_type, args, res_type
                )

            for path in (b"area/a\0b", b"area/" + b"x" * 300, b"", b"/"):
                res = await call(CONTROLPROC.LS, lsargs(path, b""))
                assert res.status == ctlstat.INVAL, path
            assert (await call(CONTROLPROC.JOB, 12345)).status == ctlstat.NOENT
            res = await call(CONTROLPROC.IMPORT, importargs(b"area", b"/nonexistent"))
            assert res.status == ctlstat.INVAL and b"not a Realize state" in res.message
            reply, _ = await client.call_raw(
                CONTROL_PROGRAM, CONTROL_V1, CONTROLPROC.MARK, b"\0\0\0\x05ab"
            )
            assert reply.accepted and reply.stat == accept_stat.GARBAGE_ARGS
            reply, _ = await client.call_raw(CONTROL_PROGRAM, CONTROL_V1, 99, b"")
            assert reply.accepted and reply.stat == accept_stat.PROC_UNAVAIL


def test_marks_move_content_between_layers(tmp_path: Path) -> None:
    shared = os.urandom(3 * MiB + 777)
    source = make_source(tmp_path, {"big.bin": shared, "docs/note.txt": b"a note\n"})
    area, state = tmp_path / "area", tmp_path / "state"
    (area / "sub").mkdir(parents=True)
    mine = os.urandom(MiB + 5)
    (area / "sub" / "mine.bin").write_bytes(mine)
    (area / "local.txt").write_bytes(b"real here\n")
    state.mkdir()
    (state / "config.json").write_text(json.dumps({"areas": {"area": str(area)}}))
    server = start_server({"area": area}, state, extra=["--rest", "0.2"])
    try:
        # Attached and imported while the server runs: no restart.
        assert "attached" in ok(state, "source", "add", str(source))
        assert "2 files" in ok(state, "import", "area", str(source))
        rows = ls_rows(state, "area")
        assert rows["area"][:2] == ["-", "-"]  # the area itself: no layer, no mark
        assert rows["big.bin"][:3] == ["unreal", "-", "0%"], rows
        assert rows["local.txt"][:2] == ["real", "-"], rows

        ids: dict[str, int] = {}

        async def look(nfs: Nfs) -> None:
            root = await nfs.mount(b"/area")
            sub = await nfs.lookup(root, b"sub")
            ids["mine"] = (await nfs.getattr(await nfs.lookup(sub, b"mine.bin"))).fileid
            ids["big"] = (await nfs.getattr(await nfs.lookup(root, b"big.bin"))).fileid

        run_on(server.nfs_port, look)

        # keep: the whole blob fetched into the cache and pinned there.
        out = ok(state, "mark", "keep", "area/big.bin")
        assert "marked keep; 1 files, 3.0 MiB moved" in out, out
        assert ls_rows(state, "area/big.bin")["area/big.bin"][:4] == [
            "unreal",
            "keep",
            "100%",
            "pinned",
        ]
        # real on a directory: its Unreal file becomes a local file; the mark is inherited.
        ok(state, "mark", "real", "area/docs")
        assert (area / "docs" / "note.txt").read_bytes() == b"a note\n"
        note = ls_rows(state, "area/docs")["note.txt"]
        assert note[:4] == ["real", "real", "(from", "area/docs)"], note

        # unreal, given as a path of this machine: the local file leaves for the cache.
        # No source holds it, so it stays pinned as the only copy.
        ok(state, "mark", "unreal", str(area / "sub"))
        assert not (area / "sub" / "mine.bin").exists()
        mine_row = ls_rows(state, "area/sub")["mine.bin"]
        assert mine_row[:6] == ["unreal", "unreal", "(from", "area/sub)", "100%", "pinned"]

        async def same(nfs: Nfs) -> None:
            root = await nfs.mount(b"/area")
            sub = await nfs.lookup(root, b"sub")
            fh = await nfs.lookup(sub, b"mine.bin")
            attr = await nfs.getattr(fh)
            assert (attr.fileid, attr.size) == (ids["mine"], len(mine))
            assert await read_all(nfs, fh) == mine
            big = await nfs.lookup(root, b"big.bin")
            assert (await nfs.getattr(big)).fileid == ids["big"]

        run_on(server.nfs_port, same)

        # A file's own mark beats its directory's; inherit brings the directory's back.
        ok(state, "mark", "real", "area/sub/mine.bin")
        assert (area / "sub" / "mine.bin").read_bytes() == mine
        assert ls_rows(state, "area/sub")["mine.bin"][:2] == ["real", "real"]
        ok(state, "mark", "inherit", "area/sub/mine.bin")
        assert not (area / "sub" / "mine.bin").exists()
        run_on(server.nfs_port, same)

        # Mistakes get a sentence and a failing exit code; nothing changes.
        done = run_realize(state, "mark", "real", "area/nothing-here")
        assert done.returncode == 1 and "no area/nothing-here" in done.stderr, done
        done = run_realize(state, "mark", "real", "elsewhere/x")
        assert done.returncode == 1 and "no area elsewhere (areas: area)" in done.stderr, done
        done = run_realize(state, "ls", "area/../etc")
        assert done.returncode == 1 and "no '..'" in done.stderr, done
        done = run_realize(state, "mark", "keep", "/etc/hostname")
        assert done.returncode == 2 and "is not inside an area's directory" in done.stderr, done
        # The local path of an Unreal file names it though the file is not on the disk.
        assert ls_rows(state, str(area / "big.bin"))["area/big.bin"][0] == "unreal"

        assert "every Unreal file has its manifest" in ok(state, "fsck")
        trio.run(hostile_control_calls, state)
        assert "mine.bin" in ls_rows(state, "area/sub")  # still serving
    finally:
        server.stop()
    log = server.log()
    assert "Traceback" not in log, log

    # Stopped: the command says so rather than failing obscurely.
    done = run_realize(state, "ls", "area")
    assert done.returncode == 2 and "no server is running" in done.stderr, done
    # The marks and the moved content stay across a restart.
    server = start_server({"area": area}, state, sources=[source])
    try:
        assert ls_rows(state, "area/sub")["mine.bin"][:2] == ["unreal", "unreal"]
        run_on(server.nfs_port, same)
    finally:
        server.stop()
