"""The `realize` control command, run as a user runs it (`python -m nfsd.cli`): init, area add,
start in the background, status, mount-cmd for each OS, stop, `serve DIR`, and the errors a
user meets, each with exit status 2 and a message that says what to do.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Nfs, run_on
from tests.support.server import REPO, start_server
from xdr.nfs3 import (
    NFSPROC3,
    LOOKUP3args,
    REMOVE3args,
    RENAME3args,
    RMDIR3args,
    diropargs3,
    nfsstat3,
)

ENV = dict(os.environ, PYTHONPATH=str(REPO))


def realize(state_dir: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "nfsd.cli", "--state-dir", str(state_dir), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=ENV,
    )


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stdout}{result.stderr}"
    return result.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie child of nobody we wait for still counts as gone
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    """A state directory; a background server left running by a failed test is stopped."""
    state_dir = tmp_path / "state"
    yield state_dir
    pid_file = state_dir / "server.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text())
        if _alive(pid):
            os.kill(pid, signal.SIGTERM)


def test_init_add_start_status_mount_cmd_stop(state: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "cat.jpg").write_bytes(b"meow")

    out = ok(realize(state, "init", "--port", "0", "--portmap", "off"))
    assert "initialised" in out
    assert (state / "config.json").exists()
    out = ok(realize(state, "area", "add", "photos", str(photos)))
    assert "photos" in out and str(photos) in out
    assert ok(realize(state, "area", "list")).split() == ["photos", str(photos)]

    out = ok(realize(state, "status"))
    assert "not running" in out and "photos" in out

    out = ok(realize(state, "start", "--port", "0", "--portmap", "off"))
    assert "started" in out
    pid = int((state / "server.pid").read_text())
    assert _alive(pid)

    out = ok(realize(state, "status"))
    assert "running" in out and "not running" not in out
    assert f"pid {pid}" in out
    assert re.search(rf"photos\s+{re.escape(str(photos))}", out)
    port = int(re.search(r"nfs port (\d+)", out).group(1))
    assert port > 0

    # the started server serves the area
    assert json.loads((state / "server.json").read_text())["nfs_port"] == port

    async def body(nfs: Nfs) -> None:
        root = await nfs.mount("/photos")
        assert await nfs.names(root) == {b"cat.jpg"}
        fh = await nfs.lookup(root, "cat.jpg")
        assert bytes((await nfs.read(fh)).data) == b"meow"

    run_on(port, body)

    linux = ok(realize(state, "mount-cmd", "--os", "linux"))
    assert "mount -t nfs -o vers=3,proto=tcp,mountproto=tcp,nolock" in linux
    assert f"port={port},mountport={port}" in linux
    assert "localhost:/photos /mnt/photos" in linux
    macos = ok(realize(state, "mount-cmd", "--os", "macos"))
    assert "mount_nfs -o vers=3,tcp,locallocks" in macos and "nolocks" not in macos
    assert f"port={port}" in macos and "localhost:/photos" in macos
    assert "--host" not in macos
    named = ok(realize(state, "mount-cmd", "--os", "linux", "--host", "nas.example"))
    assert "nas.example:/photos" in named
    windows = ok(realize(state, "mount-cmd", "--os", "windows"))
    assert "2049" in windows and "photos" in windows  # not on the standard port: says why

    again = realize(state, "start", "--port", "0", "--portmap", "off")
    assert again.returncode == 2 and "already running" in again.stderr

    out = ok(realize(state, "stop"))
    assert "stopped" in out
    assert not _alive(pid)
    assert not (state / "server.pid").exists()
    assert "not running" in ok(realize(state, "status"))
    assert "no server is running" in ok(realize(state, "stop"))
    log = (state / "server.log").read_text()
    assert "Traceback" not in log


def test_mount_cmd_for_windows_on_standard_ports(state: Path, tmp_path: Path) -> None:
    """With the server on 2049 and a portmapper (the defaults as root), mount.exe works."""
    share = tmp_path / "share"
    share.mkdir()
    ok(realize(state, "init"))
    ok(realize(state, "area", "add", "share", str(share)))
    windows = ok(realize(state, "mount-cmd", "--os", "windows"))
    linux = ok(realize(state, "mount-cmd", "--os", "linux"))
    if os.geteuid() == 0:
        assert "mount.exe -o anon,nolock \\\\localhost\\share Z:" in windows
        assert "vers=3,proto=tcp,mountproto=tcp,nolock localhost:/share /mnt/share" in linux
    else:
        assert "2049" in windows
        assert "port=20490" in linux


def test_area_add_of_a_missing_directory(state: Path, tmp_path: Path) -> None:
    ok(realize(state, "init"))
    missing = tmp_path / "not-there"
    result = realize(state, "area", "add", "docs", str(missing))
    assert result.returncode == 2
    assert str(missing) in result.stderr and "not a directory" in result.stderr
    assert "Traceback" not in result.stderr
    a_file = tmp_path / "file"
    a_file.write_text("x")
    result = realize(state, "area", "add", "docs", str(a_file))
    assert result.returncode == 2 and "not a directory" in result.stderr
    assert ok(realize(state, "area", "list")) == ""


def test_area_add_errors(state: Path, tmp_path: Path) -> None:
    ok(realize(state, "init"))
    ok(realize(state, "area", "add", "docs", str(tmp_path)))
    result = realize(state, "area", "add", "docs", str(tmp_path))
    assert result.returncode == 2 and "exists" in result.stderr
    for bad in ("a/b", "..", "."):
        result = realize(state, "area", "add", bad, str(tmp_path))
        assert result.returncode == 2 and "invalid area name" in result.stderr, bad


def test_start_without_areas(state: Path) -> None:
    ok(realize(state, "init"))
    result = realize(state, "start", "--port", "0", "--portmap", "off")
    assert result.returncode == 2
    assert "no areas" in result.stderr and "realize area add" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (state / "server.pid").exists()


def test_cache_limit_mistakes_are_explained(state: Path, tmp_path: Path) -> None:
    ok(realize(state, "init"))
    ok(realize(state, "area", "add", "photos", str(tmp_path)))
    for args, message in (
        (["--area-cache-max", "music=1G"], "no area named music"),
        (["--area-cache-max", "photos"], "is not AREA=SIZE"),
        (["--area-cache-max", "photos=lots"], "is not a size like 10G"),
        (["--cache-max", "120%"], "is not a size like 10G"),
    ):
        result = realize(state, "run", "--port", "0", "--portmap", "off", *args)
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr)


def test_commands_on_an_uninitialised_state_dir(state: Path) -> None:
    for args in (["status"], ["start", "--port", "0"], ["area", "list"], ["mount-cmd"]):
        result = realize(state, *args)
        assert result.returncode == 2, args
        assert "realize init" in result.stderr, args


def test_import_fsck_and_source_add_work_without_a_server(state: Path, tmp_path: Path) -> None:
    """With no server running, import, fsck and source add work on the store itself; mark and
    ls need the server and say so."""
    source_area, source = tmp_path / "source-area", tmp_path / "source"
    source_area.mkdir()
    (source_area / "a.txt").write_text("from the source\n")
    server = start_server({"area": source_area}, source, extra=["--rest", "0.1"])
    try:
        deadline = time.monotonic() + 20
        while "create" not in ok(realize(source, "history", "area")):
            assert time.monotonic() < deadline, "the source never hashed a.txt"
            time.sleep(0.1)
    finally:
        server.stop()
    area = tmp_path / "area"
    area.mkdir()
    ok(realize(state, "init"))
    ok(realize(state, "area", "add", "area", str(area)))

    imported = realize(state, "import", "area", str(source))
    assert "1 files" in ok(imported) and "realize source add" in imported.stdout
    assert imported.stderr == ""
    assert not (area / "a.txt").exists()  # listed in the index, not copied
    assert "attached" in ok(realize(state, "source", "add", str(source)))
    assert json.loads((state / "config.json").read_text())["sources"] == [str(source)]
    assert "every Unreal file has its manifest" in ok(realize(state, "fsck"))
    for args in (["ls"], ["mark", "keep", "area/a.txt"]):
        result = realize(state, *args)
        assert result.returncode == 2, args
        assert "no server is running" in result.stderr and "Traceback" not in result.stderr


def test_start_reports_a_server_that_cannot_start(state: Path, tmp_path: Path) -> None:
    area = tmp_path / "area"
    area.mkdir()
    ok(realize(state, "init"))
    ok(realize(state, "area", "add", "area", str(area)))
    area.rmdir()  # the directory went away after it was added
    result = realize(state, "start", "--port", "0", "--portmap", "off")
    assert result.returncode == 2
    assert "did not start" in result.stderr
    assert not (state / "server.pid").exists()


def test_serve_a_directory_in_the_foreground(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "hello.txt").write_text("hi")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "nfsd.cli",
            "serve",
            str(shared),
            "--port",
            "0",
            "--portmap",
            "off",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
        env=ENV,
    )
    try:
        lines = []
        deadline = time.monotonic() + 30
        assert process.stdout is not None
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "ready" in line:
                break
        text = "".join(lines)
        assert "ready" in text, text
        port = int(re.search(r"nfs port (\d+)", text).group(1))
        assert "/shared" in text
        assert (shared / ".realize").is_dir()

        async def body(nfs: Nfs) -> None:
            root = await nfs.mount("/shared")
            # the state directory inside the shared directory is not shown, and cannot be
            # moved into view, removed or replaced (it holds the handle key)
            assert await nfs.names(root) == {b"hello.txt"}
            state = diropargs3(root, b".realize")
            for proc, args in [
                (NFSPROC3.LOOKUP, LOOKUP3args(state)),
                (NFSPROC3.RENAME, RENAME3args(state, diropargs3(root, b"stolen"))),
                (NFSPROC3.REMOVE, REMOVE3args(state)),
                (NFSPROC3.RMDIR, RMDIR3args(state)),
            ]:
                assert await nfs.status(proc, args) == nfsstat3.NFS3ERR_NOENT, proc.name
            await nfs.mkdir(root, "empty")
            status = await nfs.status(
                NFSPROC3.RENAME, RENAME3args(diropargs3(root, b"empty"), state)
            )
            assert status != nfsstat3.NFS3_OK
            assert await nfs.names(root) == {b"hello.txt", b"empty"}

        run_on(port, body)
        assert (shared / ".realize" / "db").is_dir()
        # The control command reaches it by the state directory the start-up lines name.
        assert f"realize --state-dir {shared / '.realize'} ls" in text, text
        listing = ok(realize(shared / ".realize", "ls", str(shared / "hello.txt")))
        assert listing.splitlines()[1].split()[0] == "real" and "shared/hello.txt" in listing
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            rest = process.communicate(timeout=20)[0]
        except subprocess.TimeoutExpired:
            process.kill()
            rest = process.communicate()[0]
    assert process.returncode == 0
    assert "Traceback" not in rest


def test_serve_of_a_file_is_refused(tmp_path: Path) -> None:
    a_file = tmp_path / "file.txt"
    a_file.write_text("not a directory")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "nfsd.cli",
            "serve",
            str(a_file),
            "--port",
            "0",
            "--portmap",
            "off",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=ENV,
    )
    assert result.returncode == 2 and "not a directory" in result.stderr
