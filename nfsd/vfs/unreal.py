"""The Unreal layer: files known from the index whose content lives in the blob cache and is
fetched on demand from blob sources.

Owns what the tree does with an Unreal entry: its attributes (from the index, so they are the
same before and after the content arrives), reads (served from verified cached chunks; missing
chunks fetched from the sources, with read-ahead for sequential readers; a read that waits
longer than `wait` seconds is answered NFS3ERR_JUKEBOX while the fetch goes on), and
realizing (the whole content written to a temporary file beside the target, synced, then
renamed into place) before anything changes it. A blob the cache has no manifest for (an
entry that arrived from a peer) is registered first with the chunk hashes a source can
vouch for (`chunk_hashes`, as the peers do for a one-chunk blob), so its chunks can be
fetched and verified.

An Unreal object has the owner, group and mode its Real one had (the index keeps them), and
comes back with them. It is never setuid or setgid for anyone but its owner: where the index
does not know the owner (an entry from before owners were kept, or an imported one), the
area root's owner stands in and the setuid and setgid bits are dropped (`ownership`); a
realized file is made by the server, given its owner, and only then its mode (chown clears
setuid), keeping setuid and setgid only if it got that very owner and group.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Iterator

import trio

from nfsd.store import cuts
from nfsd.store.blobs import (
    BlobError,
    BlobStore,
    CacheFull,
    ChunkHashMismatch,
    MissingChunks,
    UnknownBlob,
)
from nfsd.store.index import Entry, Kind
from nfsd.store.source import BlobSource
from nfsd.threads import run_blocking
from nfsd.vfs.bases import Bases
from nfsd.vfs.errors import FsError
from nfsd.vfs.names import TEMP_PREFIX
from nfsd.vfs.tree import Attr
from xdr.codec import Gather
from xdr.nfs3 import ftype3, nfsstat3

log = logging.getLogger("realize.unreal")

READ_AHEAD_CHUNKS = 4
DEFAULT_WAIT = 3.0
_LONG_WAIT = 3600.0  # realize and keep wait for the content however slow the source
_FETCH_BATCH = 16

Progress = Callable[[int], None]  # told how many more bytes are done

# Set while a background transfer (realize, keep) fetches: its chunks may be paced by the
# sources (nfsd/peer/pace.py); those a reader waits for never are. Fetches started by a task
# inherit its value (a task's context is copied into the tasks it starts).
_BACKGROUND: contextvars.ContextVar[bool] = contextvars.ContextVar("background", default=False)


@contextlib.contextmanager
def background_transfer() -> Iterator[None]:
    """The fetches started inside are background transfers: paced, unless a reader waits."""
    token = _BACKGROUND.set(True)
    try:
        yield
    finally:
        _BACKGROUND.reset(token)


_KINDS = {Kind.FILE: ftype3.NF3REG, Kind.DIR: ftype3.NF3DIR, Kind.SYMLINK: ftype3.NF3LNK}


def ownership(entry: Entry, area_uid: int, area_gid: int) -> tuple[int, int, int]:
    """(uid, gid, mode) an Unreal entry is shown with and realized as: the recorded owner,
    group and mode; where the index does not know the owner, the area root's (`area_uid`,
    `area_gid`) without the setuid and setgid bits, which only the real owner may hold."""
    if entry.uid is None or entry.gid is None:
        return area_uid, area_gid, entry.mode & 0o7777 & ~(stat.S_ISUID | stat.S_ISGID)
    return entry.uid, entry.gid, entry.mode & 0o7777


def give_ownership(fd: int, uid: int, gid: int, mode: int) -> None:
    """Give the object made by the server behind `fd` its owner, then its mode: chown first,
    since chown clears setuid. Where the owner or group cannot be given (a server that is not
    root), the object keeps the server's and loses setuid or setgid with it."""
    with contextlib.suppress(PermissionError):
        os.fchown(fd, uid, gid)
    st = os.fstat(fd)
    if st.st_uid != uid:
        mode &= ~stat.S_ISUID
    if st.st_gid != gid:
        mode &= ~stat.S_ISGID
    os.fchmod(fd, mode)


