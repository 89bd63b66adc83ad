"""The Unreal layer: files known from the index whose content lives in the blob cache and is
fetched on demand from blob sources.

Owns what the tree does with an Unreal entry: its attributes (from the index, so they are the
same before and after the content arrives), reads (served from verified cached chunks; missing
chunks fetched from the sources, with read-ahead for sequential readers; a read that waits
longer than `wait` seconds is answered NFS3ERR_JUKEBOX while the fetch goes on), and
realizing (the whole content written to a temporary file beside the target, synced, then
renamed into place) before anything changes it.
"""

from __future__ import annotations

import logging
import os

import trio

from nfsd.store.blobs import BlobError, BlobStore, CacheFull, ChunkHashMismatch, MissingChunks
from nfsd.store.index import Entry, Kind
from nfsd.store.source import BlobSource
from nfsd.vfs.errors import FsError
from nfsd.vfs.tree import Attr
from xdr.nfs3 import ftype3, nfsstat3

log = logging.getLogger("realize.unreal")

READ_AHEAD_CHUNKS = 4
DEFAULT_WAIT = 3.0

_KINDS = {Kind.FILE: ftype3.NF3REG, Kind.DIR: ftype3.NF3DIR, Kind.SYMLINK: ftype3.NF3LNK}


def unreal_attr(entry: Entry, fid: int, uid: int, gid: int) -> Attr:
    """Attributes of an Unreal entry: what the index says, whatever is cached."""
    kind = _KINDS.get(entry.kind, ftype3.NF3REG)
    size = entry.size if entry.kind == Kind.FILE else len(entry.target)
    if entry.kind == Kind.DIR:
        size = 4096
    t = entry.mtime_ns
    return Attr(
        kind,
        entry.mode,
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
        self.nursery: trio.Nursery | None = None  # set by the server: fetches outlive reads
        self._fetching: dict[tuple[bytes, int], trio.Event] = {}

    # ---- fetching ----

    async def _fetch_chunk(self, blob: bytes, index: int) -> None:
        key = (blob, index)
        done = self._fetching[key]
        try:
            manifest = self.blobs.manifest(blob)
            if manifest is None:
                return
            offset = index * manifest.chunk_size
            length = min(manifest.chunk_size, manifest.size - offset)
            for source in self.sources:
                data = await trio.to_thread.run_sync(source.read_chunk, blob, offset, length)
                if data is None:
                    continue
                try:
                    # In a thread: completing a blob re-hashes all of it against its id.
                    await trio.to_thread.run_sync(self.blobs.put_chunk, blob, index, data)
                    return
                except ChunkHashMismatch:
                    log.warning(
                        "source %s gave a wrong chunk %d of %s", source.name, index, blob.hex()[:16]
                    )
            log.warning("no source has chunk %d of %s", index, blob.hex()[:16])
        except CacheFull as e:
            log.warning("cannot cache chunk %d of %s: %s", index, blob.hex()[:16], e)
        finally:
            del self._fetching[key]
            done.set()

    def _start_fetch(self, blob: bytes, index: int) -> trio.Event:
        key = (blob, index)
        event = self._fetching.get(key)
        if event is None:
            event = self._fetching[key] = trio.Event()
            if self.nursery is not None:
                self.nursery.start_soon(self._fetch_chunk, blob, index)
        return event

    async def _ensure(self, blob: bytes, indexes: list[int]) -> None:
        """Fetch `indexes` (waiting at most `wait` seconds: then NFS3ERR_JUKEBOX)."""
        events = [(i, self._start_fetch(blob, i)) for i in indexes]
        if self.nursery is None:  # no server around: fetch here and now
            for index, _ in events:
                if (blob, index) in self._fetching:
                    await self._fetch_chunk(blob, index)
            return
        with trio.move_on_after(self.wait) as waited:
            for _, event in events:
                await event.wait()
        if waited.cancelled_caught:
            raise FsError(nfsstat3.NFS3ERR_JUKEBOX, "content still arriving")

    def _read_ahead(self, blob: bytes, offset: int, count: int) -> None:
        manifest = self.blobs.manifest(blob)
        if manifest is None or self.nursery is None:
            return
        first = (offset + count) // manifest.chunk_size
        ahead = first * manifest.chunk_size
        span = READ_AHEAD_CHUNKS * manifest.chunk_size
        for index in self.blobs.missing(blob, ahead, min(span, max(manifest.size - ahead, 0))):
            self._start_fetch(blob, index)

    # ---- reading ----

    async def read(self, entry: Entry, offset: int, count: int) -> tuple[bytes, bool]:
        if entry.kind != Kind.FILE:
            raise FsError(nfsstat3.NFS3ERR_INVAL, "not a regular file")
        if offset >= entry.size:
            return b"", True
        count = min(count, entry.size - offset)
        for _ in range(3):
            try:
                data = self.blobs.read(entry.blob, offset, count)
            except MissingChunks as e:
                await self._ensure(entry.blob, e.indexes)
                if self.blobs.missing(entry.blob, offset, count):
                    raise FsError(nfsstat3.NFS3ERR_IO, "content not available") from None
                continue
            except BlobError as e:
                log.warning("cannot read %s: %s", entry.blob.hex()[:16], e)
                raise FsError(nfsstat3.NFS3ERR_IO, str(e)) from None
            self._read_ahead(entry.blob, offset, count)
            return data, offset + len(data) >= entry.size
        raise FsError(nfsstat3.NFS3ERR_IO, "content keeps failing verification")

    # ---- realizing ----

    async def realize(self, entry: Entry, path: bytes) -> None:
        """Write the entry's whole content as the Real file `path` (atomically)."""
        missing = self.blobs.missing(entry.blob)
        if missing:
            saved, self.wait = self.wait, 3600.0  # a writer waits for the whole content
            try:
                await self._ensure(entry.blob, missing)
            finally:
                self.wait = saved
            if self.blobs.missing(entry.blob):
                raise FsError(nfsstat3.NFS3ERR_IO, "content not available")
        directory, _, name = path.rpartition(b"/")
        temp = directory + b"/.realize-" + os.urandom(6).hex().encode() + b"-" + name[:180]
        await trio.to_thread.run_sync(self._write_file, entry, temp)
        try:
            os.rename(temp, path)
        except OSError:
            os.unlink(temp)
            raise

    def _write_file(self, entry: Entry, temp: bytes) -> None:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            for piece in self.blobs.iter_read(entry.blob):
                view = memoryview(piece)
                while view:
                    view = view[os.write(fd, view) :]
            os.fchmod(fd, entry.mode & 0o7777)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            os.unlink(temp)
            raise
        os.close(fd)
        os.utime(temp, ns=(entry.mtime_ns, entry.mtime_ns))
