"""The area table: each area's name, its id, the fileid of its root, and where it lives.

Kept in the `meta` family, the one place that knows its keys:

- `area:NAME`      → area id (4 bytes) ‖ root fileid (8 bytes)
- `area-path:NAME` → the area's directory (for whoever attaches this state as a source)
- `next-area`      → the next area id to give
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from nfsd.store.db import Batch, Store

_AREA_KEY = b"area:"
_PATH_KEY = b"area-path:"
_NEXT_KEY = b"next-area"
_AREA = struct.Struct(">IQ")
_ID = struct.Struct(">I")


@dataclass(slots=True, frozen=True)
class AreaRecord:
    id: int
    name: str
    root_fid: int
    path: bytes | None  # None in a store that never recorded it


class AreaTable:
    def __init__(self, store: Store) -> None:
        self.meta = store.family("meta")

    def get(self, name: str) -> AreaRecord | None:
        raw = self.meta.get(_AREA_KEY + name.encode())
        if raw is None:
            return None
        area_id, root = _AREA.unpack_from(raw)
        path = self.meta.get(_PATH_KEY + name.encode())
        return AreaRecord(area_id, name, root, None if path is None else bytes(path))

    def __iter__(self) -> Iterator[AreaRecord]:
        for key, _ in self.meta.items(from_key=_AREA_KEY):
            if not key.startswith(_AREA_KEY):
                break
            record = self.get(key[len(_AREA_KEY) :].decode())
            if record is not None:
                yield record

    def register(
        self, batch: Batch, name: str, path: bytes, allocate_fid: Callable[[Batch], int]
    ) -> AreaRecord:
        """The area `name`, recorded in `batch` if new (its root gets a fileid from
        `allocate_fid`); its directory is recorded as `path` either way."""
        known = self.get(name)
        if known is None:
            area_id = _ID.unpack(self.meta.get(_NEXT_KEY, _ID.pack(1)))[0]
            batch.put("meta", _NEXT_KEY, _ID.pack(area_id + 1))
            root = allocate_fid(batch)
            batch.put("meta", _AREA_KEY + name.encode(), _AREA.pack(area_id, root))
        else:
            area_id, root = known.id, known.root_fid
        batch.put("meta", _PATH_KEY + name.encode(), path)
        return AreaRecord(area_id, name, root, path)
