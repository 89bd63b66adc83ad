"""Serving content by blob id to the peers (FETCH and CHUNKS, xdr/peer.py): one whole chunk
of a blob at a time, from this peer's blob cache or from a Real file whose content has that
id, a blob's chunk list and its content-defined cuts (CUTS, nfsd/store/cuts.py); and
HOLDS, which of some blobs this peer keeps whole. The same reads serve this peer's own
Unreal entries whose content a Real file here holds under another name (`OwnFiles`, a blob
source of the Unreal layer).

Only areas shared with the calling peer are looked in (the roster's `areas` for that peer,
or every area here): a blob is served from the cache when its manifest is charged to such an
area, and from a Real file of such an area whose index entry names the blob.

A Real file is read only if it is the file that was hashed: its size and mtime before and
after the read must be the index entry's, and when the cache knows the blob's chunk hashes
the chunk read must have its hash. Otherwise the answer is CHANGED, so a reader never gets a
mix of two versions, and the journal is told to hash the file again once it has rested (a
change that kept size and mtime, or one made while the server was down, shows nowhere else).

A blob's chunk list comes from its manifest in the cache, or is computed by reading the Real
file once: its chunks hashed and its whole content checked against the blob id in the same
pass, the file unchanged from before to after. Computed lists are remembered (bounded by the
hashes they hold) with the size and mtime they were computed at, and every chunk served from
that file afterwards is checked against its listed hash.

Finding the Real file of a blob scans the shared areas' index once; where it was found is
remembered (and checked again on every use), so the chunks after the first cost a lookup.

A FETCH is answered on the event loop when that costs no wait: the Real file's place is
remembered and the page cache holds the whole chunk (RWF_NOWAIT, nfsd/vfs/osapi.py). Any
other FETCH (a cached chunk, a scan of the index, a read from the disk, or any FETCH where
RWF_NOWAIT does not exist) runs in a worker thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import blake3
import trio

from nfsd.peer.roster import Peer
from nfsd.rpc.dispatch import CallContext, Handler
from nfsd.store import cuts
from nfsd.store.blobs import BlobStore, MissingChunks
from nfsd.store.index import AreaIndex, Kind, Layer
from nfsd.store.manifest import chunk_count
from nfsd.store.source import file_chunks, open_below
from nfsd.vfs.merged import Area, MergedTree
from nfsd.vfs.osapi import read_cached, read_into
from xdr.peer import (
    BLOB_ID_SIZE,
    CHUNKS_PAGE,
    CUT_SIZE,
    CUTS_PAGE,
    FETCH_CHUNK_SIZE,
    chunks_args,
    chunks_res,
    cuts_args,
    cuts_res,
    fetch_args,
    fetch_res,
    fetch_status,
)

log = logging.getLogger("realize.peer")

_REMEMBERED = 1024  # blobs whose Real file location is remembered
_LISTED_HASHES = 256 * 1024  # chunk hashes of Real files remembered (8 MiB: 64 GiB of files)
_CUT_BYTES = 8 << 20  # packed cuts remembered (some 20 GiB of content)
_WALK_AGAIN = 10.0  # seconds before the index is scanned again for a blob it did not hold


@dataclass(frozen=True)
class _Listed:
    """A Real file's chunk hashes, as computed when it had this size and mtime."""

    size: int
    mtime_ns: int
    hashes: list[bytes]


