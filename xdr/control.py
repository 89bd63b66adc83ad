"""The control protocol: how the `realize` command talks to a running server.

An ONC RPC program in the private range, served only on a Unix socket inside the state
directory (whose 0700 mode is the access check). Paths are "AREA/path/inside", the way the
root export shows them. Every result starts with a status and a message meant for the user.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from .codec import (
    Array,
    Enum,
    String,
    XdrType,
    boolean,
    int64,
    uint64,
    void,
    xdr_struct,
    xf,
)

CONTROL_PROGRAM = 0x2052_4C5A  # "RLZ" in the range RFC 5531 leaves to private use
CONTROL_V1 = 1
CONTROL_SOCKET = "control.sock"

MAX_PATH = 4096
MAX_MESSAGE = 4096
IMPORT_REFUSALS = 10  # refused entries an import names one by one
MAX_PEERS = 1000
LS_PAGE = 1000  # entries per LS reply
MAX_LINES = 10000
MAX_AREAS = 256  # areas one STATUS reply describes
CONFLICTS_PAGE = 100  # conflicts per CONFLICTS reply
MAX_COPIES = 32  # conflict copies one conflict lists (the rest are counted)
CONFLICTS_SCAN = 20_000  # path states one CONFLICTS call looks at, so a call stays short


class CONTROLPROC(IntEnum):
    NULL = 0
    MARK = 1
    LS = 2
    JOB = 3
    IMPORT = 4
    FSCK = 5
    SOURCE = 6
    ROSTER = 7  # re-read the household roster (peers.json) now
    PEERS = 8  # each peer's link
    PING = 9  # a NULL call to a connected peer over its link, timed
    SYNC = 10  # dial every peer and pull the shared areas' histories now (one area, or all)
    STATUS = 11  # the peers' links and each area's sync state and conflicts
    CONFLICTS = 12  # the conflicts of one area or all, a page at a time


class ctlstat(IntEnum):
    OK = 0
    NOENT = 2  # no such area or path
    IO = 5
    INVAL = 22  # bad mark, path or argument
    BUSY = 16  # another job holds what this one needs
    NOSPC = 28  # the cache cannot hold what was asked


class mark(IntEnum):
    """What a path should be (see nfsd/store/index.py Mark)."""

    INHERIT = 0
    REAL = 1
    KEEP = 2
    UNREAL = 3


class layer(IntEnum):
    NONE = 0  # a directory the index does not know yet
    REAL = 1
    UNREAL = 2


class kind(IntEnum):
    FILE = 1
    DIR = 2
    SYMLINK = 3
    OTHER = 4


class jobstate(IntEnum):
    RUNNING = 0
    DONE = 1
    FAILED = 2


path_string = String(MAX_PATH)
message_string = String(MAX_MESSAGE)


@xdr_struct
class ctlres:
    status: ctlstat = xf(Enum(ctlstat))
    message: bytes = xf(message_string)


@xdr_struct
class markargs:
    path: bytes = xf(path_string)
    mark: mark = xf(Enum(mark))


@xdr_struct
class markres:
    status: ctlstat = xf(Enum(ctlstat))
    message: bytes = xf(message_string)
    job: int = xf(uint64)  # 0: nothing to do


@xdr_struct
class lsargs:
    path: bytes = xf(path_string)
    after: bytes = xf(path_string)  # the last name of the previous page, b"" for the first


@xdr_struct
class lsentry:
    name: bytes = xf(String(MAX_PATH))
    kind: kind = xf(Enum(kind))
    layer: layer = xf(Enum(layer))
    own_mark: mark = xf(Enum(mark))
    mark: mark = xf(Enum(mark))  # in force: own, inherited, or the area's default
    mark_from: bytes = xf(path_string)  # where the mark in force is set; b"" when it is the default
    size: int = xf(uint64)
    cached: int = xf(uint64)  # bytes of its content in the cache (Unreal files)
    pinned: bool = xf(boolean)


@xdr_struct
class lsres:
    status: ctlstat = xf(Enum(ctlstat))
    message: bytes = xf(message_string)
    self_entry: list[lsentry] = xf(Array(lsentry, 1))  # the path itself
    entries: list[lsentry] = xf(Array(lsentry, LS_PAGE))  # a directory's children
    more: bool = xf(boolean)


@xdr_struct
class jobres:
    status: ctlstat = xf(Enum(ctlstat))
    message: bytes = xf(message_string)
    state: jobstate = xf(Enum(jobstate))
    files_done: int = xf(uint64)
    files_total: int = xf(uint64)
    bytes_done: int = xf(uint64)
    bytes_total: int = xf(uint64)
    errors: list[bytes] = xf(Array(message_string, 100))


@xdr_struct
class importargs:
    area: bytes = xf(String(255))
    source: bytes = xf(path_string)  # the source's state directory


@xdr_struct
class importres:
    status: ctlstat = xf(Enum(ctlstat))
    message: bytes = xf(message_string)
    files: int = xf(uint64)
    directories: int = xf(uint64)
    symlinks: int = xf(uint64)
    bytes: int = xf(uint64)
    skipped: int = xf(uint64)
    refused: int = xf(uint64)  # entries whose path the index must never hold
    refusals: list[bytes] = xf(Array(message_string, IMPORT_REFUSALS))  # the first: "path: why"


@xdr_struct
class fsckres:
    status: ctlstat = xf(Enum(ctlstat))
    lines: list[bytes] = xf(Array(message_string, MAX_LINES))
    ok: bool = xf(boolean)


@xdr_struct
class peerstate:
    name: bytes = xf(String(64))
    connected: bool = xf(boolean)
    outgoing: bool = xf(boolean)  # this server dialled the live link
    since: int = xf(uint64)  # unix seconds the live link was made; 0 if none
    last_contact: int = xf(uint64)  # unix seconds a link last existed; 0 if never


@xdr_struct
class peersres:
    status: ctlstat = xf(Enum(ctlstat))
    message: bytes = xf(message_string)
    peers: list[peerstate] = xf(Array(peerstate, MAX_PEERS))


@xdr_struct
class peerlink:
    """A peer's link, for STATUS."""

    name: bytes = xf(String(64))
    peer_id: bytes = xf(String(64))
    connected: bool = xf(boolean)
    outgoing: bool = xf(boolean)  # this server dialled the live link
    since: int = xf(uint64)  # unix seconds the live link was made; 0 if none
    last_contact: int = xf(uint64)  # unix seconds a link last existed; 0 if never
    bytes_in: int = xf(uint64)  # received from it since the server started
    bytes_out: int = xf(uint64)  # sent to it


