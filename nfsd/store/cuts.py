"""Content-defined cuts of a blob, so that an edit moves only what changed.

The blob cache stores a blob as fixed chunks (nfsd/store/manifest.py): chunk `i` at `i *
chunk_size`. An insertion shifts every fixed chunk after it, so their hashes all change. Cuts
made where the content says (FastCDC, `pyfastcdc`) fall at the same bytes before and after the
insertion, so the cuts of a new version mostly have the hashes of the old one's.

A peer building version B of a file while it holds an older version A (its base) compares
B's cuts (from the peer that has B, the CUTS call of xdr/peer.py) with A's (computed here), and
puts together each fixed chunk of B that matched cuts cover entirely from A's bytes
(`plan_patch`); only the rest is fetched. Nothing is trusted: each assembled chunk is checked
against B's chunk hash when it is stored, and the whole blob against its id.

No sockets, no files: `cuts` reads through a `read(offset, length)` callable. Without
`pyfastcdc` (or with REALIZE_FORCE_FALLBACKS=1) `available()` is False: a peer then serves no
cuts, and a new version is fetched whole.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

import blake3

try:  # the portable fallback is to move every chunk
    from pyfastcdc import FastCDC
except ImportError:  # pragma: no cover (installed wherever the tests run)
    FastCDC = None

CUT_AVERAGE = 64 * 1024  # pyfastcdc's cuts then run 16 KiB to 256 KiB, some 80 KiB on average
CUT_MIN = 16 * 1024  # every cut but the last is at least this long
CUT_MAX = 256 * 1024
CUT = struct.Struct(">I32s")  # one cut on the wire: its length, its BLAKE3
_READ = 4 << 20
_PREADV = hasattr(os, "preadv") and os.environ.get("REALIZE_FORCE_FALLBACKS") != "1"

Read = Callable[[int, int], bytes]  # (offset, length) -> at most length bytes, b"" at the end


def available() -> bool:
    return FastCDC is not None and os.environ.get("REALIZE_FORCE_FALLBACKS") != "1"


@dataclass(frozen=True, slots=True)
class Cut:
    offset: int
    length: int
    hash: bytes


class _Reader:
    """A stream over `read` (or straight into the cutter's buffer with `fd`), as pyfastcdc's
    `cut_stream` reads one, hashing the whole on the way (in large pieces: faster than per
    cut)."""

    def __init__(self, read: Read | None, fd: int | None = None) -> None:
        self.read = read
        self.fd = fd
        self.offset = 0
        self.hasher = blake3.blake3()

    def readinto(self, buffer: memoryview) -> int:
        if self.fd is not None and _PREADV:
            done = os.preadv(self.fd, [buffer[:_READ]], self.offset)
        elif self.fd is not None:  # no preadv (some platforms): a read and a copy
            data = os.pread(self.fd, min(len(buffer), _READ), self.offset)
            done = len(data)
            buffer[:done] = data
        else:
            assert self.read is not None
            data = self.read(self.offset, min(len(buffer), _READ))
            done = len(data)
            buffer[:done] = data
        self.hasher.update(buffer[:done])
        self.offset += done
        return done


def cuts(read: Read | None = None, *, fd: int | None = None) -> tuple[list[Cut], bytes, int]:
    """(cuts, BLAKE3 of the whole, size) of the content `read` gives (or the open file
    `fd`, read in place), read once."""
    if FastCDC is None:
        raise RuntimeError("pyfastcdc is not installed")
    reader = _Reader(read, fd)
    found = [
        Cut(c.offset, c.length, blake3.blake3(c.data).digest())
        for c in FastCDC(CUT_AVERAGE).cut_stream(reader)
    ]
    return found, reader.hasher.digest(), reader.offset


def pack(found: list[Cut]) -> bytes:
    return b"".join(CUT.pack(c.length, c.hash) for c in found)


def unpack(raw: bytes, offset: int = 0) -> list[Cut]:
    """Cuts from their wire form, the first at `offset`; ValueError for a malformed page."""
    if len(raw) % CUT.size:
        raise ValueError("not a whole number of cuts")
    found = []
    for length, digest in CUT.iter_unpack(raw):
        if not 0 < length <= CUT_MAX:
            raise ValueError(f"a cut of {length} bytes")
        found.append(Cut(offset, length, digest))
        offset += length
    return found


Pieces = list[tuple[int, int]]  # (offset in the base, length), in order


def plan_patch(
    base: list[Cut], target: list[Cut], target_size: int, chunk_size: int
) -> dict[int, Pieces]:
    """For each fixed chunk of the target that cuts found in the base cover entirely, the
    pieces of the base that make it, in order."""
    if sum(c.length for c in target) != target_size:
        return {}  # a list that does not describe the target: nothing to build from it
    in_base = {}
    for cut in base:
        in_base.setdefault((cut.hash, cut.length), cut.offset)
    plans: dict[int, Pieces] = {}
    for index in range((target_size + chunk_size - 1) // chunk_size):
        start, end = index * chunk_size, min((index + 1) * chunk_size, target_size)
        pieces = _pieces(target, in_base, start, end)
        if pieces is not None:
            plans[index] = pieces
    return plans


def _pieces(
    target: list[Cut], in_base: dict[tuple[bytes, int], int], start: int, end: int
) -> Pieces | None:
    """The base's pieces making target bytes [start, end), or None if a cut there is not in
    the base."""
    pieces: Pieces = []
    at = _first_cut(target, start)
    while start < end:
        cut = target[at]
        base_offset = in_base.get((cut.hash, cut.length))
        if base_offset is None:
            return None
        skip = start - cut.offset
        length = min(cut.offset + cut.length, end) - start
        if pieces and pieces[-1][0] + pieces[-1][1] == base_offset + skip:
            pieces[-1] = (pieces[-1][0], pieces[-1][1] + length)  # contiguous in the base
        else:
            pieces.append((base_offset + skip, length))
        start += length
        at += 1
    return pieces


def _first_cut(target: list[Cut], offset: int) -> int:
    """The index of the cut holding byte `offset` (cuts in order, contiguous)."""
    low, high = 0, len(target) - 1
    while low < high:
        middle = (low + high + 1) // 2
        if target[middle].offset <= offset:
            low = middle
        else:
            high = middle - 1
    return low
