"""The history exchange: what one peer serves of its areas' logs, what it does with the pages
another serves it, acknowledgements, and trimming. No sockets: `serve` and `acknowledge`
answer calls, `apply` takes a reply, `pull` drives one area's subscription through any
`call(procedure, args)`, asking for the next page before it applies one (so the serving peer
works while this one applies); the RPC handlers are nfsd/peer/program.py, the types
xdr/peer.py.

Kept in the `meta` family (this module alone knows these keys):

- `xchg-state:` area (4) ‖ path → the path's `PathState` (every version of it no other
  supersedes, tombstones included): what incoming entries are decided against, and what a full
  catch-up announces, one path at a time.
- `xchg-stamped:` area → the last sequence of the log stamped (below).
- `xchg-seen:` area ‖ peer → what this peer has applied of that peer's log: its uuid, `last
  seen`, and a catch-up under way (the sequence it stands for and its cursor).
- `xchg-ack:` area ‖ peer → the sequence that peer acknowledged of our log, and when.
- `xchg-heard:` area ‖ peer → when that peer last asked for our log.
- `xchg-error:` area ‖ peer ‖ sequence → why an entry could not be applied.
- `xchg-base:` area ‖ path → the versions a Real file here descends from, kept while it may
  hold a change not published yet and a peer's version of it came (below).
- `xchg-copy:` area ‖ copy name → the path it is a conflict copy of, while it is shown.

Publishing: the journal appends a change when it is published (nfsd/store/history.py gives
its sequence then). Before any page is served or applied, `stamp_pending` gives each change
not stamped yet, in sequence order, the versions it makes (superseding the path's state), and
writes them, the new states and the stamped mark in one batch. Entries applied from a peer are
appended already stamped with the peer's versions, so they are relayed to the others. A file's
delete is stamped only after `delete_grace` seconds (`_held`; before a peer's page is applied,
at once), and publishes nothing when the path holds a file again by then: an unlink + re-create
is one change.

Serving (`serve`): a subscriber names the log's uuid and its `last seen`; it gets the stamped
changes after it, at most a page, read by iterator. A different uuid (a wiped store), a
`last seen` below what the log still holds (trimmed) or above what it ever reached (a store
restored from a backup) gets a full catch-up instead: the path states in key order, a page at
a time, resumed from a cursor; it stands for the stamped mark when it began, and the deltas
after it follow. Tombstones are path states like any other, so a delete missed meanwhile is
carried and nothing comes back; an entry received twice decides IGNORE, so nothing doubles.

Applying (`apply`): each entry's path is checked (nfsd/store/paths.py), its version decoded
and decided against the path's state (nfsd/peer/conflicts.py); the new states, the index
entries they show, the relayed history and the new `last seen` are one RocksDB batch per
page: all of it or none. An entry that cannot be applied is recorded as an error, inside the
same batch, and the entries after it still apply. What arrives shows as Unreal index entries
(size, mtime, blob id), every conflict copy `resolve` gives as one more beside its path
(its blob pinned in the cache, with a reason naming the copy, until it is resolved).

Paths held Real (with a tree, nfsd/peer/landing.py): a clean Real file (what the index
published, nothing written since) that a peer's version supersedes has its outdated bytes
dropped and shows the new version Unreal, fetched on read; deleted by a peer, it is removed
(an emptied directory too); renamed, it is moved as one where the rename's preconditions hold
here (`plan_rename`: the same two changes, a tombstone and a create, in one entry), or where
a delete and a create of its very content meet in one page (a catch-up). A losing local
version moves aside to its conflict name, still Real.

Directory renames: the journal publishes a rename of each announced path below a renamed
directory, after the directory's own (nfsd/vfs/journal.py), rather than one entry that
implies its children. Every path then carries its own versions through one rule set: a
catch-up announces the children where they are now, and a change concurrent with the rename
under the old name (an edit, a create) meets its own path's versions, never an implied move
that would have to be replayed on every later arrival. A directory held Real here moves as
one when every path below it here is renamed with it in the page (and clean); otherwise each
path goes by its own rename, and a directory keeps existing (Real, or brought back Unreal)
while something below it does, so a create concurrent with the rename is not lost.

The index, the fileid table and the disk changes as intents are one synced batch; the disk
follows, and `recover` finishes it after a crash. Realizing a newly arrived version of a path
marked `real` is not done here: the paths each batch shows are told to `arrived`
(nfsd/vfs/arrivals.py).

A Real file that is not clean may hold a change not published yet. It is left as it is, and
the path's state before the peer's version becomes its base: when the change is published,
it is stamped on that base instead of on the state, so it is concurrent with the peer's
version (a conflict resolved alike everywhere), never a successor that silently replaces it
because it happened to be stamped after it was applied. Where the file turns out to hold no
change (it rests again with the content its base shows), the base is dropped and the path
shown as decided (`stamp_pending` looks, every time it runs).

Resolving: deleting a conflict copy, or renaming it away, is published as a change of its
path that keeps the winner and dismisses the copy (conflicts.py `local_change`), so every
peer drops it (and unpins its blob); a rename also creates its new name.

Trimming (`trim`): below the lowest sequence every peer of the area acknowledged, leaving out
peers not heard from for `silent_after` seconds (they get a full catch-up when they return),
and never beyond the stamped mark.

The `History` must be the journal's own object: its counter of sequences is cached in it,
and two objects would hand out the same sequence. Calls into one `Exchange` are serialized by
its lock; the journal must append on the same thread (the event loop) or under its own care.
"""

from __future__ import annotations

import contextlib
import logging
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from nfsd.peer.conflicts import (
    CONFLICT_TAG,
    EMPTY,
    Action,
    Copy,
    PathState,
    Rename,
    Resolution,
    copy_names,
    copy_origin,
    decide,
    dismissal_of_copy,
    dismissal_tombstone,
    dismissed_at_name,
    local_change,
    make_rename,
    origin_of_name,
    plan_rename,
    resolve,
    revived_copy,
)
from nfsd.peer.landing import Act, Landing, What
from nfsd.peer.versions import Kind as VKind
from nfsd.peer.versions import PeerId, Version, VersionError, next_version
from nfsd.store.areas import AreaTable
from nfsd.store.blobs import BlobError
from nfsd.store.db import Batch, Store
from nfsd.store.history import Change, History, Op
from nfsd.store.index import AreaIndex, Entry, Kind, Layer, join, split
from nfsd.store.paths import path_problem, shown
from xdr import peer as wire
from xdr import versions as versions_wire
from xdr.codec import Array, XdrError, decode

if TYPE_CHECKING:
    from nfsd.vfs.merged import MergedTree

log = logging.getLogger("realize.exchange")

PAGE_ENTRIES = 1000  # the most entries one page carries, whatever the subscriber asks
PAGE_BYTES = 1 << 20  # and about the most bytes
STAMP_BATCH = 500  # changes stamped per batch
TRIM_BATCH = 10_000  # changes trimmed per batch
SILENT_AFTER = 30 * 24 * 3600.0  # a peer not heard for this long no longer holds history
# Seconds a file's delete waits before it is published, for an unlink + re-create to be one
# change (`Exchange._held`); deletes are to be seen elsewhere within 2 s.
DELETE_GRACE = 0.5
_STAMPED_MAX = 64  # entries one change may publish (a rename and its conflict copies)

_STATE = b"xchg-state:"
_STAMPED = b"xchg-stamped:"
_SEEN = b"xchg-seen:"
_ACK = b"xchg-ack:"
_HEARD = b"xchg-heard:"
_ERROR = b"xchg-error:"
_BASE = b"xchg-base:"
_COPY = b"xchg-copy:"
_AREA = struct.Struct(">I")
_SEQ = struct.Struct(">Q")
_ACK_VALUE = struct.Struct(">Qd")
_SEEN_HEAD = struct.Struct(">16sQ?Q")  # uuid, last seen, catching up, catch-up upto

_stamp_type = Array(wire.stamp_entry_v0, _STAMPED_MAX)  # the first stamps' form, still read
_STAMP_FORM = b"\x01"  # leads a stamp in the form of xdr/versions.py `published`


def _stamp(entries: list[tuple[bytes, int, bytes]]) -> bytes:
    """A change's stamp: (path, mode, packed version) of each entry it publishes."""
    return _STAMP_FORM + versions_wire.pack_published(entries)


def _stamped(stamp: bytes) -> list[tuple[bytes, int, bytes]]:
    if not stamp:
        return []
    if stamp[:1] == _STAMP_FORM:
        return versions_wire.unpack_published(memoryview(stamp)[1:])
    return [(e.path, e.mode, e.version) for e in decode(_stamp_type, stamp)]


class _Ahead:
    """One peer call made ahead of need: its result, or what it raised, kept until asked."""

    def __init__(self) -> None:
        self._done = trio.Event()
        self._outcome: Any = None
        self._error: Exception | None = None

    async def run(self, call: Callable[[int, Any], Awaitable[Any]], proc: int, args: Any) -> None:
        try:
            self._outcome = await call(proc, args)
        except Exception as e:  # raised where the result is awaited, as its own type
            self._error = e
        finally:
            self._done.set()

    async def result(self) -> Any:
        await self._done.wait()
        if self._error is not None:
            raise self._error
        return self._outcome