class ChunkServer:
    def __init__(self, tree: MergedTree, blobs: BlobStore) -> None:
        self.tree = tree
        self.blobs = blobs
        self.index = AreaIndex(tree.store)
        self._where: OrderedDict[tuple[bytes, str], tuple[int, bytes]] = OrderedDict()
        self._where_lock = threading.Lock()  # fetches run in worker threads
        self._listed: OrderedDict[bytes, _Listed] = OrderedDict()  # by blob id
        self._listed_hashes = 0
        self._listing_lock = threading.Lock()  # one Real file hashed at a time
        # (blob id, size, mtime or -1 for the cache) -> its packed cuts (nfsd/store/cuts.py)
        self._cut_lists: OrderedDict[tuple[bytes, int, int], bytes] = OrderedDict()
        self._cut_bytes = 0
        self.chunks_served = 0

    def shared(self, peer: Peer | None) -> list[Area]:
        """The areas here that `peer` may read (None: this peer itself, every area)."""
        areas = self.tree.areas.values()
        if peer is None or peer.areas is None:
            return list(areas)
        return [a for a in areas if a.name in peer.areas]

    def fetch(
        self,
        peer: Peer | None,
        blob_id: bytes,
        index: int,
        *,
        at_once: bool = False,
        walk: bool = True,
    ) -> fetch_res | None:
        """Chunk `index` of `blob_id` for `peer` (None: this peer's own Unreal layer;
        blocking: run it in a thread). `at_once` (on the event loop): None instead of waiting
        for the disk, when the chunk is in the cache (RocksDB reads it) or not all of it is in
        the page cache; then ask again in a thread. Not `walk`: a Real file is looked for only
        where the blob was found before (no scan of the index)."""
        areas = self.shared(peer)
        manifest = self.blobs.manifest(blob_id)
        if manifest is not None and (manifest.bad or manifest.chunk_size != FETCH_CHUNK_SIZE):
            manifest = None  # its chunks are not the ones a FETCH names
        names = {a.name for a in areas}
        if manifest is not None and manifest.area in names:
            if not 0 <= index < manifest.nchunks:
                return fetch_res(fetch_status.NO_CHUNK, manifest.size, b"")
            if at_once:
                return None
            try:
                data = self.blobs.read_chunk(blob_id, index)
            except MissingChunks:
                pass  # not cached: perhaps a Real file has it
            else:
                self.chunks_served += 1
                return fetch_res(fetch_status.OK, manifest.size, data)
        found = self._real(peer, areas, blob_id, walk=walk and not at_once)
        if found is None:
            return None if at_once else fetch_res(fetch_status.NO_BLOB, 0, b"")
        area, path, size, mtime_ns = found
        if not 0 <= index < chunk_count(size, FETCH_CHUNK_SIZE):
            return fetch_res(fetch_status.NO_CHUNK, size, b"")
        try:
            fd = open_below(area.path, path)
        except OSError:
            return fetch_res(fetch_status.CHANGED, size, b"")
        try:
            before = os.fstat(fd)
            data = _read_chunk(fd, index, at_once)
            if data is None:
                return None
            after = os.fstat(fd)
        except OSError as e:
            log.warning("cannot read %s/%s for a peer: %s", area.name, path, e)
            return fetch_res(fetch_status.UNAVAILABLE, size, b"")
        finally:
            os.close(fd)
        unchanged = all(st.st_size == size and st.st_mtime_ns == mtime_ns for st in (before, after))
        listed = self._remembered_list(blob_id, size, mtime_ns)
        if unchanged and (manifest is not None or listed is not None):
            expected_hash = (
                listed[index] if listed is not None else self.blobs.chunk_hash(blob_id, index)
            )
            unchanged = blake3.blake3(data).digest() == expected_hash
        expected = min(FETCH_CHUNK_SIZE, size - index * FETCH_CHUNK_SIZE)
        if not unchanged or len(data) != expected:
            self._changed(peer, blob_id, area, path, "not served")
            return fetch_res(fetch_status.CHANGED, size, b"")
        self.chunks_served += 1
        return fetch_res(fetch_status.OK, size, data)

    def chunk_list(self, peer: Peer | None, blob_id: bytes, first: int, count: int) -> chunks_res:
        """Up to `count` chunk hashes of `blob_id` from chunk `first`, for `peer` (blocking:
        run it in a thread; computing a Real file's list reads all of it)."""
        status, size, hashes = self.hashes_of(peer, blob_id)
        if hashes is None:
            return chunks_res(status, size, b"")
        if first > len(hashes):
            return chunks_res(fetch_status.NO_CHUNK, size, b"")
        page = hashes[first : first + min(count, CHUNKS_PAGE)]
        return chunks_res(fetch_status.OK, size, b"".join(page))

    def hashes_of(
        self, peer: Peer | None, blob_id: bytes, *, walk: bool = True
    ) -> tuple[fetch_status, int, list | None]:
        """(status, size, the chunk hashes or None) of `blob_id` for `peer` (None: this peer
        itself), from the cache's manifest or a Real file's content (not `walk`: `fetch`)."""
        areas = self.shared(peer)
        manifest = self.blobs.manifest(blob_id)
        if (
            manifest is not None
            and not manifest.bad
            and manifest.chunk_size == FETCH_CHUNK_SIZE
            and manifest.area in {a.name for a in areas}
        ):
            return fetch_status.OK, manifest.size, list(self.blobs.chunk_hashes(blob_id))
        found = self._real(peer, areas, blob_id, walk=walk)
        if found is None:
            return fetch_status.NO_BLOB, 0, None
        _, _, size, mtime_ns = found
        with self._listing_lock:
            listed = self._remembered_list(blob_id, size, mtime_ns)
            if listed is not None:
                return fetch_status.OK, size, listed
            status, hashes = self._read_whole(
                peer, blob_id, found, lambda fd: file_chunks(fd, FETCH_CHUNK_SIZE), "no chunk list"
            )
            if hashes is None:
                return status, size, None
            self._remember_list(blob_id, _Listed(size, mtime_ns, hashes))
            return fetch_status.OK, size, hashes

    def cut_list(self, peer: Peer, blob_id: bytes, first: int, count: int) -> cuts_res:
        """Up to `count` content-defined cuts of `blob_id` from cut `first`, for `peer`
        (blocking: run it in a thread; computing them reads all of the content once)."""
        if not cuts.available():
            return cuts_res(fetch_status.UNAVAILABLE, 0, 0, b"")
        status, size, packed = self._cuts(peer, blob_id)
        if packed is None:
            return cuts_res(status, size, 0, b"")
        total = len(packed) // CUT_SIZE
        if first > total:
            return cuts_res(fetch_status.NO_CHUNK, size, total, b"")
        page = packed[first * CUT_SIZE : (first + min(count, CUTS_PAGE)) * CUT_SIZE]
        return cuts_res(fetch_status.OK, size, total, page)

    def _cuts(self, peer: Peer | None, blob_id: bytes) -> tuple[fetch_status, int, bytes | None]:
        areas = self.shared(peer)
        manifest = self.blobs.manifest(blob_id)
        cached = (
            manifest is not None
            and not manifest.bad
            and manifest.area in {a.name for a in areas}
            and not self.blobs.missing(blob_id)
        )
        if cached:
            assert manifest is not None
            key = (blob_id, manifest.size, -1)
            with self._listing_lock:
                packed = self._cut_lists.get(key)
                if packed is None:
                    found, whole, size = cuts.cuts(partial(self.blobs.read, blob_id))
                    if whole != blob_id or size != manifest.size:
                        return fetch_status.UNAVAILABLE, manifest.size, None
                    packed = self._remember_cuts(key, cuts.pack(found))
            return fetch_status.OK, manifest.size, packed
        found_real = self._real(peer, areas, blob_id)
        if found_real is None:
            return fetch_status.NO_BLOB, 0, None
        _, _, size, mtime_ns = found_real
        key = (blob_id, size, mtime_ns)
        with self._listing_lock:
            packed = self._cut_lists.get(key)
            if packed is not None:
                return fetch_status.OK, size, packed

            def cut(fd: int) -> tuple[bytes, int, list[cuts.Cut]]:
                found, whole, read = cuts.cuts(fd=fd)
                return whole, read, found  # in the order `_read_whole` takes

            status, found = self._read_whole(peer, blob_id, found_real, cut, "no cuts")
            if found is None:
                return status, size, None
            return fetch_status.OK, size, self._remember_cuts(key, cuts.pack(found))

    def _read_whole(
        self,
        peer: Peer | None,
        blob_id: bytes,
        found: tuple[Area, bytes, int, int],
        compute: Callable[[int], tuple[bytes, int, Any]],
        what: str,
    ) -> tuple[fetch_status, Any]:
        """`compute(fd)` -> (BLAKE3 of the whole, bytes read, result) over the Real file
        `found` (area, path, size, mtime): its result when the file was the indexed content
        throughout (size and mtime before and after, the whole hashing to `blob_id`), else
        (CHANGED or UNAVAILABLE, None)."""
        area, path, size, mtime_ns = found
        try:
            fd = open_below(area.path, path)
        except OSError:
            return fetch_status.CHANGED, None
        try:
            before = os.fstat(fd)
            whole, read, result = compute(fd)
            after = os.fstat(fd)
        except OSError as e:
            log.warning("cannot read %s/%s for a peer: %s", area.name, path, e)
            return fetch_status.UNAVAILABLE, None
        finally:
            os.close(fd)
        unchanged = all(st.st_size == size and st.st_mtime_ns == mtime_ns for st in (before, after))
        if not unchanged or read != size or whole != blob_id:
            self._changed(peer, blob_id, area, path, what)
            return fetch_status.CHANGED, None
        return fetch_status.OK, result

    def _remember_cuts(self, key: tuple[bytes, int, int], packed: bytes) -> bytes:
        """Keep the packed cuts of a content (bounded: `_CUT_BYTES` in all)."""
        if len(packed) <= _CUT_BYTES:
            self._cut_lists[key] = packed
            self._cut_bytes += len(packed)
            while self._cut_bytes > _CUT_BYTES:
                _, dropped = self._cut_lists.popitem(last=False)
                self._cut_bytes -= len(dropped)
        return packed

    def holds(self, peer: Peer | None, blob_ids: list[bytes]) -> bytes:
        """HOLDS for `peer` (blocking: run it in a thread; it may scan the index once): a
        byte per id, 1 where this peer keeps the content whole in a shared area, as a Real
        file indexed with it or complete and pinned in the cache."""
        areas = self.shared(peer)
        names = {a.name for a in areas}
        held: set[bytes] = set()
        unknown: set[bytes] = set()
        for blob_id in blob_ids:
            manifest = self.blobs.manifest(blob_id)
            kept = (
                manifest is not None
                and not manifest.bad
                and manifest.pinned
                and manifest.area in names
                and not self.blobs.missing(blob_id)
            )
            if kept or self._real(peer, areas, blob_id, walk=False) is not None:
                held.add(blob_id)
            else:
                unknown.add(blob_id)
        if unknown:  # one look over the index for all of them
            for area in areas:
                for _path, entry in self.index.walk(area.id):
                    real = entry.kind == Kind.FILE and entry.layer == Layer.REAL
                    if real and entry.blob in unknown:
                        held.add(entry.blob)
                        unknown.discard(entry.blob)
        return bytes(1 if blob_id in held else 0 for blob_id in blob_ids)

    def _changed(
        self, peer: Peer | None, blob_id: bytes, area: Area, path: bytes, what: str
    ) -> None:
        """A Real file is not the content it was indexed with: forget where the blob was, and
        have the journal hash the file again (its size and mtime may not have shown it)."""
        log.info("%s/%s changed since it was hashed: %s", area.name, path, what)
        with self._where_lock:
            self._where.pop((blob_id, _name(peer)), None)
        try:
            trio.from_thread.run_sync(self.tree.journal.written, area.id, path)
        except RuntimeError:  # not called from a trio worker thread (a test's direct call)
            self.tree.journal.written(area.id, path)

    def _remembered_list(self, blob_id: bytes, size: int, mtime_ns: int) -> list[bytes] | None:
        with self._where_lock:
            listed = self._listed.get(blob_id)
            if listed is None:
                return None
            if listed.size != size or listed.mtime_ns != mtime_ns:
                del self._listed[blob_id]
                self._listed_hashes -= len(listed.hashes)
                return None
            self._listed.move_to_end(blob_id)
            return listed.hashes

    def _remember_list(self, blob_id: bytes, listed: _Listed) -> None:
        if len(listed.hashes) > _LISTED_HASHES:
            return  # a file this large is hashed again when asked again
        with self._where_lock:
            old = self._listed.pop(blob_id, None)
            if old is not None:
                self._listed_hashes -= len(old.hashes)
            self._listed[blob_id] = listed
            self._listed_hashes += len(listed.hashes)
            while self._listed_hashes > _LISTED_HASHES:
                _, dropped = self._listed.popitem(last=False)
                self._listed_hashes -= len(dropped.hashes)

    def real_file(
        self, peer: Peer | None, blob_id: bytes, *, walk: bool = True
    ) -> tuple[Area, bytes, int, int] | None:
        """(area, path, size, mtime_ns) of a Real file `peer` may read indexed with
        `blob_id`, or None (`_real`)."""
        return self._real(peer, self.shared(peer), blob_id, walk=walk)

    def _real(
        self, peer: Peer | None, areas: list[Area], blob_id: bytes, *, walk: bool = True
    ) -> tuple[Area, bytes, int, int] | None:
        """(area, path, size, mtime_ns) of a Real file of a shared area indexed with
        `blob_id`, or None; not `walk`: only where it was found before (no scan of the
        index). The lock is held only to look up and to remember, never across the scan, so
        the event loop may take it."""
        by_id = {a.id: a for a in areas}
        key = (blob_id, _name(peer))
        with self._where_lock:
            remembered = self._where.get(key)
            if remembered is not None:
                self._where.move_to_end(key)
        if remembered is not None:
            area_id, path = remembered
            entry = self.index.get(area_id, path) if area_id in by_id else None
            if entry is not None and entry.layer == Layer.REAL and entry.blob == blob_id:
                return by_id[area_id], path, entry.size, entry.mtime_ns
            with self._where_lock:
                self._where.pop(key, None)
        if not walk:
            return None
        for area in areas:
            for path, entry in self.index.walk(area.id):
                if entry.kind == Kind.FILE and entry.layer == Layer.REAL and entry.blob == blob_id:
                    with self._where_lock:
                        self._where[key] = (area.id, path)
                        if len(self._where) > _REMEMBERED:
                            self._where.popitem(last=False)
                    return area, path, entry.size, entry.mtime_ns
        return None


