"""Content-defined cuts (nfsd/store/cuts.py): after an insertion in the middle, the fixed
chunks of the new version that the old one's bytes can make are all but a few around it, and
the chunks made from the plan are the new version's bytes; a list that lies is not used."""

from __future__ import annotations

import os
import random

import blake3
import pytest

from nfsd.store import cuts
from nfsd.store.cuts import CUT_MAX, Cut, plan_patch

pytestmark = [
    pytest.mark.inproc,
    pytest.mark.skipif(cuts.FastCDC is None, reason="pyfastcdc is not installed"),
]

CHUNK = 256 * 1024


def reader(data: bytes) -> cuts.Read:
    return lambda offset, length: data[offset : offset + length]


def made_from(base: bytes, pieces: cuts.Pieces) -> bytes:
    return b"".join(base[offset : offset + length] for offset, length in pieces)


def test_an_insertion_in_the_middle_leaves_all_but_a_few_chunks_to_build_from_the_old() -> None:
    rng = random.Random(7)
    old = rng.randbytes(8 << 20)
    new = old[: 3 << 20] + rng.randbytes(1 << 20) + old[3 << 20 :]
    old_cuts, old_id, old_size = cuts.cuts(reader(old))
    new_cuts, _, new_size = cuts.cuts(reader(new))
    assert old_size == len(old) and sum(c.length for c in old_cuts) == len(old)
    assert old_id == blake3.blake3(old).digest()  # the whole checked in the same read
    plans = plan_patch(old_cuts, new_cuts, new_size, CHUNK)
    chunks = (new_size + CHUNK - 1) // CHUNK
    missing = chunks - len(plans)
    # The inserted MiB and the cuts it straddles, rounded out to whole chunks.
    assert missing <= ((1 << 20) + 2 * CUT_MAX) // CHUNK + 2, missing
    assert missing >= (1 << 20) // CHUNK  # the new bytes come from nowhere here
    for index, pieces in plans.items():
        assert made_from(old, pieces) == new[index * CHUNK : (index + 1) * CHUNK], index


def test_a_list_that_does_not_add_up_to_the_size_is_not_used() -> None:
    data = random.Random(1).randbytes(2 << 20)
    found, _, size = cuts.cuts(reader(data))
    assert plan_patch(found, found, size + 1, CHUNK) == {}
    assert len(plan_patch(found, found, size, CHUNK)) == (size + CHUNK - 1) // CHUNK


def test_cuts_travel_as_length_and_hash_and_bad_pages_are_refused() -> None:
    found, _, _ = cuts.cuts(reader(random.Random(2).randbytes(1 << 20)))
    assert cuts.unpack(cuts.pack(found)) == found
    with pytest.raises(ValueError):
        cuts.unpack(cuts.pack(found)[:-1])
    with pytest.raises(ValueError):
        cuts.unpack(cuts.pack([Cut(0, 0, b"\0" * 32)]))
    with pytest.raises(ValueError):
        cuts.unpack(cuts.pack([Cut(0, CUT_MAX + 1, b"\0" * 32)]))


def test_a_file_cut_in_place_gives_the_cuts_of_its_bytes(tmp_path) -> None:
    """Read into the cutter's buffer (preadv), or with REALIZE_FORCE_FALLBACKS=1 read and
    copied (the platforms without preadv): the same cuts as of the bytes themselves."""
    data = random.Random(3).randbytes(3 << 20)
    path = tmp_path / "f"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert cuts.cuts(fd=fd) == cuts.cuts(reader(data))
    finally:
        os.close(fd)
