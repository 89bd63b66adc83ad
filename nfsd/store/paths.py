"""Area paths that come from outside this server (an imported source's index; later a peer):
the one check each must pass before it reaches the index or names anything on disk.

An area path is bytes, relative to the area root, "/"-separated (see nfsd/store/index.py).
One from outside is refused, with the reason, when it is empty or longer than `PATH_MAX`, or
holds a NUL, an empty component ("a//b", a leading or trailing "/"), a "." or ".." component,
a name longer than NAME_MAX, the state directory's name, or a name the server keeps for its
temporary files. A symlink's target is data, not a path of ours: it only must not hold a NUL
and must fit in an NFS path.
"""

from __future__ import annotations

from nfsd.vfs.names import TEMP_PREFIX
from xdr.control import MAX_PATH
from xdr.nfs3 import NAME_MAX, NFSPATH3_MAX

# The longest area path: what the control protocol carries (`realize ls`, `realize mark`).
PATH_MAX = MAX_PATH
# Where `realize serve DIR` keeps its state, inside the area it serves.
STATE_DIR_NAME = ".realize"
_STATE_DIR_NAME = STATE_DIR_NAME.encode()


class BadPath(ValueError):
    """A path (or symlink target) from outside that the index must never hold."""

    def __init__(self, path: bytes, reason: str) -> None:
        super().__init__(f"{shown(path)}: {reason}")
        self.path = path
        self.reason = reason


def path_problem(path: bytes) -> str | None:
    """Why `path` cannot be an area path from outside, or None when it can."""
    if not path:
        return "an empty path"
    if len(path) > PATH_MAX:
        return f"longer than {PATH_MAX} bytes"
    if b"\0" in path:
        return "a NUL byte"
    for name in path.split(b"/"):
        if not name:
            return "an empty component"
        if name in (b".", b".."):
            return f"a {name.decode()!r} component"
        if len(name) > NAME_MAX:
            return f"a name longer than {NAME_MAX} bytes"
        if name == _STATE_DIR_NAME:
            return f"the state directory's name ({STATE_DIR_NAME})"
        if name.startswith(TEMP_PREFIX):
            return "a name the server keeps for its temporary files"
    return None


def check_path(path: bytes) -> None:
    """Raise BadPath unless `path` may be an area path from outside."""
    problem = path_problem(path)
    if problem is not None:
        raise BadPath(path, problem)


def target_problem(target: bytes) -> str | None:
    """Why `target` cannot be a symlink's target from outside, or None when it can."""
    if b"\0" in target:
        return "a NUL byte in its target"
    if len(target) > NFSPATH3_MAX:
        return f"a target longer than {NFSPATH3_MAX} bytes"
    return None


def shown(path: bytes, limit: int = 80) -> str:
    """`path` for a message: escaped where not printable, cut to about `limit` characters."""
    text = repr(path)[2:-1]  # b'...' without the quotes: NUL and the like as \x00
    return text if len(text) <= limit else text[: limit - 3] + "..."