def _asking(area_name: str, seen: Seen, max_entries: int) -> wire.history_args:
    """The HISTORY call that continues a subscription from `seen`."""
    return wire.history_args(
        area_name.encode(),
        seen.log_uuid,
        seen.last_seen,
        max_entries,
        seen.catching_up,
        seen.catchup_upto,
        seen.cursor,
    )


class ExchangeError(Exception):
    """An answer this peer cannot use (a peer's bug or malice): the subscription stops."""


@dataclass(slots=True)
class Seen:
    """How far this peer has applied another's log of one area."""

    log_uuid: bytes = b""
    last_seen: int = 0
    catching_up: bool = False
    catchup_upto: int = 0
    cursor: bytes = b""

    def pack(self) -> bytes:
        uuid = self.log_uuid.ljust(16, b"\0")
        head = _SEEN_HEAD.pack(uuid, self.last_seen, self.catching_up, self.catchup_upto)
        return bytes([len(self.log_uuid)]) + head + self.cursor

    @classmethod
    def unpack(cls, raw: bytes) -> Seen:
        length = raw[0]
        uuid, last, catching, upto = _SEEN_HEAD.unpack_from(raw, 1)
        return cls(uuid[:length], last, catching, upto, bytes(raw[1 + _SEEN_HEAD.size :]))


@dataclass(slots=True)
class Applied:
    """What one page did."""

    applied: int = 0
    merged: int = 0
    conflicts: int = 0
    ignored: int = 0
    errors: list[str] = field(default_factory=list)
    more: bool = False


def refused(status: wire.history_status) -> wire.history_res:
    """A HISTORY answer that serves nothing."""
    return wire.history_res(status, bytes(wire.LOG_UUID_SIZE), False, 0, b"", False, [])


def _peer_key(area: int, peer: PeerId) -> bytes:
    return _AREA.pack(area) + peer.encode() + b"\0"


_ENTRY_KINDS = {VKind.FILE: Kind.FILE, VKind.DIRECTORY: Kind.DIR, VKind.SYMLINK: Kind.SYMLINK}
_OPS = {
    VKind.FILE: Op.CHANGE,
    VKind.DIRECTORY: Op.MKDIR,
    VKind.SYMLINK: Op.SYMLINK,
    VKind.DELETED: Op.DELETE,
}


def _entry_kind(v: Version) -> Kind:
    return _ENTRY_KINDS[v.kind]


def _base_of(change: Change, path: bytes) -> bytes:
    """The base a history entry names: for the version a create or an edit gives its own
    path (relayed ones included), the content it replaced there; none for the rest (the
    conflict copies it makes files, renames: the receiver holds their content already)."""
    if change.op in (Op.CREATE, Op.CHANGE) and path == change.path:
        return change.old_blob if len(change.old_blob) == wire.BASE_SIZE else b""
    return b""


def _op_of(v: Version) -> Op:
    return _OPS[v.kind]


def _identity(entry: Entry) -> tuple[VKind, bytes]:
    """What an index entry holds, as `Version.identity` says it."""
    if entry.kind == Kind.FILE:
        return VKind.FILE, entry.blob
    if entry.kind == Kind.SYMLINK:
        return VKind.SYMLINK, entry.target
    if entry.kind == Kind.DIR:
        return VKind.DIRECTORY, b""
    return VKind.DELETED, b"?"  # a special file: like no version


def _mode_of(entry: Entry | None) -> int:
    return 0 if entry is None else entry.mode


def _unreal_entry(v: Version, mode: int) -> Entry:
    kind = _entry_kind(v)
    if not mode:
        mode = 0o755 if kind == Kind.DIR else 0o644
    blob = v.content if kind == Kind.FILE else b""
    target = v.content if kind == Kind.SYMLINK else b""
    return Entry(kind, Layer.UNREAL, mode, v.size, v.mtime_ns, blob, target)


def _pin_reason(area: int, name: bytes) -> str:
    return f"conflict:{area}:{name.hex()}"


@dataclass(slots=True)
class Landed:
    """What showing a batch's paths leaves to do once the batch is committed."""

    acts: list[Act] = field(default_factory=list)
    pins: list[tuple[bytes, str]] = field(default_factory=list)
    unpins: list[tuple[bytes, str]] = field(default_factory=list)
    placed: set[bytes] = field(default_factory=set)  # paths a Real file is moved to
    deleted: set[bytes] = field(default_factory=set)  # index entries this batch deletes
    made: set[bytes] = field(default_factory=set)  # paths this batch shows, dirs found there
    listed: dict[bytes, set[bytes] | None] = field(default_factory=dict)  # names on disk
    replaced: list[tuple[bytes, bytes]] = field(default_factory=list)  # (new blob, old blob)
    named: list[tuple[bytes, bytes]] = field(default_factory=list)  # (new blob, its base)

    # A path's latest fate in the batch wins: one deleted after it was shown or had a file
    # moved to it no longer holds its directory (`Exchange._holds`), and the other way round.
    def gone(self, path: bytes) -> None:
        self.deleted.add(path)
        self.made.discard(path)
        self.placed.discard(path)

    def shows(self, path: bytes) -> None:
        self.deleted.discard(path)
        self.made.add(path)

    def receives(self, path: bytes) -> None:
        self.deleted.discard(path)
        self.placed.add(path)


def _moves_as_one(page: _Page, first: tuple[bytes, Version], second: tuple[bytes, Version]) -> bool:
    """Whether a rename in `page` (a tombstone at one path and its content at another, in one
    change) may move what this peer shows as one: its preconditions hold (`plan_rename`), what
    the source showed is the content it moves, and nothing else in the page changed either
    path."""
    (source, removed), (target, created) = first, second
    if not removed.deleted or created.deleted:
        return False
    before_source, before_target = page.before[source], page.before[target]
    was = resolve(source, before_source)
    there = resolve(target, before_target)
    if was.shown is None or was.shown.deleted or not was.shown.same_content(created):
        return False
    try:
        rename = Rename(source, target, was.shown, there.shown if there.exists else None,
                        removed, created)  # fmt: skip
    except VersionError:
        return False
    if not plan_rename(rename, before_source, before_target).move:
        return False
    return page.states[source] == PathState((removed,)) and page.states[target] == PathState(
        (created,)
    )


@dataclass(slots=True)
class _Page:
    """What applying one page changed, path by path."""

    states: dict[bytes, PathState] = field(default_factory=dict)  # after the page
    before: dict[bytes, PathState] = field(default_factory=dict)  # before it
    modes: dict[bytes, int] = field(default_factory=dict)
    applied: dict[int, list[tuple[bytes, Version]]] = field(default_factory=dict)  # by change
    # source -> (its tombstone, the content at its target): the renames among `applied`
    renames: dict[bytes, tuple[tuple[bytes, Version], tuple[bytes, Version]]] = field(
        default_factory=dict
    )

    bases: dict[bytes, tuple[bytes, bytes]] = field(default_factory=dict)  # (blob, its base)

    def touch(self, path: bytes, mode: int, before: PathState, after: PathState) -> None:
        self.before.setdefault(path, before)
        self.states[path] = after
        self.modes[path] = mode


