"""The connected peers as a blob source (nfsd/store/source.py `BlobSource`): a chunk the cache
lacks is asked of each connected peer in turn with FETCH (xdr/peer.py) by blob id and chunk
index, over the links of nfsd/peer/service.py.

The source only carries bytes: the cache checks every chunk against its hash before storing
it (`BlobStore.put_chunk`), and the whole blob against its id once complete, so a peer that
answers wrong bytes is refused and the next one asked. The Unreal layer calls `read_chunk`
from a worker thread; the calls run on the event loop (where the links live) and the thread
waits for them.

What an arriving entry carries is its blob id and size, not its chunk hashes. A blob of one
chunk needs none (its chunk hash is its id); a larger one is not described yet: there is no
peer procedure for a blob's chunk list, so its content cannot be fetched from peers yet.
"""

from __future__ import annotations

import logging

import trio

from nfsd.peer.service import PeerService
from nfsd.rpc.client import RpcError
from xdr.peer import FETCH_CHUNK_SIZE, PEERPROC, fetch_args, fetch_res, fetch_status

log = logging.getLogger("realize.peer")

FETCH_TIMEOUT = 30.0  # seconds one peer may take to answer one chunk before the next is asked


class PeerSource:
    name = "connected peers"

    def __init__(self, peers: PeerService) -> None:
        self.peers = peers

    def chunk_hashes(self, blob_id: bytes, size: int) -> list[bytes] | None:
        """The blob's chunk hashes as FETCH cuts it, when they follow from its id and size."""
        if size == 0:
            return []
        if size <= FETCH_CHUNK_SIZE:
            return [blob_id]  # one chunk: its hash is the blob's id
        return None

    def has(self, blob_id: bytes) -> bool:
        return False  # not known without asking: evicting a copy is never thought safe

    def read_chunk(self, blob_id: bytes, offset: int, length: int) -> bytes | None:
        """From a worker thread: the chunk at `offset` from the first connected peer that
        gives `length` bytes, or None."""
        if offset % FETCH_CHUNK_SIZE or length > FETCH_CHUNK_SIZE:
            return None  # not a chunk as FETCH cuts a blob
        return trio.from_thread.run(self.fetch, blob_id, offset // FETCH_CHUNK_SIZE, length)

    async def fetch(self, blob_id: bytes, index: int, length: int) -> bytes | None:
        for name in sorted(self.peers.links.live):
            try:
                with trio.fail_after(FETCH_TIMEOUT):
                    res: fetch_res = await self.peers.call(
                        name, PEERPROC.FETCH, fetch_args, fetch_args(blob_id, index), fetch_res
                    )
            except (LookupError, ConnectionError, RpcError, trio.TooSlowError) as e:
                log.info("peer %s gave no chunk %d of %s: %s", name, index, blob_id.hex()[:16], e)
                continue
            if res.status == fetch_status.OK and len(res.data) == length:
                return bytes(res.data)
        return None
