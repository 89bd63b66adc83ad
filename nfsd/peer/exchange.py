"""The history exchange: what one peer serves of its areas' logs, what it does with the pages
another serves it, acknowledgements, and trimming. No sockets: `serve` and `acknowledge`
answer calls, `apply` takes a reply, `pull` drives one area's subscription through any
`call(procedure, args)`; the RPC handlers are nfsd/peer/program.py, the types xdr/peer.py.

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

Publishing: the journal appends a change when it is published (nfsd/store/history.py gives
its sequence then). Before any page is served or applied, `stamp_pending` gives each change
not stamped yet, in sequence order, the versions it makes (superseding the path's state), and
writes them, the new states and the stamped mark in one batch. Entries applied from a peer are
appended already stamped with the peer's versions, so they are relayed to the others.

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
(size, mtime, blob id); a path this peer holds Real is never touched here.

Trimming (`trim`): below the lowest sequence every peer of the area acknowledged, leaving out
peers not heard from for `silent_after` seconds (they get a full catch-up when they return),
and never beyond the stamped mark.

The `History` must be the journal's own object: its counter of sequences is cached in it,
and two objects would hand out the same sequence. Calls into one `Exchange` are serialized by
its lock; the journal must append on the same thread (the event loop) or under its own care.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from nfsd.peer.conflicts import EMPTY, Action, PathState, decide, local_change, make_rename, resolve
from nfsd.peer.versions import Kind as VKind
from nfsd.peer.versions import PeerId, Version, VersionError
from nfsd.store.areas import AreaTable
from nfsd.store.db import Batch, Store
from nfsd.store.history import Change, History, Op
from nfsd.store.index import AreaIndex, Entry, Kind, Layer
from nfsd.store.paths import path_problem, shown
from xdr import peer as wire
from xdr.codec import Array, XdrError, decode, encode

log = logging.getLogger("realize.exchange")

PAGE_ENTRIES = 1000  # the most entries one page carries, whatever the subscriber asks
PAGE_BYTES = 1 << 20  # and about the most bytes
STAMP_BATCH = 500  # changes stamped per batch
TRIM_BATCH = 10_000  # changes trimmed per batch
SILENT_AFTER = 30 * 24 * 3600.0  # a peer not heard for this long no longer holds history
_STAMPED_MAX = 64  # entries one change may publish (a rename and its conflict copies)

_STATE = b"xchg-state:"
_STAMPED = b"xchg-stamped:"
_SEEN = b"xchg-seen:"
_ACK = b"xchg-ack:"
_HEARD = b"xchg-heard:"
_ERROR = b"xchg-error:"
_AREA = struct.Struct(">I")
_SEQ = struct.Struct(">Q")
_ACK_VALUE = struct.Struct(">Qd")
_SEEN_HEAD = struct.Struct(">16sQ?Q")  # uuid, last seen, catching up, catch-up upto

_stamp_type = Array(wire.history_entry, _STAMPED_MAX)


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


def _entry_kind(v: Version) -> Kind:
    return {VKind.FILE: Kind.FILE, VKind.DIRECTORY: Kind.DIR, VKind.SYMLINK: Kind.SYMLINK}[v.kind]


def _op_of(v: Version) -> Op:
    return {
        VKind.FILE: Op.CHANGE,
        VKind.DIRECTORY: Op.MKDIR,
        VKind.SYMLINK: Op.SYMLINK,
        VKind.DELETED: Op.DELETE,
    }[v.kind]


class Exchange:
    def __init__(
        self,
        store: Store,
        history: History,
        me: PeerId,
        *,
        silent_after: float = SILENT_AFTER,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.history = history
        self.me = me
        self.silent_after = silent_after
        self.clock = clock
        self.meta = store.family("meta")
        self.index = AreaIndex(store)
        self.areas = AreaTable(store)
        self.lock = threading.RLock()

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

    def stamp_pending(self, area: int) -> int:
        """Give the versions they make to the changes not stamped yet; how many changes."""
        with self.lock:
            count = 0
            while True:
                done = self._stamp_some(area)
                if not done:
                    return count
                count += done

    def _stamp_some(self, area: int) -> int:
        start = self.stamped(area)
        batch = self.store.batch()
        overlay: dict[bytes, PathState] = {}
        count = last = 0
        for sequence, change in self.history.since(area, start):
            if count >= STAMP_BATCH:
                break
            count, last = count + 1, sequence
            if change.stamp:
                continue  # relayed from a peer: its versions are the peer's
            made = self._versions_of(area, change, overlay)
            for path, _mode, version in made:
                base = overlay.get(path) or self.state(area, path)
                overlay[path] = decide(base, version).state
            change.stamp = encode(
                _stamp_type, [wire.history_entry(0, p, m, v.encode()) for p, m, v in made]
            )
            self.history.rewrite(batch, area, sequence, change)
        if not count:
            return 0
        for path, state in overlay.items():
            self._put_state(batch, area, path, state)
        batch.put("meta", _STAMPED + _AREA.pack(area), _SEQ.pack(last))
        batch.commit()
        return count

    def _versions_of(
        self, area: int, change: Change, overlay: dict[bytes, PathState]
    ) -> list[tuple[bytes, int, Version]]:
        """The versions a local change makes, with the mode each path is shown with."""

        def state(path: bytes) -> PathState:
            return overlay.get(path) or self.state(area, path)

        def copies(path: bytes) -> dict[bytes, PathState]:
            return {c.name: state(c.name) for c in resolve(path, state(path)).copies}

        clock = change.time_ns // 1_000_000_000
        path, op = change.path, change.op
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
            made = local_change(
                target, state(target), self.me, VKind.FILE, change.new_blob,
                size=size, mtime_ns=mtime, clock=clock, copy_states=copies(target),
            )  # fmt: skip
        elif op in (Op.DELETE, Op.RMDIR):
            if not state(path):
                return []  # never announced: nothing for a peer to delete
            made = local_change(
                path, state(path), self.me, VKind.DELETED,
                mtime_ns=change.time_ns, clock=clock, copy_states=copies(path),
            )  # fmt: skip
        elif op is Op.MKDIR:
            made = local_change(path, state(path), self.me, VKind.DIRECTORY, clock=clock)
        elif op is Op.SYMLINK:
            made = local_change(
                path, state(path), self.me, VKind.SYMLINK, change.new_path,
                mtime_ns=mtime, clock=clock,
            )  # fmt: skip
        elif op is Op.RENAME:
            return self._rename_versions(area, change, state, copies, clock)
        else:
            return []  # SETATTR: a mode is not a version
        return [(p, mode, v) for p, v in made]

    def _rename_versions(
        self,
        area: int,
        change: Change,
        state: Callable[[bytes], PathState],
        copies: Callable[[bytes], dict[bytes, PathState]],
        clock: int,
    ) -> list[tuple[bytes, int, Version]]:
        source, target = change.path, change.new_path
        entry = self.index.get(area, target)
        mode = entry.mode if entry is not None else change.mode & 0o7777
        try:
            rename, made = make_rename(
                source, target, state(source), state(target), self.me,
                mtime_ns=change.time_ns, clock=clock,
                copy_states={**copies(source), **copies(target)},
            )  # fmt: skip
        except VersionError:
            # The source was never announced: the target is a plain create.
            if entry is None or entry.kind != Kind.FILE or not entry.blob:
                return []
            made = local_change(
                target, state(target), self.me, VKind.FILE, entry.blob,
                size=entry.size, mtime_ns=entry.mtime_ns, clock=clock,
            )  # fmt: skip
            return [(p, mode, v) for p, v in made]
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
            for entry in decode(_stamp_type, change.stamp) if change.stamp else ():
                entry.sequence = sequence
                entries.append(entry)
                size += len(entry.path) + len(entry.version) + 16
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
        return wire.history_args(
            area_name.encode(),
            seen.log_uuid,
            seen.last_seen,
            max_entries,
            seen.catching_up,
            seen.catchup_upto,
            seen.cursor,
        )

    def errors(self, area: int, peer: PeerId) -> list[tuple[int, str]]:
        prefix = _ERROR + _peer_key(area, peer)
        found = []
        for key, raw in self.meta.items(from_key=prefix):
            if not key.startswith(prefix):
                break
            found.append((_SEQ.unpack(key[len(prefix) :])[0], bytes(raw).decode()))
        return found

    def apply(self, peer: PeerId, area_name: str, res: wire.history_res) -> Applied:
        """Apply one page `peer` served of its log of the area: one batch, all or nothing."""
        record = self.areas.get(area_name)
        if record is None:
            log.warning("history from %s for an unknown area %r: ignored", peer, area_name)
            raise ExchangeError(f"unknown area {area_name!r}")
        if res.status != wire.history_status.OK:
            raise ExchangeError(f"{peer} serves no history of {area_name!r}: {res.status!r}")
        area = record.id
        with self.lock:
            self.stamp_pending(area)  # what was published here first is decided first
            seen = self.seen(area, peer)
            result = Applied(more=res.more)
            batch = self.store.batch()
            overlay: dict[bytes, PathState] = {}
            try:
                for position, entry in enumerate(res.entries):
                    self._apply_one(batch, area, peer, entry, position, overlay, result)
                seen = self._advance(seen, res)
                batch.put("meta", _SEEN + _peer_key(area, peer), seen.pack())
                batch.commit()
            except BaseException:
                self.history.forget_pending(area)
                raise
            return result

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
        overlay: dict[bytes, PathState],
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
        overlay[path] = decision.state
        self._put_state(batch, area, path, decision.state)
        self.show(batch, area, path, entry.mode & 0o777, decision.state)
        relayed = wire.history_entry(0, path, entry.mode, bytes(entry.version))
        change = Change(_op_of(version), path, stamp=encode(_stamp_type, [relayed]))
        self.history.append(batch, area, change)

    def show(self, batch: Batch, area: int, path: bytes, mode: int, state: PathState) -> None:
        """Make the index show what `state` resolves to, as an Unreal entry; a Real entry is
        left alone (its content is the tree's, never changed by the exchange)."""
        current = self.index.get(area, path)
        if current is not None and current.layer == Layer.REAL:
            return
        winner = resolve(path, state).shown
        if winner is None or winner.deleted:
            if current is not None:
                self.index.delete(batch, area, path)
            return
        kind = _entry_kind(winner)
        if not mode:
            mode = 0o755 if kind == Kind.DIR else 0o644
        blob = winner.content if kind == Kind.FILE else b""
        target = winner.content if kind == Kind.SYMLINK else b""
        entry = Entry(kind, Layer.UNREAL, mode, winner.size, winner.mtime_ns, blob, target)
        self.index.put(batch, area, path, entry)

    async def pull(
        self,
        peer: PeerId,
        area_name: str,
        call: Callable[[int, Any], Awaitable[Any]],
        page: int = PAGE_ENTRIES,
    ) -> Applied:
        """Apply `peer`'s log of the area until it has nothing more, then acknowledge it.
        `call(procedure, args)` makes one peer call and answers its result."""
        total = Applied()
        while True:
            res = await call(wire.PEERPROC.HISTORY, self.request(peer, area_name, page))
            done = self.apply(peer, area_name, res)
            total.applied += done.applied
            total.merged += done.merged
            total.conflicts += done.conflicts
            total.ignored += done.ignored
            total.errors.extend(done.errors)
            if not done.more:
                break
        record = self.areas.get(area_name)
        if record is not None:
            seen = self.seen(record.id, peer)
            if len(seen.log_uuid) == wire.LOG_UUID_SIZE:
                ack = wire.ack_args(area_name.encode(), seen.log_uuid, seen.last_seen)
                await call(wire.PEERPROC.ACK, ack)
        return total