class Exchange:
    def __init__(
        self,
        store: Store,
        history: History,
        me: PeerId,
        *,
        silent_after: float = SILENT_AFTER,
        clock: Callable[[], float] = time.time,
        tree: MergedTree | None = None,
        delete_grace: float = 0.0,
    ) -> None:
        """`tree`: the merged tree, so that versions arriving for paths held Real here
        change them on the disk; without one, a Real path is never touched. `delete_grace`:
        seconds a file's delete waits before it is published (see `_held`)."""
        self.store = store
        self.history = history
        self.me = me
        self.silent_after = silent_after
        self.delete_grace = delete_grace
        # Told the paths each batch showed (nfsd/vfs/arrivals.py `Arrivals.arrived`).
        self.arrived: Callable[[int, Iterable[bytes]], None] | None = None
        # Told (new blob, old blob) for each file a peer's version gave new content
        # (nfsd/vfs/bases.py `Bases.note`: the new one may be built from the old).
        self.replaced: Callable[[bytes, bytes], None] | None = None
        self.clock = clock
        self.meta = store.family("meta")
        self.index = AreaIndex(store)
        self.areas = AreaTable(store)
        self.lock = threading.RLock()
        self.landing = Landing(tree, store) if tree is not None else None

    # ---- path states ----

    def state(self, area: int, path: bytes) -> PathState:
        raw = self.meta.get(_STATE + _AREA.pack(area) + path)
        return EMPTY if raw is None else PathState.decode(bytes(raw))

    def _put_state(self, batch: Batch, area: int, path: bytes, state: PathState) -> None:
        batch.put("meta", _STATE + _AREA.pack(area) + path, state.encode())

    def states(self, area: int, after: bytes = b"") -> Iterator[tuple[bytes, PathState]]:
        """(path, state) of every versioned path of `area` after `after`, in key order."""
        prefix = _STATE + _AREA.pack(area)
        for key, raw in self.meta.items(from_key=prefix + after):
            if not key.startswith(prefix):
                break
            path = bytes(key[len(prefix) :])
            if path == after and after:
                continue
            yield path, PathState.decode(bytes(raw))

    # ---- stamping what the journal published ----

    def stamped(self, area: int) -> int:
        raw = self.meta.get(_STAMPED + _AREA.pack(area))
        return _SEQ.unpack(raw)[0] if raw else 0

    def stamp_pending(self, area: int, *, everything: bool = False) -> int:
        """Give the versions they make to the changes not stamped yet; how many changes.
        Then the paths held Real while they might hold a change not published yet that
        turned out to hold none are shown as their state says. `everything`: a delete still
        in its grace is stamped too (before a peer's page is applied: it happened first)."""
        with self.lock:
            count = 0
            while True:
                done = self._stamp_some(area, everything)
                if not done:
                    break
                count += done
            if self.landing is not None:
                self._release_held(area)
                self.pin_copies(area)
            return count

    def stamp_some(self, area: int) -> int:
        """Stamp at most `STAMP_BATCH` pending changes; how many (0: none was pending). For
        stamping in the background a batch at a time; `stamp_pending` still finishes."""
        with self.lock:
            return self._stamp_some(area)

    def waits_to_stamp(self, area: int, path: bytes) -> bool:
        """Whether a change of `path` is recorded and not stamped yet (a delete in its grace,
        or one the server was stopped before it stamped)."""
        return any(
            path in (change.path, change.new_path)
            for _, change in self.history.since(area, self.stamped(area))
        )

    def stamp_before_entry(self, area: int, path: bytes) -> None:
        """Before an entry the history never made is put at `path` (`realize import`):
        stamp the changes still waiting (a delete in its grace) when one is of that path.
        Stamped after it, the delete would take an entry of the content it removed for what
        it supersedes, and take it away."""
        with self.lock:
            if self.waits_to_stamp(area, path):
                self.stamp_pending(area, everything=True)

    def all_stamped(self, area: int) -> bool:
        """Whether every change of the area's log is stamped (none waits in its grace)."""
        return self.stamped(area) == self.history.high(area)

    def _held(self, change: Change) -> bool:
        """Whether a change must wait before it is stamped: a file's delete younger than the
        grace. An editor that unlinks a file and writes it anew makes a delete and, once the
        new file rests, a create; published at once, the delete would make the file vanish
        on every other peer until the create follows. Held for the grace, the delete finds
        the path holding a file again and publishes nothing (`_versions_of`): the create then
        supersedes the old version, one change. The changes after it wait with it (sequence
        order is publication order)."""
        if change.op is not Op.DELETE or change.stamp or self.delete_grace <= 0:
            return False
        return time.time_ns() - change.time_ns < self.delete_grace * 1e9

    def _stamp_some(self, area: int, everything: bool = False) -> int:
        start = self.stamped(area)
        batch = self.store.batch()
        overlay: dict[bytes, PathState] = {}
        before: dict[bytes, PathState] = {}
        bases: dict[bytes, PathState] = {}  # paths stamped on a kept base: what they hold now
        reshow: set[bytes] = set()
        count = last = 0
        for sequence, change in self.history.since(area, start):
            if count >= STAMP_BATCH or (not everything and self._held(change)):
                break
            count, last = count + 1, sequence
            if change.stamp:
                continue  # relayed from a peer: its versions are the peer's
            if change.op is Op.CREATE and not change.old_blob:
                # Made again in its delete's grace (an editor's save): what it replaced is
                # its base as much as an edit's old content is (`_base_of`).
                was = resolve(
                    change.path, overlay.get(change.path) or self.state(area, change.path)
                )
                if was.shown is not None and was.shown.kind is VKind.FILE:
                    change.old_blob = was.shown.content
            goes = change.op in (Op.DELETE, Op.RMDIR, Op.RENAME)
            prior = (overlay.get(change.path) or self.state(area, change.path)) if goes else None
            made = self._versions_of(area, change, overlay, bases)
            for path, _mode, version in made:
                base = overlay.get(path) or self.state(area, path)
                before.setdefault(path, base)
                decision = decide(base, version)
                overlay[path] = decision.state
                if path in bases:
                    bases[path] = PathState((version,))
                if path not in (change.path, change.new_path):
                    reshow.add(path)  # a conflict copy made a file: the journal never saw it
                if (
                    path in bases
                    or decision.action is Action.CONFLICT
                    or resolve(path, base).copies
                ):
                    reshow.add(path)
            if (
                prior is not None
                and change.path in overlay
                and self._shown_from(area, change.path, prior)
            ):
                # Shown again after its file went (a copy that an edit of its path made a
                # file of its own while this delete waited its grace): the index follows the
                # state the change leaves. An entry the state never showed (one `realize
                # import` brought back in the grace) is not the state's to take away.
                reshow.add(change.path)
            change.stamp = _stamp([(p, m, v.encode()) for p, m, v in made])
            self.history.rewrite(batch, area, sequence, change)
        if not count:
            return 0
        for path, state in overlay.items():
            self._put_state(batch, area, path, state)
        landed = Landed()
        for path in bases:
            batch.delete("meta", _BASE + _AREA.pack(area) + path)
        for path in sorted(reshow, reverse=True):
            self.show(batch, area, path, 0, before[path], overlay[path], landed, overlay,
                      bases.get(path))  # fmt: skip
        batch.put("meta", _STAMPED + _AREA.pack(area), _SEQ.pack(last))
        batch.commit(sync=bool(landed.acts))
        self._finish(area, landed)
        return count

    def _shown_from(self, area: int, path: bytes, state: PathState) -> bool:
        """Whether the index shows at `path`, not Real, what `state` shows there."""
        there = self.index.get(area, path)
        shown = resolve(path, state).shown
        return (
            there is not None
            and there.layer != Layer.REAL
            and shown is not None
            and shown.identity == _identity(there)
        )

    def _release_held(self, area: int) -> None:
        """Paths held Real on a base (their file not clean when a peer's version came) whose
        file is clean again without a change published (or gone): shown as decided now."""
        prefix = _BASE + _AREA.pack(area)
        batch = self.store.batch()
        landed = Landed()
        released = 0
        assert self.landing is not None
        pending: set[bytes] | None = None
        for key, raw in self.meta.items(from_key=prefix):
            if not key.startswith(prefix):
                break
            path = bytes(key[len(prefix) :])
            if pending is None:
                pending = self._unstamped_paths(area)
            if path in pending:
                continue  # a change of it waits (a delete in its grace): stamped on this base
            base = PathState.decode(bytes(raw))
            current = self.index.get(area, path)
            if (current is None or current.layer != Layer.REAL) and self._unindexed(
                area, path, landed
            ):
                continue  # still not indexed: the journal publishes it, on this base
            if current is not None and current.layer == Layer.REAL:
                real = self.landing.inspect(area, path, current)
                if real is None:
                    continue  # gone from the disk: the journal's delete comes, on this base
                held = resolve(path, base).shown
                if not real.clean or held is None or held.identity != _identity(current):
                    continue  # a change of its own, to be published (and stamped)
            batch.delete("meta", bytes(key))
            self.show(batch, area, path, 0, base, self.state(area, path), landed)
            released += 1
        if released:
            batch.commit(sync=bool(landed.acts))
            self._finish(area, landed)

    def _unstamped_paths(self, area: int) -> set[bytes]:
        paths = set()
        for _sequence, change in self.history.since(area, self.stamped(area)):
            if not change.stamp:
                paths |= {change.path, change.new_path}
        return paths

    def _versions_of(
        self,
        area: int,
        change: Change,
        overlay: dict[bytes, PathState],
        bases: dict[bytes, PathState],
    ) -> list[tuple[bytes, int, Version]]:
        """The versions a local change makes, with the mode each path is shown with. A path
        held Real on a base (a peer's version came while its file held a change not yet
        published) supersedes only that base: the change and the peer's are concurrent."""

        def state(path: bytes) -> PathState:
            return overlay.get(path) or self.state(area, path)

        def base(path: bytes) -> PathState:
            if path in bases:
                return bases[path]
            raw = self.meta.get(_BASE + _AREA.pack(area) + path)
            if raw is None:
                return state(path)
            # What this peer made at the path since it was held (an edit, a copy dismissed)
            # its user saw there: the change supersedes those too, not the base alone.
            own = [v for v in state(path).versions if v.author == self.me]
            bases[path] = PathState.of([*PathState.decode(bytes(raw)).versions, *own])
            return bases[path]

        def copies(path: bytes, of: PathState | None = None) -> dict[bytes, PathState]:
            of = state(path) if of is None else of
            return {c.name: state(c.name) for c in resolve(path, of).copies}

        path, op = change.path, change.op
        # Past every counter this peer gave the paths it touches: a change stamped on a kept
        # base (older than what it made there since) must still supersede those versions,
        # and two changes of one second are never one vector.
        touched = [path, change.new_path] if change.new_path else [path]
        clock = max(
            change.time_ns // 1_000_000_000,
            1 + max((v.vector.counter(self.me) for p in touched for v in state(p).versions),
                    default=0),
        )  # fmt: skip
        mode = change.mode & 0o7777
        entry = self.index.get(area, change.new_path if op is Op.LINK else path)
        mtime = entry.mtime_ns if entry is not None else change.time_ns
        if entry is not None and not mode:
            mode = entry.mode
        if op in (Op.CREATE, Op.CHANGE, Op.LINK):
            if not change.new_blob:
                return []
            target = change.new_path if op is Op.LINK else path
            size = entry.size if entry is not None else change.size
            if not state(target) and self.copy_of(area, target) is not None:
                # Written over, a conflict copy ends as a delete of it would end it: its
                # version goes from the path it lost at, or a peer's next change there
                # makes it a file under a longer name, its bytes held by no one.
                return self._made_over_copy(
                    area, target, target, change.new_blob, size, mtime, mode, clock,
                    state, base, copies, copies(target),
                )  # fmt: skip
            made = local_change(
                target, base(target), self.me, VKind.FILE, change.new_blob,
                size=size, mtime_ns=mtime, clock=clock, copy_states=copies(target),
            )  # fmt: skip
            if target in bases:
                made += self._overwritten_copies(target, bases[target], change.new_blob,
                                                 state, clock)  # fmt: skip
        elif op in (Op.DELETE, Op.RMDIR):
            if op is Op.DELETE and entry is not None and entry.layer == Layer.REAL:
                return []  # made again since (`_held`): its create will supersede the old
            if not state(path):
                return self._dismissal(area, path, state, base, copies, clock)
            made = local_change(
                path, base(path), self.me, VKind.DELETED,
                mtime_ns=change.time_ns, clock=clock, copy_states=copies(path),
            )  # fmt: skip
            if path in bases:  # the deleted file held the bytes of a version it kept
                made += self._overwritten_copies(path, bases[path], b"", state, clock)
        elif op is Op.MKDIR:
            made = local_change(path, base(path), self.me, VKind.DIRECTORY, clock=clock)
        elif op is Op.SYMLINK:
            made = local_change(
                path, base(path), self.me, VKind.SYMLINK, change.new_path,
                mtime_ns=mtime, clock=clock,
            )  # fmt: skip
        elif op is Op.RENAME:
            renamed = self._rename_versions(area, change, state, base, copies, clock)
            target, moved = change.new_path, self.index.get(area, change.new_path)
            if target in bases and moved is not None and moved.kind == Kind.FILE and moved.blob:
                # Renamed over a file held on a base: its bytes are gone as by an edit.
                dismissed = self._overwritten_copies(target, bases[target], moved.blob,
                                                     state, clock)  # fmt: skip
                renamed += [(p, moved.mode, v) for p, v in dismissed]
            return renamed
        else:
            return []  # SETATTR: a mode is not a version
        return [(p, mode, v) for p, v in made]

    def _overwritten_copies(
        self,
        path: bytes,
        held: PathState,
        content: bytes,
        state: Callable[[bytes], PathState],
        clock: int,
    ) -> list[tuple[bytes, Version]]:
        """Tombstones for the copies made files of a version `held` here Real at `path` (its
        file was being changed as it lost, so it was never moved aside) that the file's new
        `content` overwrote: where the cache does not keep that version either, the file held
        its only bytes here, and the copy, untouched since it was made a file, goes with
        them, as when a move aside is undone (`_unmoved`). A file renamed over it, too, and
        its delete (`content` empty)."""
        blobs = self.landing.tree.blobs if self.landing is not None else None
        made: list[tuple[bytes, Version]] = []
        for v in held.versions:
            if v.kind is not VKind.FILE or v.content == content:
                continue
            if blobs is not None and v.content in blobs and blobs.has_all(v.content):
                continue  # kept in the cache: the copy stays readable
            for name in copy_names(path, v):
                there = state(name)
                if there and all(w.identity == v.identity for w in there.versions):
                    made.append(dismissal_tombstone(name, v, there, self.me, clock=clock))
        return made

    def _dismissal(
        self,
        area: int,
        name: bytes,
        state: Callable[[bytes], PathState],
        base: Callable[[bytes], PathState],
        copies: Callable[[bytes], dict[bytes, PathState]],
        clock: int,
    ) -> list[tuple[bytes, int, Version]]:
        """A conflict copy deleted (or renamed away) here: a change of the path it is a copy
        of, keeping what the path shows and dismissing the copy (conflicts.py
        `local_change`), so every peer sees it resolved; and a tombstone at the copy's name
        (`dismissal_tombstone`), for a peer that made it a file meanwhile.

        A copy whose version won its path back before the watcher told of the delete (its
        name is held on that version, `base`) was still what the user deleted: the version
        goes from the path too, or it would come back there with its bytes held nowhere."""
        original = self.copy_of(area, name)
        seen = resolve(name, base(name)).shown
        if original is None and seen is not None and seen.kind is VKind.FILE:
            original = copy_origin(name, seen)
        if original is None:
            return []  # never announced: nothing for a peer to delete
        shown_now = resolve(original, state(original))
        winner = shown_now.shown
        copy = next((c for c in shown_now.copies if c.name == name), None)
        if copy is None and winner is not None and seen is not None and winner.same_content(seen):
            copy = Copy(name, winner)
        if winner is None or copy is None:
            return []
        entry = self.index.get(area, original)
        mode = entry.mode if entry is not None else 0
        alone = dismissal_of_copy(state(original), copy, self.me, clock=clock)
        if alone is not None:
            made = [(original, alone)]
        elif copy.version is winner:  # nothing supersedes it alone: delete what showed it
            group = PathState.of(v for v in state(original).versions if v.same_content(winner))
            made = local_change(
                original, group, self.me, VKind.DELETED, mtime_ns=winner.mtime_ns, clock=clock
            )
        else:  # no vector supersedes the copy alone: restate the winner, dismissing the copy
            made = local_change(
                original, state(original), self.me, winner.kind, winner.content,
                size=winner.size, mtime_ns=winner.mtime_ns, clock=clock, dismissed=[name],
                copy_states=copies(original),
            )  # fmt: skip
        made.append(dismissal_tombstone(name, copy.version, state(name), self.me, clock=clock))
        return [(p, mode, v) for p, v in made]

    def _made_over_copy(
        self,
        area: int,
        name: bytes,
        target: bytes,
        content: bytes,
        size: int,
        mtime_ns: int,
        mode: int,
        clock: int,
        state: Callable[[bytes], PathState],
        base: Callable[[bytes], PathState],
        copies: Callable[..., dict[bytes, PathState]],
        copy_states: dict[bytes, PathState] | None = None,
    ) -> list[tuple[bytes, int, Version]]:
        """A file of `content` made at `target` as the conflict copy `name` ends (the copy
        renamed there, or written over): the copy's dismissal, then a create superseding
        what the dismissal made at the target (the copy's own tombstone, or a sibling copy
        it turned into a file)."""
        dismissed = self._dismissal(area, name, state, base, copies, clock)
        target_state = state(target)
        for path, _, version in dismissed:
            if path == target:
                target_state = decide(target_state, version).state
        made = local_change(
            target, target_state, self.me, VKind.FILE, content,
            size=size, mtime_ns=mtime_ns, clock=clock, copy_states=copy_states,
        )  # fmt: skip
        return [*dismissed, *((p, mode, v) for p, v in made)]

    def _rename_versions(
        self,
        area: int,
        change: Change,
        state: Callable[[bytes], PathState],
        base: Callable[[bytes], PathState],
        copies: Callable[..., dict[bytes, PathState]],
        clock: int,
    ) -> list[tuple[bytes, int, Version]]:
        """A rename supersedes what its user saw at either path: a path held Real on a base
        (a peer's version landed while the watcher had not told of the rename yet) only that
        base, so what the peer's version made of it (a copy of the old file) is not kept."""
        source, target = change.path, change.new_path
        entry = self.index.get(area, target)
        mode = entry.mode if entry is not None else change.mode & 0o7777
        seen_source, seen_target = base(source), base(target)
        try:
            rename, made = make_rename(
                source, target, seen_source, seen_target, self.me,
                mtime_ns=change.time_ns, clock=clock,
                copy_states={**copies(source, seen_source), **copies(target, seen_target)},
            )  # fmt: skip
        except VersionError:
            # The source was never announced (or is a conflict copy, dismissed by moving it
            # away): the target is a plain create.
            if entry is None or entry.kind != Kind.FILE or not entry.blob:
                return self._dismissal(area, source, state, base, copies, clock)
            return self._made_over_copy(
                area, source, target, entry.blob, entry.size, entry.mtime_ns, mode, clock,
                state, base, copies,
            )  # fmt: skip
        pairs = [(source, rename.removed), (target, rename.created), *made]
        return [(p, mode, v) for p, v in pairs]

    # ---- serving our log ----

    def serve(self, peer: PeerId, args: wire.history_args) -> wire.history_res:
        """One page of our log of `args.area` for `peer`."""
        record = self.areas.get(args.area.decode("utf-8", "replace"))
        if record is None:
            return refused(wire.history_status.NO_AREA)
        area = record.id
        self.stamp_pending(area)
        self._heard(area, peer)
        limit = max(1, min(args.max_entries, PAGE_ENTRIES))
        uuid = self.history.log_uuid(area)
        stamped = self.stamped(area)
        if args.log_uuid == uuid and args.resuming and args.catchup_upto <= stamped:
            return self._catchup(area, uuid, args.catchup_upto, args.catchup_cursor, limit)
        if (
            args.log_uuid != uuid
            or args.last_seen < self.history.trimmed(area)
            or args.last_seen > self.history.high(area)
        ):
            return self._catchup(area, uuid, stamped, b"", limit)
        return self._delta(area, uuid, args.last_seen, stamped, limit)

    def _delta(
        self, area: int, uuid: bytes, after: int, stamped: int, limit: int
    ) -> wire.history_res:
        entries: list[wire.history_entry] = []
        size = 0
        upto = after
        more = False
        for sequence, change in self.history.since(area, after):
            if sequence > stamped:
                break
            if len(entries) >= limit or size >= PAGE_BYTES:
                more = True
                break
            for path, mode, version in _stamped(change.stamp):
                base = _base_of(change, path)
                entries.append(wire.history_entry(sequence, path, mode, version, base))
                size += len(path) + len(version) + len(base) + 16
            upto = sequence
        return wire.history_res(wire.history_status.OK, uuid, False, upto, b"", more, entries)

    def _catchup(
        self, area: int, uuid: bytes, upto: int, cursor: bytes, limit: int
    ) -> wire.history_res:
        entries: list[wire.history_entry] = []
        size = 0
        more = False
        last = cursor
        for path, state in self.states(area, cursor):
            if len(entries) >= limit or size >= PAGE_BYTES:
                more = True
                break
            entry = self.index.get(area, path)
            mode = entry.mode if entry is not None else 0
            for version in state.versions:
                entries.append(wire.history_entry(0, path, mode, version.encode()))
                size += len(path) + 64
            last = path
        return wire.history_res(wire.history_status.OK, uuid, True, upto, last, more, entries)

    def _heard(self, area: int, peer: PeerId) -> None:
        self.meta.put(_HEARD + _peer_key(area, peer), struct.pack(">d", self.clock()))

    def acknowledge(self, peer: PeerId, args: wire.ack_args) -> bool:
        """Record that `peer` applied our log up to `args.sequence`; False when it names
        another log or a sequence we never gave."""
        record = self.areas.get(args.area.decode("utf-8", "replace"))
        if record is None:
            return False
        area = record.id
        if args.log_uuid != self.history.log_uuid(area) or args.sequence > self.history.high(area):
            return False
        now = self.clock()
        batch = self.store.batch()
        batch.put("meta", _ACK + _peer_key(area, peer), _ACK_VALUE.pack(args.sequence, now))
        batch.put("meta", _HEARD + _peer_key(area, peer), struct.pack(">d", now))
        batch.commit()
        return True

    def acked(self, area: int, peer: PeerId) -> tuple[int, float] | None:
        """(sequence, when) `peer` last acknowledged of our log of `area`."""
        raw = self.meta.get(_ACK + _peer_key(area, peer))
        return None if raw is None else _ACK_VALUE.unpack(raw)

    def heard(self, area: int, peer: PeerId) -> float | None:
        raw = self.meta.get(_HEARD + _peer_key(area, peer))
        return None if raw is None else struct.unpack(">d", raw)[0]

    def trim(self, area: int, peers: Iterable[PeerId]) -> int:
        """Trim `area`'s log below what every peer of it (`peers`) acknowledged, leaving out
        the silent; how many changes were forgotten."""
        with self.lock:
            now = self.clock()
            floor = self.stamped(area)
            for peer in peers:
                heard = self.heard(area, peer)
                if heard is None or now - heard > self.silent_after:
                    continue  # silent (or never came): a full catch-up when it returns
                acked = self.acked(area, peer)
                floor = min(floor, acked[0] if acked else 0)
            total = 0
            while self.history.trimmed(area) < floor:
                batch = self.store.batch()
                total += self.history.trim(batch, area, floor, TRIM_BATCH)
                batch.commit()
            return total

    # ---- applying another peer's log ----

    def seen(self, area: int, peer: PeerId) -> Seen:
        raw = self.meta.get(_SEEN + _peer_key(area, peer))
        return Seen() if raw is None else Seen.unpack(bytes(raw))

    def request(self, peer: PeerId, area_name: str, max_entries: int) -> wire.history_args:
        """The HISTORY call that continues our subscription to `peer`'s log of the area."""
        record = self.areas.get(area_name)
        seen = self.seen(record.id, peer) if record is not None else Seen()
        return _asking(area_name, seen, max_entries)

    def errors(self, area: int, peer: PeerId) -> list[tuple[int, str]]:
        prefix = _ERROR + _peer_key(area, peer)
        found = []
        for key, raw in self.meta.items(from_key=prefix):
            if not key.startswith(prefix):
                break
            found.append((_SEQ.unpack(key[len(prefix) :])[0], bytes(raw).decode()))
        return found

    def apply(self, peer: PeerId, area_name: str, res: wire.history_res) -> Applied:
        """Apply one page `peer` served of its log of the area: one batch, all or nothing
        (and, for paths held Real here, the disk changes it plans, carried out after it)."""
        record = self.areas.get(area_name)
        if record is None:
            log.warning("history from %s for an unknown area %r: ignored", peer, area_name)
            raise ExchangeError(f"unknown area {area_name!r}")
        if res.status != wire.history_status.OK:
            raise ExchangeError(f"{peer} serves no history of {area_name!r}: {res.status!r}")
        area = record.id
        with self.lock:
            self.stamp_pending(area, everything=True)  # published here first: decided first
            seen = self.seen(area, peer)
            result = Applied(more=res.more)
            batch = self.store.batch()
            page = _Page()
            all_stamped = self.all_stamped(area)
            try:
                for position, entry in enumerate(res.entries):
                    self._apply_one(batch, area, peer, entry, position, page, result)
                if all_stamped:  # what this page relays is stamped already: nothing to look at
                    batch.put(
                        "meta", _STAMPED + _AREA.pack(area), _SEQ.pack(self.history.high(area))
                    )
                landed = self._land(batch, area, page)
                seen = self._advance(seen, res)
                batch.put("meta", _SEEN + _peer_key(area, peer), seen.pack())
                batch.commit(sync=bool(landed.acts))  # the disk follows the index, never leads
            except BaseException:
                self.history.forget_pending(area)
                raise
            self._finish(area, landed)
            return result

    def _following(
        self, peer: PeerId, area_name: str, res: wire.history_res, page: int
    ) -> wire.history_args | None:
        """The HISTORY call that will continue from `res` once it is applied (None when `res`
        is the last page, or one that will not apply)."""
        record = self.areas.get(area_name)
        if record is None or res.status != wire.history_status.OK or not res.more:
            return None
        return _asking(area_name, self._advance(self.seen(record.id, peer), res), page)

    def _advance(self, seen: Seen, res: wire.history_res) -> Seen:
        if not res.catchup:
            return Seen(res.log_uuid, res.upto)
        if res.more:  # keeps the old `last seen`: it is not reached until the catch-up is
            return Seen(res.log_uuid, seen.last_seen, True, res.upto, res.cursor)
        return Seen(res.log_uuid, res.upto)  # the catch-up is complete

    def _apply_one(
        self,
        batch: Batch,
        area: int,
        peer: PeerId,
        entry: wire.history_entry,
        position: int,
        page: _Page,
        result: Applied,
    ) -> None:
        path = bytes(entry.path)
        problem = path_problem(path)
        try:
            if problem is not None:
                raise VersionError(problem)
            version = Version.decode(bytes(entry.version))
        except (XdrError, VersionError, ValueError) as e:
            reason = f"{shown(path)}: {e}"
            log.warning("history entry %d from %s refused: %s", entry.sequence, peer, reason)
            key = _ERROR + _peer_key(area, peer) + _SEQ.pack(entry.sequence or position)
            batch.put("meta", key, reason.encode())
            result.errors.append(reason)
            return
        overlay = page.states
        state = overlay[path] if path in overlay else self.state(area, path)
        decision = decide(state, version)
        if decision.action is Action.IGNORE:
            result.ignored += 1
            return
        if decision.action is Action.APPLY:
            result.applied += 1
        elif decision.action is Action.MERGE:
            result.merged += 1
        else:
            result.conflicts += 1
        after = decision.state
        dismissal = self._revived(area, path, version, page)
        if dismissal is not None:
            after = decide(after, dismissal).state
        page.touch(path, entry.mode & 0o777, state, after)
        if entry.sequence and decision.action is Action.APPLY and dismissal is None:
            page.applied.setdefault(entry.sequence, []).append((path, version))
        self._put_state(batch, area, path, after)
        relayed = _stamp([(path, entry.mode, version.encode())])
        base = bytes(entry.base) if len(entry.base) == wire.BASE_SIZE else b""  # else none
        if base and version.kind is VKind.FILE and base != version.content:
            page.bases[path] = (version.content, base)
        else:
            base = b""
        change = Change(_op_of(version), path, old_blob=base, stamp=relayed)
        self.history.append(batch, area, change)
        if dismissal is not None:
            mine = _stamp([(path, entry.mode, dismissal.encode())])
            self.history.append(batch, area, Change(Op.DELETE, path, stamp=mine))

    def _revived(self, area: int, path: bytes, version: Version, page: _Page) -> Version | None:
        """The tombstone this peer publishes at once for a copy that a peer made a file after
        this peer had moved past its version (conflicts.py `revived_copy`): what its user
        would do, seeing a copy of what they had deleted or replaced."""
        if CONFLICT_TAG not in path:
            return None
        origin = copy_origin(path, version)
        if origin is None:
            return None
        state = page.states[origin] if origin in page.states else self.state(area, origin)
        if not revived_copy(path, version, state, self.me):
            return None
        log.info("%s: a copy of a version superseded here made a file: dismissed", shown(path))
        return next_version([version], self.me, VKind.DELETED, clock=int(time.time()))

    def _land(self, batch: Batch, area: int, page: _Page) -> Landed:
        """Show every path the page changed (children before parents, so a directory a
        peer emptied and deleted goes after its files), a rename moved as one where its
        preconditions hold here."""
        landed = Landed()
        moved: set[bytes] = set()
        pairs = [(a[0], a[1]) for a in page.applied.values() if len(a) >= 2]
        page.renames = {first[0]: (first, second) for first, second in pairs}
        moved_dirs: list[tuple[bytes, bytes]] = []
        for first, second in pairs:
            source, target = first[0], second[0]
            outer = next((d for d in moved_dirs if source.startswith(d[0] + b"/")), None)
            if outer is not None:  # a descendant of a directory moved as one: moved with it
                if target == outer[1] + source[len(outer[0]) :]:
                    moved |= {source, target}
                continue
            done = self._move(batch, area, page, first, second, landed)
            moved |= done
            if done and second[1].kind is VKind.DIRECTORY:
                moved_dirs.append((source, target))
        if self.landing is not None:
            self._pair_by_content(batch, area, page, landed, moved)
        for path in sorted(page.before, reverse=True):
            before = page.before[path]
            if path in moved:  # its entry moved; the copies it had or has still show
                after = resolve(path, page.states[path])
                mode = page.modes[path]
                was = resolve(path, before)
                self._show_copies(batch, area, path, mode, was, after, landed, page.states)
                continue
            self.show(batch, area, path, page.modes[path], before, page.states[path], landed,
                      page.states)  # fmt: skip
        self._prune(batch, area, page, landed)
        for path, (blob, base) in page.bases.items():
            shown_now = resolve(path, page.states[path]).shown
            if shown_now is not None and shown_now.content == blob:
                landed.named.append((blob, base))
        return landed

    def _prune(self, batch: Batch, area: int, page: _Page, landed: Landed) -> None:
        """Directories deleted by a peer in an earlier page, kept then for what was below
        them, that this page emptied: shown again, so they go now."""
        parents = {split(p)[0] for p in landed.deleted} - set(page.before) - {b""}
        while parents:
            path = max(parents, key=lambda p: (p.count(b"/"), p))  # the deepest first
            parents.discard(path)
            state = self.state(area, path)
            if not state or resolve(path, state).exists:
                continue
            if path in landed.deleted or path in landed.made:
                continue
            self.show(batch, area, path, 0, state, state, landed, page.states)
            if path in landed.deleted and split(path)[0]:
                parents.add(split(path)[0])

    def _move(
        self, batch: Batch, area: int, page: _Page, first: tuple[bytes, Version],
        second: tuple[bytes, Version], landed: Landed,
    ) -> set[bytes]:  # fmt: skip
        """A rename (a tombstone and its content at another path, in one change) of a file
        held Real and clean here, moved as one when `plan_rename` says its preconditions
        hold and nothing else in the page changed either path; the two paths, if moved.
        A directory moves as one only when every path below it here is renamed with it in
        this page (`page.renames`) and would move as one itself, and is clean: a path below it
        the renamer did not know (a concurrent create) stays where it was made, its directory
        kept for it."""
        (source, _), (target, created) = first, second
        if self.landing is None or not _moves_as_one(page, first, second):
            return set()
        if created.kind is VKind.DIRECTORY and not self._all_moving(area, source, target,
                                                                    page):  # fmt: skip
            return set()
        return self._move_real(batch, area, source, target, landed)

    def _all_moving(self, area: int, source: bytes, target: bytes, page: _Page) -> bool:
        """Whether every path below the directory `source` here is renamed to its place
        below `target` in this page and would move as one itself (what it shows here is
        what the renamer moved, nothing else changed it), and every Real file among them is
        clean. A path below it that a concurrent change touched must be shown by its own
        state, which moving its entry along with the directory would not do."""
        assert self.landing is not None
        for path, entry in self.index.walk(area, source):
            pair = page.renames.get(path)
            if pair is None or pair[1][0] != target + path[len(source) :]:
                return False
            if not _moves_as_one(page, *pair):
                return False
            if entry.layer == Layer.REAL and entry.kind == Kind.FILE:
                real = self.landing.inspect(area, path, entry)
                if real is None or not real.clean:
                    return False
        return True

    def _move_real(
        self, batch: Batch, area: int, source: bytes, target: bytes, landed: Landed
    ) -> set[bytes]:
        """Move the clean Real file at `source` to `target` (the same content), on the disk
        as in the index, where `target` is free here and its directory Real."""
        assert self.landing is not None
        current = self.index.get(area, source)
        if current is None or current.layer != Layer.REAL:
            return set()  # an Unreal entry: showing the two paths is the move
        occupant = self.index.get(area, target)
        if occupant is not None and occupant.layer == Layer.REAL:
            return set()  # the Real target is replaced by the delete + create rules
        real = self.landing.inspect(area, source, current)
        if real is None or not real.clean or self.tree_look(area, target):
            return set()
        beside = split(source)[0] == split(target)[0]  # its directory is the source's
        if not beside and self.landing.disk_parent_fid(area, target) is None:
            return set()  # its directory is not on this disk: fetched there on demand
        st = real.st
        act = Act(What.MOVE, area, source, st.st_dev, st.st_ino, current.kind == Kind.DIR, target)
        self.index.move(batch, area, source, target)
        self.landing.plan(batch, act, real.fid)
        landed.acts.append(act)
        landed.receives(target)
        landed.gone(source)
        return {source, target}

    def _pair_by_content(self, batch: Batch, area: int, page: _Page, landed: Landed,
                         moved: set[bytes]) -> None:  # fmt: skip
        """A file deleted or replaced here whose content another path of the page now shows
        (a rename met as a delete and a create: in a catch-up, or where its preconditions
        failed; a conflict copy made a file by a peer that changed the path): its clean bytes
        move there instead of being removed and fetched again, or held by no peer."""
        winners: dict[bytes, Version | None] = {}
        shows: dict[bytes, bytes] = {}
        for path, state in page.states.items():
            if path in moved:
                continue
            winner = winners[path] = resolve(path, state).shown
            if winner is not None and not winner.deleted and winner.kind is VKind.FILE:
                shows.setdefault(winner.content, path)
        if not shows:
            return
        for source, winner in sorted(winners.items()):
            current = self.index.get(area, source)
            if current is None or current.kind != Kind.FILE or current.layer != Layer.REAL:
                continue
            if winner is not None and winner.identity == _identity(current):
                continue  # it shows these bytes still
            target = shows.get(current.blob)
            if target is None or target == source or target in moved:
                continue
            done = self._move_real(batch, area, source, target, landed)
            if not done:
                continue
            moved |= done
            del shows[current.blob]
            if winner is not None and not winner.deleted:  # replaced: it shows the new one
                shown_now = resolve(source, page.states[source])
                self._show_unreal(batch, area, source, page.modes[source], None, shown_now,
                                  landed)  # fmt: skip

    # ---- what the index (and the disk, for paths held Real) shows ----

    def show(
        self,
        batch: Batch,
        area: int,
        path: bytes,
        mode: int,
        before: PathState,
        after: PathState,
        landed: Landed,
        states: dict[bytes, PathState] | None = None,
        held_base: PathState | None = None,
    ) -> None:
        """Make the index show what `after` resolves to (the path went from `before`): the
        winner at the path, each conflict copy beside it. A path held Real here is changed on
        the disk when its file is clean (see nfsd/peer/landing.py), and held as it is when
        its file may hold a change not published yet: then the versions it descends from
        (`held_base`, or `before` unless a base is kept already) become its base."""
        shown_after = resolve(path, after)
        current = self.index.get(area, path)
        if current is not None and current.layer == Layer.REAL:
            if self.landing is not None:
                self._land_real(batch, area, path, mode, current, before, shown_after, landed,
                                held_base)  # fmt: skip
            free = path in landed.deleted  # its file moved on or went
        elif self._unindexed(area, path, landed):
            # On the disk, not yet indexed as Real (made outside NFS, not reconciled yet): a
            # change not published, held on its base like a Real file that is not clean.
            self._hold(batch, area, path, before, held_base)
            free = False
        else:
            self._show_unreal(batch, area, path, mode, current, shown_after, landed)
            free = True
        if free and not shown_after.exists and (found := self._copy_at(area, path, after, states)):
            # A conflict copy shown here again: the path of its name, which shadowed it or held
            # its file, is gone.
            origin, copy = found
            self._show_unreal(batch, area, path, mode, None, Resolution(path, copy.version),
                              landed)  # fmt: skip
            batch.put("meta", _COPY + _AREA.pack(area) + path, origin)
            if copy.version.kind is VKind.FILE:
                landed.pins.append((copy.version.content, _pin_reason(area, path)))
        self._show_copies(batch, area, path, mode, resolve(path, before), shown_after, landed,
                          states or {})  # fmt: skip

    def _copy_at(
        self, area: int, name: bytes, own: PathState, states: dict[bytes, PathState] | None
    ) -> tuple[bytes, Copy] | None:
        """(its path, the copy) of the conflict copy `name` shows (its own state `own`
        showing nothing), if any: one the path it is a copy of resolves to and that is not
        dismissed at `name`."""
        origin = origin_of_name(name)
        if origin is None:
            return None
        state = states[origin] if states and origin in states else self.state(area, origin)
        for copy in resolve(origin, state).copies:
            if copy.name == name and not dismissed_at_name(copy, own):
                return origin, copy
        return None

    def _seen(self, area: int, path: bytes, before: PathState, current: Entry) -> PathState:
        """What the user of the Real file at `path` saw there: its state `before`, or, for a
        losing version kept Real under its conflict copy's name (a name with no state of its
        own), that copy's version."""
        if before.versions:
            return before
        origin = self.copy_of(area, path)
        if origin is None:
            return before
        own = [v for v in self.state(area, origin).versions if v.identity == _identity(current)]
        return PathState.of(own) if own else before

    def _hold(
        self, batch: Batch, area: int, path: bytes, before: PathState, held_base: PathState | None
    ) -> None:
        """Keep what the path holds here; a change of it published later supersedes only
        `held_base` (or the base kept already, or else `before`)."""
        key = _BASE + _AREA.pack(area) + path
        if held_base is not None:
            batch.put("meta", key, held_base.encode())
        elif self.meta.get(key) is None:
            batch.put("meta", key, before.encode())

    def _unindexed(self, area: int, path: bytes, landed: Landed) -> bool:
        """Whether something is on the disk at `path` that the index does not hold Real
        (one listing per directory and batch: a catch-up must not stat every path)."""
        if self.landing is None:
            return False
        parent, name = split(path)
        if parent not in landed.listed:
            landed.listed[parent] = self.landing.names(area, parent)
        names = landed.listed[parent]
        if names is None:  # too big to list: this one name
            return self.landing.tree.look(area, path) is not None
        return name in names

    def _show_unreal(
        self, batch: Batch, area: int, path: bytes, mode: int, current: Entry | None,
        shown: Resolution, landed: Landed,
    ) -> None:  # fmt: skip
        """The path as an Unreal entry (or none). A directory that still holds something
        here stays (a path below it outlives its delete: a create concurrent with it), and
        an entry whose directory the index lacks brings it back, Unreal."""
        winner = shown.shown
        if winner is None or winner.deleted:
            if current is not None:
                if current.kind == Kind.DIR and self._holds(area, path, landed):
                    return
                self.index.delete(batch, area, path)
                landed.gone(path)
            return
        shown_entry = _unreal_entry(winner, mode or _mode_of(current))
        self.index.put(batch, area, path, shown_entry)
        landed.shows(path)
        if current is not None and current.kind == Kind.FILE and shown_entry.kind == Kind.FILE:
            landed.replaced.append((shown_entry.blob, current.blob))
        parent = split(path)[0]
        while parent and self._lacks(area, parent, landed):
            entry = Entry(Kind.DIR, Layer.UNREAL, 0o755, 0, winner.mtime_ns)
            self.index.put(batch, area, parent, entry)
            landed.shows(parent)
            parent = split(parent)[0]

    def _lacks(self, area: int, directory: bytes, landed: Landed) -> bool:
        if directory in landed.made:
            return False
        if directory in landed.deleted:
            return True
        if self.index.get(area, directory) is None:
            return True
        landed.made.add(directory)  # known to be there: asked once per batch
        return False

    def _holds(self, area: int, directory: bytes, landed: Landed) -> bool:
        """Whether the index holds a path below `directory` that this batch keeps."""
        return any(
            join(directory, name) not in landed.deleted
            for name, _ in self.index.children(area, directory)
        ) or any(p.startswith(directory + b"/") for p in landed.made | landed.placed)

    def _land_real(
        self, batch: Batch, area: int, path: bytes, mode: int, current: Entry,
        before: PathState, resolution: Resolution, landed: Landed, held_base: PathState | None,
    ) -> None:  # fmt: skip
        assert self.landing is not None
        real = self.landing.inspect(area, path, current)
        if real is None or not real.clean:
            # Gone from the disk (deleted or moved by its user, the journal not told yet: it
            # reconciles Real entries only), or holding a change not published: held as it
            # is, so that what the journal records supersedes only what its user saw.
            self._hold(batch, area, path, self._seen(area, path, before, current), held_base)
            return
        local = _identity(current)
        winner = resolution.shown
        if winner is not None and not winner.deleted and winner.identity == local:
            return  # it shows this very content already
        st = real.st
        for copy in resolution.copies:
            if copy.version.identity != local or current.kind == Kind.DIR:
                continue
            if self.tree_look(area, copy.name):
                # Something on the disk holds that name: our bytes are never dropped nor put
                # over it, so the path keeps them here (shown differently until resolved).
                log.warning("%s lost a conflict but %s is taken: kept", shown(path),
                            shown(copy.name))  # fmt: skip
                return
            # The local version lost: it moves aside to its conflict name, kept Real.
            act = Act(What.MOVE, area, path, st.st_dev, st.st_ino, False, copy.name)
            self.index.put(batch, area, copy.name, current)
            self.landing.plan(batch, act, real.fid)
            landed.acts.append(act)
            landed.receives(copy.name)
            self._show_unreal(batch, area, path, mode, current, resolution, landed)
            return
        gone = winner is None or winner.deleted
        if current.kind == Kind.DIR:
            if gone and not self._holds(area, path, landed):
                act = Act(What.REMOVE, area, path, st.st_dev, st.st_ino, True)
                landed.gone(path)
                self.index.delete(batch, area, path)
                self.landing.plan(batch, act, real.fid)
                landed.acts.append(act)
            return  # a directory stays one (it outranks a file: rule 2 of conflicts.py)
        # A DROP names the content it drops, which may be kept as a base (landing.py).
        kept = b"" if gone else current.blob
        act = Act(What.REMOVE if gone else What.DROP, area, path, st.st_dev, st.st_ino, False, kept)
        if gone:
            landed.gone(path)
        self._show_unreal(batch, area, path, mode, current, resolution, landed)
        self.landing.plan(batch, act, real.fid)
        landed.acts.append(act)

    def tree_look(self, area: int, path: bytes) -> bool:
        """Whether something is on the disk at `path` (never, without a tree)."""
        return self.landing is not None and self.landing.tree.look(area, path) is not None

    def _show_copies(
        self, batch: Batch, area: int, path: bytes, mode: int, before: Resolution,
        after: Resolution, landed: Landed, states: dict[bytes, PathState],
    ) -> None:  # fmt: skip
        """Each conflict copy `after` gives, as an Unreal entry (its blob pinned); each one
        `before` gave and `after` does not (resolved), gone (and unpinned)."""
        if not before.copies and not after.copies:
            return
        prefix = _COPY + _AREA.pack(area)

        def state_of(name: bytes) -> PathState:
            return states[name] if name in states else self.state(area, name)

        def own(name: bytes) -> bool:  # a path of that name exists in its own right
            return resolve(name, state_of(name)).exists

        shown_copies = [c for c in after.copies if not dismissed_at_name(c, state_of(c.name))]
        kept = {c.name for c in shown_copies}
        for copy in shown_copies:
            if own(copy.name):
                continue
            batch.put("meta", prefix + copy.name, path)
            if copy.name in landed.placed:
                continue  # the local loser, moved there Real in this batch
            there = None if copy.name in landed.deleted else self.index.get(area, copy.name)
            if there is not None and there.layer == Layer.REAL:
                continue  # the local loser moved there, or a file shadowing the name
            if there is None or _identity(there) != copy.version.identity:
                entry = _unreal_entry(copy.version, mode or _mode_of(self.index.get(area, path)))
                self.index.put(batch, area, copy.name, entry)
                landed.shows(copy.name)
            if copy.version.kind is VKind.FILE:
                landed.pins.append((copy.version.content, _pin_reason(area, copy.name)))
        for copy in before.copies:
            if copy.name in kept:
                continue
            batch.delete("meta", prefix + copy.name)
            if copy.version.kind is VKind.FILE:
                landed.unpins.append((copy.version.content, _pin_reason(area, copy.name)))
            if own(copy.name):
                continue  # made an ordinary file by a change of the path
            there = self.index.get(area, copy.name)
            if there is None or _identity(there) != copy.version.identity:
                continue
            winner = after.shown
            won_back = winner is not None and winner.identity == copy.version.identity
            if (
                there.layer == Layer.REAL
                and won_back
                and self.landing is not None
                and self._move_real(batch, area, copy.name, path, landed)
            ):
                continue  # the copy's version won the path back: its bytes go back there
            if there.layer == Layer.UNREAL:
                self.index.delete(batch, area, copy.name)
                landed.gone(copy.name)
            elif self.landing is not None:
                real = self.landing.inspect(area, copy.name, there)
                if real is not None and real.clean:
                    at_path = None if path in landed.deleted else self.index.get(area, path)
                    if won_back and (at_path is None or at_path.layer != Layer.REAL
                                     or at_path.blob != there.blob):  # fmt: skip
                        # The path cannot take them (its user is writing a file there, not
                        # published yet): this file keeps the only bytes of the version that
                        # won. The change of the path, published on its base, makes it a file
                        # of its own under this name.
                        continue
                    act = Act(What.REMOVE, area, copy.name, real.st.st_dev, real.st.st_ino)
                    self.index.delete(batch, area, copy.name)
                    landed.gone(copy.name)
                    self.landing.plan(batch, act, real.fid)
                    landed.acts.append(act)
                elif real is None:
                    # Its user removed the file, the watcher has not told yet: the delete it
                    # will tell of is of the copy's version (`_dismissal`), where it shows now.
                    held = PathState((copy.version,)).encode()
                    batch.put("meta", _BASE + _AREA.pack(area) + copy.name, held)

    def copy_of(self, area: int, name: bytes) -> bytes | None:
        """The path whose conflict copy `name` is, while it is shown as one."""
        raw = self.meta.get(_COPY + _AREA.pack(area) + name)
        return None if raw is None else bytes(raw)

    def _finish(self, area: int, landed: Landed) -> None:
        """After the batch that planned them is committed: the disk changes, the pins, and
        the paths shown told to `arrived` (their marks may ask for their content)."""
        if self.landing is not None and landed.acts:
            failed = self.landing.carry_out(landed.acts)
            self.landing.keep_dirs([a for a in failed if a.what is What.REMOVE])
            self._unmoved(area, [a for a in failed if a.what is What.MOVE])
        if self.replaced is not None:  # the base its entry names first: what its author edited
            for new, old in [*landed.named, *landed.replaced]:
                self.replaced(new, old)
        if self.arrived is not None and landed.made:
            self.arrived(area, sorted(landed.made))
        blobs = self.landing.tree.blobs if self.landing is not None else None
        if blobs is None:
            return
        for blob, reason in landed.unpins:
            blobs.unpin(blob, reason)
        for blob, reason in landed.pins:
            with contextlib.suppress(BlobError):  # not cached yet: `pin_copies` pins it later
                blobs.pin(blob, reason)

    def _unmoved(self, area: int, acts: list[Act]) -> None:
        """Local files that could not be moved aside to their conflict names, back from
        them, or to where a page shows their content: their user changed, moved or removed
        them on the disk after the batch that planned the move. The index shows each at its
        path again, Real, held on its own version: what the watcher then reports is a change
        of that version, made by its user, not of the winner the index showed meanwhile, and
        it supersedes only the loser.

        A target that shows the file's version in its own right (a conflict copy a peer made
        a file) loses its only bytes here with the move undone: this peer dismisses it there,
        as its user would on finding a copy of what they had just moved on or replaced."""
        if not acts:
            return
        batch = self.store.batch()
        clock = int(time.time())
        restored = []
        for act in acts:
            moved = self.index.get(area, act.target)
            if moved is None or moved.layer != Layer.REAL:
                continue
            restored.append(act.path)
            log.warning("%s changed on the disk as it lost a conflict: kept as its change",
                        shown(act.path))  # fmt: skip
            self.index.delete(batch, area, act.target)
            self.index.put(batch, area, act.path, moved)
            # A copy moving back to its path has no versions of its own: they are the path's.
            held = _identity(moved)
            there = self.state(area, act.target)
            own = [v for v in (*self.state(area, act.path).versions, *there.versions)
                   if v.identity == held]  # fmt: skip
            if own:
                batch.put("meta", _BASE + _AREA.pack(area) + act.path, PathState.of(own).encode())
            if there and all(v.identity == held for v in there.versions):
                name, tombstone = dismissal_tombstone(
                    act.target, there.versions[0], there, self.me, clock=clock
                )
                log.info("%s: its only bytes stayed where its user moved them: dismissed",
                         shown(name))  # fmt: skip
                self._put_state(batch, area, name, decide(there, tombstone).state)
                mine = _stamp([(name, moved.mode, tombstone.encode())])
                self.history.append(batch, area, Change(Op.DELETE, name, stamp=mine))
        batch.commit()
        if self.landing is not None:
            self.landing.tree.index_changed()
            # The watcher may have told of the change already, while the entry stood at the
            # target: it tells once. A file gone from its path is recorded as gone now (a
            # rename of it is then a delete and a create).
            journal = self.landing.tree.journal
            for path in restored:
                if journal.disk.look(area, path) is None:
                    journal.removed(area, path)

    def pin_copies(self, area: int) -> int:
        """Pin the blob of every conflict copy shown whose blob the cache knows now; how
        many were pinned just now."""
        blobs = self.landing.tree.blobs if self.landing is not None else None
        if blobs is None:
            return 0
        prefix = _COPY + _AREA.pack(area)
        count = 0
        for key, _ in self.meta.items(from_key=prefix):
            if not key.startswith(prefix):
                break
            name = bytes(key[len(prefix) :])
            entry = self.index.get(area, name)
            if entry is None or entry.kind != Kind.FILE or not entry.blob:
                continue
            try:
                count += blobs.pin(entry.blob, _pin_reason(area, name))
            except BlobError:
                continue
        return count

    def recover(self) -> int:
        """At start, before the journal scans: the disk changes a crash interrupted."""
        return 0 if self.landing is None else self.landing.recover()

    async def _pull_pages(
        self,
        peer: PeerId,
        area_name: str,
        call: Callable[[int, Any], Awaitable[Any]],
        page: int,
        nursery: trio.Nursery,
        total: Applied,
    ) -> None:
        res = await call(wire.PEERPROC.HISTORY, self.request(peer, area_name, page))
        while True:
            ahead: _Ahead | None = None
            following = self._following(peer, area_name, res, page)
            if following is not None:
                ahead = _Ahead()
                nursery.start_soon(ahead.run, call, wire.PEERPROC.HISTORY, following)
                for _ in range(2):  # let it send its call before applying holds the loop
                    await trio.sleep(0)
            done = self.apply(peer, area_name, res)
            total.applied += done.applied
            total.merged += done.merged
            total.conflicts += done.conflicts
            total.ignored += done.ignored
            total.errors.extend(done.errors)
            if ahead is None:
                return
            res = await ahead.result()

    async def pull(
        self,
        peer: PeerId,
        area_name: str,
        call: Callable[[int, Any], Awaitable[Any]],
        page: int = PAGE_ENTRIES,
    ) -> Applied:
        """Apply `peer`'s log of the area until it has nothing more, then acknowledge it.
        `call(procedure, args)` makes one peer call and answers its result. The next page is
        asked for before one is applied (what it continues from is known from the page), so
        the peer serves it while this side applies."""
        total = Applied()
        failure: BaseException | None = None
        async with trio.open_nursery() as nursery:
            try:
                await self._pull_pages(peer, area_name, call, page, nursery, total)
            except trio.Cancelled:
                raise
            except BaseException as e:  # raised as itself, not in the nursery's exception group
                failure = e
                nursery.cancel_scope.cancel()
        if failure is not None:
            raise failure
        record = self.areas.get(area_name)
        if record is not None:
            seen = self.seen(record.id, peer)
            if len(seen.log_uuid) == wire.LOG_UUID_SIZE:
                ack = wire.ack_args(area_name.encode(), seen.log_uuid, seen.last_seen)
                await call(wire.PEERPROC.ACK, ack)
        return total
