"""The fill path of the blob store: the chunks of a registered blob arriving one at a time
(`BlobStore.put_chunk`, a peer's chunks of an Unreal file), each already checked against its
hash. This module owns what lets a fill cost about one pass over its bytes:

- **Durability without the WAL.** A fill of an unpinned blob writes its bytes without the WAL
  and its record through it, with a marker (`BlobState.store_chunk`, which also says how a
  crash is recovered). Once `FLUSH_BYTES` of such bytes are waiting, a thread flushes the
  chunk family and then deletes the markers of the fills the flush covered. Pinned blobs
  (`keep`, promised to be readable offline) fill through the WAL.
- **Hashing the blob as it fills.** A blob whose chunks arrive in about their order (a
  sequential reader, a realize, a keep) is hashed whole as they come, so completing it checks
  its id without reading the whole content back. A chunk arriving ahead of its turn (fetches
  finish out of order) is taken up when the gap before it fills (read back, from memory when
  it is recent); a blob filled in another order, or from chunks cached before, is checked by
  `BlobStore.verify` when complete, as before. At most `HASHED_ALONG` blobs are followed at
  once, each remembering at most `AHEAD` chunks that came early.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable

from blake3 import blake3

from nfsd.store.blob_state import BlobState
from nfsd.store.manifest import BlobId, Manifest

log = logging.getLogger(__name__)

FLUSH_BYTES = 16 << 20  # unlogged fill bytes that start a flush of the chunk family
HASHED_ALONG = 64  # blobs hashed as they fill, at most
AHEAD = 1024  # chunks of one blob that came ahead of their turn, remembered

# The verified bytes of chunk `index` of a blob when present, else None.
ChunkLoader = Callable[[Manifest, int], bytes | None]


class _Along:
    """The running hash of one manifest (`born` tells it from a later one of the same id)."""

    __slots__ = ("ahead", "born", "hasher", "next")

    def __init__(self, born: int) -> None:
        self.born = born
        self.next = 0
        self.hasher = blake3()
        self.ahead: set[int] = set()  # chunks stored before their turn


class Fills:
    """The fill path's two jobs for the blob store over `state`; `load` gives a present
    chunk's verified bytes (for chunks that came ahead of their turn)."""

    def __init__(self, state: BlobState, load: ChunkLoader) -> None:
        self.state = state
        self._load = load
        self._along: OrderedDict[BlobId, _Along] = OrderedDict()
        self._along_lock = threading.Lock()
        self._flushing: threading.Thread | None = None
        self._flushing_lock = threading.Lock()

    # -- hashing as the blob fills --------------------------------------------------------

    def hash_along(self, m: Manifest, index: int, data: bytes) -> bool | None:
        """Take chunk `index` of `m` (its bytes checked against its slot); True when the blob
        is now hashed whole and makes its id, False when it is hashed whole and does not,
        None while it is not."""
        if m.verified or m.bad:
            return None
        with self._along_lock:
            along = self._along.get(m.blob_id)
            if along is not None and along.born != m.born:  # released and registered again
                del self._along[m.blob_id]
                along = None
            if along is None:  # the first chunk to come need not be the first of the blob
                along = self._along[m.blob_id] = _Along(m.born)
                while len(self._along) > HASHED_ALONG:
                    self._along.popitem(last=False)
            if index != along.next:
                if index > along.next and len(along.ahead) < AHEAD:
                    along.ahead.add(index)
                return None
            along.hasher.update(data)
            along.next += 1
            while along.next < m.nchunks:
                if along.next not in along.ahead:
                    return None
                along.ahead.discard(along.next)
                following = self._load(m, along.next)
                if following is None:  # evicted meanwhile: `verify` checks it once complete
                    del self._along[m.blob_id]
                    return None
                along.hasher.update(following)
                along.next += 1
            del self._along[m.blob_id]
            return along.hasher.digest() == m.blob_id

    # -- making unlogged bytes durable ----------------------------------------------------

    def flush_if_due(self) -> None:
        """Start a flush in a thread when enough unlogged fill bytes wait (one at a time)."""
        if self.state.unflushed_bytes < FLUSH_BYTES:
            return
        with self._flushing_lock:
            if self._flushing is not None and self._flushing.is_alive():
                return
            self._flushing = threading.Thread(target=self.flush, name="blob-fill-flush")
            self._flushing.daemon = True
            self._flushing.start()

    def flush(self) -> None:
        """Flush the chunk family, then drop the markers of the fills written before."""
        state = self.state
        with state.lock:
            below = state.fills + 1
        try:
            state.chunks.flush(True)
            with state.lock:
                state.flushed(below)
        except Exception as e:  # the markers stay: opening the store checks those chunks
            log.warning("cannot flush the cached chunks: %s", e)

    def wait(self) -> None:
        """Wait for a flush under way (tests, and before closing)."""
        with self._flushing_lock:
            flushing = self._flushing
        if flushing is not None:
            flushing.join()