def unreal_attr(entry: Entry, fid: int, uid: int, gid: int) -> Attr:
    """Attributes of an Unreal entry: what the index says, whatever is cached. `uid` and
    `gid` are the area root's owner, standing in where the index knows no owner."""
    kind = _KINDS.get(entry.kind, ftype3.NF3REG)
    size = entry.size if entry.kind == Kind.FILE else len(entry.target)
    if entry.kind == Kind.DIR:
        size = 4096
    t = entry.mtime_ns
    uid, gid, mode = ownership(entry, uid, gid)
    return Attr(
        kind,
        mode,
        2 if entry.kind == Kind.DIR else 1,
        uid,
        gid,
        size,
        (size + 4095) & ~4095,
        (0, 0),
        fid,
        t,
        t,
        t,
    )


class UnrealLayer:
    def __init__(
        self, blobs: BlobStore, sources: list[BlobSource] | None = None, wait: float = DEFAULT_WAIT
    ) -> None:
        self.blobs = blobs
        self.sources = list(sources or [])
        self.wait = wait
        self.nursery: trio.Nursery | None = None  # see `serve_in`
        self._fetching: dict[tuple[bytes, int], trio.Event] = {}
        self.bases: Bases | None = None  # old contents new versions are built from
        self._patching: dict[bytes, trio.Event] = {}
        self.patched_bytes = 0  # bytes of new versions built from their bases
        self._urgent: set[tuple[bytes, int]] = set()  # fetches a reader waits for
        self._describing: dict[bytes, trio.Event] = {}
        self._refused: dict[bytes, str] = {}  # why the cache last refused a blob's chunk

    def serve_in(self, nursery: trio.Nursery) -> None:
        """Fetches run in `nursery` from now on, outliving the reads that started them (and
        reads ahead start). Without one, a read fetches what it needs itself."""
        self.nursery = nursery

    # ---- fetching ----

    async def _fetch_chunk(self, blob: bytes, index: int) -> None:
        key = (blob, index)
        done = self._fetching[key]

        def paced() -> bool:  # asked by a source pacing the fetch: still a background one?
            return _BACKGROUND.get() and key not in self._urgent

        try:
            manifest = self.blobs.manifest(blob)
            if manifest is None:
                return
            offset = index * manifest.chunk_size
            length = min(manifest.chunk_size, manifest.size - offset)
            for source in self.sources:
                fetch_into = getattr(source, "fetch_into", None)
                if fetch_into is not None:  # on the loop, storing through `store`

                    async def store(data: bytes) -> None:
                        await run_blocking(self.blobs.put_chunk, blob, index, data)

                    if await fetch_into(blob, index, length, store, paced):
                        return
                    continue
                if not _might_have(source, blob):
                    continue
                data = await trio.to_thread.run_sync(source.read_chunk, blob, offset, length)
                if data is None:
                    continue
                try:
                    # In a thread: completing a blob re-hashes all of it against its id.
                    await run_blocking(self.blobs.put_chunk, blob, index, data)
                    return
                except ChunkHashMismatch:
                    log.warning(
                        "source %s gave a wrong chunk %d of %s", source.name, index, blob.hex()[:16]
                    )
            log.warning("no source has chunk %d of %s", index, blob.hex()[:16])
        except CacheFull as e:
            log.warning("cannot cache chunk %d of %s: %s", index, blob.hex()[:16], e)
            self._refuse(blob, str(e))
        except Exception as e:  # a source or the store failing: the reader gets IO, we go on
            log.warning("fetching chunk %d of %s failed: %s", index, blob.hex()[:16], e)
        finally:
            del self._fetching[key]
            self._urgent.discard(key)
            done.set()

    def _refuse(self, blob: bytes, why: str) -> None:
        if len(self._refused) > 1000:
            self._refused.clear()
        self._refused[blob] = why

    def _start_fetch(self, blob: bytes, index: int) -> trio.Event:
        key = (blob, index)
        event = self._fetching.get(key)
        if event is None:
            event = self._fetching[key] = trio.Event()
            if self.nursery is not None:
                self.nursery.start_soon(self._fetch_chunk, blob, index)
        return event

    async def _ensure(self, blob: bytes, indexes: list[int], wait: float | None = None) -> None:
        """Fetch `indexes`, waiting at most `wait` seconds (default: the layer's; past it
        NFS3ERR_JUKEBOX, as a client must retry rather than stall). A new version whose base
        is here is first built from it as far as it goes (`_patch`)."""
        if self.bases is not None and blob in self.bases.noted:
            await self._patched(blob, wait)
            still = set(self.blobs.missing(blob))
            indexes = [i for i in indexes if i in still]
        events = [(i, self._start_fetch(blob, i)) for i in indexes]
        if not _BACKGROUND.get():
            self._urgent.update((blob, i) for i in indexes if (blob, i) in self._fetching)
        if self.nursery is None:  # no server around: fetch here and now
            for index, _ in events:
                if (blob, index) in self._fetching:
                    await self._fetch_chunk(blob, index)
            return
        with trio.move_on_after(self.wait if wait is None else wait) as waited:
            for _, event in events:
                await event.wait()
        if waited.cancelled_caught:
            raise FsError(nfsstat3.NFS3ERR_JUKEBOX, "content still arriving")

    async def _patched(self, blob: bytes, wait: float | None) -> None:
        """Wait for the blob to be built from its base (one build however many wait)."""
        done = self._patching.get(blob)
        if done is None:
            done = self._patching[blob] = trio.Event()
            if self.nursery is None:
                await self._patch(blob, done)
                return
            self.nursery.start_soon(self._patch, blob, done)
        with trio.move_on_after(self.wait if wait is None else wait) as waited:
            await done.wait()
        if waited.cancelled_caught:
            raise FsError(nfsstat3.NFS3ERR_JUKEBOX, "content being built from the old version")

    async def _patch(self, blob: bytes, done: trio.Event) -> None:
        """Build what the blob's base can make of it: the blob's cuts from a source, the
        base's cut here, each fixed chunk that matching cuts cover put together from the
        base's bytes (checked against its chunk hash as it is stored)."""
        assert self.bases is not None
        try:
            base = self.bases.base_of(blob)
            manifest = self.blobs.manifest(blob)
            if base is None or manifest is None or not cuts.available():
                return
            for source in self.sources:
                cut_list = getattr(source, "cut_list", None)
                target = await cut_list(blob, manifest.size) if cut_list is not None else None
                if target is not None:
                    built = await trio.to_thread.run_sync(self._build, blob, base, target)
                    self.patched_bytes += built
                    log.info("built %d of %d bytes of %s from its old version", built,
                             manifest.size, blob.hex()[:16])  # fmt: skip
                    return
        except Exception as e:  # a base or a source failing: the chunks are fetched instead
            log.warning("cannot build %s from its old version: %s", blob.hex()[:16], e)
        finally:
            self.bases.done(blob)
            del self._patching[blob]
            done.set()

    def _build(self, blob: bytes, base: bytes, target: list[cuts.Cut]) -> int:
        """(In a thread) the chunks of `blob` its base makes, stored; how many bytes."""
        assert self.bases is not None
        manifest = self.blobs.manifest(blob)
        if manifest is None:
            return 0
        with self.bases.reader(base) as (_size, read):
            found, whole, _ = cuts.cuts(read)
            if whole != base:
                return 0  # not the content it was kept as
            plans = cuts.plan_patch(found, target, manifest.size, manifest.chunk_size)
            built = 0
            for index in self.blobs.missing(blob):
                pieces = plans.get(index)
                if pieces is None:
                    continue
                data = b"".join(read(offset, length) for offset, length in pieces)
                try:
                    self.blobs.put_chunk(blob, index, data)
                except ChunkHashMismatch:
                    continue  # the cuts said wrong: fetched instead
                built += len(data)
            return built

    async def describe(self, entry: Entry, wait: float | None = None, area: str = "") -> bool:
        """Register the entry's blob in the cache when it has no manifest and a source can
        give its chunk hashes (checked against the id and size by `begin_blob`); whether the
        cache has a manifest for it now. Asking may take a while (a peer hashes a large file
        first): one ask per blob however many readers wait, each waiting at most `wait`
        seconds (default: the layer's; then NFS3ERR_JUKEBOX). `area`: the area name its
        cached bytes are charged to (per-area cache limits)."""
        if self.blobs.manifest(entry.blob) is not None:
            return True
        done = self._describing.get(entry.blob)
        if done is None:
            done = self._describing[entry.blob] = trio.Event()
            if self.nursery is None:
                await self._describe(entry, done, area)
            else:
                self.nursery.start_soon(self._describe, entry, done, area)
        with trio.move_on_after(self.wait if wait is None else wait) as waited:
            await done.wait()
        if waited.cancelled_caught:
            raise FsError(nfsstat3.NFS3ERR_JUKEBOX, "content description still arriving")
        return self.blobs.manifest(entry.blob) is not None

    async def _describe(self, entry: Entry, done: trio.Event, area: str) -> None:
        try:
            for source in self.sources:
                chunk_hashes = getattr(source, "chunk_hashes", None)
                if chunk_hashes is None or not _might_have(source, entry.blob):
                    continue
                try:
                    hashes = await trio.to_thread.run_sync(chunk_hashes, entry.blob, entry.size)
                    if hashes is None:
                        continue
                    self.blobs.begin_blob(entry.blob, entry.size, hashes, area=area)
                    return
                except (BlobError, ValueError) as e:
                    log.warning(
                        "source %s described %s wrongly: %s", source.name, entry.blob.hex(), e
                    )
                except Exception as e:  # a source failing: the reader gets IO, we go on
                    log.warning(
                        "source %s cannot describe %s: %s", source.name, entry.blob.hex(), e
                    )
        finally:
            del self._describing[entry.blob]
            done.set()

    async def held_elsewhere(
        self,
        blob: bytes,
        size: int,
        sample: Callable[[int], Awaitable[bytes | None]] | None = None,
    ) -> bool:
        """Whether an attached source holds the whole blob (so evicting it loses nothing):
        one that knows at once (`has`), or one that asks (`held`, the connected peers, which
        must serve a chunk matching `sample(index)`, this side's bytes, to be believed)."""
        if any(source.has(blob) for source in self.sources):
            return True
        for source in self.sources:
            held = getattr(source, "held", None)
            if held is not None and await held(blob, size, sample):
                return True
        return False

    async def fetch_all(
        self,
        entry: Entry,
        progress: Progress | None = None,
        area: str = "",
        pin: str | None = None,
    ) -> None:
        """Bring every chunk of the entry's blob into the cache (for `keep`, pinning it with
        `pin` first, so no chunk is evicted once here), reporting bytes."""
        blob = entry.blob
        await self.describe(entry, wait=_LONG_WAIT, area=area)
        if pin is not None and self.blobs.manifest(blob) is not None:
            self.blobs.pin(blob, pin)
        manifest = self.blobs.manifest(blob)
        if manifest is None:
            raise FsError(nfsstat3.NFS3ERR_IO, "content unknown here")
        for start in range(0, manifest.nchunks, _FETCH_BATCH):
            batch = range(start, min(start + _FETCH_BATCH, manifest.nchunks))
            missing = set(
                self.blobs.missing(
                    blob, batch.start * manifest.chunk_size, len(batch) * manifest.chunk_size
                )
            )
            if missing:
                await self._ensure(blob, sorted(missing), wait=_LONG_WAIT)
                if self.blobs.missing(
                    blob, batch.start * manifest.chunk_size, len(batch) * manifest.chunk_size
                ):
                    raise self._unavailable(blob)
            if progress is not None:
                progress(sum(manifest.chunk_length(i) for i in batch))

    def _read_ahead(self, blob: bytes, offset: int, count: int) -> None:
        if not self.sources or self.nursery is None:
            return  # nowhere to fetch from: spare every READ the look at what is missing
        manifest = self.blobs.manifest(blob)
        if manifest is None:
            return
        first = (offset + count) // manifest.chunk_size
        ahead = first * manifest.chunk_size
        span = READ_AHEAD_CHUNKS * manifest.chunk_size
        for index in self.blobs.missing(blob, ahead, min(span, max(manifest.size - ahead, 0))):
            self._start_fetch(blob, index)

    # ---- reading ----

    async def read(
        self, entry: Entry, offset: int, count: int, area: str = ""
    ) -> tuple[bytes | memoryview | Gather, bool]:
        if entry.kind != Kind.FILE:
            raise FsError(nfsstat3.NFS3ERR_INVAL, "not a regular file")
        if offset >= entry.size:
            return b"", True
        count = min(count, entry.size - offset)
        for _ in range(4):  # a manifest learnt, chunks fetched, evicted meanwhile once
            try:
                # On the event loop: on a worker thread (tried) the full benchmark's memory
                # pass peaked at 336 MB of RSS, against 140 here, and the ratios were no better.
                pieces = self.blobs.read_pieces(entry.blob, offset, count)
            except MissingChunks as e:
                await self._ensure(entry.blob, e.indexes)
                if set(e.indexes) & set(self.blobs.missing(entry.blob, offset, count)):
                    raise FsError(nfsstat3.NFS3ERR_IO, "content not available") from None
                continue  # chunks that were here may have been evicted meanwhile: again
            except UnknownBlob:
                if not await self.describe(entry, area=area):  # from a peer: no manifest yet
                    raise FsError(nfsstat3.NFS3ERR_IO, "content unknown here") from None
                continue
            except BlobError as e:
                log.warning("cannot read %s: %s", entry.blob.hex()[:16], e)
                raise FsError(nfsstat3.NFS3ERR_IO, str(e)) from None
            self._read_ahead(entry.blob, offset, count)
            data = pieces[0] if len(pieces) == 1 else Gather(pieces)
            return data, offset + len(data) >= entry.size
        raise FsError(nfsstat3.NFS3ERR_IO, "content keeps failing verification")

    # ---- realizing ----

    async def realize(
        self,
        entry: Entry,
        dir_fd: int,
        name: bytes,
        area_owner: tuple[int, int],
        progress: Progress | None = None,
        area: str = "",
        still_wanted: Callable[[], bool] = lambda: True,
    ) -> bool:
        """Write the entry's whole content as the Real file `name` of the directory `dir_fd`
        (atomically: a temporary file beside it, synced, then renamed), with the owner and
        mode `ownership` gives it (`area_owner`: the area root's uid and gid). Streams chunk
        by chunk, fetching what is missing as it goes, so a file larger than the cache
        realizes too. `dir_fd` stays the caller's and open throughout.

        `still_wanted` is asked last, with nothing awaited between it and the rename: when
        the entry moved or changed while its content was written, the temporary file goes
        and the answer is False."""
        await self.describe(entry, wait=_LONG_WAIT, area=area)
        manifest = self.blobs.manifest(entry.blob)
        if manifest is None:
            raise FsError(nfsstat3.NFS3ERR_IO, "content unknown here")
        temp = TEMP_PREFIX + os.urandom(6).hex().encode() + b"-" + name[:180]
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(temp, flags, 0o600, dir_fd=dir_fd)
        try:
            for index in range(manifest.nchunks):
                data = await self._chunk(entry.blob, index, manifest.nchunks)
                await trio.to_thread.run_sync(_write_all, fd, data)
                if progress is not None:
                    progress(len(data))
            give_ownership(fd, *ownership(entry, *area_owner))
            await trio.to_thread.run_sync(os.fsync, fd)
            os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
            os.close(fd)
            fd = -1
            if not still_wanted():
                os.unlink(temp, dir_fd=dir_fd)
                return False
            os.rename(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            return True
        except BaseException:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=dir_fd)
            raise

    async def _chunk(self, blob: bytes, index: int, nchunks: int) -> bytes:
        """One verified chunk, fetched (with the next few) when the cache lacks it."""
        for _ in range(3):
            try:
                return self.blobs.read_chunk(blob, index)
            except MissingChunks:
                ahead = range(index, min(index + READ_AHEAD_CHUNKS, nchunks))
                manifest = self.blobs.manifest(blob)
                size = manifest.chunk_size if manifest else 0
                wanted = self.blobs.missing(blob, index * size, len(ahead) * size)
                await self._ensure(blob, wanted or [index], wait=_LONG_WAIT)
            except BlobError as e:
                raise FsError(nfsstat3.NFS3ERR_IO, str(e)) from None
        raise self._unavailable(blob)

    def _unavailable(self, blob: bytes) -> FsError:
        refused = self._refused.pop(blob, None)
        if refused is not None:
            return FsError(nfsstat3.NFS3ERR_NOSPC, refused)
        return FsError(nfsstat3.NFS3ERR_IO, "content not available from any source")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _might_have(source: BlobSource, blob: bytes) -> bool:
    """A source's cheap answer, on the loop, before it is asked in a worker thread (one
    without `might_have` is always asked)."""
    might_have = getattr(source, "might_have", None)
    return might_have is None or bool(might_have(blob))
