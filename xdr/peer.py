"""The peer protocol: what the peers of a household ask each other, over the TLS link that
nfsd/peer/ authenticates. An ONC RPC program in the private range beside the control
program. NULL is the link's proof and heartbeat; FETCH reads one chunk of a blob by id,
CHUNKS a blob's chunk list; NOTIFY tells a peer that a log it follows has grown; HOLDS asks
which of some blobs a peer keeps whole; CUTS a blob's content-defined cuts.

History exchange (nfsd/peer/exchange.py):
- HISTORY(area, log uuid, last seen, max entries[, catch-up resume]) answers one bounded page:
  the entries after `last seen` (a delta), or, when the uuid is not the log's or `last seen` is
  outside what the log holds, a page of a full catch-up (every path's versions, tombstones
  included), resumed from `cursor` until `more` is false.
- ACK(area, log uuid, sequence): the subscriber applied everything up to `sequence`.
- An entry's version travels as opaque bytes (a `versions.path_version`), so one entry that
  does not decode is refused alone and the page's other entries still apply.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from .codec import (
    Array,
    Enum,
    FixedOpaque,
    Opaque,
    String,
    XdrType,
    boolean,
    uint32,
    uint64,
    void,
    xdr_struct,
    xf,
)
from .control import MAX_PATH

PEER_PROGRAM = 0x2052_4C5B  # the control program's number + 1, in RFC 5531's private range
PEER_V1 = 1


class PEERPROC(IntEnum):
    NULL = 0
    HISTORY = 1
    ACK = 2
    FETCH = 3
    CHUNKS = 4
    NOTIFY = 5
    HOLDS = 6
    CUTS = 7


AREA_NAME_MAX = 255
LOG_UUID_SIZE = 16
PAGE_MAX = 4096
"""Entries one HISTORY reply may carry; a server answers fewer (nfsd/peer/exchange.py)."""
VERSION_MAX = 8192
"""Bytes of one encoded path_version (a vector of a household's peers and a symlink target)."""
CURSOR_MAX = MAX_PATH


class history_status(IntEnum):
    OK = 0
    NO_AREA = 1  # this peer shares no area of that name with the caller
    UNAVAILABLE = 2  # this peer serves no history (yet)


@xdr_struct
class history_args:
    area: bytes = xf(String(AREA_NAME_MAX))
    log_uuid: bytes = xf(Opaque(LOG_UUID_SIZE))  # empty: never subscribed
    last_seen: int = xf(uint64)
    max_entries: int = xf(uint32)
    resuming: bool = xf(boolean)  # continue the catch-up below
    catchup_upto: int = xf(uint64)
    catchup_cursor: bytes = xf(Opaque(CURSOR_MAX))


BASE_SIZE = 32  # a BLAKE3 blob id, as BLOB_ID_SIZE below


@xdr_struct
class history_entry:
    sequence: int = xf(uint64)  # 0 in a catch-up
    path: bytes = xf(Opaque(MAX_PATH))
    mode: int = xf(uint32)
    version: bytes = xf(Opaque(VERSION_MAX))  # a path_version, decoded by the receiver
    # The blob this version's content was made from where it was made (the file's content
    # its edit replaced): a peer holding it builds the new blob from it and fetches only
    # what changed. Empty: made from nothing, or not known (a catch-up names none).
    base: bytes = xf(Opaque(BASE_SIZE), default=b"")


@xdr_struct
class stamp_entry_v0:
    """A history entry as the first stamps kept it (nfsd/peer/exchange.py still reads them)."""

    sequence: int = xf(uint64)
    path: bytes = xf(Opaque(MAX_PATH))
    mode: int = xf(uint32)
    version: bytes = xf(Opaque(VERSION_MAX))


@xdr_struct
class history_res:
    status: history_status = xf(Enum(history_status))
    log_uuid: bytes = xf(FixedOpaque(LOG_UUID_SIZE))
    catchup: bool = xf(boolean)
    # A delta: the last sequence this page covers. A catch-up: the sequence it stands for
    # (the subscriber's `last seen` once it is complete).
    upto: int = xf(uint64)
    cursor: bytes = xf(Opaque(CURSOR_MAX))  # a catch-up: where the next page resumes
    more: bool = xf(boolean)
    entries: list[history_entry] = xf(Array(history_entry, PAGE_MAX))


@xdr_struct
class ack_args:
    area: bytes = xf(String(AREA_NAME_MAX))
    log_uuid: bytes = xf(FixedOpaque(LOG_UUID_SIZE))
    sequence: int = xf(uint64)


# ---- fetching content by blob id (nfsd/peer/fetch.py) ----
# FETCH(blob id, chunk index) answers one whole chunk of a blob this peer holds in an area it
# shares with the caller: from its blob cache, or from a Real file whose content, unchanged
# since it was hashed, has that id. The caller verifies the chunk against its hash.

BLOB_ID_SIZE = BASE_SIZE  # BLAKE3
FETCH_CHUNK_SIZE = 256 * 1024  # the blob store's chunk size: chunk i starts at i * this


class fetch_status(IntEnum):
    OK = 0
    NO_BLOB = 1  # no content with that id here in an area shared with the caller
    NO_CHUNK = 2  # the blob has no chunk of that index (`size` says how big it is)
    CHANGED = 3  # the Real file changed since it was hashed: ask another peer
    UNAVAILABLE = 4  # this peer serves no content (yet), or could not read it now


@xdr_struct
class fetch_args:
    blob_id: bytes = xf(FixedOpaque(BLOB_ID_SIZE))
    chunk: int = xf(uint32)


@xdr_struct
class fetch_res:
    status: fetch_status = xf(Enum(fetch_status))
    size: int = xf(uint64)  # the blob's size, when it is known here
    data: bytes = xf(Opaque(FETCH_CHUNK_SIZE))  # the whole chunk (the last one may be short)


# CHUNKS(blob id, first, count) answers the chunk hashes of a blob, a page at a time, where
# FETCH would serve it: from the cache's manifest, or computed from the Real file (whose whole
# content was checked against the blob id while it was read). A caller checks each chunk it
# fetches against these hashes, and the whole blob against its id once every chunk is in.

CHUNKS_PAGE = 8192  # hashes one CHUNKS reply carries at most (2 GiB of content)


@xdr_struct
class chunks_args:
    blob_id: bytes = xf(FixedOpaque(BLOB_ID_SIZE))
    first: int = xf(uint32)
    count: int = xf(uint32)


@xdr_struct
class chunks_res:
    status: fetch_status = xf(Enum(fetch_status))
    size: int = xf(uint64)  # the blob's size
    hashes: bytes = xf(Opaque(CHUNKS_PAGE * BLOB_ID_SIZE))  # 32 bytes per chunk, from `first`


# NOTIFY(area): the caller's log of that area has entries the callee may not have seen; the
# callee pulls them (HISTORY) when it can. No reply but the acknowledgement of the call.


# HOLDS(blob ids) answers, one byte per id (1: yes), whether this peer keeps that content whole
# in an area shared with the caller: as a Real file indexed with it, or complete and pinned in
# its cache (`keep`, a conflict copy, an only copy). An evictable cached copy does not count.
# A peer lets a file made under `unreal` leave its disk once another holds it
# (nfsd/vfs/releases.py).

HOLDS_MAX = 64  # blob ids one HOLDS asks about

holds_args = Array(FixedOpaque(BLOB_ID_SIZE), HOLDS_MAX)
holds_res = Opaque(HOLDS_MAX)


# CUTS(blob id, first, count) answers a blob's content-defined cuts (nfsd/store/cuts.py), a
# page at a time, each its length and BLAKE3, from where FETCH would serve it: a peer holding
# an older version builds what it can of the new one from it and fetches the rest. UNAVAILABLE
# from a peer that cuts nothing (no FastCDC there).

CUTS_PAGE = 4096  # cuts one reply carries at most (some 300 MiB of content)
CUT_SIZE = 36  # a cut on the wire: its length (4) and BLAKE3 (32)


@xdr_struct
class cuts_args:
    blob_id: bytes = xf(FixedOpaque(BLOB_ID_SIZE))
    first: int = xf(uint32)
    count: int = xf(uint32)


@xdr_struct
class cuts_res:
    status: fetch_status = xf(Enum(fetch_status))
    size: int = xf(uint64)  # the blob's size
    total: int = xf(uint32)  # how many cuts the blob has
    cuts: bytes = xf(Opaque(CUTS_PAGE * CUT_SIZE))  # from `first`


PROCEDURES: dict[int, tuple[str, XdrType[Any], XdrType[Any]]] = {
    PEERPROC.NULL: ("NULL", void, void),
    PEERPROC.HISTORY: ("HISTORY", history_args, history_res),
    PEERPROC.ACK: ("ACK", ack_args, void),
    PEERPROC.FETCH: ("FETCH", fetch_args, fetch_res),
    PEERPROC.CHUNKS: ("CHUNKS", chunks_args, chunks_res),
    PEERPROC.NOTIFY: ("NOTIFY", String(AREA_NAME_MAX), void),
    PEERPROC.HOLDS: ("HOLDS", holds_args, holds_res),
    PEERPROC.CUTS: ("CUTS", cuts_args, cuts_res),
}
"""Peer procedure number -> (name, argument type, result type)."""
