"""How control commands find their server, and `realize status`, run as a user runs them.

`realize serve DIR` writes no configuration: a command given a path inside DIR (or typed
inside it) finds DIR/.realize, and one typed anywhere finds the one server this user runs.
`realize status` shows each peer's link (connected, last seen, bytes in and out), each area's
sync state with each peer sharing it, its conflicts, and the cache; `--json` the same as one
document. Real server processes, their homes in temporary directories.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import blake3
import pytest
import trio

from nfsd.cli.status import render
from nfsd.control import ControlService
from nfsd.store.blobs import BlobStore
from nfsd.store.db import Store
from nfsd.vfs.merged import MergedTree
from tests.support.server import REPO
from tests.test_household import area_dir, start
from tests.test_peer_link import (  # noqa: F401 (household is a fixture)
    connected,
    household,
    ok,
    realize,
    realize_process,
    token_of,
    wait_for,
)


@pytest.fixture
def home(tmp_path: Path) -> dict[str, str]:
    """An environment whose home and runtime directory are temporary: no default state
    directory, and this test's servers the only ones recorded."""
    env = dict(os.environ, PYTHONPATH=str(REPO), HOME=str(tmp_path / "home"))
    env["XDG_RUNTIME_DIR"] = str(tmp_path / "run")
    env.pop("REALIZE_STATE_DIR", None)
    (tmp_path / "home").mkdir()
    (tmp_path / "run").mkdir(mode=0o700)
    return env


def user(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    """`realize ARGS` typed in `cwd`, without --state-dir."""
    return subprocess.run(
        [sys.executable, "-m", "nfsd.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env=env,
    )


SERVE_OPTIONS = ["--port", "0", "--portmap", "off", "--peer-port", "0", "--rest", "0.2"]


@pytest.fixture
def serve(home: dict[str, str], tmp_path: Path) -> Iterator[Callable[[Path], subprocess.Popen]]:
    """`realize serve DIR` in the foreground until it is ready; stopped after the test."""
    started: list[subprocess.Popen] = []

    def run(directory: Path) -> subprocess.Popen:
        output = tmp_path / f"serve-{len(started)}.log"
        with open(output, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "nfsd.cli", "serve", str(directory), *SERVE_OPTIONS],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=home,
            )
        process.output = output  # type: ignore[attr-defined]
        started.append(process)
        wait_for(f"serve {directory} is ready", lambda: "ready" in output.read_text())
        return process

    yield run
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=20)


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    process.wait(timeout=20)
    said = process.output.read_text()  # type: ignore[attr-defined]
    assert process.returncode == 0 and "Traceback" not in said, said


def test_commands_find_a_served_directory_from_its_paths_and_from_anywhere(
    tmp_path: Path, home: dict[str, str], serve: Callable[[Path], subprocess.Popen]
) -> None:
    shared = tmp_path / "home" / "Shared"
    (shared / "films").mkdir(parents=True)
    (shared / "films" / "big.iso").write_bytes(b"x" * 10_000)
    server = serve(shared)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()

    # A path inside the area, typed anywhere: its server is the state directory above it.
    marked = user(home, elsewhere, "mark", "unreal", str(shared / "films" / "big.iso"))
    assert "marked unreal" in ok(marked), marked.stderr
    listing = ok(user(home, elsewhere, "ls", str(shared / "films" / "big.iso")))
    assert listing.splitlines()[1].split()[0] == "unreal"
    # Relative paths and the current directory, inside the area.
    assert "Shared/films/big.iso" in ok(user(home, shared / "films", "ls", "big.iso"))
    inside = ok(user(home, shared / "films", "status"))
    assert inside.startswith("server:  running") and f"state:   {shared / '.realize'}" in inside
    # Anywhere else: the one server this user runs.
    anywhere = ok(user(home, elsewhere, "status"))
    assert f"state:   {shared / '.realize'}" in anywhere
    assert re.search(rf"Shared\s+{re.escape(str(shared))}", anywhere), anywhere
    # --state-dir names it too, although `serve` wrote no configuration there.
    named = ok(user(home, elsewhere, "--state-dir", str(shared / ".realize"), "status"))
    assert named.startswith("server:  running") and "Shared" in named

    # Mistakes are one sentence each.
    for command in ("ls", "status"):
        outside = user(home, elsewhere, command, str(elsewhere / "file.txt"))
        assert outside.returncode == 2, outside
        assert outside.stderr.count("\n") == 1 and "is not inside an area" in outside.stderr
    stop(server)
    gone = user(home, elsewhere, "mark", "keep", str(shared / "films" / "big.iso"))
    assert gone.returncode == 2 and gone.stderr.count("\n") == 1, gone
    assert f"no server is running for {shared / '.realize'}" in gone.stderr
    assert "not running" in ok(user(home, shared, "status"))
    nowhere = user(home, elsewhere, "ls", str(elsewhere / "file.txt"))
    assert nowhere.returncode == 2 and nowhere.stderr.count("\n") == 1, nowhere
    assert "is in no area of a Realize server" in nowhere.stderr


