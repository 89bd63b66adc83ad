"""The ingest path of the blob store: a complete content read from a stream is cut into
chunks, hashed (each chunk and the whole), and stored with its manifest.

The first MiB goes through the WAL like every other change. Past it, chunk bytes are written
without the WAL (RocksDB's WAL CRC costs as much CPU as the write itself in this build) and
recorded in checkpoints (every `checkpoint_bytes`, 64 MiB by default, and at the end) after
flushing the chunk family, so a crash never leaves a record whose bytes are lost, only
unrecorded bytes that `fsck` counts as garbage. Meanwhile those chunks are listed in
`BlobState.pending`, which keeps every deleting path away from their keys, and count against
the limits through `BlobState.pending_bytes`; chunks an ingest stores or touches are stamped
at or after its start, which `BlobState.horizon` keeps from eviction until the manifest
names them. This module is the only writer of those three.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

from blake3 import blake3
from rocksdict import WriteBatch, WriteOptions

from nfsd.store.blob_eviction import Eviction
from nfsd.store.blob_state import BlobState, Txn
from nfsd.store.manifest import (
    F_BAD,
    F_VERIFIED,
    HASH_LEN,
    MAX_CHUNK_SIZE,
    MIN_CHUNK_SIZE,
    BlobId,
    ChunkHash,
    ChunkInfo,
    Manifest,
)

log = logging.getLogger(__name__)

INGEST_BATCH = 1 << 20  # chunk bytes an ingest writes per batch
CHECKPOINT_BYTES = 64 << 20  # unlogged chunk bytes an ingest makes durable and records at once

# (chunk, length, whether this ingest wrote the bytes and counts them in `pending_bytes`)
Unlogged = list[tuple[ChunkHash, int, bool]]


class Ingest:
    """Ingests into `state` under `eviction`'s limits. `pin` and `chunk_hashes` are the
    store's own (an ingest of a blob already present pins it, and compares its chunk list)."""

    def __init__(
        self,
        state: BlobState,
        eviction: Eviction,
        *,
        pin: Callable[[BlobId, str], bool],
        chunk_hashes: Callable[[BlobId], Iterator[ChunkHash]],
        checkpoint_bytes: int = CHECKPOINT_BYTES,
    ) -> None:
        self.state = state
        self.eviction = eviction
        self._pin = pin
        self._chunk_hashes = chunk_hashes
        self.checkpoint_bytes = checkpoint_bytes
        self._unlogged = WriteOptions()
        self._unlogged.disable_wal = True
        self._next_token = 0

    def ingest(
        self,
        source: bytes | Iterable[bytes] | BinaryIO,
        *,
        area: str,
        pin: str | None,
        chunk_size: int,
    ) -> BlobId:
        """`BlobStore.ingest`."""
        cs = chunk_size
        if not MIN_CHUNK_SIZE <= cs <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk size {cs} outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE}")
        state = self.state
        whole = blake3(max_threads=blake3.AUTO)
        hashes = bytearray()
        size = 0
        pending: list[tuple[ChunkHash, bytes]] = []  # stored together, one batch per MiB
        pending_bytes = 0
        # A checkpoint runs in a thread (the flush waits for the disk, without the GIL) while
        # the ingest goes on; at most one at a time.
        unlogged: Unlogged | None = None
        unlogged_bytes = 0
        checkpoint: _Checkpoint | None = None
        token, start = self._begin()
        try:
            for data in chunked(source, cs):
                chunk = blake3(data).digest()
                whole.update(data)
                hashes += chunk
                size += len(data)
                pending.append((chunk, data))
                pending_bytes += len(data)
                if pending_bytes < INGEST_BATCH:
                    continue
                if unlogged is None:
                    with state.lock:
                        txn = Txn(state)
                        self._ingest_chunks(txn, pending, area, start)
                        txn.commit()
                    unlogged = []
                else:
                    self._write_unlogged(pending, area, start, unlogged)
                    unlogged_bytes += pending_bytes
                    if unlogged_bytes >= self.checkpoint_bytes:
                        if checkpoint is not None:
                            checkpoint.join()
                        checkpoint = _Checkpoint(self, unlogged, area)
                        unlogged = []
                        unlogged_bytes = 0
                pending = []
                pending_bytes = 0
            blob_id = whole.digest()
            if unlogged is not None:
                self._write_unlogged(pending, area, start, unlogged)
                if checkpoint is not None:
                    checkpoint.join()
                    checkpoint = None
                self.checkpoint(unlogged, area)
                pending = []
            # The last chunks and the manifest in one batch: a small file is one write.
            self._commit(blob_id, size, cs, hashes, area, pin, pending, start)
        finally:
            if checkpoint is not None:
                checkpoint.join(raise_error=False)
            with state.lock:
                if unlogged:  # interrupted: the bytes stay unrecorded (garbage for fsck)
                    self._unpend(unlogged, area)
                state.inflight.pop(token, None)
        return blob_id

    def _begin(self) -> tuple[int, int]:
        state = self.state
        with state.lock:
            self._next_token += 1
            start = state.tick()
            state.inflight[self._next_token] = start
            return self._next_token, start

    def _write_unlogged(
        self,
        chunks: list[tuple[ChunkHash, bytes]],
        area: str,
        start: int,
        unlogged: Unlogged,
    ) -> None:
        """Write chunk bytes without the WAL and without a record; `checkpoint` records them
        once a flush has made them durable."""
        state = self.state
        make_room = self.eviction.make_room
        pending = state.pending
        with state.lock:
            txn = Txn(state)
            fresh = WriteBatch(raw_mode=True)
            handle = state.store.handle("chunks")
            for chunk, data in chunks:
                if self._stored_already(txn, chunk, start):
                    continue
                if chunk in pending:  # written already (by this or another ingest)
                    pending[chunk] += 1
                    unlogged.append((chunk, len(data), False))
                    continue
                make_room(txn, area, len(data))
                fresh.put(chunk, data, handle)
                pending[chunk] = 1
                state.pending_bytes[area] = state.pending_bytes.get(area, 0) + len(data)
                unlogged.append((chunk, len(data), True))
                state.stats.stored_chunks += 1
            txn.commit()  # evictions and restamps, through the WAL
            # Under the lock, so no checkpoint can flush between listing a chunk and writing it.
            state.store.write(fresh, self._unlogged)

    def checkpoint(self, unlogged: Unlogged, area: str) -> None:
        """Make the unlogged bytes durable (flush the chunk family), then record them."""
        if not unlogged:
            return
        state = self.state
        try:
            state.chunks.flush(True)
            with state.lock:
                txn = Txn(state)
                for chunk, length, _ in unlogged:
                    info = txn.info(chunk)
                    if info is None or not info.present:
                        state.store_chunk(txn, chunk, info or ChunkInfo(), None, area, length)
                txn.commit()
        finally:
            with state.lock:
                self._unpend(unlogged, area)

    def _unpend(self, unlogged: Unlogged, area: str) -> None:
        pending = self.state.pending
        pending_bytes = self.state.pending_bytes
        for chunk, length, counted in unlogged:
            left = pending.get(chunk, 0) - 1
            if left > 0:
                pending[chunk] = left
            else:
                pending.pop(chunk, None)
            if counted:
                remaining = pending_bytes.get(area, 0) - length
                if remaining > 0:
                    pending_bytes[area] = remaining
                else:
                    pending_bytes.pop(area, None)
        unlogged.clear()

    def _ingest_chunks(
        self, txn: Txn, chunks: list[tuple[ChunkHash, bytes]], area: str, start: int
    ) -> None:
        state = self.state
        make_room = self.eviction.make_room
        for chunk, data in chunks:
            if not self._stored_already(txn, chunk, start):
                make_room(txn, area, len(data))
                state.store_chunk(txn, chunk, txn.info(chunk) or ChunkInfo(), data, area)

    def _stored_already(self, txn: Txn, chunk: ChunkHash, start: int) -> bool:
        """Whether an ingest's chunk is stored already (then it is not written again, and is
        restamped once per ingest so that eviction spares it until the manifest names it)."""
        info = txn.info(chunk)
        if info is None or not info.present:
            return False
        self.state.make_durable(txn, chunk)  # a fill's unlogged bytes: this ingest needs them
        if info.stamp < start:  # else already protected by this ingest
            self.state.restamp(txn, chunk, info)
            self.state.stats.deduped_chunks += 1
        return True

    def _commit(
        self,
        blob_id: BlobId,
        size: int,
        cs: int,
        hashes: bytearray,
        area: str,
        pin: str | None,
        pending: list[tuple[ChunkHash, bytes]],
        start: int,
    ) -> None:
        state = self.state
        chunks = [bytes(hashes[i : i + HASH_LEN]) for i in range(0, len(hashes), HASH_LEN)]
        with state.lock:
            txn = Txn(state)
            self._ingest_chunks(txn, pending, area, start)
            m = state.manifest(blob_id)
            if m is not None and m.size == size and m.chunk_size == cs and not m.bad:
                known = self._chunk_hashes(blob_id)
                same = all(a == b for a, b in zip(known, chunks, strict=True))
                if same:
                    m.flags = (m.flags | F_VERIFIED) & ~F_BAD
                    m.present_hint = m.nchunks
                    txn.batch.put("blobs", blob_id, m.pack())
                    txn.commit()
                    if pin is not None:
                        self._pin(blob_id, pin)
                    return
            pins: tuple[str, ...] = ()
            if m is not None:  # a manifest that disagrees with the content: replace it
                log.warning(
                    "blob %s: replacing a manifest that disagrees with its content", blob_id.hex()
                )
                pins = m.pins
                area = m.area
                state.drop_manifest(txn, m)
            if pin is not None:
                pins = tuple(sorted({*pins, pin}))
            new = Manifest(
                blob_id,
                size,
                cs,
                flags=F_VERIFIED,
                born=state.tick(),
                last_access=int(time.time()),
                present_hint=len(chunks),
                area=area,
                pins=pins,
            )
            state.write_manifest(txn, new, chunks)
            txn.commit()