def _name(peer: Peer | None) -> str:
    return "" if peer is None else peer.name  # no peer's name is empty (nfsd/peer/roster.py)


class OwnFiles:
    """This peer's own Real files as a source (nfsd/store/source.py `BlobSource`) for its
    Unreal entries of the same content: a conflict copy whose version a Real file here
    holds under another name, a file a peer copied to another path. Its chunks are read as
    a peer's FETCH reads them, so the same checks hold (the file unchanged since it was
    indexed, each chunk its listed hash).

    Not `walk`: only where a blob was found before, at the cost of a lookup, so it can come
    before the peers. `walk`: a scan of every area's index, for after the peers had none; a
    scan that found nothing is not made again for that blob for `_WALK_AGAIN` seconds (the
    readers of a blob nobody has would scan once per chunk). `only_while` gives the same
    scan, asked only while a condition holds (no peer connected: then it comes before the
    peers' source, which would make the reader wait for a link first)."""

    def __init__(self, chunks: ChunkServer, *, walk: bool) -> None:
        self.chunks = chunks
        self.walk = walk
        self.name = "this peer's Real files" + ("" if walk else " (found before)")
        self._not_found: dict[bytes, float] = {}  # blob id -> when (worker threads share it)
        self._asked_while: Callable[[], bool] | None = None

    def only_while(self, condition: Callable[[], bool]) -> OwnFiles:
        """This source, asked only while `condition()` holds; the scans' memory shared."""
        twin = OwnFiles(self.chunks, walk=self.walk)
        twin._not_found = self._not_found
        twin._asked_while = condition
        twin.name = f"{self.name} (first while no peer is connected)"
        return twin

    def read_chunk(self, blob_id: bytes, offset: int, length: int) -> bytes | None:
        index, within = divmod(offset, FETCH_CHUNK_SIZE)
        if within or length > FETCH_CHUNK_SIZE or not self.might_have(blob_id):
            return None  # not a chunk as FETCH cuts them, or surely not here
        walks = self._walks(blob_id)
        res = self.chunks.fetch(None, blob_id, index, walk=walks)
        if walks and res is not None and res.status == fetch_status.NO_BLOB:
            self._found_nothing(blob_id)
        if res is None or res.status != fetch_status.OK or len(res.data) != length:
            return None
        return bytes(res.data)

    def chunk_hashes(self, blob_id: bytes, size: int) -> list[bytes] | None:
        if not self.might_have(blob_id):
            return None
        walks = self._walks(blob_id)
        status, found_size, hashes = self.chunks.hashes_of(None, blob_id, walk=walks)
        if walks and status == fetch_status.NO_BLOB:
            self._found_nothing(blob_id)
        if status != fetch_status.OK or found_size != size:
            return None
        return hashes

    def might_have(self, blob_id: bytes) -> bool:
        """Cheap enough for the event loop: False where `read_chunk` or `chunk_hashes`, in a
        worker thread, would surely find nothing (not asked now, or neither a scan due nor a
        Real file found with the blob before): every cold read asks, the peers' included."""
        if self._asked_while is not None and not self._asked_while():
            return False
        return self._walks(blob_id) or self.chunks.real_file(None, blob_id, walk=False) is not None

    def _walks(self, blob_id: bytes) -> bool:
        if not self.walk:
            return False
        when = self._not_found.get(blob_id)
        return when is None or time.monotonic() - when > _WALK_AGAIN

    def _found_nothing(self, blob_id: bytes) -> None:
        if len(self._not_found) >= _REMEMBERED:
            self._not_found = {}  # bounded; forgetting costs one more scan at most
        self._not_found[blob_id] = time.monotonic()

    def has(self, blob_id: bytes) -> bool:
        """Never: what asks (eviction, a release, nfsd/vfs/unreal.py `held_elsewhere`) asks
        whether another peer keeps the content, and the Real file found here may be the very
        one it weighs."""
        return False


