"""Per-path versions on the wire: the version vector each path carries in a household, the
version a history entry announces for a path, and a rename's preconditions.

- `version_vector` is `peer_counter<VECTOR_MAX>`, in its canonical form only: entries sorted
  by peer id (bytewise), no peer twice, no zero counter. Anything else does not decode, so one
  vector has exactly one encoding (conflict names and tie-breaks hash it).
- `path_version` is what a path holds after one change: a file (its blob id), a symlink (its
  target), a directory, or a deletion (a tombstone). Eviction and unrealize have no
  `content_kind`: they change where content is kept, never what a path holds, and are not
  history at all.
- `path_state` is every version of a path no other supersedes (more than one while
  concurrent changes are unresolved).
- `rename_versions` is a rename: what its source and destination held when it was made, the
  tombstone it leaves at the source and the version it makes at the destination.
"""

from __future__ import annotations

from enum import IntEnum

from .codec import (
    Array,
    Enum,
    Opaque,
    Optional,
    Packer,
    String,
    Unpacker,
    XdrError,
    XdrType,
    int64,
    uint64,
    xdr_struct,
    xf,
)
from .control import MAX_PATH
from .nfs3 import NFSPATH3_MAX

PEER_ID_MAX = 64
"""Bytes of a peer id in a vector (a readable id is 34: seven groups of four and dashes)."""
VECTOR_MAX = 1024
"""Peers one vector may name; a household has a handful."""
STATE_MAX = 1024
"""Concurrent versions one path may hold: at most one per author in an honest household."""
BLOB_ID_SIZE = 32
CONTENT_MAX = NFSPATH3_MAX
"""A file's blob id, a symlink's target, or nothing."""


class content_kind(IntEnum):
    FILE = 1
    SYMLINK = 2
    DIRECTORY = 3
    DELETED = 4


@xdr_struct
class peer_counter:
    peer: bytes = xf(String(PEER_ID_MAX))
    counter: int = xf(uint64)


class _CanonicalVector(XdrType[list[peer_counter]]):
    """`peer_counter<VECTOR_MAX>` that refuses every non-canonical encoding."""

    def __init__(self) -> None:
        self.array = Array(peer_counter, VECTOR_MAX)

    def pack(self, p: Packer, v: list[peer_counter]) -> None:
        _check_canonical(v)
        self.array.pack(p, v)

    def unpack(self, u: Unpacker) -> list[peer_counter]:
        v = self.array.unpack(u)
        _check_canonical(v)
        return v


def _check_canonical(entries: list[peer_counter]) -> None:
    previous = b""
    for entry in entries:
        if entry.counter == 0:
            raise XdrError("zero counter in a version vector")
        if entry.peer <= previous:
            raise XdrError("version vector not sorted by peer id, or a peer twice")
        previous = entry.peer


version_vector = _CanonicalVector()


@xdr_struct
class path_version:
    vector: list[peer_counter] = xf(version_vector)
    kind: content_kind = xf(Enum(content_kind))
    content: bytes = xf(Opaque(CONTENT_MAX))  # FILE: blob id; SYMLINK: target; else empty
    size: int = xf(uint64)
    mtime_ns: int = xf(int64)
    author: bytes = xf(String(PEER_ID_MAX))  # the peer that made this version


path_state = Array(path_version, STATE_MAX)


@xdr_struct
class rename_versions:
    source_path: bytes = xf(Opaque(MAX_PATH))
    target_path: bytes = xf(Opaque(MAX_PATH))
    source: path_version = xf(path_version)  # what the source showed when renamed
    replaced: path_version | None = xf(Optional(path_version))  # the target's, if any
    removed: path_version = xf(path_version)  # the tombstone left at the source
    created: path_version = xf(path_version)  # the target's new version
