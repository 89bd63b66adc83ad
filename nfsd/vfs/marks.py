"""Marks applied: what `realize mark` asks of a path and `realize ls`'s view of a path.

A mark says what a path should be, inherited from the nearest marked parent (the index keeps
them, nfsd/store/index.py). Setting one starts a job that brings every file below the path
to the mark in force for it:

- `real`: an Unreal file is realized (its whole content fetched and written as a Real file);
- `keep`: the file's blob is pinned in the cache and fetched whole; a Real file's content is
  moved into the cache first (pinned) and the local file removed;
- `unreal`: a Real file's content is moved into the cache and the local file removed; the
  chunks are evictable, unless no source holds the content: then they stay pinned as the
  only copy, since evicting them would lose the file;
- no mark at all: files stay where they are (a `keep` pin is dropped).

Directories stay as they are; only file content moves. Jobs run one at a time, in the order
they were asked for; each reports files and bytes done for the progress bar.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from enum import Enum

import trio

from nfsd.store.blobs import BlobError
from nfsd.store.index import Entry, Kind, Layer, Mark, join
from nfsd.vfs.errors import FsError
from nfsd.vfs.journal import kind_of
from nfsd.vfs.merged import MergedTree
from nfsd.vfs.unreal import background_transfer
from xdr.nfs3 import NAME_MAX, nfsstat3
from xdr.peer import FETCH_CHUNK_SIZE

log = logging.getLogger("realize.marks")

KEEP_PIN = "keep"
ONLY_COPY_PIN = "only-copy"
MAX_JOBS_KEPT = 64
BUSY_RETRIES = 3


class JobState(Enum):
    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class Action(Enum):
    REALIZE = "realize"
    FETCH_AND_KEEP = "keep"
    UNREALIZE = "unrealize"
    RELEASE = "release"  # drop the keep pin


@dataclass
class Job:
    id: int
    area: int
    path: bytes
    mark: Mark
    state: JobState = JobState.WAITING
    files_done: int = 0
    files_total: int = 0
    bytes_done: int = 0
    bytes_total: int = 0
    errors: list[str] = field(default_factory=list)

    def advance(self, n: int) -> None:
        self.bytes_done += n


@dataclass
class PathView:
    """One row of `realize ls`."""

    name: bytes
    kind: Kind
    layer: Layer | None  # None: on the disk, not yet in the index
    own_mark: Mark
    mark: Mark  # in force
    mark_from: bytes  # the area path whose mark is in force (None when no mark applies)
    marked: bool
    size: int
    cached: int
    pinned: bool


class PathError(ValueError):
    def __init__(self, status: nfsstat3, message: str) -> None:
        super().__init__(message)
        self.status = status


class Marks:
    def __init__(self, tree: MergedTree) -> None:
        self.tree = tree
        self.index = tree.index
        self.jobs: OrderedDict[int, Job] = OrderedDict()
        self._ids = itertools.count(1)
        self.one_at_a_time = trio.Lock()  # jobs, and arrivals (nfsd/vfs/arrivals.py)

    # ---- paths ----

    def resolve(self, text: bytes) -> tuple[int, bytes]:
        """(area id, path in it) of "AREA/path/inside"; PathError when there is no such path."""
        parts = [p for p in text.split(b"/") if p and p != b"."]
        if not parts:
            raise PathError(nfsstat3.NFS3ERR_INVAL, "give a path that starts with an area name")
        if b".." in parts:
            raise PathError(nfsstat3.NFS3ERR_INVAL, "no '..' in a path")
        if any(b"\0" in p or len(p) > NAME_MAX for p in parts):
            raise PathError(
                nfsstat3.NFS3ERR_INVAL, f"a name with a NUL byte or over {NAME_MAX} bytes"
            )
        area = self.tree.area_by_name.get(os.fsdecode(parts[0]))
        if area is None:
            names = ", ".join(sorted(self.tree.area_by_name)) or "none"
            raise PathError(
                nfsstat3.NFS3ERR_NOENT, f"no area {os.fsdecode(parts[0])} (areas: {names})"
            )
        rel = b"/".join(parts[1:])
        # On the disk it is looked at through the area root's descriptors, as clients see it:
        # the state directory is not there, and no symlink leads elsewhere.
        if rel and self.index.get(area.id, rel) is None and self.tree.look(area.id, rel) is None:
            raise PathError(nfsstat3.NFS3ERR_NOENT, f"no {os.fsdecode(text)}")
        return area.id, rel

    def _display(self, area: int, rel: bytes) -> bytes:
        name = self.tree.areas[area].name.encode()
        return join(name, rel) if rel else name

    def shown(self, area: int, rel: bytes) -> str:
        """The path as a user names it: "AREA/path/inside"."""
        return os.fsdecode(self._display(area, rel))

    # ---- realize ls ----

    def view(self, area: int, rel: bytes, name: bytes | None = None) -> PathView:
        entry = self.index.get(area, rel) if rel else None
        layer: Layer | None = entry.layer if entry is not None else None
        if entry is None:
            st = self.tree.look(area, rel)
            kind = kind_of(st) if st is not None else Kind.DIR
            size = st.st_size if st is not None and kind == Kind.FILE else 0
            if st is not None and rel:
                layer = Layer.REAL
        else:
            kind, size = entry.kind, entry.size if entry.kind == Kind.FILE else 0
        mark, where = self.index.marked_at(area, rel)
        cached, pinned = self._cached(entry)
        return PathView(
            name if name is not None else self._display(area, rel),
            kind,
            layer,
            self.index.own_mark(area, rel),
            mark,
            self._display(area, where) if where is not None else b"",
            where is not None,
            size,
            cached,
            pinned,
        )

    def _cached(self, entry: Entry | None) -> tuple[int, bool]:
        blobs = self.tree.blobs
        if entry is None or entry.kind != Kind.FILE or not entry.blob or blobs is None:
            return 0, False
        manifest = blobs.manifest(entry.blob)
        if manifest is None:
            return 0, False
        absent = sum(manifest.chunk_length(i) for i in blobs.missing(entry.blob))
        return manifest.size - absent, manifest.pinned

    def listing(self, area: int, rel: bytes, after: bytes, limit: int) -> tuple[list, bool]:
        """Rows for the children of a directory, in name order, after `after`; and whether
        more follow."""
        names = {name for name, _ in self.index.children(area, rel)}
        # An Unreal directory, or one that just went, has no names on the disk: the index
        # alone speaks.
        names |= self.tree.disk_names(area, rel)
        rows = []
        for name in sorted(n for n in names if n > after):
            if len(rows) == limit:
                return rows, True
            rows.append(self.view(area, join(rel, name), name))
        return rows, False

    # ---- realize mark ----

    def set(self, area: int, rel: bytes, mark: Mark) -> Job:
        """Record the mark and queue the job that applies it."""
        self.tree.set_mark(area, rel, mark)
        job = Job(next(self._ids), area, rel, mark)
        self.jobs[job.id] = job
        while len(self.jobs) > MAX_JOBS_KEPT:
            self.jobs.popitem(last=False)
        return job

    def plan(self, area: int, rel: bytes) -> list[tuple[bytes, Entry, Action]]:
        """What must happen to each file below (or at) the path for its mark in force."""
        blobs = self.tree.blobs
        work = []
        for path, entry in list(self.index.at_and_below(area, rel)):
            if entry.kind != Kind.FILE:
                continue
            mark, _ = self.index.marked_at(area, path)
            action = None
            if entry.layer == Layer.UNREAL:
                if mark == Mark.REAL:
                    action = Action.REALIZE
                elif mark == Mark.KEEP:
                    action = Action.FETCH_AND_KEEP
                elif blobs is not None and entry.blob:
                    manifest = blobs.manifest(entry.blob)
                    if manifest is not None and KEEP_PIN in manifest.pins:
                        action = Action.RELEASE
            elif mark in (Mark.KEEP, Mark.UNREAL):
                action = Action.UNREALIZE
            if action is not None:
                work.append((path, entry, action))
        return work

    async def run(self, job: Job) -> None:
        """Apply the job (after the jobs queued before it)."""
        async with self.one_at_a_time:
            job.state = JobState.RUNNING
            try:
                work = self.plan(job.area, job.path)
                job.files_total = len(work)
                job.bytes_total = sum(e.size for _, e, a in work if a not in (Action.RELEASE,))
                for path, entry, action in work:
                    try:
                        await self.apply(job, path, entry, action)
                    except (FsError, BlobError, OSError) as e:
                        why = (e.detail or e.status.name) if isinstance(e, FsError) else str(e)
                        shown = self.shown(job.area, path)
                        job.errors.append(f"{shown}: {why}")
                        job.bytes_total -= entry.size if action != Action.RELEASE else 0
                    job.files_done += 1
            except Exception as e:  # a job must end in a state the command can report
                log.exception("job %d failed", job.id)
                job.errors.append(f"internal error: {e}")
            job.state = JobState.FAILED if job.errors else JobState.DONE

    async def apply(self, job: Job, path: bytes, entry: Entry, action: Action) -> None:
        """One file of `job`'s plan brought to its mark (under `one_at_a_time`)."""
        tree, unreal = self.tree, self.tree.unreal
        if unreal is None:
            raise FsError(nfsstat3.NFS3ERR_NOTSUPP, "no blob cache attached")
        blobs = unreal.blobs
        if action == Action.RELEASE:
            blobs.unpin(entry.blob, KEEP_PIN)
            return
        fid = tree.fid_of_path(job.area, path)
        if action == Action.REALIZE:
            with background_transfer():  # paced by --peer-rate, unless a reader waits
                await tree.prepare_change(fid, job.advance)
            blobs.unpin(entry.blob, KEEP_PIN)
            blobs.unpin(entry.blob, ONLY_COPY_PIN)
        elif action == Action.FETCH_AND_KEEP:
            area = tree.areas.get(job.area)
            with background_transfer():
                await unreal.fetch_all(entry, job.advance, area.name if area else "", KEEP_PIN)
        else:
            mark, _ = self.index.marked_at(job.area, path)
            await self._unrealize(fid, entry, KEEP_PIN if mark == Mark.KEEP else None)
            job.advance(entry.size)

    def sampler(self, fid: int) -> Callable[[int], Awaitable[bytes | None]]:
        """This side's bytes of a chunk of the Real file `fid`, for a peer's word that it
        holds the content to be checked against (nfsd/peer/source.py `held`)."""

        async def sample(index: int) -> bytes | None:
            try:
                read = await self.tree.read(fid, index * FETCH_CHUNK_SIZE, FETCH_CHUNK_SIZE)
            except FsError:
                return None
            return bytes(read.data)

        return sample

    async def _unrealize(self, fid: int, entry: Entry, pin: str | None) -> None:
        unreal = self.tree.unreal
        assert unreal is not None
        if pin is None and not (
            entry.blob and await unreal.held_elsewhere(entry.blob, entry.size, self.sampler(fid))
        ):
            pin = ONLY_COPY_PIN  # nothing else holds it: never evict
        for attempt in range(BUSY_RETRIES + 1):
            try:
                await self.tree.unrealize(fid, pin)
                return
            except FsError as e:
                if e.status != nfsstat3.NFS3ERR_JUKEBOX or attempt == BUSY_RETRIES:
                    raise
            await trio.sleep(self.tree.rest + 1)  # let the writer finish and rest