def _read_chunk(fd: int, index: int, at_once: bool) -> bytearray | None:
    """Chunk `index` of the open file (shorter at its end); `at_once`: None unless the page
    cache holds all of it (Linux's RWF_NOWAIT; elsewhere always None)."""
    buf = bytearray(FETCH_CHUNK_SIZE)
    offset = index * FETCH_CHUNK_SIZE
    if at_once:
        done, ended = read_cached(fd, buf, offset)
        if done < len(buf) and not ended:
            return None
    else:
        done = read_into(fd, buf, 0, offset)
    if done < len(buf):
        del buf[done:]
    return buf


def fetch_handler(chunks: ChunkServer | None) -> Handler:
    """The FETCH handler: the calling peer is the link's (CallContext.caller), never what
    the call says."""

    async def fetch(ctx: CallContext, args: fetch_args) -> Any:
        peer = ctx.caller
        if chunks is None or not isinstance(peer, Peer):
            return fetch_res(fetch_status.UNAVAILABLE, 0, b"")
        # A chunk of a Real file the page cache holds costs less than a thread hand-off,
        # which took a third of the serving loop's time (measured): read it here.
        res = chunks.fetch(peer, args.blob_id, args.chunk, at_once=True)
        if res is None:
            res = await trio.to_thread.run_sync(chunks.fetch, peer, args.blob_id, args.chunk)
        return res

    return fetch


