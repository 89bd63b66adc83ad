"""Arrivals: a file a peer's version brings here takes the mark of the directory it lands in.

The exchange shows what arrives as Unreal entries (nfsd/peer/exchange.py) and tells `arrived`
which paths it showed. A file whose mark in force (its own, else the nearest marked parent's,
nfsd/store/index.py) is

- `real` is realized: its whole content fetched and written as a Real file;
- `keep` is fetched whole into the cache and pinned there;
- `unreal`, or no mark at all, stays as it arrived: listed, its content cached when read.

The same steps as `realize mark` takes (nfsd/vfs/marks.py `Marks.plan` and its actions), one
file at a time, in the background, in the order the files arrived. A new version of a file
held Real under `real` arrives the same way (the exchange drops the outdated bytes and shows
the new version Unreal), and is realized again.

Memory stays bounded: at most `QUEUE_MAX` paths wait; past that, the areas they belong to are
looked over whole instead (every file below a `real` or `keep` mark that is still Unreal), as
they are at start, so what arrived before a restart is brought to its mark too. A file that
cannot be brought (no peer holds its content just now) is tried again after a pause that
grows from `RETRY_FIRST` to `RETRY_MAX` seconds, and at once after the next pull from a peer
(`retry_now`).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable

import trio

from nfsd.store.blobs import BlobError
from nfsd.store.index import Layer, Mark
from nfsd.vfs.errors import FsError
from nfsd.vfs.marks import Action, Job, Marks

log = logging.getLogger("realize.arrivals")

QUEUE_MAX = 10_000
RETRY_FIRST = 5.0
RETRY_MAX = 300.0
_BROUGHT = (Action.REALIZE, Action.FETCH_AND_KEEP)
_BRINGING = {Mark.REAL, Mark.KEEP}


class Arrivals:
    def __init__(self, marks: Marks) -> None:
        self.marks = marks
        self.index = marks.index
        self.waiting: OrderedDict[tuple[int, bytes], None] = OrderedDict()
        self.whole: set[int] = set()  # areas to look over whole (the queue overflowed)
        self.failed: OrderedDict[tuple[int, bytes], None] = OrderedDict()
        self.brought = 0  # files brought to their mark since start
        self._pause = RETRY_FIRST
        self._token: trio.lowlevel.TrioToken | None = None
        self._wake = trio.Event()

    # ---- told by the exchange (on any thread) ----

    def arrived(self, area: int, paths: Iterable[bytes]) -> None:
        """Paths just shown from a peer's versions: those that are files under `real` or
        `keep` wait to be brought to their mark."""
        added = False
        for path in paths:
            if area in self.whole:
                break
            if len(self.waiting) >= QUEUE_MAX:
                self.whole.add(area)
                added = True
                break
            mark, _ = self.index.marked_at(area, path)
            if mark in _BRINGING:
                self.waiting[(area, path)] = None
                added = True
        if added:
            self._poke()

    def retry_now(self) -> None:
        """Try the files that could not be brought again at once (a pull just came in)."""
        if self.failed:
            self._pause = RETRY_FIRST
            self._poke()

    def _poke(self) -> None:
        if self._token is not None:
            self._token.run_sync_soon(self._wake.set)

    # ---- the worker ----

    async def run(self) -> None:
        """Bring arriving files to their marks for as long as the server runs."""
        self._token = trio.lowlevel.current_trio_token()
        self.whole |= {area for area in self.marks.tree.areas
                       if any(m in _BRINGING for _, m in self.index.marked(area))}  # fmt: skip
        while True:
            await self._work()
            with trio.move_on_after(self._pause if self.failed else float("inf")):
                await self._wake.wait()
            self._wake = trio.Event()
            if self.failed and not self.waiting:
                self._requeue_failed()

    def _requeue_failed(self) -> None:
        for key in self.failed:
            self.waiting.setdefault(key, None)
        self.failed.clear()
        self._pause = min(self._pause * 2, RETRY_MAX)

    async def _work(self) -> None:
        while self.waiting or self.whole:
            if self.waiting:
                (area, path), _ = self.waiting.popitem(last=False)
                await self._bring(area, path)
                continue
            area = self.whole.pop()
            for path in self.index.files_marked(area, _BRINGING, Layer.UNREAL):
                if len(self.waiting) >= QUEUE_MAX:
                    self.whole.add(area)  # the rest on the next look over
                    break
                self.waiting[(area, path)] = None
            await trio.sleep(0)

    async def _bring(self, area: int, path: bytes) -> None:
        """The file at `path` brought to its mark in force, as `realize mark` would."""
        work = [(p, e, a) for p, e, a in self.marks.plan(area, path) if a in _BROUGHT]
        if not work or work[0][0] != path:
            return  # no longer an Unreal file, or its mark changed
        _, entry, action = work[0]
        job = Job(0, area, path, self.index.marked_at(area, path)[0])
        try:
            async with self.marks.one_at_a_time:
                current = self.index.get(area, path)
                if current is None or current.blob != entry.blob or current.layer != Layer.UNREAL:
                    return  # changed while it waited: its new version arrives on its own
                await self.marks.apply(job, path, entry, action)
        except (FsError, BlobError, OSError) as e:
            why = (e.detail or e.status.name) if isinstance(e, FsError) else str(e)
            if (area, path) not in self.failed:
                log.info("cannot %s %s yet (tried again later): %s",
                         action.value, self.marks.shown(area, path), why)  # fmt: skip
            self.failed[(area, path)] = None
            while len(self.failed) > QUEUE_MAX:
                self.failed.popitem(last=False)
                self.whole.add(area)
            return
        self.brought += 1
        self._pause = RETRY_FIRST
        log.info("%s %s as its mark says", action.value, self.marks.shown(area, path))
