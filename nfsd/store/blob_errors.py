"""The blob store's errors: what `nfsd.store.blobs` raises to its callers (an unknown blob, a
refused chunk, missing chunks to fetch, a full cache, a manifest that does not make its id).
Only the exception types; `nfsd.store.blobs` re-exports them."""

from __future__ import annotations

import errno

from nfsd.store.manifest import BlobId, chunk_ranges


class BlobError(Exception):
    """Base of the blob store's errors."""


class UnknownBlob(BlobError, LookupError):
    def __init__(self, blob_id: BlobId) -> None:
        super().__init__(f"no blob {blob_id.hex()}")
        self.blob_id = blob_id


class BadChunk(BlobError, ValueError):
    """A chunk was refused (wrong index, length or hash); nothing was stored."""

    def __init__(self, blob_id: BlobId, index: int, why: str) -> None:
        super().__init__(f"blob {blob_id.hex()[:16]} chunk {index}: {why}")
        self.blob_id = blob_id
        self.index = index


class ChunkHashMismatch(BadChunk):
    def __init__(self, blob_id: BlobId, index: int, expected: bytes, actual: bytes) -> None:
        why = f"hash {actual.hex()[:16]} does not match the manifest's {expected.hex()[:16]}"
        super().__init__(blob_id, index, why)
        self.expected = expected
        self.actual = actual


class MissingChunks(BlobError):
    """Chunks of the requested range are not here (or failed verification and were dropped):
    fetch `ranges` (byte ranges of the blob), or the chunks `indexes`, then retry."""

    def __init__(self, blob_id: BlobId, indexes: list[int], size: int, chunk_size: int) -> None:
        self.blob_id = blob_id
        self.indexes = sorted(indexes)
        self.chunk_size = chunk_size
        self.ranges = chunk_ranges(self.indexes, size, chunk_size)
        shown = ", ".join(f"{start}+{length}" for start, length in self.ranges[:8])
        more = " ..." if len(self.ranges) > 8 else ""
        super().__init__(
            f"blob {blob_id.hex()[:16]}: {len(self.indexes)} chunk(s) missing at {shown}{more}"
        )


class CacheFull(BlobError, OSError):
    """Not enough evictable cache to store a chunk within the limits (errno ENOSPC)."""

    def __init__(self, message: str) -> None:
        OSError.__init__(self, errno.ENOSPC, message)


class ManifestMismatch(BlobError, ValueError):
    """A manifest is inconsistent with its blob id (size, chunk list, or whole content)."""

    def __init__(self, blob_id: BlobId, why: str) -> None:
        super().__init__(f"blob {blob_id.hex()[:16]}: {why}")
        self.blob_id = blob_id
