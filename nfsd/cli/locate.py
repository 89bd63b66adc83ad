"""Which state directory, and so which server, a control command talks to.

`--state-dir` when it is given. Otherwise the nearest state directory above the path the
command is given (for a command given none, above the current directory), when that path is
inside one of its areas; otherwise the default state directory ($REALIZE_STATE_DIR or
~/.realize). So after `realize serve ~/Shared`, `realize mark unreal ~/Shared/big.iso` and,
inside ~/Shared, `realize status` reach that server from wherever they are typed.

A state directory records its areas in config.json (`realize init`, `area add`) or, for
`realize serve DIR`, which writes no configuration, in server.json while its server runs. And
`serve DIR` keeps its state in DIR/.realize (`STATE_DIR_NAME`): a `.realize` that records
neither serves the directory it is in.

When neither finds one and the default state directory is not set up, the one server of this
user that runs is taken: each server records itself, while it runs, in a directory of the
user's (`servers_dir`: $XDG_RUNTIME_DIR/realize/servers, else ~/.cache/realize/servers), so
`realize serve ~/Shared` then `realize status` works from any directory. With several running,
the command asks for a path.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from nfsd.cli.config import CONFIG_FILE, default_state_dir, is_configured
from nfsd.cli.errors import UsageError
from nfsd.server import RUNTIME_FILE
from nfsd.statedir import write_private
from nfsd.store.paths import STATE_DIR_NAME

_MAX_DEPTH = 256  # directories looked at above a path


def recorded_areas(state_dir: Path) -> dict[str, str] | None:
    """The areas `state_dir` records (name -> directory), None if it records none."""
    for name in (CONFIG_FILE, RUNTIME_FILE):
        try:
            areas = json.loads((state_dir / name).read_text()).get("areas")
        except (OSError, ValueError, AttributeError):
            continue
        if isinstance(areas, dict):
            return {str(k): str(v) for k, v in areas.items()}
    return None


def resolved(path: Path) -> Path:
    """`path` made absolute, with the symlinks of its deepest existing ancestor resolved (an
    Unreal file is not on the disk, its directory may be)."""
    path = Path(os.path.abspath(path))
    missing: list[str] = []
    while not path.exists() and path != path.parent:
        missing.append(path.name)
        path = path.parent
    return Path(os.path.realpath(path)).joinpath(*reversed(missing))


def local_path(text: str) -> Path | None:
    """The path of this machine that `text` names, None when it reads as "AREA/inside": an
    absolute path, or one starting at something in the current directory."""
    first = text.split(os.sep, 1)[0]
    if os.path.isabs(text) or (first and os.path.lexists(first)):
        return resolved(Path(text))
    return None


def area_of(areas: dict[str, str], path: Path) -> tuple[str, Path] | None:
    """(area name, path inside it) of the resolved `path`, None when it is in no area."""
    for name, directory in sorted(areas.items()):
        root = Path(os.path.realpath(directory))
        if path == root or root in path.parents:
            return name, path.relative_to(root)
    return None


def state_dir_above(path: Path) -> Path | None:
    """The nearest state directory above the resolved `path` that has it inside an area."""
    for depth, directory in enumerate([path, *path.parents]):
        if depth >= _MAX_DEPTH:
            break
        candidate = directory / STATE_DIR_NAME
        if not candidate.is_dir():
            continue
        areas = recorded_areas(candidate)
        if areas is None:  # `serve DIR` that is not running: it serves DIR
            areas = {directory.name or "root": str(directory)}
        if area_of(areas, path) is not None:
            return candidate
    return None


def servers_dir() -> Path:
    """Where this user's running servers record their state directories."""
    base = os.environ.get("XDG_RUNTIME_DIR") or Path.home() / ".cache"
    return Path(base) / "realize" / "servers"


def register_server(state_dir: Path) -> Path | None:
    """Record that this process serves `state_dir`; the record, None if it could not be
    written (a command then needs a path or --state-dir to find this server)."""
    try:
        directory = servers_dir()
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        record = directory / f"{os.getpid()}.json"
        about = {"pid": os.getpid(), "state_dir": str(state_dir)}
        write_private(record, json.dumps(about).encode())
    except OSError:
        return None
    return record


def unregister_server(record: Path | None) -> None:
    if record is not None:
        record.unlink(missing_ok=True)


def _serving(pid: int, state_dir: Path) -> bool:
    """Whether process `pid` runs and is the server of `state_dir` by its server.json."""
    try:
        os.kill(pid, 0)
        return json.loads((state_dir / RUNTIME_FILE).read_text()).get("pid") == pid
    except PermissionError:
        return False  # another user's process took the pid
    except (OSError, ValueError, AttributeError):
        return False


def running_servers() -> list[Path]:
    """The state directories of this user's servers that run now; records of servers that
    ended without removing theirs are removed."""
    found = []
    try:
        records = sorted(servers_dir().glob("*.json"))
    except OSError:
        return []
    for record in records:
        try:
            about = json.loads(record.read_text())
            pid, state_dir = int(about["pid"]), Path(about["state_dir"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _serving(pid, state_dir):
            found.append(state_dir)
        else:
            record.unlink(missing_ok=True)
    return sorted(set(found))


def find_state_dir(texts: Iterable[str]) -> Path:
    """The state directory of the first of `texts` that is a path of this machine with one
    above it, else the one above the current directory, else the default one when it is set
    up, else the one server of this user that runs. A UsageError when a path was given and
    none of these has it, or when several servers run and nothing says which."""
    given = [(text, path) for text in texts if (path := local_path(text)) is not None]
    for _, path in given:
        found = state_dir_above(path)
        if found is not None:
            return found
    found = state_dir_above(resolved(Path.cwd()))
    if found is not None:
        return found
    default = default_state_dir()
    if is_configured(default):
        return default
    servers = running_servers()
    if len(servers) == 1:
        return servers[0]
    if given:
        raise UsageError(
            f"{given[0][0]} is in no area of a Realize server: none above it serves it, and "
            f"{default} is not initialised"
        )
    if servers:
        raise UsageError(
            f"{len(servers)} servers run ({', '.join(map(str, servers))}): give a path in one "
            "of their areas, or --state-dir"
        )
    return default  # the command says it is not initialised
