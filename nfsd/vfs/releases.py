"""Releases: a file made or changed here under an `unreal` mark stays Real until another peer
holds its content, then moves into the cache, evictable.

`unreal` says a path's content may live elsewhere, cached here when read. A file written here
is the only copy at first: moving it into the cache at once would leave it at the mercy of
eviction. So the journal tells `content` of every file whose new content it recorded; those
whose mark in force is `unreal` wait here, and are looked at again and again (after
`FIRST_LOOK` seconds, then a pause that doubles up to `LAST_LOOK`) until a source says it
holds the whole blob (`UnrealLayer.held_elsewhere`: a connected peer answering HOLDS for its
Real file or its pinned cache, xdr/peer.py). Then the file's content moves into the cache with
the steps of `realize mark unreal` (nfsd/vfs/marks.py), unpinned: evicting it loses nothing.
A file that changed meanwhile (written again, its mark changed, gone) is dropped here and
comes back with its next content.

At start, and when more than `QUEUE_MAX` files wait, the areas are looked over for Real files
under `unreal` marks instead, so the wait survives a restart and memory stays bounded.
"""

from __future__ import annotations

import logging

import trio

from nfsd.store.blobs import BlobError
from nfsd.store.index import Kind, Layer, Mark
from nfsd.vfs.errors import FsError
from nfsd.vfs.marks import Action, Job, Marks

log = logging.getLogger("realize.releases")

QUEUE_MAX = 10_000
FIRST_LOOK = 2.0
LAST_LOOK = 300.0


class Releases:
    def __init__(self, marks: Marks) -> None:
        self.marks = marks
        self.index = marks.index
        # (area, path) -> (when to look next, the pause after that)
        self.waiting: dict[tuple[int, bytes], tuple[float, float]] = {}
        self.whole: set[int] = set()
        self.released = 0
        self._token: trio.lowlevel.TrioToken | None = None
        self._wake = trio.Event()

    def content(self, area: int, path: bytes) -> None:
        """The journal recorded new content of a Real file here (on the event loop)."""
        if self.index.marked_at(area, path)[0] != Mark.UNREAL:
            return
        if len(self.waiting) >= QUEUE_MAX:
            self.whole.add(area)
        elif self._token is not None:
            self.waiting[(area, path)] = (trio.current_time() + FIRST_LOOK, FIRST_LOOK)
            self._wake.set()
        # else: no worker yet; it looks the areas over when it starts

    async def run(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self.whole |= set(self.marks.tree.areas)
        while True:
            self._look_over()
            now = trio.current_time()
            for key in [k for k, (when, _) in self.waiting.items() if when <= now]:
                await self._try(*key)
            nearest = min((when for when, _ in self.waiting.values()), default=None)
            with trio.move_on_at(nearest if nearest is not None else float("inf")):
                await self._wake.wait()
            self._wake = trio.Event()

    def _look_over(self) -> None:
        while self.whole and len(self.waiting) < QUEUE_MAX:
            area = self.whole.pop()
            first = trio.current_time() + FIRST_LOOK
            for path in self.index.files_marked(area, {Mark.UNREAL}, Layer.REAL):
                if len(self.waiting) >= QUEUE_MAX:
                    self.whole.add(area)
                    break
                self.waiting.setdefault((area, path), (first, FIRST_LOOK))

    async def _try(self, area: int, path: bytes) -> None:
        """Move the file into the cache if another holds its content; else look later."""
        _, pause = self.waiting[(area, path)]
        entry = self.index.get(area, path)
        unreal = self.marks.tree.unreal
        still = (
            entry is not None
            and entry.kind == Kind.FILE
            and entry.layer == Layer.REAL
            and bool(entry.blob)
            and self.index.marked_at(area, path)[0] == Mark.UNREAL
            and unreal is not None
        )
        if not still:
            del self.waiting[(area, path)]
            return
        assert entry is not None and unreal is not None
        try:
            fid = self.marks.tree.fid_of_path(area, path)
        except FsError:  # gone meanwhile
            del self.waiting[(area, path)]
            return
        if self.marks.tree.journal.is_dirty(area, path) or not await unreal.held_elsewhere(
            entry.blob, entry.size, self.marks.sampler(fid)
        ):
            pause = min(pause * 2, LAST_LOOK)
            self.waiting[(area, path)] = (trio.current_time() + pause, pause)
            return
        del self.waiting[(area, path)]
        job = Job(0, area, path, Mark.UNREAL)
        try:
            async with self.marks.one_at_a_time:
                current = self.index.get(area, path)
                if current is None or current.blob != entry.blob or current.layer != Layer.REAL:
                    return
                await self.marks.apply(job, path, current, Action.UNREALIZE)
        except (FsError, BlobError, OSError) as e:
            why = (e.detail or e.status.name) if isinstance(e, FsError) else str(e)
            log.info("cannot move %s into the cache yet: %s", self.marks.shown(area, path), why)
            self.waiting[(area, path)] = (trio.current_time() + pause, pause)
            return
        self.released += 1
        log.info("%s is held by a peer: moved into the cache", self.marks.shown(area, path))
