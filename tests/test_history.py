"""The history of an area: changes made through NFS and changes found on the disk at start,
as `realize history` shows them."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import trio

from nfsd.rpc.client import open_client
from tests.support.server import REPO, start_server
from xdr.codec import Arm
from xdr.mount import MOUNT_PROGRAM, dirpath, mountres3
from xdr.nfs3 import (
    NFS_PROGRAM,
    NFSPROC3,
    PROCEDURES,
    CREATE3args,
    LINK3args,
    MKDIR3args,
    REMOVE3args,
    RENAME3args,
    SYMLINK3args,
    WRITE3args,
    createmode3,
    diropargs3,
    nfs_fh3,
    sattr3,
    stable_how,
    symlinkdata3,
)
from xdr.rpc import auth_flavor
from xdr.rpc_fast import Credential

ROOT = Credential(auth_flavor.AUTH_SYS, 0, 0, [], b"test")
REST = "0.3"


async def nfs(client, proc, args):
    _, args_type, res_type = PROCEDURES[proc]
    result = await client.call(NFS_PROGRAM, 3, proc, args_type, args, res_type)
    assert result.tag == 0, result
    return result.value


def ops(state) -> list[tuple[str, ...]]:
    out = subprocess.run(
        [sys.executable, "-m", "nfsd.cli", "--state-dir", str(state), "history", "area"],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    ).stdout
    rows = []
    for line in out.splitlines():
        words = line.split()
        row = (words[3], words[4])
        if len(words) > 6 and words[5] == "->":
            row += (words[6],)
        rows.append(row)
    return rows


def wait_for(state, expected_count: int, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        rows = ops(state)
        if len(rows) >= expected_count or time.monotonic() > deadline:
            return rows
        time.sleep(0.2)


def test_changes_through_nfs_are_recorded_once_files_rest(tmp_path):
    area, state = tmp_path / "area", tmp_path / "state"
    area.mkdir()
    server = start_server({"area": area}, state, extra=["--rest", REST])

    async def body() -> None:
        async with open_client("127.0.0.1", server.nfs_port, ROOT) as client:
            mounted = await client.call(MOUNT_PROGRAM, 3, 1, dirpath, b"/area", mountres3)
            root = nfs_fh3(mounted.value.fhandle)
            docs = (
                await nfs(
                    client,
                    NFSPROC3.MKDIR,
                    MKDIR3args(diropargs3(root, b"docs"), sattr3(mode=0o755)),
                )
            ).obj
            made = await nfs(
                client,
                NFSPROC3.CREATE,
                CREATE3args(
                    diropargs3(docs, b"a.txt"), Arm(createmode3.GUARDED, sattr3(mode=0o644))
                ),
            )
            for offset in range(0, 40, 10):  # several writes: one CREATE once it rests
                await nfs(
                    client,
                    NFSPROC3.WRITE,
                    WRITE3args(made.obj, offset, 10, stable_how.UNSTABLE, b"0123456789"),
                )
            # Each change is recorded once the file rests: wait for it before the next one.
            await trio.to_thread.run_sync(wait_for, state, 2)
            await nfs(
                client, NFSPROC3.WRITE, WRITE3args(made.obj, 0, 4, stable_how.FILE_SYNC, b"ABCD")
            )
            await trio.to_thread.run_sync(wait_for, state, 3)
            await nfs(
                client,
                NFSPROC3.RENAME,
                RENAME3args(diropargs3(docs, b"a.txt"), diropargs3(root, b"b.txt")),
            )
            await nfs(client, NFSPROC3.LINK, LINK3args(made.obj, diropargs3(root, b"c.txt")))
            await nfs(
                client,
                NFSPROC3.SYMLINK,
                SYMLINK3args(diropargs3(root, b"s"), symlinkdata3(sattr3(), b"b.txt")),
            )
            await nfs(client, NFSPROC3.REMOVE, REMOVE3args(diropargs3(root, b"c.txt")))

    try:
        trio.run(body)
        rows = wait_for(state, 7)
    finally:
        server.stop()
    assert rows == [
        ("mkdir", "docs"),
        ("create", "docs/a.txt"),
        ("change", "docs/a.txt"),
        ("rename", "docs/a.txt", "b.txt"),
        ("link", "b.txt", "c.txt"),
        ("symlink", "s", "b.txt"),
        ("delete", "c.txt"),
    ], rows


def test_changes_made_on_disk_while_stopped_are_found_at_start(tmp_path):
    area, state = tmp_path / "area", tmp_path / "state"
    area.mkdir()
    (area / "keep.txt").write_text("same")
    (area / "edit.txt").write_text("before")
    (area / "gone.txt").write_text("bye")
    (area / "olddir").mkdir()
    server = start_server({"area": area}, state, extra=["--rest", REST])
    try:
        first = wait_for(state, 4)
    finally:
        server.stop()
    assert sorted(first) == [
        ("create", "edit.txt"),
        ("create", "gone.txt"),
        ("create", "keep.txt"),
        ("mkdir", "olddir"),
    ]
    (area / "gone.txt").unlink()
    (area / "olddir").rmdir()
    time.sleep(0.01)  # an edit later than the first scan, by more than a timestamp tick
    (area / "edit.txt").write_text("after, longer")
    (area / "new.txt").write_text("hello")
    server = start_server({"area": area}, state, extra=["--rest", REST])
    try:
        rows = wait_for(state, 8)
    finally:
        server.stop()
    assert sorted(rows[4:]) == [
        ("change", "edit.txt"),
        ("create", "new.txt"),
        ("delete", "gone.txt"),
        ("rmdir", "olddir"),
    ], rows
    assert ".realize" not in " ".join(" ".join(r) for r in rows)
