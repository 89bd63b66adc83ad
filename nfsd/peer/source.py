"""The connected peers as a blob source (nfsd/store/source.py `BlobSource`): a chunk the cache
lacks is asked of the connected peers with FETCH (xdr/peer.py) by blob id and chunk index,
over the links of nfsd/peer/service.py, and a blob the cache has no manifest for is described
by its chunk list (CHUNKS).

Trust: every chunk is checked against its hash in the blob's chunk list before it is used:
`fetch_into` hands each answer to the cache's `put_chunk` (through the layer's `store`),
which checks it and refuses a wrong one, and then the next peer is asked (`read_chunk`, for
callers without a store, checks it here); the cache checks the whole blob against its id
once complete. A blob of one chunk needs no list (its chunk hash is its id); a longer one's
list is the one a connected peer of the household gives, which that peer computed from the
whole content (nfsd/peer/fetch.py).

Chunk `i` of a blob is asked first of the `i`-th connected peer in turn, so the chunks a
reader has in flight (nfsd/vfs/unreal.py reads ahead) come from several peers at once. When no
peer is connected a fetch waits for a link, until `NO_PEER_GRACE` seconds after one was
first missed (a reader is answered JUKEBOX meanwhile, nfsd/vfs/unreal.py); after that a
fetch gives up at once (an I/O error) until a peer is back.

The Unreal layer calls `fetch_into` on the event loop (where the links live), and
`chunk_hashes` from a worker thread, which waits for the calls it makes on the loop.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable

import blake3
import trio

from nfsd.peer.pace import Pace
from nfsd.peer.service import PeerService
from nfsd.rpc.client import RpcError
from nfsd.store.blobs import BlobError, BlobStore, ChunkHashMismatch
from nfsd.store.cuts import CUT_MIN, Cut
from nfsd.store.cuts import unpack as unpack_cuts
from nfsd.store.manifest import chunk_count
from xdr.peer import (
    BLOB_ID_SIZE,
    CHUNKS_PAGE,
    CUTS_PAGE,
    FETCH_CHUNK_SIZE,
    PEERPROC,
    chunks_args,
    chunks_res,
    cuts_args,
    cuts_res,
    fetch_args,
    fetch_res,
    fetch_status,
    holds_args,
    holds_res,
)

log = logging.getLogger("realize.peer")

FETCH_TIMEOUT = 30.0  # seconds one peer may take to answer one chunk before the next is asked
LIST_TIMEOUT = 120.0  # a chunk list may need the other side to hash a large file first
HOLDS_TIMEOUT = 30.0  # a peer may scan its index to answer
NO_PEER_GRACE = 10.0  # seconds a fetch waits for some peer to be connected

_Failures = (LookupError, ConnectionError, RpcError, trio.TooSlowError)
Sample = Callable[[int], Awaitable[bytes | None]]  # this side's bytes of chunk `index`


class PeerSource:
    name = "connected peers"

    def __init__(self, peers: PeerService, blobs: BlobStore, rate: int | None = None) -> None:
        """`rate`: bytes per second each peer sends for background transfers (None: no
        limit, nfsd/peer/pace.py)."""
        self.peers = peers
        self.blobs = blobs
        self.pace = Pace(rate, FETCH_CHUNK_SIZE)
        self.wrong_chunks = 0  # chunks a peer sent that did not match their hash
        self._alone_since: float | None = None  # when no peer was found connected

    def chunk_hashes(self, blob_id: bytes, size: int) -> list[bytes] | None:
        """From a worker thread: the blob's chunk hashes as FETCH cuts it, or None."""
        if size == 0:
            return []
        if size <= FETCH_CHUNK_SIZE:
            return [blob_id]  # one chunk: its hash is the blob's id
        return trio.from_thread.run(self.chunk_list, blob_id, size)

    def has(self, blob_id: bytes) -> bool:
        return False  # not known without asking: `held` asks

    async def held(self, blob_id: bytes, size: int, sample: Sample | None = None) -> bool:
        """Whether a connected peer says it keeps the whole blob (HOLDS): as a Real file or
        pinned in its cache, so this copy is not the last. `sample(index)`: this side's bytes
        of a chunk; a peer that says yes must then serve one chunk, picked at random, with
        those very bytes, or its word is not taken (a peer that lies to have the only copy
        dropped must at least hold the content now)."""
        for name in sorted(self.peers.links.live):
            try:
                with trio.fail_after(HOLDS_TIMEOUT):
                    answer = await self.peers.call(name, PEERPROC.HOLDS, holds_args, [blob_id],
                                                   holds_res)  # fmt: skip
            except _Failures as e:
                log.info("peer %s did not say whether it holds %s: %s", name, blob_id.hex()[:16], e)
                continue
            if bytes(answer)[:1] != b"\x01":
                continue
            if sample is None or size == 0:
                return True
            index = secrets.randbelow(chunk_count(size, FETCH_CHUNK_SIZE))
            mine = await sample(index)
            if mine is not None and await self._ask(name, blob_id, index, len(mine)) == mine:
                return True
            log.warning("peer %s says it holds %s but does not serve it", name, blob_id.hex()[:16])
        return False

    def read_chunk(self, blob_id: bytes, offset: int, length: int) -> bytes | None:
        """From a worker thread: the chunk at `offset` from the first connected peer that
        gives `length` bytes matching its hash, or None."""
        if offset % FETCH_CHUNK_SIZE or length > FETCH_CHUNK_SIZE:
            return None  # not a chunk as FETCH cuts a blob
        index = offset // FETCH_CHUNK_SIZE
        try:
            expected = self.blobs.chunk_hash(blob_id, index)
        except BlobError:
            return None
        return trio.from_thread.run(self.fetch, blob_id, index, length, expected)

    async def fetch_into(
        self,
        blob_id: bytes,
        index: int,
        length: int,
        store: Callable[[bytes], Awaitable[None]],
        paced: Callable[[], bool] | None = None,
    ) -> bool:
        """Chunk `index` of the blob, `length` bytes, handed to `store` (which raises
        ChunkHashMismatch for wrong bytes) from the first connected peer whose answer it
        takes; False when none gives one. `paced()`: whether the fetch is a background one,
        held to the peer's rate (`pace`) until a reader waits for it."""
        for name in await self._peers(index):
            if paced is not None:
                await self.pace.take(name, length, paced)
            data = await self._ask(name, blob_id, index, length)
            if data is None:
                continue
            try:
                await store(data)
            except ChunkHashMismatch:
                self._wrong(name, blob_id, index)
                continue
            return True
        return False

    def _wrong(self, name: str, blob_id: bytes, index: int) -> None:
        self.wrong_chunks += 1
        log.warning(
            "peer %s sent a wrong chunk %d of %s: asking another", name, index, blob_id.hex()[:16]
        )

    async def _ask(self, name: str, blob_id: bytes, index: int, length: int) -> bytes | None:
        """One FETCH of the peer `name`: the chunk's `length` bytes, or None."""
        try:
            with trio.fail_after(FETCH_TIMEOUT):
                res: fetch_res = await self.peers.call(
                    name, PEERPROC.FETCH, fetch_args, fetch_args(blob_id, index), fetch_res
                )
        except _Failures as e:
            log.info("peer %s gave no chunk %d of %s: %s", name, index, blob_id.hex()[:16], e)
            return None
        if res.status != fetch_status.OK or len(res.data) != length:
            return None
        return bytes(res.data)

    async def _peers(self, start: int) -> list[str]:
        """The connected peers, rotated to begin with the `start`-th. When none is, waits for
        one until `NO_PEER_GRACE` seconds after this source first found none; asks after
        that find none at once (readers get an I/O error) until a peer is back."""
        links = self.peers.links
        if not links.live:
            now = trio.current_time()
            if self._alone_since is None:
                self._alone_since = now
            with trio.move_on_at(self._alone_since + NO_PEER_GRACE):
                while not links.live:
                    await links.changed.wait()
        names = sorted(links.live)
        if not names:
            return []
        self._alone_since = None
        start %= len(names)
        return names[start:] + names[:start]

    async def chunk_list(self, blob_id: bytes, size: int) -> list[bytes] | None:
        """The chunk hashes of the blob from the first connected peer that knows all of them,
        or None."""
        total = chunk_count(size, FETCH_CHUNK_SIZE)
        for name in await self._peers(0):
            hashes: list[bytes] = []
            try:
                with trio.fail_after(LIST_TIMEOUT):
                    while len(hashes) < total:
                        want = min(CHUNKS_PAGE, total - len(hashes))
                        args = chunks_args(blob_id, len(hashes), want)
                        res: chunks_res = await self.peers.call(
                            name, PEERPROC.CHUNKS, chunks_args, args, chunks_res
                        )
                        page = bytes(res.hashes)
                        if (
                            res.status != fetch_status.OK
                            or res.size != size
                            or not page
                            or len(page) % BLOB_ID_SIZE
                            or len(page) > want * BLOB_ID_SIZE
                        ):
                            break
                        hashes += [page[i : i + BLOB_ID_SIZE] for i in range(0, len(page), 32)]
            except _Failures as e:
                log.info("peer %s gave no chunk list of %s: %s", name, blob_id.hex()[:16], e)
                continue
            if len(hashes) == total:
                return hashes
            log.info("peer %s has no chunk list of %s", name, blob_id.hex()[:16])
        return None

    async def cut_list(self, blob_id: bytes, size: int) -> list[Cut] | None:
        """The blob's content-defined cuts (CUTS) from the first connected peer that gives
        all of them and they add up to `size`, or None (the chunks are then fetched)."""
        for name in await self._peers(0):
            found: list[Cut] = []
            total = None
            try:
                with trio.fail_after(LIST_TIMEOUT):
                    while total is None or len(found) < total:
                        args = cuts_args(blob_id, len(found), CUTS_PAGE)
                        res: cuts_res = await self.peers.call(
                            name, PEERPROC.CUTS, cuts_args, args, cuts_res
                        )
                        if res.status != fetch_status.OK or res.size != size or not res.cuts:
                            break
                        total = res.total
                        if total > size // CUT_MIN + 1:  # more than the content can have
                            raise ValueError(f"{total} cuts for {size} bytes")
                        at = found[-1].offset + found[-1].length if found else 0
                        found += unpack_cuts(bytes(res.cuts), at)
                        if len(found) > total or at > size:
                            raise ValueError("more cuts than said, or past the end")
            except (*_Failures, ValueError) as e:
                log.info("peer %s gave no cuts of %s: %s", name, blob_id.hex()[:16], e)
                continue
            if total is not None and len(found) == total and sum(c.length for c in found) == size:
                return found
        return None

    async def fetch(
        self, blob_id: bytes, index: int, length: int, expected: bytes | None = None
    ) -> bytes | None:
        """Chunk `index` of the blob, `length` bytes, matching `expected` when given."""
        for name in await self._peers(index):
            data = await self._ask(name, blob_id, index, length)
            if data is None:
                continue
            if expected is not None and blake3.blake3(data).digest() != expected:
                self._wrong(name, blob_id, index)
                continue
            return data
        return None
