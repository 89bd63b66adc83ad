"""The randomized household run (HOUSEHOLD.md, end): three peers in network namespaces
(tests/support/household.py; c deaf), random creates, edits, renames and deletes on random
peers while links go down and up at random. Once every link is healed and the peers are
quiet, every peer's view must be equal, every file must read through NFS by its blob id, and
every content shown (conflict copies included) must be one that someone wrote.

Seeded: a seed fixes the operations and the cuts, not the timing nor the peer ids (keys are
new each run), so a failing seed is run again a few times to reproduce it. Each seed works in
a directory of its own (`rNNN/`) and leaves the household healed. CI runs `SEEDS`; `pytest
--long tests/test_household_random.py` runs new seeds for an hour (`LONG_SECONDS`), and logs
each seed it runs; a seed that fails joins `SEEDS`.

Operations are file operations made as users make them on a peer's disk (its area
directory): directory renames are left to the in-process randomized run
(tests/test_exchange_random.py).
"""

from __future__ import annotations

import contextlib
import os
import random
import time
from collections.abc import Iterator

import blake3
import pytest

from tests.support.household import (
    NAMES,
    Household,
    household,
    household_unavailable,
    ok,
    realize_in_process,
    wait_for,
)

pytestmark = [
    pytest.mark.wire,
    pytest.mark.skipif(household_unavailable() is not None, reason=str(household_unavailable())),
]

# Fixed in CI; failing seeds found by --long are added here.
SEEDS = [1, 2, 3, 7417, 7418, 47670, 33572, 19158, 32824, 15956, 2374, 29025]
SEEDS += [13665, 19166, 24589, 29616, 45471, 57898]  # see the comment above the test
STEPS = 40  # operations per seed
LONG_SECONDS = 3600.0
FILE_NAMES = ["f0", "f1", "f2", "d/g0", "d/g1"]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Household]:
    with household(tmp_path_factory.mktemp("random-household")) as made:
        wait_for("every link up", made.all_connected, timeout=30)
        yield made
        for name in made.peers:
            assert "Traceback" not in made[name].log(), f"{name}'s log:\n{made[name].log()}"


def _files(home: Household, name: str, prefix: str) -> list[str]:
    """The files of the peer's own disk below `prefix`, as area paths."""
    root = home[name].area
    found = []
    for directory, _dirs, files in os.walk(root / prefix):
        for file in files:
            if not file.startswith("."):
                found.append(os.path.relpath(os.path.join(directory, file), root))
    return sorted(found)


def run_seed(home: Household, seed: int, steps: int = STEPS) -> None:
    rng = random.Random(seed)
    prefix = f"r{seed:03d}"
    written: set[str] = set()
    cut: set[str] = set()
    log = [f"seed {seed}"]
    try:
        for step in range(steps):
            name = rng.choice(NAMES)
            root = home[name].area
            action = rng.random()
            files = _files(home, name, prefix)
            if action < 0.4 or not files:
                path = f"{prefix}/{rng.choice(FILE_NAMES)}"
                data = f"{seed}-{step}-{rng.random()}\n".encode() * rng.randrange(1, 200)
                (root / path).parent.mkdir(parents=True, exist_ok=True)
                (root / path).write_bytes(data)
                written.add(blake3.blake3(data).hexdigest())
                log.append(f"{step}: {name} writes {path}")
            elif action < 0.55:
                path = rng.choice(files)
                with contextlib.suppress(FileNotFoundError):
                    (root / path).unlink()
                log.append(f"{step}: {name} deletes {path}")
            elif action < 0.7:
                old = rng.choice(files)
                new = f"{prefix}/{rng.choice(FILE_NAMES)}"
                if new != old:
                    (root / new).parent.mkdir(parents=True, exist_ok=True)
                    with contextlib.suppress(FileNotFoundError):
                        os.rename(root / old, root / new)
                    log.append(f"{step}: {name} renames {old} to {new}")
            elif action < 0.85:
                victim = rng.choice(NAMES)
                if victim in cut:
                    home.restore(victim)
                    cut.discard(victim)
                    log.append(f"{step}: {victim}'s link restored")
                else:
                    home.cut(victim)
                    cut.add(victim)
                    log.append(f"{step}: {victim}'s link cut")
            time.sleep(rng.choice([0.0, 0.05, 0.3, 0.6]))
    finally:
        for victim in cut:
            home.restore(victim)
    print("\n".join(log))
    wait_for("every link up again", home.all_connected, timeout=90)
    try:
        view = home.assert_converged()
    except AssertionError:
        for name in NAMES:  # what each peer published and applied of this seed's paths
            said = ok(realize_in_process(home[name].state, "history", "docs"))
            print(f"--- {name}'s history of {prefix}:")
            print("\n".join(line for line in said.splitlines() if prefix in line))
        home.quarantined.add(prefix)  # the seeds after it are judged on their own paths
        raise
    shown = {blob for path, kind, _size, blob in view if kind == "file" and path.startswith(prefix)}
    assert shown <= written, f"seed {seed}: contents nobody wrote: {shown - written}"