class _Checkpoint:
    """`Ingest.checkpoint` in a thread; `join` waits and re-raises its error."""

    def __init__(self, ingest: Ingest, unlogged: Unlogged, area: str) -> None:
        self.error: BaseException | None = None

        def run() -> None:
            try:
                ingest.checkpoint(unlogged, area)
            except BaseException as e:
                self.error = e

        self.thread = threading.Thread(target=run, name="blob-checkpoint", daemon=True)
        self.thread.start()

    def join(self, raise_error: bool = True) -> None:
        self.thread.join()
        if self.error is not None and raise_error:
            raise self.error


def chunked(source: bytes | Iterable[bytes] | BinaryIO, size: int) -> Iterator[bytes]:
    """Cut a file object or an iterable of bytes-like pieces into `size`-byte chunks (the
    last one shorter), holding at most one chunk."""
    if isinstance(source, bytes | bytearray | memoryview):
        source = [source]
    read = getattr(source, "read", None)
    if read is not None:
        while True:
            data = read(size)
            if not data:
                return
            while len(data) < size:  # pipes and sockets return short reads
                more = read(size - len(data))
                if not more:
                    break
                data += more
            yield bytes(data)
            if len(data) < size:
                return
    buf = bytearray()
    for piece in source:  # type: ignore[union-attr]
        view = memoryview(piece).cast("B")
        while view:
            if not buf and len(view) >= size:
                yield bytes(view[:size])
                view = view[size:]
                continue
            take = min(size - len(buf), len(view))
            buf += view[:take]
            view = view[take:]
            if len(buf) == size:
                yield bytes(buf)
                buf.clear()
    if buf:
        yield bytes(buf)
