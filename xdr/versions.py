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
- `published` is what one published change stamps: each path it gives a version, the mode it
  is shown with, and that version packed.

`pack_version`/`unpack_version`, `pack_state`/`unpack_state` and `pack_published`/
`unpack_published` are the hot paths in precompiled structs: the general codec's bytes, its
refusals, and a non-zero padding refused too, so that a value has exactly one encoding.
"""

from __future__ import annotations

import struct
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
    uint32,
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


# --- The hot path: `path_version` and `path_state` packed and unpacked with precompiled
# structs (a catch-up decodes and encodes every path's versions). Byte for byte what the
# general codec gives and takes (tests/test_versions.py checks it), with the same refusals.

_U32 = struct.Struct(">I")
_I32 = struct.Struct(">i")
_U64 = struct.Struct(">Q")
_TAIL = struct.Struct(">Qq")  # size, mtime_ns
_KINDS = frozenset(int(k) for k in content_kind)

PackedVector = list[tuple[bytes, int]]
Unpacked = tuple[PackedVector, int, bytes, int, int, bytes]
"""A `path_version` as fields: vector, kind, content, size, mtime_ns, author."""


def _opaque(data: bytes) -> bytes:
    return _U32.pack(len(data)) + data + b"\0" * (-len(data) & 3)


def pack_version(
    vector: PackedVector, kind: int, content: bytes, size: int, mtime_ns: int, author: bytes
) -> bytes:
    """The XDR of a `path_version` (`vector`: (peer, counter) pairs, canonical)."""
    if len(vector) > VECTOR_MAX:
        raise XdrError("array too long")
    parts = [_U32.pack(len(vector))]
    previous = b""
    for peer, counter in vector:
        if counter == 0:
            raise XdrError("zero counter in a version vector")
        if peer <= previous:
            raise XdrError("version vector not sorted by peer id, or a peer twice")
        if len(peer) > PEER_ID_MAX:
            raise XdrError(f"{len(peer)} bytes exceed {PEER_ID_MAX}")
        previous = peer
        parts.append(_opaque(peer))
        parts.append(_U64.pack(counter))
    if len(content) > CONTENT_MAX or len(author) > PEER_ID_MAX:
        raise XdrError("content or author too long")
    try:
        parts += (_I32.pack(kind), _opaque(content), _TAIL.pack(size, mtime_ns), _opaque(author))
    except struct.error as e:
        raise XdrError(f"malformed: {e}") from None
    return b"".join(parts)


def _take_opaque(data: bytes | memoryview, pos: int, maximum: int) -> tuple[bytes, int]:
    if pos + 4 > len(data):
        raise XdrError("truncated")
    (n,) = _U32.unpack_from(data, pos)
    if n > maximum:
        raise XdrError(f"length {n} exceeds {maximum}")
    start = pos + 4
    end = start + ((n + 3) & ~3)
    if end > len(data):
        raise XdrError("truncated")
    if any(data[start + n : end]):
        raise XdrError("padding not zero")  # one encoding per value: it may be kept as is
    return bytes(data[start : start + n]), end


def unpack_version(
    data: bytes | memoryview, pos: int = 0
) -> tuple[PackedVector, int, bytes, int, int, bytes, int]:
    """One `path_version` from data[pos:]: (vector, kind, content, size, mtime_ns, author,
    the position after it); XdrError as the general codec refuses."""
    try:
        (count,) = _U32.unpack_from(data, pos)
        pos += 4
        if count > VECTOR_MAX or count * 4 > len(data) - pos:
            raise XdrError(f"array count {count} too large")
        vector: PackedVector = []
        previous = b""
        for _ in range(count):
            peer, pos = _take_opaque(data, pos, PEER_ID_MAX)
            (counter,) = _U64.unpack_from(data, pos)
            pos += 8
            if counter == 0:
                raise XdrError("zero counter in a version vector")
            if peer <= previous:
                raise XdrError("version vector not sorted by peer id, or a peer twice")
            previous = peer
            vector.append((peer, counter))
        (kind,) = _I32.unpack_from(data, pos)
        if kind not in _KINDS:
            raise XdrError(f"{kind} is not a content_kind")
        content, pos = _take_opaque(data, pos + 4, CONTENT_MAX)
        size, mtime_ns = _TAIL.unpack_from(data, pos)
        author, pos = _take_opaque(data, pos + _TAIL.size, PEER_ID_MAX)
    except struct.error as e:
        raise XdrError(f"malformed: {e}") from None
    return vector, kind, content, size, mtime_ns, author, pos


def pack_state(versions: list[bytes]) -> bytes:
    """A `path_state` of versions packed already (by `pack_version`)."""
    if len(versions) > STATE_MAX:
        raise XdrError("array too long")
    return _U32.pack(len(versions)) + b"".join(versions)


def unpack_state(data: bytes | memoryview) -> list[Unpacked]:
    """Every version of a `path_state`, exactly the whole of `data`."""
    return [fields for fields, _ in unpack_state_raw(data)]


def unpack_state_raw(data: bytes | memoryview) -> list[tuple[Unpacked, bytes]]:
    """Every version of a `path_state` with its own bytes (its canonical encoding)."""
    if len(data) < 4:
        raise XdrError("truncated")
    (count,) = _U32.unpack_from(data, 0)
    if count > STATE_MAX or count * 4 > len(data) - 4:
        raise XdrError(f"array count {count} too large")
    pos = 4
    found = []
    for _ in range(count):
        *version, end = unpack_version(data, pos)
        found.append((tuple(version), bytes(data[pos:end])))
        pos = end
    if pos != len(data):
        raise XdrError("trailing bytes")
    return found  # type: ignore[return-value]


def unpack_one_version(
    data: bytes | memoryview,
) -> tuple[PackedVector, int, bytes, int, int, bytes]:
    """Exactly one `path_version`, the whole of `data`."""
    *version, pos = unpack_version(data, 0)
    if pos != len(data):
        raise XdrError("trailing bytes")
    return tuple(version)  # type: ignore[return-value]


# --- What one published change stamps (nfsd/peer/exchange.py keeps it with the change):
# `published_entry<STAMP_MAX>`, each a path, the mode it is shown with, and the version it
# gets (a packed `path_version`).

STAMP_MAX = 64
"""Entries one change may publish: a rename and its conflict copies."""
PUBLISHED_VERSION_MAX = 8192


@xdr_struct
class published_entry:
    path: bytes = xf(Opaque(MAX_PATH))
    mode: int = xf(uint32)
    version: bytes = xf(Opaque(PUBLISHED_VERSION_MAX))


published = Array(published_entry, STAMP_MAX)


def pack_published(entries: list[tuple[bytes, int, bytes]]) -> bytes:
    """`published` of (path, mode, packed version) triples, as the general codec packs it."""
    if len(entries) > STAMP_MAX:
        raise XdrError("array too long")
    parts = [_U32.pack(len(entries))]
    for path, mode, version in entries:
        if len(path) > MAX_PATH or len(version) > PUBLISHED_VERSION_MAX:
            raise XdrError("path or version too long")
        parts += (_opaque(path), _U32.pack(mode), _opaque(version))
    return b"".join(parts)


def unpack_published(data: bytes | memoryview) -> list[tuple[bytes, int, bytes]]:
    """The (path, mode, packed version) triples of a `published`, exactly the whole of it."""
    try:
        (count,) = _U32.unpack_from(data, 0)
        if count > STAMP_MAX or count * 4 > len(data) - 4:
            raise XdrError(f"array count {count} too large")
        pos = 4
        found = []
        for _ in range(count):
            path, pos = _take_opaque(data, pos, MAX_PATH)
            (mode,) = _U32.unpack_from(data, pos)
            version, pos = _take_opaque(data, pos + 4, PUBLISHED_VERSION_MAX)
            found.append((path, mode, version))
    except struct.error as e:
        raise XdrError(f"malformed: {e}") from None
    if pos != len(data):
        raise XdrError("trailing bytes")
    return found