@xdr_struct
class areasync:
    """How far one peer and this server are with each other's logs of one area."""

    peer: bytes = xf(String(64))
    acked: int = xf(uint64)  # the sequence of our log it acknowledged; 0 if never
    acked_at: int = xf(uint64)  # unix seconds of that acknowledgement; 0 if never
    heard: int = xf(uint64)  # unix seconds it last asked for our log; 0 if never
    applied: int = xf(uint64)  # the last sequence of its log applied here
    catching_up: bool = xf(boolean)  # a full catch-up of its log is under way
    refused: int = xf(uint64)  # entries of its log that could not be applied here


@xdr_struct
class areastatus:
    name: bytes = xf(String(255))
    stamped: int = xf(uint64)  # the last sequence of our log that peers can be served
    conflicts: int = xf(uint64)  # paths with conflict copies
    conflicts_counted: bool = xf(boolean)  # False: counting stopped; at least `conflicts`
    peers: list[areasync] = xf(Array(areasync, MAX_PEERS))  # the peers sharing the area


@xdr_struct
class statusres:
    status: ctlstat = xf(Enum(ctlstat))
    message: bytes = xf(message_string)
    linked: bool = xf(boolean)  # False: this server has no peer links (nor sync state)
    peer_id: bytes = xf(String(64))  # this server's own
    peers: list[peerlink] = xf(Array(peerlink, MAX_PEERS))
    areas: list[areastatus] = xf(Array(areastatus, MAX_AREAS))


@xdr_struct
class conflictsargs:
    area: bytes = xf(String(255))  # empty: every area
    after_area: bytes = xf(String(255))  # where the previous page ended; empty for the first
    after_path: bytes = xf(path_string)


@xdr_struct
class conflictversion:
    """One version a conflicted path holds: the one shown under the path, or a copy."""

    name: bytes = xf(path_string)  # the area path it shows under
    author: bytes = xf(String(64))  # the peer id that made it
    author_name: bytes = xf(String(64))  # the roster's name of it; "" for this peer or unknown
    mine: bool = xf(boolean)  # this peer made it
    kind: kind = xf(Enum(kind))
    size: int = xf(uint64)
    mtime_ns: int = xf(int64)
    content: bytes = xf(path_string)  # a file's blob id, a symlink's target


@xdr_struct
class conflictentry:
    area: bytes = xf(String(255))
    path: bytes = xf(path_string)
    shown: conflictversion = xf(conflictversion)  # what keeps the path
    copies: list[conflictversion] = xf(Array(conflictversion, MAX_COPIES))
    more_copies: int = xf(uint64)  # copies beyond those listed


@xdr_struct
class conflictsres:
    status: ctlstat = xf(Enum(ctlstat))
    message: bytes = xf(message_string)
    conflicts: list[conflictentry] = xf(Array(conflictentry, CONFLICTS_PAGE))
    more: bool = xf(boolean)  # call again from the cursor for the rest
    next_area: bytes = xf(String(255))
    next_path: bytes = xf(path_string)


PROCEDURES: dict[int, tuple[str, XdrType[Any], XdrType[Any]]] = {
    CONTROLPROC.NULL: ("NULL", void, void),
    CONTROLPROC.MARK: ("MARK", markargs, markres),
    CONTROLPROC.LS: ("LS", lsargs, lsres),
    CONTROLPROC.JOB: ("JOB", uint64, jobres),
    CONTROLPROC.IMPORT: ("IMPORT", importargs, importres),
    CONTROLPROC.FSCK: ("FSCK", boolean, fsckres),
    CONTROLPROC.SOURCE: ("SOURCE", path_string, ctlres),
    CONTROLPROC.ROSTER: ("ROSTER", void, ctlres),
    CONTROLPROC.PEERS: ("PEERS", void, peersres),
    CONTROLPROC.PING: ("PING", String(64), ctlres),
    CONTROLPROC.SYNC: ("SYNC", String(255), ctlres),  # the area's name; empty: every area
    CONTROLPROC.STATUS: ("STATUS", void, statusres),
    CONTROLPROC.CONFLICTS: ("CONFLICTS", conflictsargs, conflictsres),
}
"""Control procedure number -> (name, argument type, result type)."""
