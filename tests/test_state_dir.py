"""The state directory keeps the handle key and the server (often root) writes there: it must
be private to the server's user, whatever the umask, and reached only through directories
and symlinks no other user can change (ssh's StrictModes). A state directory that fails the
check is refused before anything is written in it."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from nfsd.statedir import StateDirError, prepare, write_private
from tests.support.server import REPO, start_server

OTHER_UID = 54321  # a user who is neither root nor the server's


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@contextmanager
def umask(value: int) -> Iterator[None]:
    previous = os.umask(value)
    try:
        yield
    finally:
        os.umask(previous)


def needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("giving files to another user needs root")


def realize(state_dir: Path, *args: str, umask: int = 0o022) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "nfsd.cli", "--state-dir", str(state_dir), *args]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        command, capture_output=True, text=True, env=env, cwd=REPO, umask=umask, timeout=60
    )


# ---- what is created, and its modes ----


@pytest.mark.inproc
def test_created_private_whatever_the_umask(tmp_path):
    state = tmp_path / "new" / "deeper" / "state"
    with umask(0):  # the server's own umask
        assert prepare(state) == state
    assert mode(state) == 0o700
    assert mode(tmp_path / "new") == 0o755 and mode(tmp_path / "new" / "deeper") == 0o755


@pytest.mark.inproc
def test_an_existing_readable_state_directory_is_made_private(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    prepare(state)
    assert mode(state) == 0o700


@pytest.mark.inproc
def test_replaced_files_are_private_and_leave_no_temporary(tmp_path):
    path = tmp_path / "server.json"
    with umask(0):
        write_private(path, b"{}")
    assert mode(path) == 0o600 and path.read_bytes() == b"{}"
    path.chmod(0o666)
    write_private(path, b"[]")
    assert mode(path) == 0o600 and path.read_bytes() == b"[]"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server.json"]


def test_what_the_server_writes_is_private(tmp_path):
    """The state directory, db/, server.json, control.sock, and with `realize start` the pid
    file and the log, all private though the server runs with umask 0."""
    area = tmp_path / "area"
    area.mkdir()
    state = tmp_path / "state"
    assert realize(state, "init", "--port", "0", "--portmap", "off").returncode == 0
    assert realize(state, "area", "add", "area", str(area)).returncode == 0
    started = realize(state, "start", umask=0)
    assert started.returncode == 0, started.stderr
    try:
        assert mode(state) == 0o700
        assert mode(state / "db") == 0o700
        for name in ("server.json", "server.pid", "server.log", "control.sock"):
            assert mode(state / name) == 0o600, name
        assert json.loads((state / "server.json").read_text())["pid"] > 0
    finally:
        stopped = realize(state, "stop")
    assert stopped.returncode == 0, stopped.stderr


def test_a_served_state_directory_with_an_open_db_is_made_private(tmp_path):
    area = tmp_path / "area"
    area.mkdir()
    state = tmp_path / "state"
    (state / "db").mkdir(parents=True)
    (state / "db").chmod(0o755)
    server = start_server({"area": area}, state)
    try:
        assert mode(state) == 0o700 and mode(state / "db") == 0o700
    finally:
        server.stop()


# ---- what is refused ----


def test_a_state_directory_others_can_write_is_refused_and_left_alone(tmp_path):
    """Another user may have planted files in it already: the server does not start."""
    area = tmp_path / "area"
    area.mkdir()
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    config = {"areas": {"area": str(area)}, "server": {}}
    (state / "config.json").write_text(json.dumps(config))
    for command in (["run", "--port", "0", "--portmap", "off"], ["start"]):
        result = realize(state, *command)
        assert result.returncode == 2, result
        assert "refusing the state directory" in result.stderr
        assert "writable by other users (mode 0777)" in result.stderr
        assert "Traceback" not in result.stderr
        assert sorted(p.name for p in state.iterdir()) == ["config.json"]
        assert mode(state) == 0o777


@pytest.mark.inproc
@pytest.mark.parametrize("open_mode", [0o777, 0o770, 0o1777])
def test_a_state_directory_open_to_others_is_refused_even_sticky(tmp_path, open_mode):
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(open_mode)
    with pytest.raises(StateDirError, match="writable by other users"):
        prepare(state)


@pytest.mark.inproc
@pytest.mark.parametrize("open_mode", [0o777, 0o775, 0o757])
def test_a_way_through_a_directory_others_can_write_is_refused(tmp_path, open_mode):
    """They could rename the state directory away and put their own in its place."""
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(open_mode)
    for state in (shared / "state", shared / "missing" / "state"):
        with pytest.raises(StateDirError, match=f"{shared} is writable by other users"):
            prepare(state)
    assert list(shared.iterdir()) == []  # nothing created


def test_realize_init_through_an_open_directory_writes_nothing(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    result = realize(shared / "state", "init")
    assert result.returncode == 2 and "writable by other users" in result.stderr, result
    assert list(shared.iterdir()) == []


@pytest.mark.inproc
def test_a_way_through_a_directory_of_another_user_is_refused(tmp_path):
    needs_root()
    home = tmp_path / "home"
    (home / "state").mkdir(parents=True)
    os.chown(home, OTHER_UID, OTHER_UID)
    with pytest.raises(StateDirError, match=f"{home} is owned by uid {OTHER_UID}"):
        prepare(home / "state")


@pytest.mark.inproc
def test_a_state_directory_of_another_user_is_refused(tmp_path):
    needs_root()
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, OTHER_UID, OTHER_UID)
    with pytest.raises(StateDirError, match=f"owned by uid {OTHER_UID}"):
        prepare(state)


@pytest.mark.inproc
def test_a_sticky_directory_may_be_passed_to_an_entry_of_ours(tmp_path):
    """As /tmp: others may add entries, but not rename or remove ours."""
    needs_root()
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    assert prepare(sticky / "state") == sticky / "state"  # created there by us
    assert prepare(sticky / "new" / "state") == sticky / "new" / "state"
    theirs = sticky / "theirs"
    theirs.mkdir()
    os.chown(theirs, OTHER_UID, OTHER_UID)
    with pytest.raises(StateDirError, match=f"{theirs} is owned by uid {OTHER_UID}"):
        prepare(theirs / "state")


@pytest.mark.inproc
def test_a_name_taken_first_in_a_sticky_directory_is_refused(tmp_path):
    """Another user made the name we meant to create: a symlink to where they like."""
    needs_root()
    sticky = tmp_path / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    trap = sticky / "state"
    trap.symlink_to(elsewhere)
    os.lchown(trap, OTHER_UID, OTHER_UID)
    with pytest.raises(StateDirError, match=f"{trap} is a symlink owned by uid {OTHER_UID}"):
        prepare(trap / "deeper")
    assert list(elsewhere.iterdir()) == []


@pytest.mark.inproc
def test_a_symlinked_state_directory_is_judged_by_its_owner_and_its_target(tmp_path):
    needs_root()
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to("real")
    assert prepare(link) == real  # ours: the way goes on to the target
    os.lchown(link, OTHER_UID, OTHER_UID)
    with pytest.raises(StateDirError, match="symlink owned by uid"):
        prepare(link)
    open_target = tmp_path / "open"
    open_target.mkdir()
    open_target.chmod(0o777)
    ours = tmp_path / "ours"
    ours.symlink_to(open_target / "state")
    with pytest.raises(StateDirError, match=f"{open_target} is writable by other users"):
        prepare(ours)


@pytest.mark.inproc
def test_dot_dot_is_resolved_where_the_disk_says(tmp_path):
    """`..` after a symlink is the target's parent, and that is the one judged."""
    shared = tmp_path / "shared"
    (shared / "sub").mkdir(parents=True)
    shared.chmod(0o777)
    link = tmp_path / "link"
    link.symlink_to(shared / "sub")
    (tmp_path / "state").mkdir()
    with pytest.raises(StateDirError, match=f"{shared} is writable by other users"):
        prepare(link / ".." / "state")
