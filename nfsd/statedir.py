"""The state directory: where it may be, how it is created, and the modes of what is written
in it. It holds the handle key and the server (root, often) writes there, so nobody but root
and the server's own user may be able to change it or the way to it.

- `prepare(path)`: refuse a state directory another user could tamper with (`StateDirError`,
  before anything is written), else create it (0700 whatever the umask, missing parents 0755).
- `prepare_db(state_dir)`: its `db/`, 0700 (RocksDB creates its files there with its own
  modes).
- `write_private(path, data)`: a file of the state directory replaced whole (temporary file
  and rename, the temporary removed on failure), mode 0600; `durable=True` also fsyncs the
  file before the rename and the directory after, for what must survive a power cut.
- `open_private_append(path)`: the log, mode 0600.

The check is ssh's StrictModes made to walk the whole way: from / to the state directory,
following symlinks the way the kernel does, every directory passed through must be owned by
root or the server's user and writable by no one else, and every symlink followed must be
owned by root or the server's user. One exception, as for /tmp: a sticky directory open to
others may be passed through, because only the owner of an entry there may rename or remove
it, and the entry taken from it is owned by root or the server's user (the rule above). The
state directory itself must be the server's user's and writable by no one else, even with the
sticky bit: anyone could plant files in it.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

STATE_DIR_MODE = 0o700
PARENT_MODE = 0o755
FILE_MODE = 0o600
DB_DIR = "db"
_MAX_SYMLINKS = 40  # as the kernel's ELOOP limit
_MAX_CREATED = 256  # parents `prepare` makes at most


class StateDirError(Exception):
    """The state directory cannot be used; the message says why and what to do."""


def _trusted() -> set[int]:
    return {0, os.geteuid()}


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


def _open_to_others(st: os.stat_result) -> bool:
    return bool(st.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _judge_directory(path: str, st: os.stat_result) -> None:
    """A directory on the way: its entries must be out of other users' reach."""
    if st.st_uid not in _trusted():
        raise StateDirError(f"{path} is owned by uid {st.st_uid}, who could replace what is in it")
    if _open_to_others(st) and not st.st_mode & stat.S_ISVTX:
        raise StateDirError(f"{path} is writable by other users (mode {_mode(st)})")


def _walk(path: Path) -> tuple[Path, list[str]]:
    """Resolve `path` from / as the kernel would, judging each directory and symlink on the
    way: the real path of its deepest existing directory and the names still missing."""
    root = os.lstat("/")
    _judge_directory("/", root)
    pending = [name for name in reversed(str(path).split("/")) if name not in ("", ".")]
    real: list[str] = []
    followed = 0
    while pending:
        name = pending.pop()
        if name in ("", "."):
            continue
        if name == "..":
            if real:
                real.pop()
            continue
        current = "/" + "/".join([*real, name])
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            missing = [name, *reversed(pending)]
            if any(part == ".." for part in missing):
                raise StateDirError(f"{current} does not exist ({path} goes on with ..)") from None
            return Path("/" + "/".join(real)), [p for p in missing if p not in ("", ".")]
        if stat.S_ISLNK(st.st_mode):
            if st.st_uid not in _trusted():
                raise StateDirError(
                    f"{current} is a symlink owned by uid {st.st_uid}, who could point it elsewhere"
                )
            followed += 1
            if followed > _MAX_SYMLINKS:
                raise StateDirError(f"too many symlinks on the way to {path}")
            target = os.readlink(current)
            if target.startswith("/"):
                real = []
            pending.extend(reversed(target.split("/")))
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise StateDirError(f"{current} is not a directory")
        _judge_directory(current, st)
        real.append(name)
    return Path("/" + "/".join(real)), []


def _absolute(path: Path) -> Path:
    """`path` from /, its `..` left for the walk: os.path.abspath would drop the directory
    before a `..` on paper, where the kernel goes to the parent of a symlink's target."""
    return Path(path) if Path(path).is_absolute() else Path(os.getcwd()) / path


def check(path: Path) -> Path:
    """The real path of the existing state directory `path`, if it is safe to use
    (`StateDirError` if not, or if it does not exist)."""
    real, missing = _walk(_absolute(path))
    if missing:
        raise StateDirError(f"{path} does not exist")
    st = os.lstat(real)
    if st.st_uid != os.geteuid():
        raise StateDirError(
            f"{real} is owned by uid {st.st_uid}, not by the server's user (uid {os.geteuid()})"
        )
    if _open_to_others(st):
        raise StateDirError(
            f"{real} is writable by other users (mode {_mode(st)}), who may have put files "
            "in it: use a new state directory, or check its contents and chmod 700 it"
        )
    return real


def prepare(path: Path) -> Path:
    """Check the way to the state directory, create what is missing and set the modes: its
    real path. Nothing is written when the check fails."""
    try:
        wanted = _absolute(path)
        for _ in range(_MAX_CREATED):
            # One name at a time, judging the whole way again after each: in a sticky
            # directory someone may have made the name first (a symlink, say).
            real, missing = _walk(wanted)
            if not missing:
                break
            mode = STATE_DIR_MODE if len(missing) == 1 else PARENT_MODE
            with contextlib.suppress(FileExistsError):
                os.mkdir(real / missing[0], mode)
        real = check(wanted)
        os.chmod(real, STATE_DIR_MODE)
    except OSError as e:
        raise StateDirError(f"cannot use {path}: {e.strerror or e}") from None
    return real


def prepare_db(state_dir: Path) -> Path:
    """The database directory of a prepared state directory, created or made 0700."""
    db = state_dir / DB_DIR
    try:
        with contextlib.suppress(FileExistsError):
            os.mkdir(db, STATE_DIR_MODE)
        st = os.lstat(db)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise StateDirError(f"{db} is not a directory of the server's user")
        if stat.S_IMODE(st.st_mode) != STATE_DIR_MODE:
            os.chmod(db, STATE_DIR_MODE)
    except OSError as e:
        raise StateDirError(f"cannot use {db}: {e.strerror or e}") from None
    return db


def write_private(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Replace `path` with `data`, mode 0600: a reader sees the old file or the new one. On
    failure (a full disk) the old file stays and no temporary file is left. `durable`: on
    disk before this returns, so a crash or power cut cannot leave an empty file."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # one left by a crash keeps its mode; the umask narrows
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if durable:
            directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def open_private_append(path: Path) -> int:
    """A descriptor appending to `path` (the log), created or made 0600."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd
