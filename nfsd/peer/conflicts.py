"""Versions meeting versions: what a peer does with an incoming change of a path, and how
concurrent changes are resolved the same way on every peer. Pure logic, no I/O.

A path's state (`PathState`) is every version of it that no other supersedes: the maximal
versions of all it has received. That set does not depend on the order they came in, and
everything shown is computed from it alone (trap 7 of the household notes: the winner is a
function of the set of versions, never of arrival order).

- `decide(state, incoming)`: IGNORE (older than, or the same as, what is held), APPLY (newer
  than all of it), MERGE (concurrent, identical content: same blob, or both tombstones; the
  path shows the pointwise max of their vectors and nothing else changes), CONFLICT
  (concurrent otherwise). Always with the new state.
- `resolve(path, state)`: what the path shows (`Resolution.shown`), the conflict copies beside
  it (`copies`, each a deterministic name and the version it shows) and the blobs pinned until
  the conflict is resolved (`pinned`).
- `rank(version)`: the total order of the winning rule, largest wins:
  1. any content beats a tombstone: an edit beats a concurrent delete. Losing a delete loses
     nothing (delete again); losing an edit loses data (trap 10);
  2. a directory beats a file or symlink: its children are paths of their own and cannot
     move aside with it; the file moves aside to a conflict name instead;
  3. the later mtime: what people expect ("the last save keeps the name"), as Syncthing;
     the mtime is part of the version, the same bytes on every peer, so clock skew can only
     choose which copy keeps the name, never lose one;
  4. then the author's peer id, the content (blob id), the canonical encoding: tie-breaks
     that make the order total, so two peers can never pick differently.
  Versions with the same content count as one (their best member's rank).
- `conflict_name(path, version, ...)`: `report.conflict-<peer>-<hash8>.odt` beside the
  path, where <peer> is the first group of the author's id and <hash8> the start of the
  content's hash; `conflict_names` lengthens the hash where two names (or a name and the
  path) would meet, so names never collide, and never exceed NAME_MAX.
- `local_change(...)`: the entries a change made here publishes: the new version of the path,
  superseding all it held, and a create for each conflict copy not dismissed, so a copy
  becomes an ordinary file under the same name instead of vanishing (or under the next free
  name, where a path of that name exists; the copy's own version, so that all peers making it
  a file make the same entry). Resolving a conflict is an ordinary change: delete the copy (a
  `local_change` of the path that dismisses it, and a `dismissal_tombstone` at its name, which
  wins over a peer making it a file meanwhile) or rename it; a client writing a copy is a
  change dismissing it plus a create at its name.
- `Rename`, `make_rename`, `plan_rename`: a rename carries what its source and target showed
  and the two versions it makes (a tombstone at the source, the content at the target). Where
  its preconditions hold on a peer the file is moved as one; where they fail it is the same
  two versions applied as a delete and a create under the rules above, so a concurrent edit
  of the source survives (the edit beats the tombstone) and a concurrent write at the target
  becomes a conflict, not a loss.
- `tree(states)`: every path shown, conflict copies included, as one mapping.

Eviction and unrealize are `versions.ResidencyChange`, never a `Version`: `decide` refuses
them, so they can never remove a path.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum

from nfsd.peer.versions import (
    Kind,
    Order,
    PeerId,
    ResidencyChange,
    Version,
    VersionError,
    join_all,
    next_version,
)
from xdr import versions as wire
from xdr.codec import XdrError, decode, encode
from xdr.control import MAX_PATH
from xdr.nfs3 import NAME_MAX

CONFLICT_TAG = b".conflict-"
HASH_SHOWN = 8  # hex digits of the content hash in a conflict name
_EXTENSION_MAX = 16  # a longer ".suffix" is part of the stem, not an extension
_PEER_SHOWN = 8


class Action(Enum):
    IGNORE = "ignore"
    APPLY = "apply"
    MERGE = "merge"
    CONFLICT = "conflict"


def _canonical(versions: Iterable[Version]) -> tuple[Version, ...]:
    unique = set(versions)
    return tuple(unique) if len(unique) == 1 else tuple(sorted(unique, key=Version.encode))


@dataclass(frozen=True, slots=True)
class PathState:
    """The versions of one path that nothing received supersedes (sorted by encoding)."""

    versions: tuple[Version, ...] = ()

    @classmethod
    def of(cls, versions: Iterable[Version]) -> PathState:
        """The state after receiving `versions`, in any order: their maximal elements."""
        pool = set(versions)
        if len(pool) == 1:
            return cls(tuple(pool))
        return cls(
            _canonical(
                v for v in pool if not any(w.vector.compare(v.vector) is Order.NEWER for w in pool)
            )
        )

    def __bool__(self) -> bool:
        return bool(self.versions)

    def base(self) -> Iterable[Version]:
        """What a local change of this path supersedes: all of it."""
        return self.versions

    def encode(self) -> bytes:
        return wire.pack_state([v.encode() for v in self.versions])

    @classmethod
    def decode(cls, data: bytes) -> PathState:
        """Strict: only the canonical encoding of a set of mutually concurrent versions."""
        versions = tuple(Version.unpacked(v, raw) for v, raw in wire.unpack_state_raw(data))
        state = cls.of(versions)
        if state.versions != versions:
            raise XdrError("path state not canonical")
        return state


EMPTY = PathState()


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    state: PathState  # the path's state afterwards (the same one when IGNORE)


def decide(local: PathState, incoming: Version) -> Decision:
    """What to do with `incoming`, a version of a path whose state here is `local`."""
    if isinstance(incoming, ResidencyChange) or not isinstance(incoming, Version):
        raise TypeError("only a Version is history; eviction and unrealize never are")
    kept: list[Version] = []
    for held in local.versions:
        if held == incoming:
            return Decision(Action.IGNORE, local)
        order = incoming.vector.compare(held.vector)
        if order is Order.OLDER:
            return Decision(Action.IGNORE, local)
        if order is not Order.NEWER:
            # CONCURRENT, or an EQUAL vector with other content: only a peer whose store was
            # reset reuses counters like that, and dropping either side could lose data.
            kept.append(held)
    state = PathState(_canonical([*kept, incoming]))
    if not kept:
        return Decision(Action.APPLY, state)
    if all(v.same_content(incoming) for v in kept):
        return Decision(Action.MERGE, state)
    return Decision(Action.CONFLICT, state)


def rank(v: Version) -> tuple[bool, bool, int, str, bytes, bytes]:
    """The winning rule as a sort key: of concurrent versions, the largest keeps the path."""
    return (not v.deleted, v.kind is Kind.DIRECTORY, v.mtime_ns, v.author, v.content, v.encode())


def _groups(state: PathState) -> list[Version]:
    """One version per distinct content, best first: the best member's metadata, and the
    pointwise max of the members' vectors (the merged version)."""
    members: dict[tuple[Kind, bytes], list[Version]] = {}
    for v in state.versions:
        members.setdefault(v.identity, []).append(v)
    merged = []
    for group in members.values():
        best = max(group, key=rank)
        vector = join_all(v.vector for v in group)
        merged.append(
            Version(vector, best.kind, best.content, best.size, best.mtime_ns, best.author)
        )
    return sorted(merged, key=rank, reverse=True)


@dataclass(frozen=True, slots=True)
class Copy:
    name: bytes  # the conflict copy's area path, beside the path
    version: Version  # what it shows (a losing content, merged)


@dataclass(frozen=True, slots=True)
class Resolution:
    path: bytes
    shown: Version | None  # the winner (merged), a tombstone, or None when never known
    copies: tuple[Copy, ...] = ()  # sorted by name
    pinned: frozenset[bytes] = frozenset()  # blob ids to keep until resolved

    @property
    def exists(self) -> bool:
        return self.shown is not None and not self.shown.deleted

    @property
    def conflicted(self) -> bool:
        return bool(self.copies)


def resolve(path: bytes, state: PathState) -> Resolution:
    """What `path` shows given `state`; the same on every peer holding the same state."""
    if len(state.versions) == 1:  # the common case: nothing concurrent, nothing to rank
        return Resolution(path, state.versions[0])
    groups = _groups(state)
    if not groups:
        return Resolution(path, None)
    winner, losers = groups[0], groups[1:]
    # A losing tombstone has nothing to show; a directory never loses (rank rule 2).
    shown_losers = [v for v in losers if v.kind in (Kind.FILE, Kind.SYMLINK)]
    names = conflict_names(path, shown_losers)
    copies = tuple(
        sorted((Copy(n, v) for n, v in zip(names, shown_losers, strict=True)), key=lambda c: c.name)
    )
    pinned = frozenset(v.content for v in shown_losers if v.kind is Kind.FILE)
    return Resolution(path, winner, copies, pinned)


