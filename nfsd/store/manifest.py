"""The blob store's records: byte layouts of manifests, chunk records, LRU keys and usage
counters, and the chunk arithmetic. Pure data and functions, no I/O (`nfsd.store.blobs` does
the reading and writing).

Key layouts (all integers big-endian, so keys sort numerically):

| family | key | value |
| --- | --- | --- |
| `blobs` | blob id (32) | manifest header (`Manifest.pack`) |
| `blobs` | blob id (32) ‖ chunk index (u32) | chunk hash (32) |
| `chunkinfo` | chunk hash (32) | chunk record (`ChunkInfo.pack`) |
| `chunks` | chunk hash (32) | chunk bytes (BlobDB) |
| `lru` | len(area) (u8) ‖ area ‖ stamp (u64) ‖ chunk hash (32) | empty |
| `meta` | `blobs.usage:` ‖ area | cached bytes, pinned bytes, chunks (3 u64) |
| `meta` | `blobs.clock` | last stamp handed out (u64) |
| `meta` | `blobs.unflushed:` ‖ chunk hash (32) | empty: a fill wrote the bytes without the WAL |

A manifest is one header plus one slot per chunk, so a blob's chunk list is one prefix scan
and a chunk's hash one point lookup; nothing rewrites a whole chunk list when one chunk
arrives. Chunks are addressed by their own hash and shared by every blob (and every slot) that
holds the same bytes; the chunk record counts those references (`refs`) and the references from
pinned blobs (`pins`), says whether the bytes are present, and carries the chunk's LRU stamp
and the area its bytes are charged to.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from blake3 import blake3

HASH_LEN = 32
BlobId = bytes  # BLAKE3 of the whole content, 32 bytes
ChunkHash = bytes  # BLAKE3 of one chunk, 32 bytes

EMPTY_BLOB: BlobId = blake3(b"").digest()
MIN_CHUNK_SIZE = 4 * 1024
MAX_CHUNK_SIZE = 16 * 1024 * 1024
MAX_CHUNKS = 1 << 32

MANIFEST_VERSION = 1
F_VERIFIED = 1  # the chunk list is known to hash to the blob id (all chunks seen at once)
F_BAD = 2  # the chunks, all individually valid, do not hash to the blob id

# version, flags, size, chunk size, born stamp, last access (unix s), present hint
_HEADER = struct.Struct(">BBQIQQI")
# flags, refs, pins, length, stamp
_CHUNK = struct.Struct(">BIIIQ")
C_PRESENT = 1
_STAMP = struct.Struct(">Q")
_USAGE = struct.Struct(">QQQ")
_INDEX = struct.Struct(">I")

USAGE_PREFIX = b"blobs.usage:"
CLOCK_KEY = b"blobs.clock"
UNFLUSHED_PREFIX = b"blobs.unflushed:"


def chunk_count(size: int, chunk_size: int) -> int:
    return -(-size // chunk_size)


def chunk_length(size: int, chunk_size: int, index: int) -> int:
    """Length of chunk `index`: `chunk_size`, except the last one."""
    return min(chunk_size, size - index * chunk_size)


def chunk_span(size: int, chunk_size: int, offset: int, count: int) -> range:
    """Indexes of the chunks holding bytes [offset, offset + count), clipped to the blob."""
    end = min(size, offset + count)
    if offset < 0 or count < 0:
        raise ValueError("negative offset or count")
    if offset >= end:
        return range(0)
    return range(offset // chunk_size, (end - 1) // chunk_size + 1)


def chunk_ranges(indexes: list[int], size: int, chunk_size: int) -> list[tuple[int, int]]:
    """Coalesce sorted chunk indexes into byte ranges (offset, length) of the blob."""
    ranges: list[tuple[int, int]] = []
    for index in indexes:
        start = index * chunk_size
        length = chunk_length(size, chunk_size, index)
        if ranges and ranges[-1][0] + ranges[-1][1] == start:
            ranges[-1] = (ranges[-1][0], ranges[-1][1] + length)
        else:
            ranges.append((start, length))
    return ranges


def _pack_str(text: str) -> bytes:
    raw = text.encode()
    if len(raw) > 255:
        raise ValueError(f"name too long (255 bytes at most): {text!r}")
    return bytes([len(raw)]) + raw


def _unpack_str(raw: bytes, at: int) -> tuple[str, int]:
    length = raw[at]
    end = at + 1 + length
    if end > len(raw):
        raise ValueError("truncated string")
    return raw[at + 1 : end].decode(), end


@dataclass(slots=True)
class Manifest:
    """A blob's header: what the chunk slots describe, plus pins, area and access time."""

    blob_id: BlobId
    size: int
    chunk_size: int
    flags: int = 0
    born: int = 0  # LRU clock when the manifest was made (gc spares blobs born during a sweep)
    last_access: int = 0  # unix seconds, coarse (updated at most once a minute)
    present_hint: int = 0  # chunks known present when last counted; exact check at nchunks
    area: str = ""  # the area new chunks of this blob are charged to
    pins: tuple[str, ...] = field(default_factory=tuple)  # sorted reasons

    @property
    def nchunks(self) -> int:
        return chunk_count(self.size, self.chunk_size)

    @property
    def pinned(self) -> bool:
        return bool(self.pins)

    @property
    def verified(self) -> bool:
        return bool(self.flags & F_VERIFIED)

    @property
    def bad(self) -> bool:
        return bool(self.flags & F_BAD)

    def chunk_length(self, index: int) -> int:
        return chunk_length(self.size, self.chunk_size, index)

    def pack(self) -> bytes:
        head = _HEADER.pack(
            MANIFEST_VERSION,
            self.flags,
            self.size,
            self.chunk_size,
            self.born,
            self.last_access,
            min(self.present_hint, 0xFFFFFFFF),
        )
        if len(self.pins) > 255:
            raise ValueError("too many pins")
        pins = b"".join(_pack_str(reason) for reason in self.pins)
        return head + _pack_str(self.area) + bytes([len(self.pins)]) + pins

    @classmethod
    def unpack(cls, blob_id: BlobId, raw: bytes) -> Manifest:
        """Decode a header; ValueError (or struct.error) when it is damaged."""
        version, flags, size, chunk_size, born, last_access, hint = _HEADER.unpack_from(raw)
        if version != MANIFEST_VERSION:
            raise ValueError(f"manifest version {version}")
        if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
            raise ValueError(f"chunk size {chunk_size}")
        area, at = _unpack_str(raw, _HEADER.size)
        npins = raw[at]
        at += 1
        pins = []
        for _ in range(npins):
            reason, at = _unpack_str(raw, at)
            pins.append(reason)
        if at != len(raw):
            raise ValueError("trailing bytes in manifest")
        return cls(blob_id, size, chunk_size, flags, born, last_access, hint, area, tuple(pins))


