"""Serving content by blob id to the peers (FETCH, xdr/peer.py): one whole chunk of a blob
at a time, from this peer's blob cache or from a Real file whose content has that id.

Only areas shared with the calling peer are looked in (the roster's `areas` for that peer,
or every area here): a blob is served from the cache when its manifest is charged to such an
area, and from a Real file of such an area whose index entry names the blob.

A Real file is read only if it is the file that was hashed: its size and mtime before and
after the read must be the index entry's, and when the cache knows the blob's chunk hashes
the chunk read must have its hash. Otherwise the answer is CHANGED (the journal re-indexes
the file once it has rested), so a reader never gets a mix of two versions.

Finding the Real file of a blob scans the shared areas' index once; where it was found is
remembered (and checked again on every use), so the chunks after the first cost a lookup.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from typing import Any

import blake3
import trio

from nfsd.peer.roster import Peer
from nfsd.rpc.dispatch import CallContext, Handler
from nfsd.store.blobs import BlobStore, MissingChunks
from nfsd.store.index import AreaIndex, Kind, Layer
from nfsd.store.manifest import chunk_count
from nfsd.store.source import open_below
from nfsd.vfs.merged import Area, MergedTree
from xdr.peer import FETCH_CHUNK_SIZE, fetch_args, fetch_res, fetch_status

log = logging.getLogger("realize.peer")

_REMEMBERED = 1024  # blobs whose Real file location is remembered


class ChunkServer:
    def __init__(self, tree: MergedTree, blobs: BlobStore) -> None:
        self.tree = tree
        self.blobs = blobs
        self.index = AreaIndex(tree.store)
        self._where: OrderedDict[tuple[bytes, str], tuple[int, bytes]] = OrderedDict()
        self._where_lock = threading.Lock()  # fetches run in worker threads
        self.chunks_served = 0

    def shared(self, peer: Peer) -> list[Area]:
        """The areas here that `peer` may read."""
        areas = self.tree.areas.values()
        if peer.areas is None:
            return list(areas)
        return [a for a in areas if a.name in peer.areas]

    def fetch(self, peer: Peer, blob_id: bytes, index: int) -> fetch_res:
        """Chunk `index` of `blob_id` for `peer` (blocking: run it in a thread)."""
        areas = self.shared(peer)
        manifest = self.blobs.manifest(blob_id)
        if manifest is not None and (manifest.bad or manifest.chunk_size != FETCH_CHUNK_SIZE):
            manifest = None  # its chunks are not the ones a FETCH names
        names = {a.name for a in areas}
        if manifest is not None and manifest.area in names:
            if not 0 <= index < manifest.nchunks:
                return fetch_res(fetch_status.NO_CHUNK, manifest.size, b"")
            try:
                data = self.blobs.read_chunk(blob_id, index)
            except MissingChunks:
                pass  # not cached: perhaps a Real file has it
            else:
                self.chunks_served += 1
                return fetch_res(fetch_status.OK, manifest.size, data)
        found = self._real(peer, areas, blob_id)
        if found is None:
            return fetch_res(fetch_status.NO_BLOB, 0, b"")
        area, path, size, mtime_ns = found
        if not 0 <= index < chunk_count(size, FETCH_CHUNK_SIZE):
            return fetch_res(fetch_status.NO_CHUNK, size, b"")
        try:
            fd = open_below(area.path, path)
        except OSError:
            return fetch_res(fetch_status.CHANGED, size, b"")
        try:
            before = os.fstat(fd)
            data = os.pread(fd, FETCH_CHUNK_SIZE, index * FETCH_CHUNK_SIZE)
            after = os.fstat(fd)
        except OSError as e:
            log.warning("cannot read %s/%s for a peer: %s", area.name, path, e)
            return fetch_res(fetch_status.UNAVAILABLE, size, b"")
        finally:
            os.close(fd)
        unchanged = all(st.st_size == size and st.st_mtime_ns == mtime_ns for st in (before, after))
        if unchanged and manifest is not None:
            unchanged = blake3.blake3(data).digest() == self.blobs.chunk_hash(blob_id, index)
        expected = min(FETCH_CHUNK_SIZE, size - index * FETCH_CHUNK_SIZE)
        if not unchanged or len(data) != expected:
            log.info("%s/%s changed since it was hashed: not served", area.name, path)
            with self._where_lock:
                self._where.pop((blob_id, peer.name), None)
            return fetch_res(fetch_status.CHANGED, size, b"")
        self.chunks_served += 1
        return fetch_res(fetch_status.OK, size, data)

    def _real(
        self, peer: Peer, areas: list[Area], blob_id: bytes
    ) -> tuple[Area, bytes, int, int] | None:
        """(area, path, size, mtime_ns) of a Real file of a shared area indexed with
        `blob_id`, or None."""
        with self._where_lock:
            return self._find(peer, areas, blob_id)

    def _find(
        self, peer: Peer, areas: list[Area], blob_id: bytes
    ) -> tuple[Area, bytes, int, int] | None:
        by_id = {a.id: a for a in areas}
        key = (blob_id, peer.name)
        remembered = self._where.get(key)
        if remembered is not None:
            area_id, path = remembered
            entry = self.index.get(area_id, path) if area_id in by_id else None
            if entry is not None and entry.layer == Layer.REAL and entry.blob == blob_id:
                self._where.move_to_end(key)
                return by_id[area_id], path, entry.size, entry.mtime_ns
            del self._where[key]
        for area in areas:
            for path, entry in self.index.walk(area.id):
                if entry.kind == Kind.FILE and entry.layer == Layer.REAL and entry.blob == blob_id:
                    self._where[key] = (area.id, path)
                    if len(self._where) > _REMEMBERED:
                        self._where.popitem(last=False)
                    return area, path, entry.size, entry.mtime_ns
        return None


def fetch_handler(chunks: ChunkServer | None) -> Handler:
    """The FETCH handler: the calling peer is the link's (CallContext.caller), never what
    the call says."""

    async def fetch(ctx: CallContext, args: fetch_args) -> Any:
        peer = ctx.caller
        if chunks is None or not isinstance(peer, Peer):
            return fetch_res(fetch_status.UNAVAILABLE, 0, b"")
        return await trio.to_thread.run_sync(chunks.fetch, peer, args.blob_id, args.chunk)

    return fetch