# Each way to a divergence this run found is fixed and kept as an in-process regression
# test in tests/test_exchange_random.py or tests/test_exchange_real.py (conflict copies no
# peer held, files changed on the disk while a page landed, a rename over a file held on
# its base, a file written over an Unreal entry indexed with the peer's blob, a copy shown
# Unreal again where its peer's user had deleted it, tests/test_delete_grace.py); 7417, 7418
# and 47670 are seeds the long run or CI failed on before; 33572 too (a copy made a file
# while its holder renamed another file over its held bytes; fixed, tests/test_exchange_real.py,
# though the seed passed alone here with and without the fix); and 19158 (a copy's version
# won its path back while its user wrote a new file there, and the copy's file, the only
# holder, was removed; fixed, tests/test_exchange_real.py); and 32824 (an edit stamped after
# its file went, held on the base before it, and the delete after it made one vector, so
# the edit stayed the path's version, held nowhere; fixed, tests/test_exchange_real.py); and
# 15956 (the same with a copy dismissed before the edit: the delete, stamped on the base from
# before both, was concurrent with the edit by the dismissal's counter; fixed, a change on a
# base supersedes what this peer made at the path since, tests/test_exchange_real.py); and
# 2374 (a losing file held while its user wrote it, its version made a file under its copy's
# name elsewhere, then deleted by its user: the copy stayed with its bytes held nowhere;
# fixed as for an overwrite, tests/test_exchange_real.py).
# 13665 (twice), 19166, 24589, 29616, 45471 and 57898 (once each) failed in long runs. 29616 (c's
# d/g0 loses while c's user writes it; another peer's rename makes c's version a file under
# its copy's name, and c's edit left that copy with no holder) and 57898 (a copy of a
# version its author holds Real under another name read as an I/O error there) were traced
# and fixed (tests/test_exchange_real.py, tests/test_own_files.py); 45471 in part (a file
# deleted as a page moved it aside stayed indexed, `Exchange._unmoved`). The other three
# were not traced to one cause: 13665 (a copy of a version its author renamed away twice,
# f2 -> f1 -> d/g0, made a file by another peer's delete of the path), 19166 (c, cut off,
# renames its f1 away while the others make its version a file under its copy's name) and
# 24589 (a, cut off, renames its own losing file, kept under its copy's name, onto the path,
# then another file over it). After the fixes of the later seeds all six passed every run
# here (eleven runs of the six, each its own harness), and they are plain regression cases
# like the rest: one that fails again fails CI, and is traced.


@pytest.mark.parametrize("seed", SEEDS)
def test_random_changes_and_cuts_on_three_peers_converge(home: Household, seed: int) -> None:
    run_seed(home, seed)


@pytest.mark.long
@pytest.mark.timeout(LONG_SECONDS + 1200)
def test_long_random_run(home: Household) -> None:
    """`--long`: new seeds, one after another, for `LONG_SECONDS`."""
    started = time.monotonic()
    seed = int.from_bytes(os.urandom(2), "big") + 1000
    while time.monotonic() - started < LONG_SECONDS:
        print(f"long run: seed {seed}", flush=True)
        run_seed(home, seed)
        seed += 1