# --- Conflict names ---


def _content_hash(v: Version) -> str:
    if v.kind is Kind.FILE:
        return v.content.hex()  # the blob id is the content's hash already
    return hashlib.sha256(bytes([v.kind]) + v.content).hexdigest()


def _cut(data: bytes, limit: int) -> bytes:
    """`data` cut to at most `limit` bytes, never inside a UTF-8 sequence."""
    if limit <= 0:
        return b""
    if len(data) <= limit:
        return data
    end = limit
    while end > 0 and data[end] & 0xC0 == 0x80:
        end -= 1
    return data[:end]


def _split_extension(name: bytes) -> tuple[bytes, bytes]:
    dot = name.rfind(b".")
    if dot <= 0 or not 1 < len(name) - dot <= _EXTENSION_MAX:
        return name, b""  # a dotfile, no dot, a trailing dot, or a suffix too long to be one
    return name[:dot], name[dot:]


def conflict_name(
    path: bytes, v: Version, hash_digits: int = HASH_SHOWN, suffix: bytes = b""
) -> bytes:
    """The area path of `v`'s conflict copy beside `path`:
    `dir/stem.conflict-<peer>-<hash>[suffix].ext`, within NAME_MAX (the stem shortened)."""
    parent, slash, name = path.rpartition(b"/")
    stem, extension = _split_extension(name)
    peer = v.author.split("-")[0][:_PEER_SHOWN].encode()
    tag = CONFLICT_TAG + peer + b"-" + _content_hash(v)[:hash_digits].encode() + suffix
    room = min(NAME_MAX, MAX_PATH - len(parent) - len(slash)) - len(tag)
    if room < len(extension) + 1:
        extension = b""
    return parent + slash + _cut(stem, room - len(extension)) + tag + extension


def conflict_names(path: bytes, losers: list[Version]) -> list[bytes]:
    """A name for each loser (best first), none equal to `path` or to another: where names
    meet (the same hash prefix, or a shortened stem that spells the other), the hash is
    lengthened, and past its full length the loser's position is added."""
    levels = [0] * len(losers)
    while True:
        names = [
            _leveled_name(path, v, i, level)
            for i, (v, level) in enumerate(zip(losers, levels, strict=True))
        ]
        clashes = [i for i, n in enumerate(names) if n == path or names.count(n) > 1]
        if not clashes or max(levels) > _LEVELS_MAX:
            return names
        for i in clashes:
            levels[i] += 1


_HASH_LEVELS = (HASH_SHOWN, 16, 32, 64)
_LEVELS_MAX = 16  # unreachable but for names made to meet; ends the search regardless


def _leveled_name(path: bytes, v: Version, index: int, level: int) -> bytes:
    if level < len(_HASH_LEVELS):
        return conflict_name(path, v, _HASH_LEVELS[level])
    return conflict_name(path, v, _HASH_LEVELS[-1], f"-{index}-{level}".encode())


def copy_origin(name: bytes, v: Version) -> bytes | None:
    """The path `name` is `v`'s conflict copy of (`conflict_name` at any hash length), or
    None: not such a name, or one whose stem was shortened (the path cannot be told)."""
    parent, slash, leaf = name.rpartition(b"/")
    peer = v.author.split("-")[0][:_PEER_SHOWN].encode()
    tag = CONFLICT_TAG + peer + b"-" + _content_hash(v)[:HASH_SHOWN].encode()
    at = leaf.rfind(tag)
    if at <= 0:
        return None
    _, extension = _split_extension(leaf)
    path = parent + slash + leaf[:at] + extension
    if any(conflict_name(path, v, digits) == name for digits in _HASH_LEVELS):
        return path
    return None


