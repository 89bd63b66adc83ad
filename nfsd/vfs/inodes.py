"""The persistent fileid table: what makes handles survive restarts and renames.

Every object of every area has a fileid, allocated once and never reused. The table (column
family `inodes`) records, in one batch per change:

- `F fid`            → primary parent fid, area id, st_dev, st_ino, name
- `N parent name`    → fid            (each directory entry)
- `L fid parent name` → ""            (every name of a file: hard links have several)
- `I area dev ino`   → fid            (so a second name of the same inode gets the same fid)
- `X fid`            → verifier       (of a CREATE EXCLUSIVE, so a retransmission finds it)

A path is found by walking parents up to the area root, so renaming a directory touches one
record, not its descendants. An Unreal object (known from the index, not on the disk) has
dev = ino = 0 and no `I` record; when its content arrives its node gets the new file's inode
and keeps its fid, so clients never see it change.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from nfsd.store.db import Batch, Store

ROOT_FID = 1  # the virtual directory that the "/" export shows, holding one entry per area
FIRST_FID = 16

_FID = struct.Struct(">Q")
_NODE = struct.Struct(">QIQQ")  # parent, area, dev, ino; the name follows
_INO = struct.Struct(">IQQ")
_CACHE_LIMIT = 200_000


@dataclass(slots=True, frozen=True)
class Node:
    fid: int
    parent: int  # 0 for an area's root
    area: int
    dev: int
    ino: int
    name: bytes

    @property
    def unreal(self) -> bool:
        return self.dev == 0 and self.ino == 0


def _child_key(parent: int, name: bytes) -> bytes:
    return b"N" + _FID.pack(parent) + name


def _link_key(fid: int, parent: int, name: bytes) -> bytes:
    return b"L" + _FID.pack(fid) + _FID.pack(parent) + name


def _ino_key(area: int, dev: int, ino: int) -> bytes:
    return b"I" + _INO.pack(area, dev, ino)


class InodeTable:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.table = store.family("inodes")
        raw = store.family("meta").get(b"next-fid")
        self._next = _FID.unpack(raw)[0] if raw else FIRST_FID
        self._nodes: dict[int, Node] = {}

    # ---- reads ----

    def node(self, fid: int) -> Node | None:
        node = self._nodes.get(fid)
        if node is None:
            raw = self.table.get(b"F" + _FID.pack(fid))
            if raw is None:
                return None
            parent, area, dev, ino = _NODE.unpack_from(raw)
            node = Node(fid, parent, area, dev, ino, bytes(raw[_NODE.size :]))
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
        self.forget_inode(batch, node)
        for parent, name in self.links(node.fid):
            self.drop_link(batch, node.fid, parent, name)
        self._nodes.pop(node.fid, None)

    def forget_cached(self, fid: int) -> None:
        self._nodes.pop(fid, None)