@dataclass(slots=True)
class ChunkInfo:
    """One stored-or-wanted chunk: references, pins, presence, LRU stamp, charged area."""

    refs: int = 0  # manifest slots naming this chunk
    pins: int = 0  # of those, slots of pinned blobs
    length: int = 0
    present: bool = False
    stamp: int = 0  # LRU clock of the last store or access
    owner: str = ""  # the area its bytes are charged to while present

    def pack(self) -> bytes:
        flags = C_PRESENT if self.present else 0
        head = _CHUNK.pack(flags, self.refs, self.pins, self.length, self.stamp)
        return head + self.owner.encode()

    @classmethod
    def unpack(cls, raw: bytes) -> ChunkInfo:
        flags, refs, pins, length, stamp = _CHUNK.unpack_from(raw)
        owner = raw[_CHUNK.size :].decode()
        return cls(refs, pins, length, bool(flags & C_PRESENT), stamp, owner)


def slot_key(blob_id: BlobId, index: int) -> bytes:
    return blob_id + _INDEX.pack(index)


def slot_index(key: bytes) -> int:
    return _INDEX.unpack_from(key, HASH_LEN)[0]


def blob_upper_bound(blob_id: BlobId) -> bytes:
    """A key above the header and every slot of `blob_id` (and below the next blob's)."""
    return blob_id + b"\xff" * 5


def lru_prefix(area: str) -> bytes:
    return _pack_str(area)


def lru_key(area: str, stamp: int, chunk: ChunkHash) -> bytes:
    return _pack_str(area) + _STAMP.pack(stamp) + chunk


def lru_parse(key: bytes) -> tuple[str, int, ChunkHash]:
    area, at = _unpack_str(key, 0)
    (stamp,) = _STAMP.unpack_from(key, at)
    chunk = key[at + 8 :]
    if len(chunk) != HASH_LEN:
        raise ValueError("bad lru key")
    return area, stamp, chunk


def lru_area_end(area: str) -> bytes:
    """A key above every LRU key of `area` (and below the next area's)."""
    return _pack_str(area) + b"\xff" * (8 + HASH_LEN + 1)


def pack_stamp(stamp: int) -> bytes:
    return _STAMP.pack(stamp)


def unpack_stamp(raw: bytes) -> int:
    return _STAMP.unpack(raw)[0]


def unflushed_key(chunk: ChunkHash) -> bytes:
    return UNFLUSHED_PREFIX + chunk


def usage_key(area: str) -> bytes:
    return USAGE_PREFIX + area.encode()


def pack_usage(cached: int, pinned: int, chunks: int) -> bytes:
    return _USAGE.pack(cached, pinned, chunks)


def unpack_usage(raw: bytes) -> tuple[int, int, int]:
    cached, pinned, chunks = _USAGE.unpack(raw)
    return cached, pinned, chunks