def copy_names(path: bytes, v: Version) -> list[bytes]:
    """The names `v`'s conflict copy beside `path` may have (`conflict_name` at each hash
    length; a copy pushed past them by clashing names is not among them)."""
    return [conflict_name(path, v, digits) for digits in _HASH_LEVELS]


def origin_of_name(name: bytes) -> bytes | None:
    """The path `name` would be a conflict copy of, if it is one (`copy_origin` tells for
    a given version); None for a name without the conflict tag."""
    parent, slash, leaf = name.rpartition(b"/")
    at = leaf.rfind(CONFLICT_TAG)
    if at <= 0:
        return None
    _, extension = _split_extension(leaf)
    return parent + slash + leaf[:at] + extension


def dismissed_at_name(copy: Copy, name_state: PathState) -> bool:
    """Whether the copy's version was superseded under the copy's own name: a peer made the
    copy an ordinary file there (`_materialize` places the copy's version itself) and it was
    then deleted, renamed away or edited, or the copy was deleted (`dismissal_tombstone`).
    The copy is resolved then, though the path it is a copy of still holds its version."""
    v = copy.version.vector
    return any(w.vector.compare(v) in (Order.NEWER, Order.EQUAL) for w in name_state.versions)


def revived_copy(name: bytes, v: Version, origin: PathState, me: PeerId) -> bool:
    """Whether `v`, arriving at `name` (its conflict copy's name), is a copy a peer made an
    ordinary file while this peer had already moved past `v` at the copy's path: deleted,
    renamed away or edited it there as the path's content (a version of its own at the path
    supersedes `v`). This peer then dismisses it (`dismissal_tombstone`), as if its user had
    deleted the copy: an old version coming back beside what replaced it, whose bytes may
    be held nowhere any more. A peer that made the copy a file itself superseded `v` at the
    path too, but holds `v` at the name already: this never arrives there as new."""
    return v.kind is Kind.FILE and any(
        w.author == me and w.vector.compare(v.vector) is Order.NEWER for w in origin.versions
    )


# --- Local changes ---

Entry = tuple[bytes, Version]
"""One history entry of a path: (area path, its new version)."""


def _materialize(
    path: bytes,
    state: PathState,
    author: PeerId,
    clock: int,
    dismissed: Iterable[bytes],
    copy_states: Mapping[bytes, PathState] | None,
) -> list[Entry]:
    """Creates that turn `path`'s conflict copies into ordinary files under their names.

    A copy whose name a path already shows (a file someone made with that very name) was
    shadowed by it; it goes to the next free name instead, unless that path shows the same
    content already, so neither is overwritten."""
    gone = set(dismissed)
    copy_states = copy_states or {}
    entries = []
    for index, copy in enumerate(resolve(path, state).copies):
        if copy.name in gone:
            continue
        v = copy.version
        name, level = copy.name, 0
        while (there := resolve(name, copy_states.get(name, EMPTY))).exists:
            if there.shown is not None and there.shown.same_content(v):
                break
            level += 1
            name = _leveled_name(path, v, index, level)
        else:
            if level == 0:
                # The copy's own version, placed at its name: every peer that makes the copy
                # a file makes the same entry, and the holder's later delete of the copy
                # (`local_change` on its name, or `dismissal_tombstone`) supersedes it.
                entries.append((name, v))
                continue
            base = copy_states.get(name, EMPTY).versions
            made = next_version(
                base, author, v.kind, v.content, size=v.size, mtime_ns=v.mtime_ns, clock=clock
            )
            entries.append((name, made))
    return entries


DISMISSER = "-D"  # a peer's own counter for tombstones that supersede a copy alone