def test_with_two_servers_a_command_typed_elsewhere_asks_which(
    tmp_path: Path, home: dict[str, str], serve: Callable[[Path], subprocess.Popen]
) -> None:
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    serve(one)
    serve(two)
    asked = user(home, tmp_path, "status")
    assert asked.returncode == 2 and "2 servers run" in asked.stderr, asked
    assert f"state:   {two / '.realize'}" in ok(user(home, tmp_path, "status", str(two)))


def _status(state: Path) -> dict:
    return json.loads(ok(realize(state, "status", "--json")))


def test_status_shows_peers_sync_state_and_the_cache(
    household: Callable[[str], Path],  # noqa: F811
) -> None:
    a, b = household("a"), household("b")
    # Not running: the configuration and the roster, nothing the server would say.
    ok(realize_process(a, "peer", "add", "b", token_of(b)))
    idle = _status(a)
    assert idle["server"] == {"running": False} and idle["cache"] is None
    assert [p["name"] for p in idle["peers"]] == ["b"] and not idle["peers"][0]["connected"]
    assert idle["areas"][0]["name"] == "docs" and idle["areas"][0]["stamped"] is None
    assert "no (server not running)" in ok(realize(a, "status"))

    port_a = start(a)
    ok(realize_process(b, "peer", "add", "a", token_of(a), "--address", f"127.0.0.1:{port_a}"))
    start(b)
    wait_for("b's link to a", lambda: connected(b, "a") == "yes (dialled)")
    content = os.urandom(50_000)
    (area_dir(a) / "report.bin").write_bytes(content)
    blob = blake3.blake3(content).digest()
    wait_for("a hashed it", lambda: f"blob {blob.hex()[:16]}" in ok(realize(a, "history", "docs")))
    ok(realize(b, "sync"))  # a live link may have pulled it already

    on_a, on_b = _status(a), _status(b)
    assert on_a["server"]["running"] and on_a["peer_links"] and on_a["peer_id"]
    assert on_a["cache"] is not None and "cached" in on_a["cache"]
    [b_seen_by_a] = on_a["peers"]
    assert b_seen_by_a["name"] == "b" and b_seen_by_a["connected"]
    assert not b_seen_by_a["dialled"]  # b dialled in
    [a_seen_by_b] = on_b["peers"]
    assert a_seen_by_b["connected"] and a_seen_by_b["dialled"]
    # The sync carried the history; the bytes are counted on both sides of the link.
    assert a_seen_by_b["bytes_in"] > 0 and a_seen_by_b["bytes_out"] > 0
    assert b_seen_by_a["bytes_in"] > 0 and b_seen_by_a["bytes_out"] > 0

    # a's log of docs was stamped up to the create, and b acknowledged all of it.
    [docs_a] = on_a["areas"]
    assert docs_a["stamped"] >= 1 and docs_a["conflicts"] == 0 and docs_a["conflicts_complete"]
    [b_row] = docs_a["peers"]
    assert b_row["peer"] == "b" and b_row["behind"] == 0
    assert b_row["acknowledged"] == docs_a["stamped"] and b_row["acknowledged_at"]
    assert b_row["last_asked"] and b_row["refused"] == 0
    # b has applied a's log up to that sequence.
    [a_row] = on_b["areas"][0]["peers"]
    assert a_row["peer"] == "a" and a_row["applied"] == docs_a["stamped"]
    assert not a_row["catching_up"]

    # A change a makes later: b is behind by it until it syncs again.
    (area_dir(a) / "later.txt").write_bytes(b"later\n")
    wait_for("a hashed later.txt", lambda: "later.txt" in ok(realize(a, "history", "docs")))

    # Once b pulled that too, nothing of a's log is left for it: status stamps what was
    # published, so a change not served yet still counts.
    ok(realize(b, "sync"))
    docs_a = _status(a)["areas"][0]
    assert docs_a["stamped"] > b_row["acknowledged"]  # the later change
    assert docs_a["peers"][0]["behind"] == 0
    assert docs_a["peers"][0]["acknowledged"] == docs_a["stamped"]

    # The table shows the same.
    table = ok(realize(b, "status"))
    assert re.search(r"^  a\s+yes \(dialled\)\s+now\s+\S+ \S+\s+\S+ \S+$", table, re.M), table
    assert re.search(r"^  NAME\s+DIRECTORY\s+LOG\s+CONFLICTS$", table, re.M), table
    # b's own log holds what it relayed of a's: a may not have acknowledged that yet.
    assert re.search(r"^  AREA\s+PEER\s+BEHIND\s+ACKNOWLEDGED\s+APPLIED\s+", table, re.M), table
    assert re.search(r"^  docs\s+a\s+\d+\s+\d{4}-\d\d-\d\d \S+\s+\d+\s+", table, re.M), table
    ok(realize(a, "sync"))  # now a has pulled all of b's log
    [a_row] = _status(b)["areas"][0]["peers"]
    assert a_row["behind"] == 0 and a_row["acknowledged"] >= 1


