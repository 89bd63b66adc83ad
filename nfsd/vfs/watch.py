"""Watches the Real areas while the server runs, so that changes made outside NFS are recorded.

Linux inotify through ctypes on libc: one watch on every directory of every area (hidden
paths left out), added as directories appear, dropped as they go. Events are not interpreted
one by one: they only say which directories changed. Once those are quiet for a moment, each
is reconciled against the index by `Journal.scan`: its direct children, plus the whole
subtree of a directory created or moved in (files may be in it before its watch is). A change
made through NFS was already reported by the tree, so its reconcile finds nothing to do and
nothing is recorded twice. The one exception to reading events as "this directory changed": a
rename's two events (MOVED_FROM, MOVED_TO, one cookie) within an area are paired, and before
the reconcile the rename is recorded as one (`Journal.renamed`) where the disk still agrees,
so peers move the path instead of deleting it and waiting for the new name to rest. Areas
with more directories than the kernel lets us watch, where inotify is missing (or
REALIZE_FORCE_FALLBACKS=1 leaves it out), or after the event queue overflowed, are rescanned
whole instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass

import trio

from nfsd.store.index import Kind, Layer, join
from nfsd.vfs.errors import FsError
from nfsd.vfs.journal import Journal, kind_of
from nfsd.vfs.local import AreaRoots, identities
from nfsd.vfs.names import TEMP_PREFIX
from nfsd.vfs.osapi import FORCED_FALLBACKS, held_path, open_dir

log = logging.getLogger("realize.watch")

# <sys/inotify.h>
IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_UNMOUNT = 0x00002000
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_ISDIR = 0x40000000

WATCH_MASK = (
    IN_CREATE
    | IN_DELETE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CLOSE_WRITE
    | IN_MODIFY
    | IN_ATTRIB
    | IN_DELETE_SELF
    | IN_MOVE_SELF
    | IN_ONLYDIR
    | IN_DONT_FOLLOW
)

QUIET = 0.5  # seconds without events before the changed directories are reconciled
LATEST = 2.0  # but no later than this after the first (a file written for minutes)
POLL = 60.0  # period of the rescans of areas that cannot be watched
MAX_UNPAIRED = 4096  # renames remembered between reconciles: memory bounded whatever happens

_EVENT = struct.Struct("=iIII")  # wd, mask, cookie, name length: native, a local ABI
_READ = 64 * 1024
_READS = 16  # per wake-up: at most 1 MiB of events in memory


@dataclass(frozen=True, slots=True)
class Event:
    wd: int
    mask: int
    cookie: int
    name: bytes  # b"" for an event about the watched directory itself


def parse_events(data: bytes) -> list[Event]:
    """The inotify events in the bytes of one read (a truncated last one is left out)."""
    events = []
    pos = 0
    while pos + _EVENT.size <= len(data):
        wd, mask, cookie, length = _EVENT.unpack_from(data, pos)
        pos += _EVENT.size
        if pos + length > len(data):
            break
        name = bytes(data[pos : pos + length]).split(b"\0", 1)[0]  # NUL-padded
        pos += length
        events.append(Event(wd, mask, cookie, name))
    return events


class Inotify:
    """One non-blocking inotify instance."""

    def __init__(self) -> None:
        if FORCED_FALLBACKS:
            raise OSError(errno.ENOSYS, "inotify left out (REALIZE_FORCE_FALLBACKS)")
        libc = ctypes.CDLL(None, use_errno=True)
        try:
            init, self._add, self._rm = (
                libc.inotify_init1,
                libc.inotify_add_watch,
                libc.inotify_rm_watch,
            )
        except AttributeError:
            raise OSError(errno.ENOSYS, "inotify is not available here") from None
        init.argtypes = [ctypes.c_int]
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._rm.argtypes = [ctypes.c_int, ctypes.c_int]
        fd = init(os.O_NONBLOCK | os.O_CLOEXEC)  # IN_NONBLOCK | IN_CLOEXEC
        if fd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        self.fd = fd

    def add(self, path: bytes, mask: int = WATCH_MASK) -> int:
        """The watch descriptor of `path` (the same one again for an inode already watched)."""
        wd = self._add(self.fd, path, mask)
        if wd < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return wd

    def remove(self, wd: int) -> None:
        self._rm(self.fd, wd)  # EINVAL when the kernel dropped it already: nothing to do

    def read(self) -> list[Event]:
        """The events queued now, up to a bounded number of reads (the rest stay readable)."""
        events: list[Event] = []
        for _ in range(_READS):
            try:
                data = os.read(self.fd, _READ)
            except BlockingIOError:
                break
            if not data:
                break
            events += parse_events(data)
        return events

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # outside trio nobody can be waiting on it
            trio.lowlevel.notify_closing(self.fd)
        os.close(self.fd)


def _add_tree(
    inotify: Inotify, disk: AreaRoots, area: int, top: bytes, hidden: set[tuple[int, int]]
) -> tuple[list[tuple[int, bytes]], bool]:
    """Watch `top` (relative to the area's root) and every directory below it: the (wd,
    directory) pairs added, and whether the kernel's watch limit stopped us. Run in a thread.

    Walked by descriptor, as every look at the disk: a directory swapped for a symlink is not
    followed, and each watch is added through the held descriptor (`/proc/self/fd/N` names
    that very inode), so nothing outside the area is ever watched."""
    added: list[tuple[int, bytes]] = []
    try:
        pending = [(top, disk.dir_relative(area, top))]
    except (OSError, FsError):
        return added, False  # gone or replaced meanwhile: its parent's events say so
    try:
        while pending:
            relative, fd = pending.pop()
            try:
                # The magic link is followed on purpose: it leads to the held inode alone.
                wd = inotify.add(held_path(fd), WATCH_MASK & ~IN_DONT_FOLLOW)
                added.append((wd, relative))
                pending += _subdirectories(disk, relative, fd, hidden)
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    return added, True
                if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
                    log.warning("cannot watch %s: %s", os.fsdecode(relative), e.strerror)
            finally:
                os.close(fd)
    finally:
        for _, fd in pending:
            os.close(fd)
    return added, False


def _subdirectories(
    disk: AreaRoots, relative: bytes, fd: int, hidden: set[tuple[int, int]]
) -> list[tuple[bytes, int]]:
    """The directories in `fd` (not hidden, not symlinks), each held by a descriptor."""
    found = []
    try:
        for name, _ in disk.names(fd):
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                seen_hidden = (st.st_dev, st.st_ino) in hidden or disk.is_hidden(st)
                if stat.S_ISDIR(st.st_mode) and not seen_hidden:
                    found.append((join(relative, name), open_dir(name, fd)))
            except OSError:
                continue  # gone or replaced meanwhile: its parent's events say so
    except OSError:
        for _, held in found:
            os.close(held)
        return []
    return found


def _within(path: bytes, tops: list[bytes]) -> bool:
    return any(not top or path == top or path.startswith(top + b"/") for top in tops)


class Watcher:
    """Watches the areas of one journal and has it reconcile what changed on the disk."""

    def __init__(
        self,
        journal: Journal,
        hidden: set[bytes] = frozenset(),
        *,
        quiet: float = QUIET,
        latest: float = LATEST,
        poll: float = POLL,
    ) -> None:
        self.journal = journal
        self.roots = journal.roots
        self.hidden = hidden
        self.quiet, self.latest, self.poll = quiet, latest, poll
        self.inotify: Inotify | None = None
        self.polled: set[int] = set()  # areas rescanned every `poll` seconds instead
        self._where: dict[int, tuple[int, bytes]] = {}  # wd → (area, directory)
        self._wds: dict[tuple[int, bytes], int] = {}
        self._pending: dict[tuple[int, bytes], bool] = {}  # directory → its whole subtree too
        self._rescan: set[int] = set()  # areas to reconcile whole
        self._moved_from: dict[int, tuple[int, bytes]] = {}  # inotify cookie → (area, path)
        self._moves: list[tuple[int, bytes, bytes]] = []  # (area, old, new) paired by cookie
        self._changed = trio.Event()
        self._first = self._last = 0.0

    @property
    def watches(self) -> int:
        return len(self._where)

    async def open(self) -> None:
        """Watch every directory of every area. Call it before the start scans: whatever
        changes after a scan saw it then has an event."""
        try:
            self.inotify = Inotify()
        except OSError as e:
            log.warning(
                "cannot watch the areas (%s): rescanning them every %g s", e.strerror, self.poll
            )
            self.polled.update(self.roots)
            return
        for area in self.roots:
            await self._watch_tree(area, b"")

    def close(self) -> None:
        if self.inotify is not None:
            self.inotify.close()
            self.inotify = None

    async def run(self) -> None:
        """Read events and reconcile what they point at, for as long as the server runs."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._reconcile_loop)
            nursery.start_soon(self._poll_loop)
            if self.inotify is not None:
                nursery.start_soon(self._read_loop)

    # ---- watches ----

    async def _watch_tree(self, area: int, top: bytes) -> None:
        if self.inotify is None or area in self.polled:
            return
        added, full = await trio.to_thread.run_sync(
            _add_tree, self.inotify, self.journal.disk, area, top, identities(self.hidden)
        )
        for wd, directory in added:
            old = self._where.get(wd)
            if old is not None:  # an inode watched before under another name (moved)
                self._wds.pop(old, None)
            self._where[wd] = (area, directory)
            self._wds[(area, directory)] = wd
        if full:
            log.warning(
                "%s has more directories than may be watched (fs.inotify.max_user_watches): "
                "rescanning it every %g s",
                os.fsdecode(self.roots[area]),
                self.poll,
            )
            self.polled.add(area)

    def _forget(self, wd: int) -> None:
        where = self._where.pop(wd, None)
        if where is not None and self._wds.get(where) == wd:
            del self._wds[where]

    def _drop_tree(self, area: int, top: bytes) -> None:
        """Stop watching `top` and below: moved away, its watches would report old paths."""
        for (watched_area, directory), wd in list(self._wds.items()):
            if watched_area == area and _within(directory, [top]):
                self._forget(wd)
                if self.inotify is not None:
                    self.inotify.remove(wd)

    # ---- events ----

    async def _read_loop(self) -> None:
        assert self.inotify is not None
        while True:
            await trio.lowlevel.wait_readable(self.inotify.fd)
            for event in self.inotify.read():
                await self._handle(event)

    async def _handle(self, event: Event) -> None:
        if event.mask & IN_Q_OVERFLOW:
            log.warning("too many changes at once: rescanning every area")
            self._rescan.update(self.roots)
            self._poke()
            return
        where = self._where.get(event.wd)
        if where is None:
            return  # a watch dropped meanwhile
        if event.mask & IN_IGNORED:
            self._forget(event.wd)
            return
        area, directory = where
        if not event.name:
            # About the watched directory itself: its parent's watch reports it, but an
            # area's root has none.
            if not directory and event.mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_UNMOUNT):
                log.warning("area directory %s is gone", os.fsdecode(self.roots[area]))
            return
        if event.name.startswith(TEMP_PREFIX):
            return  # the tree's own temporary file; its rename into place has an event
        path = join(directory, event.name)
        if join(self.roots[area], path) in self.hidden:
            return
        self._pair_move(event, area, path)
        self._mark(area, directory, False)
        if event.mask & IN_ISDIR:
            if event.mask & IN_MOVED_FROM:
                self._drop_tree(area, path)
            elif event.mask & (IN_CREATE | IN_MOVED_TO):
                await self._watch_tree(area, path)
                self._mark(area, path, True)  # what is in it already has no event

    def _pair_move(self, event: Event, area: int, path: bytes) -> None:
        """A rename within an area comes as MOVED_FROM and MOVED_TO with one cookie: the pair
        is kept for the next reconcile, which records it as a rename (`_record_moves`)."""
        if event.mask & IN_MOVED_FROM:
            if len(self._moved_from) >= MAX_UNPAIRED:
                self._moved_from.clear()  # moved out of every area: never paired
            self._moved_from[event.cookie] = (area, path)
        elif event.mask & IN_MOVED_TO:
            source = self._moved_from.pop(event.cookie, None)
            if source is not None and source[0] == area and len(self._moves) < MAX_UNPAIRED:
                self._moves.append((area, source[1], path))

    def _record_moves(self, moves: list[tuple[int, bytes, bytes]]) -> None:
        """Record each rename seen on the disk as one (a RENAME in the history, the entry
        moved with its blob) where the disk still says so: the source gone, the target there
        as the same kind of object, a file with the size and mtime its hashed entry has and
        not waiting to be hashed. Anything else is left to the reconcile, as a delete and a
        create."""
        journal = self.journal
        for area, old, new in moves:
            entry = journal.index.get(area, old)
            if entry is None or entry.layer != Layer.REAL or journal.is_dirty(area, old):
                continue  # not known here yet (an editor's temporary file), or done (NFS)
            if journal.disk.look(area, old) is not None:
                continue
            found = journal.disk.look(area, new)
            if found is None or kind_of(found[0]) != entry.kind:
                continue
            st = found[0]
            if entry.kind == Kind.FILE and (
                not entry.blob or (entry.size, entry.mtime_ns) != (st.st_size, st.st_mtime_ns)
            ):
                continue
            there = journal.index.get(area, new)
            if there is not None and there.kind == Kind.DIR:
                continue  # rename(2) replaced an empty directory; what it listed decides
            journal.renamed(area, old, new)

    def _mark(self, area: int, directory: bytes, deep: bool) -> None:
        key = (area, directory)
        self._pending[key] = self._pending.get(key, False) or deep
        self._poke()

    def _poke(self) -> None:
        now = trio.current_time()
        if not self._changed.is_set():
            self._first = now
            self._changed.set()
        self._last = now

    # ---- reconciling ----

    async def _poll_loop(self) -> None:
        while True:
            await trio.sleep(self.poll)
            if self.polled:
                self._rescan.update(self.polled)
                self._poke()

    async def _reconcile_loop(self) -> None:
        while True:
            await self._changed.wait()
            while True:  # debounce: quiet for a moment, or waited long enough
                due = min(self._last + self.quiet, self._first + self.latest)
                if trio.current_time() >= due:
                    break
                await trio.sleep_until(due)
            pending, self._pending = self._pending, {}
            rescan, self._rescan = self._rescan, set()
            moves, self._moves = self._moves, []
            self._changed = trio.Event()
            self._record_moves(moves)
            await self.reconcile(pending, rescan)

    async def reconcile(
        self, pending: dict[tuple[int, bytes], bool], rescan: Iterable[int] = ()
    ) -> None:
        """Reconcile the `pending` directories (→ whether their whole subtree) and the
        `rescan` areas whole; parents first, so a subtree is never walked twice."""
        journal, hidden = self.journal, self.hidden
        rescan = sorted(rescan)
        for area in rescan:
            if area not in self.polled:
                await self._rewatch(area)
            try:
                await journal.scan(area, hidden, soon=False)
            except OSError as e:
                log.warning("cannot rescan %s: %s", os.fsdecode(self.roots[area]), e.strerror)
        done: dict[int, list[bytes]] = {area: [b""] for area in rescan}

        def depth(key: tuple[int, bytes]) -> tuple[int, int, bytes]:
            area, directory = key
            return area, directory.count(b"/") + 1 if directory else 0, directory

        for area, directory in sorted(pending, key=depth):
            scanned = done.setdefault(area, [])
            if _within(directory, scanned):
                continue
            deep = pending[(area, directory)]
            try:
                appeared = await journal.scan(area, hidden, directory, deep=deep, soon=False)
            except OSError as e:
                log.warning("cannot reconcile %s: %s", os.fsdecode(directory), e.strerror)
                continue
            scanned += [directory] if deep else appeared

    async def _rewatch(self, area: int) -> None:
        """Watch the area afresh after an overflow: events of new directories may be lost,
        and the names of moved ones wrong."""
        before = {wd for wd, (a, _) in self._where.items() if a == area}
        for wd in before:
            self._forget(wd)
        await self._watch_tree(area, b"")
        for wd in before - set(self._where):
            if self.inotify is not None:
                self.inotify.remove(wd)