def dismissal_of_copy(
    state: PathState, copy: Copy, author: PeerId, *, clock: int = 0
) -> Version | None:
    """A tombstone at the path superseding one conflict copy's versions (those of its
    content) and nothing else, or None where no vector can do that. It counts on a counter of
    its own (the author's id + DISMISSER): a bump of the author's own counter would supersede
    the author's own versions too, the winner among them. The path then keeps showing what it
    shows, without this peer restating the winner as an edit of its own (which could lose to
    a concurrent change and show as a copy of content no one holds any more)."""
    group = [v for v in state.versions if v.same_content(copy.version)]
    vector = join_all(v.vector for v in group).bump(author + DISMISSER, clock)
    if any(vector.compare(v.vector) is not Order.CONCURRENT for v in state.versions
           if v not in group):  # fmt: skip
        return None  # it would supersede (or equal) a version that is not the copy's
    return Version(vector, Kind.DELETED, b"", 0, 0, author)


def dismissal_tombstone(
    name: bytes, copy: Version, name_state: PathState, author: PeerId, *, clock: int = 0
) -> Entry:
    """A tombstone at a dismissed copy's name, superseding the copy's version there: where a
    peer that had not seen the dismissal made the copy a file (`_materialize` places the
    copy's version at its name), the dismissal still wins."""
    return name, next_version([copy, *name_state.versions], author, Kind.DELETED, clock=clock)


def local_change(
    path: bytes,
    state: PathState,
    author: PeerId,
    kind: Kind,
    content: bytes = b"",
    *,
    size: int = 0,
    mtime_ns: int = 0,
    clock: int = 0,
    dismissed: Iterable[bytes] = (),
    copy_states: Mapping[bytes, PathState] | None = None,
) -> list[Entry]:
    """The entries a change made here at `path` publishes, in one batch: the path's new
    version (superseding everything it held), then the conflict copies not `dismissed` as
    ordinary files under their names (`copy_states`: what those names hold here already)."""
    made = next_version(
        state.base(), author, kind, content, size=size, mtime_ns=mtime_ns, clock=clock
    )
    return [(path, made), *_materialize(path, state, author, clock, dismissed, copy_states)]


# --- Renames ---


@dataclass(frozen=True, slots=True)
class Rename:
    """A rename entry: what `source_path` and `target_path` showed when it was made, and the
    two versions it makes."""

    source_path: bytes
    target_path: bytes
    source: Version  # what the source showed
    replaced: Version | None  # what the target showed, None when it showed nothing
    removed: Version  # the tombstone left at the source
    created: Version  # the target's new version: the source's content

    def __post_init__(self) -> None:
        if self.source_path == self.target_path:
            raise VersionError("a rename onto itself")
        if self.source.deleted or not self.removed.deleted:
            raise VersionError("a rename moves content and leaves a tombstone")
        if self.removed.vector.compare(self.source.vector) is not Order.NEWER:
            raise VersionError("a rename's tombstone must supersede its source")
        if not self.created.same_content(self.source):
            raise VersionError("a rename's target must get the source's content")
        if (
            self.replaced is not None
            and self.created.vector.compare(self.replaced.vector) is not Order.NEWER
        ):
            raise VersionError("a rename's target version must supersede what it replaced")

    def to_xdr(self) -> wire.rename_versions:
        return wire.rename_versions(
            self.source_path,
            self.target_path,
            self.source.to_xdr(),
            None if self.replaced is None else self.replaced.to_xdr(),
            self.removed.to_xdr(),
            self.created.to_xdr(),
        )

    @classmethod
    def from_xdr(cls, r: wire.rename_versions) -> Rename:
        try:
            return cls(
                bytes(r.source_path),
                bytes(r.target_path),
                Version.from_xdr(r.source),
                None if r.replaced is None else Version.from_xdr(r.replaced),
                Version.from_xdr(r.removed),
                Version.from_xdr(r.created),
            )
        except VersionError as e:
            raise XdrError(f"bad rename: {e}") from None

    def encode(self) -> bytes:
        return encode(wire.rename_versions, self.to_xdr())

    @classmethod
    def decode(cls, data: bytes) -> Rename:
        return cls.from_xdr(decode(wire.rename_versions, data))