def test_status_of_a_server_without_peers(
    household: Callable[[str], Path],  # noqa: F811
) -> None:
    a = household("a")
    start(a)
    doc = _status(a)
    assert doc["server"]["running"] and doc["peer_links"] and doc["peers"] == []
    assert doc["areas"][0]["peers"] == [] and doc["areas"][0]["conflicts"] == 0
    assert "peers:   none ('realize id' shows how to pair)" in ok(realize(a, "status"))


@pytest.mark.inproc
def test_status_of_a_server_without_a_peer_service(tmp_path: Path) -> None:
    """A server with no peer links still answers STATUS: its areas, no peers, no links."""
    area = tmp_path / "docs"
    area.mkdir()
    store = Store(tmp_path / "db")
    tree = MergedTree(store, {"docs": str(area)})
    try:
        service = ControlService(tree, BlobStore(store))
        res = trio.run(service.status, None, None)
    finally:
        tree.close()
        store.close()
    assert not res.linked and res.peers == []
    assert [(a.name, a.stamped, a.conflicts, a.conflicts_counted) for a in res.areas] == [
        (b"docs", 0, 0, True)
    ]
    doc = {
        "state_dir": str(tmp_path),
        "server": {
            "running": True,
            "pid": 1,
            "bind": "127.0.0.1",
            "nfs_port": 1,
            "mount_port": 1,
            "portmap_port": None,
            "peer_port": None,
            "connections": 0,
            "calls": 0,
        },
        "problem": None,
        "peer_id": None,
        "peer_links": res.linked,
        "peers": [],
        "areas": [
            {
                "name": "docs",
                "directory": str(area),
                "stamped": 0,
                "conflicts": 0,
                "conflicts_complete": True,
                "peers": [],
            }
        ],
        "cache": None,
    }
    assert "peers:   none (this server has no peer links)" in render(doc)


def test_status_elsewhere_than_a_state_directory_says_what_to_do(tmp_path: Path) -> None:
    result = realize(tmp_path / "nothing", "status")
    assert result.returncode == 2 and "realize init" in result.stderr
    assert result.stderr.count("\n") == 1