def chunks_handler(chunks: ChunkServer | None) -> Handler:
    """The CHUNKS handler, for the link's peer like FETCH."""

    async def chunk_list(ctx: CallContext, args: chunks_args) -> Any:
        peer = ctx.caller
        if chunks is None or not isinstance(peer, Peer) or len(args.blob_id) != BLOB_ID_SIZE:
            return chunks_res(fetch_status.UNAVAILABLE, 0, b"")
        return await trio.to_thread.run_sync(
            chunks.chunk_list, peer, args.blob_id, args.first, args.count
        )

    return chunk_list


def holds_handler(chunks: ChunkServer | None) -> Handler:
    """The HOLDS handler, for the link's peer like FETCH."""

    async def holds(ctx: CallContext, blob_ids: list[bytes]) -> Any:
        peer = ctx.caller
        if chunks is None or not isinstance(peer, Peer):
            return bytes(len(blob_ids))  # holds nothing it could say
        return await trio.to_thread.run_sync(chunks.holds, peer, [bytes(b) for b in blob_ids])

    return holds


def cuts_handler(chunks: ChunkServer | None) -> Handler:
    """The CUTS handler, for the link's peer like FETCH."""

    async def cut_list(ctx: CallContext, args: cuts_args) -> Any:
        peer = ctx.caller
        if chunks is None or not isinstance(peer, Peer):
            return cuts_res(fetch_status.UNAVAILABLE, 0, 0, b"")
        return await trio.to_thread.run_sync(
            chunks.cut_list, peer, args.blob_id, args.first, args.count
        )

    return cut_list