def make_rename(
    source_path: bytes,
    target_path: bytes,
    source_state: PathState,
    target_state: PathState,
    author: PeerId,
    *,
    mtime_ns: int = 0,
    clock: int = 0,
    copy_states: Mapping[bytes, PathState] | None = None,
) -> tuple[Rename, list[Entry]]:
    """A rename made here, and the conflict copies of either path it turns into ordinary
    files (a rename supersedes everything both paths held, so they would vanish otherwise).
    `mtime_ns` is the tombstone's."""
    source = resolve(source_path, source_state).shown
    if source is None or source.deleted:
        raise VersionError("nothing to rename")
    target = resolve(target_path, target_state)
    removed = next_version(
        source_state.base(), author, Kind.DELETED, mtime_ns=mtime_ns, clock=clock
    )
    bases = list(target_state.base())
    if copy_origin(target_path, source) is not None:
        # A conflict copy moved to a copy name of its own version (its directory renamed with
        # the path it is a copy of): it stays that version there, as `_materialize` places
        # it, so that a later delete or move of it dismisses the version.
        bases.append(source)
    created = next_version(
        bases,
        author,
        source.kind,
        source.content,
        size=source.size,
        mtime_ns=source.mtime_ns,
        clock=clock,
    )
    rename = Rename(
        source_path,
        target_path,
        source,
        target.shown if target.exists else None,
        removed,
        created,
    )
    copies = [
        *_materialize(source_path, source_state, author, clock, (), copy_states),
        *_materialize(target_path, target_state, author, clock, (), copy_states),
    ]
    return rename, copies


@dataclass(frozen=True, slots=True)
class RenamePlan:
    move: bool  # preconditions held: move the source's entry (and bytes) onto the target
    source: Decision  # the tombstone at the source, under the usual rules
    target: Decision  # the created version at the target, under the usual rules


def _holds_only(state: PathState, expected: Version | None, superseding: Version) -> bool:
    """This peer shows `expected`'s content (nothing, for None) and holds nothing that
    `superseding` was made without."""
    shown = resolve(b"", state)
    if expected is None:
        if shown.exists:
            return False
    elif not (shown.exists and shown.shown is not None and shown.shown.same_content(expected)):
        return False
    return all(superseding.vector.compare(v.vector) is Order.NEWER for v in state.versions)


def plan_rename(rename: Rename, source_state: PathState, target_state: PathState) -> RenamePlan:
    """What a peer does with `rename`. The resulting states are those of a delete at the
    source and a create at the target in every case; `move` says the peer may do it as one
    rename of what it holds (its source is exactly the rename's source, its target exactly
    what the rename replaced), and otherwise it degrades to a create and a delete."""
    source = decide(source_state, rename.removed)
    target = decide(target_state, rename.created)
    move = (
        source.action is Action.APPLY
        and target.action is Action.APPLY
        and _holds_only(source_state, rename.source, rename.removed)
        and _holds_only(target_state, rename.replaced, rename.created)
    )
    return RenamePlan(move, source, target)


# --- The whole view ---


def tree(states: Mapping[bytes, PathState]) -> dict[bytes, Version]:
    """Every area path shown, with what it shows: each existing path's winner, and each
    conflict copy not shadowed by a path of the same name that exists, nor dismissed
    there (`dismissed_at_name`)."""
    shown: dict[bytes, Version] = {}
    copies: dict[bytes, Version] = {}
    for path, state in sorted(states.items()):  # sorted: a shared copy name is decided alike
        r = resolve(path, state)
        if r.exists and r.shown is not None:
            shown[path] = r.shown
        for c in r.copies:
            if not dismissed_at_name(c, states.get(c.name, EMPTY)):
                copies.setdefault(c.name, c.version)
    for name, v in copies.items():
        shown.setdefault(name, v)
    return shown


def pinned(states: Mapping[bytes, PathState]) -> frozenset[bytes]:
    """Every blob a conflict anywhere in `states` keeps pinned."""
    return frozenset().union(*(resolve(p, s).pinned for p, s in states.items()))
