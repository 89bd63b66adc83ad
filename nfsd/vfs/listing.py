"""Directory listings in cookie order, and the cache that keeps them between READDIR calls.

A cookie is a 63-bit hash of the entry's name, so a listing is the directory's names sorted
by hash: paging resumes after a cookie's place, and a directory that changes between calls
repeats and skips nothing that stayed. The cookies of "." and ".." come first.

A cached listing is valid while its directory's version (inode, mtime, ctime, and the index
generation for the Unreal entries it merges) is unchanged. Each name keeps the inode it was
listed with and, once known, its fileid, so READDIRPLUS does not look them up again.
"""

from __future__ import annotations

import bisect
import hashlib
from collections import OrderedDict
from dataclasses import dataclass

DOT_COOKIE, DOTDOT_COOKIE = 1, 2
_FIRST_NAME_COOKIE = 3
_MAX_NAMES_CACHED = 1_000_000


def name_cookie(name: bytes) -> int:
    """A directory cookie for `name`: a 63-bit hash, above the cookies of "." and ".."."""
    value = int.from_bytes(hashlib.blake2b(name, digest_size=8).digest(), "big") >> 1
    return max(value, _FIRST_NAME_COOKIE)


@dataclass(slots=True)
class Listing:
    """A directory's names sorted by cookie. `inodes[i]` is 0 for an Unreal entry;
    `fids[i]` is 0 until the entry's fileid is known."""

    version: tuple[int, ...]
    cookies: list[int]
    names: list[bytes]
    inodes: list[int]
    fids: list[int]

    @classmethod
    def of(cls, version: tuple[int, ...], rows: list[tuple[int, bytes, int, int]]) -> Listing:
        """From (cookie, name, inode, fid) rows in any order."""
        rows.sort()
        return cls(
            version,
            [r[0] for r in rows],
            [r[1] for r in rows],
            [r[2] for r in rows],
            [r[3] for r in rows],
        )

    def after(self, cookie: int) -> int:
        """The index of the first name after `cookie`."""
        return bisect.bisect_right(self.cookies, cookie)


class ListingCache:
    """Listings by directory fileid, least recently used dropped past a million names."""

    def __init__(self, max_names: int = _MAX_NAMES_CACHED) -> None:
        self.max_names = max_names
        self._listings: OrderedDict[int, Listing] = OrderedDict()
        self._names = 0

    def get(self, dir_fid: int, version: tuple[int, ...]) -> Listing | None:
        listing = self._listings.get(dir_fid)
        if listing is None or listing.version != version:
            return None
        self._listings.move_to_end(dir_fid)
        return listing

    def put(self, dir_fid: int, listing: Listing) -> None:
        self.forget(dir_fid)
        self._listings[dir_fid] = listing
        self._names += len(listing.names)
        while self._names > self.max_names and len(self._listings) > 1:
            _, dropped = self._listings.popitem(last=False)
            self._names -= len(dropped.names)

    def forget(self, dir_fid: int) -> None:
        old = self._listings.pop(dir_fid, None)
        if old is not None:
            self._names -= len(old.names)
