"""Per-path versions: how a peer tells a newer change of a path from an older, an equal or a
concurrent one. Pure values, no I/O; the wire form is xdr/versions.py.

- `VersionVector`: peer id -> counter, compact (no zero counters) and canonical (sorted), so
  equal vectors have equal bytes. `compare` answers EQUAL, NEWER, OLDER or CONCURRENT;
  `join` is the pointwise max; `bump(peer, clock)` is the vector of a change made by `peer`.
  Counters are `max(own + 1, clock)` (seconds since the epoch, as Syncthing does): a peer
  whose store was wiped starts again above its old counters instead of reusing them.
- `Version`: what a path holds after one change (`Kind`: a file's blob id, a symlink's
  target, a directory, or a tombstone), with its vector, size, mtime and author. Two versions
  have the same content when kind and content bytes are equal; metadata does not count.
- `next_version(bases, author, ...)`: the version of a local change that supersedes `bases`.
- `Residency` / `ResidencyChange`: eviction, unrealize and realize. They say where content is
  kept on one peer, carry no version, and are not history entries: nothing here turns them
  into a `Version`, and `Kind` has no member for them, so they can never remove a path.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum, IntEnum

from xdr import versions as wire
from xdr.codec import XdrError, decode, encode

PeerId = str
"""A peer id as nfsd/peer/identity.py makes it ("ABCD-EFGH-..."): capitals, digits, dashes."""

_PEER_ID = re.compile(r"[A-Z0-9]+(?:-[A-Z0-9]+)*")


class VersionError(ValueError):
    """A version, vector or peer id that cannot be one (bad bytes from a peer, or a bug)."""


_CHECKED: set[str] = set()  # ids found good already (a household has a handful)
_CHECKED_MAX = 4096


def check_peer_id(peer: str) -> None:
    """Refuse a peer id that could smuggle anything into a conflict name or a log line."""
    if peer in _CHECKED:
        return
    if len(peer) > wire.PEER_ID_MAX or not _PEER_ID.fullmatch(peer):
        raise VersionError(f"not a peer id: {peer[:80]!r}")
    if len(_CHECKED) < _CHECKED_MAX:
        _CHECKED.add(peer)


class Order(Enum):
    """How one vector stands to another: `a.compare(b) is NEWER` when a supersedes b."""

    EQUAL = "equal"
    NEWER = "newer"
    OLDER = "older"
    CONCURRENT = "concurrent"


@dataclass(frozen=True, slots=True)
class VersionVector:
    """peer id -> counter, kept sorted by peer id, without zero counters."""

    entries: tuple[tuple[PeerId, int], ...] = ()

    def __post_init__(self) -> None:
        previous = ""
        for peer, counter in self.entries:
            check_peer_id(peer)
            if not 0 < counter < 2**64:
                raise VersionError(f"counter {counter} of {peer} out of range")
            if peer <= previous:
                raise VersionError("vector entries not sorted, or a peer twice")
            previous = peer
        if len(self.entries) > wire.VECTOR_MAX:
            raise VersionError("too many peers in one vector")

    @classmethod
    def of(cls, counters: Mapping[PeerId, int]) -> VersionVector:
        return cls(tuple(sorted((p, c) for p, c in counters.items() if c)))

    def counter(self, peer: PeerId) -> int:
        for p, c in self.entries:
            if p == peer:
                return c
        return 0

    def as_dict(self) -> dict[PeerId, int]:
        return dict(self.entries)

    def compare(self, other: VersionVector) -> Order:
        mine, theirs = self.as_dict(), other.as_dict()
        ahead = any(c > theirs.get(p, 0) for p, c in mine.items())
        behind = any(c > mine.get(p, 0) for p, c in theirs.items())
        if ahead and behind:
            return Order.CONCURRENT
        if ahead:
            return Order.NEWER
        if behind:
            return Order.OLDER
        return Order.EQUAL

    def join(self, other: VersionVector) -> VersionVector:
        """The pointwise max: a vector that is EQUAL or NEWER than both."""
        merged = self.as_dict()
        for p, c in other.entries:
            merged[p] = max(merged.get(p, 0), c)
        return VersionVector.of(merged)

    def bump(self, peer: PeerId, clock: int = 0) -> VersionVector:
        """The vector of a change `peer` makes on top of this one (always NEWER than it)."""
        counters = self.as_dict()
        counters[peer] = max(counters.get(peer, 0) + 1, clock)
        return VersionVector.of(counters)

    def to_xdr(self) -> list[wire.peer_counter]:
        return [wire.peer_counter(p.encode(), c) for p, c in self.entries]

    @classmethod
    def from_xdr(cls, entries: list[wire.peer_counter]) -> VersionVector:
        try:
            return cls(tuple((e.peer.decode("ascii"), e.counter) for e in entries))
        except (UnicodeDecodeError, VersionError) as e:
            raise XdrError(f"bad version vector: {e}") from None

    def encode(self) -> bytes:
        return encode(wire.version_vector, self.to_xdr())

    @classmethod
    def decode(cls, data: bytes) -> VersionVector:
        return cls.from_xdr(decode(wire.version_vector, data))


def join_all(vectors: Iterable[VersionVector]) -> VersionVector:
    result = VersionVector()
    for v in vectors:
        result = result.join(v)
    return result


class Kind(IntEnum):
    """What a path holds. There is no "evicted" or "unreal": see `Residency`."""

    FILE = wire.content_kind.FILE
    SYMLINK = wire.content_kind.SYMLINK
    DIRECTORY = wire.content_kind.DIRECTORY
    DELETED = wire.content_kind.DELETED


@dataclass(frozen=True, slots=True)
class Version:
    """One path's state after one change, as a history entry announces it."""

    vector: VersionVector
    kind: Kind
    content: bytes = b""  # FILE: its blob id; SYMLINK: its target; otherwise empty
    size: int = 0
    mtime_ns: int = 0
    author: PeerId = ""
    # The canonical encoding, made once when first asked for (ranks and sorts ask often).
    _encoded: bytes = field(default=b"", init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        check_peer_id(self.author)
        if self.kind is Kind.FILE and len(self.content) != wire.BLOB_ID_SIZE:
            raise VersionError("a file version needs a blob id")
        if self.kind is Kind.SYMLINK and (
            len(self.content) > wire.CONTENT_MAX or b"\0" in self.content
        ):
            raise VersionError("bad symlink target")
        if self.kind in (Kind.DIRECTORY, Kind.DELETED) and (self.content or self.size):
            raise VersionError(f"a {self.kind.name.lower()} version has no content")
        if not 0 <= self.size < 2**64 or not -(2**63) <= self.mtime_ns < 2**63:
            raise VersionError("size or mtime out of range")

    @property
    def deleted(self) -> bool:
        return self.kind is Kind.DELETED

    @property
    def identity(self) -> tuple[Kind, bytes]:
        """What "identical content" compares: same blob (or target), or both tombstones."""
        return (self.kind, self.content)

    def same_content(self, other: Version) -> bool:
        return self.identity == other.identity

    def to_xdr(self) -> wire.path_version:
        return wire.path_version(
            self.vector.to_xdr(),
            wire.content_kind(self.kind),
            self.content,
            self.size,
            self.mtime_ns,
            self.author.encode(),
        )

    @classmethod
    def from_xdr(cls, v: wire.path_version) -> Version:
        try:
            return cls(
                VersionVector.from_xdr(v.vector),
                Kind(v.kind),
                bytes(v.content),
                v.size,
                v.mtime_ns,
                v.author.decode("ascii"),
            )
        except (UnicodeDecodeError, VersionError) as e:
            raise XdrError(f"bad path version: {e}") from None

    def encode(self) -> bytes:
        """The canonical bytes: equal versions, equal bytes."""
        if not self._encoded:
            vector = [(p.encode(), c) for p, c in self.vector.entries]
            packed = wire.pack_version(
                vector, self.kind, self.content, self.size, self.mtime_ns, self.author.encode()
            )
            object.__setattr__(self, "_encoded", packed)
        return self._encoded

    @classmethod
    def decode(cls, data: bytes) -> Version:
        return cls.unpacked(wire.unpack_one_version(data), bytes(data))

    @classmethod
    def unpacked(cls, fields: wire.Unpacked, encoded: bytes = b"") -> Version:
        """A version from the fields xdr/versions.py unpacked (from `encoded`, its bytes,
        canonical since the fast codec refuses any other), checked as `from_xdr` does."""
        vector, kind, content, size, mtime_ns, author = fields
        try:
            version = cls(
                VersionVector(tuple((p.decode("ascii"), c) for p, c in vector)),
                Kind(kind),
                content,
                size,
                mtime_ns,
                author.decode("ascii"),
            )
        except (UnicodeDecodeError, VersionError) as e:
            raise XdrError(f"bad path version: {e}") from None
        if encoded:
            object.__setattr__(version, "_encoded", encoded)
        return version

    def digest(self) -> bytes:
        return hashlib.sha256(self.encode()).digest()


def next_version(
    bases: Iterable[Version],
    author: PeerId,
    kind: Kind,
    content: bytes = b"",
    *,
    size: int = 0,
    mtime_ns: int = 0,
    clock: int = 0,
) -> Version:
    """A local change by `author` that supersedes every version in `bases` (NEWER than each)."""
    vector = join_all(b.vector for b in bases).bump(author, clock)
    return Version(vector, kind, content, size, mtime_ns, author)


class Residency(Enum):
    """Where one peer keeps a path's content. Never history, never a deletion."""

    REAL = "real"  # kept in the area as an ordinary file
    CACHED = "cached"  # kept in the store, shown Unreal
    UNREAL = "unreal"  # kept nowhere here, fetched from peers on demand


@dataclass(frozen=True, slots=True)
class ResidencyChange:
    """A path's content moved between real, cached and unreal on this peer (eviction,
    unrealize, realize). It has no version and no wire form in the history: other peers
    never hear of it, and the path stays exactly as it was everywhere."""

    path: bytes
    residency: Residency
