"""The persistent fileid table: what makes handles survive restarts and renames.

Every object of every area has a fileid, allocated once and never reused. The table (column
family `inodes`) records, in one batch per change:

- `F fid`            → primary parent fid, area id, st_dev, st_ino, name
- `N parent name`    → fid            (each directory entry)
- `L fid parent name` → ""            (every name of a file: hard links have several)
- `I area dev ino`   → fid            (so a second name of the same inode gets the same fid)
- `X fid`            → verifier       (of a CREATE EXCLUSIVE, so a retransmission finds it)
- `G fid`            → identity       (what tells the file from a later one with its inode)

A path is found by walking parents up to the area root, so renaming a directory touches one
record, not its descendants. An Unreal object (known from the index, not on the disk) has
dev = ino = 0 and no `I` record; when its content arrives its node gets the new file's inode
and keeps its fid, so clients never see it change.

A fid names one file for ever, so a handle does too. A file deleted by another program may
leave its inode number to a new file: (dev, ino) alone would then hand the old fid the new
file. So each node also records the file's identity (`osapi.identity`: the kernel's file
handle, with the inode's generation), taken when the node gets its inode, and whoever turns
a node into a descriptor or a stat checks it (`recognizes`): a file that is not the recorded
one is NFS3ERR_STALE. A node moved to another name or parent keeps its identity.

Nodes recorded before identities were (no `G` record) are recognized only for a file born
before the table itself, which can be no other; its identity is then recorded. Any other
such node is STALE, and a LOOKUP gives the file a new fid: never someone else's file.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, replace

from nfsd.store.db import Batch, Store

ROOT_FID = 1  # the virtual directory that the "/" export shows, holding one entry per area
FIRST_FID = 16

_FID = struct.Struct(">Q")
_NODE = struct.Struct(">QIQQ")  # parent, area, dev, ino; the name follows
_INO = struct.Struct(">IQQ")
_CACHE_LIMIT = 200_000
# A file's birth time comes from the file system's clock, coarse (a tick, or a second on
# some), the table's creation from a fine one: born this much earlier, it surely came first.
_BIRTH_SLACK_NS = 2_000_000_000

UNIDENTIFIED = b"?"  # recorded when the file could not be identified: recognizes no file


@dataclass(slots=True, frozen=True)
class Node:
    fid: int
    parent: int  # 0 for an area's root
    area: int
    dev: int
    ino: int
    name: bytes
    # What tells the file from a later one that reuses its inode number (`osapi.identity`);
    # None: not given (put_node keeps or takes it) or, as read, recorded before identities.
    identity: bytes | None = None

    @property
    def unreal(self) -> bool:
        return self.dev == 0 and self.ino == 0


def _child_key(parent: int, name: bytes) -> bytes:
    return b"N" + _FID.pack(parent) + name


def _link_key(fid: int, parent: int, name: bytes) -> bytes:
    return b"L" + _FID.pack(fid) + _FID.pack(parent) + name


def _ino_key(area: int, dev: int, ino: int) -> bytes:
    return b"I" + _INO.pack(area, dev, ino)


def _identity_key(fid: int) -> bytes:
    return b"G" + _FID.pack(fid)


class InodeTable:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.table = store.family("inodes")
        raw = store.family("meta").get(b"next-fid")
        self._next = _FID.unpack(raw)[0] if raw else FIRST_FID
        self._nodes: dict[int, Node] = {}
        self._created_ns: int | None = None
        # How the file a node names now is identified (set by the local layer, which can
        # reach it): put_node asks it when a node gets an inode without an identity.
        self.identify: Callable[[Node], bytes] | None = None

    # ---- reads ----

    def node(self, fid: int) -> Node | None:
        node = self._nodes.get(fid)
        if node is None:
            raw = self.table.get(b"F" + _FID.pack(fid))
            if raw is None:
                return None
            parent, area, dev, ino = _NODE.unpack_from(raw)
            identity = self.table.get(_identity_key(fid))
            node = Node(
                fid,
                parent,
                area,
                dev,
                ino,
                bytes(raw[_NODE.size :]),
                None if identity is None else bytes(identity),
            )
            if len(self._nodes) >= _CACHE_LIMIT:
                self._nodes.clear()
            self._nodes[fid] = node
        return node

    def child(self, parent: int, name: bytes) -> int | None:
        raw = self.table.get(_child_key(parent, name))
        return None if raw is None else _FID.unpack(raw)[0]

    def by_inode(self, area: int, dev: int, ino: int) -> int | None:
        raw = self.table.get(_ino_key(area, dev, ino))
        return None if raw is None else _FID.unpack(raw)[0]

    def verifier(self, fid: int) -> bytes | None:
        """The CREATE EXCLUSIVE verifier the file was made with, if any."""
        raw = self.table.get(b"X" + _FID.pack(fid))
        return None if raw is None else bytes(raw)

    def recognizes(self, node: Node, current: bytes, birth: Callable[[], int | None]) -> bool:
        """Whether the file found with the node's (dev, ino), whose identity is `current`, is
        the node's own; `birth()` is its birth time (ns) if known. A node recorded before
        identities were recognizes only a file born before the table, and records it."""
        if node.identity is not None:
            return node.identity == current
        born = birth()
        if born is None or born >= self.created_ns() - _BIRTH_SLACK_NS:
            return False
        batch = self.store.batch()
        batch.put("inodes", _identity_key(node.fid), current)
        batch.commit()
        if node.fid in self._nodes:
            self._nodes[node.fid] = replace(node, identity=current)
        return True

    def created_ns(self) -> int:
        """When the table was made (the store's creation); 0 when unknown."""
        if self._created_ns is None:
            raw = self.store.family("meta").get(b"created-ns")
            self._created_ns = _FID.unpack(raw)[0] if raw else 0
        return self._created_ns

    def links(self, fid: int) -> list[tuple[int, bytes]]:
        prefix = b"L" + _FID.pack(fid)
        found = []
        for key in self.table.keys(from_key=prefix):
            if not key.startswith(prefix):
                break
            found.append((_FID.unpack_from(key, 9)[0], bytes(key[17:])))
        return found

    # ---- changes, each within the caller's batch ----

    def allocate(self, batch: Batch) -> int:
        fid = self._next
        self._next += 1
        batch.put("meta", b"next-fid", _FID.pack(self._next))
        return fid

    def put_node(self, batch: Batch, node: Node) -> None:
        """Record a node. Without an identity it keeps the recorded one when its inode is the
        recorded one (a rename, a link), else the file it names now is identified."""
        identity = node.identity
        if identity is None and not node.unreal:
            old = self.node(node.fid)
            if old is not None and (old.dev, old.ino) == (node.dev, node.ino):
                identity = old.identity
            elif self.identify is not None:
                identity = self.identify(node)
        if identity is None or node.unreal:
            batch.delete("inodes", _identity_key(node.fid))
        else:
            batch.put("inodes", _identity_key(node.fid), identity)
        batch.put(
            "inodes",
            b"F" + _FID.pack(node.fid),
            _NODE.pack(node.parent, node.area, node.dev, node.ino) + node.name,
        )
        if not node.unreal:
            batch.put("inodes", _ino_key(node.area, node.dev, node.ino), _FID.pack(node.fid))
        self._nodes.pop(node.fid, None)

    def put_verifier(self, batch: Batch, fid: int, verifier: bytes) -> None:
        batch.put("inodes", b"X" + _FID.pack(fid), verifier)

    def forget_inode(self, batch: Batch, node: Node) -> None:
        """The node's (dev, ino) no longer names it (its content left the disk)."""
        if not node.unreal and self.by_inode(node.area, node.dev, node.ino) == node.fid:
            batch.delete("inodes", _ino_key(node.area, node.dev, node.ino))

    def add_link(self, batch: Batch, fid: int, parent: int, name: bytes) -> None:
        batch.put("inodes", _child_key(parent, name), _FID.pack(fid))
        batch.put("inodes", _link_key(fid, parent, name), b"")

    def drop_link(self, batch: Batch, fid: int, parent: int, name: bytes) -> None:
        batch.delete("inodes", _child_key(parent, name))
        batch.delete("inodes", _link_key(fid, parent, name))

    def drop_node(self, batch: Batch, node: Node) -> None:
        """Forget a fid entirely (its last name is gone)."""
        batch.delete("inodes", b"F" + _FID.pack(node.fid))
        batch.delete("inodes", b"X" + _FID.pack(node.fid))
        batch.delete("inodes", _identity_key(node.fid))
        self.forget_inode(batch, node)
        for parent, name in self.links(node.fid):
            self.drop_link(batch, node.fid, parent, name)
        self._nodes.pop(node.fid, None)

    def forget_cached(self, fid: int) -> None:
        self._nodes.pop(fid, None)
