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
# Failing seeds the long run found and this code does not fix yet, kept as regression cases
# (the run depends on timing, so expected to fail, not required to). 13665: a conflict copy
# of a version its author renamed away twice (f2 -> f1 -> d/g0) is made a file by another
# peer's delete of the path, and shows with no holder after the heal. 19166 (read from the
# histories, not traced): c, cut off, renames its own f1 away while the others made its
# version, concurrent with a's f1, a file under its copy's name; that file stays after c
# overwrote the renamed one, held by no peer. Both passed every run alone since; each failed
# once in a long run. 45471: a's file deleted as a page moved it aside stayed indexed, Real,
# without its file (the watcher had told of the delete while the entry stood at the copy's
# name; fixed, `Exchange._unmoved`), and a copy showed that no peer held (not traced).
# 24589: a, cut off, renames its own losing file, kept under its copy's name, onto the path,
# then another file over it; after the heal a alone still lists the copy, Unreal, though
# every peer's state of that name is a tombstone (not traced; the copy 47670 showed again
# was of this kind). 29616: c's d/g0 loses while c's user writes it (held Real, never moved
# aside); another peer's rename of the path makes c's version a file under its copy's name,
# and c's edit left that copy showing with no holder. Fixed (the edit takes the copy with
# it, tests/test_exchange_real.py), and passed every run since; kept here until more runs
# say the seed has no other way to diverge. 13665 failed again once since, not traced.
# 57898 (a long run): the copy of a peer's first version of d/g0, which that peer had
# since renamed to d/g1, read as an I/O error on that very peer (the others fetched it from
# it); fixed (a peer's own Real files are a source of its Unreal entries,
# tests/test_own_files.py), kept here until more runs pass it.
STILL_DIVERGING = {
    13665: "a copy of a version renamed away twice shows with no holder",
    19166: "a copy made a file while its author renamed the path away shows with no holder",
    45471: "a deleted file stays in the index of its peer, and a copy shows with no holder",
    24589: "a copy its holder renamed onto its path stays listed on that peer alone",
    29616: "a copy made a file while its holder overwrote its path shows with no holder",
    57898: "a copy whose version its author holds under another name is not read there",
}


@pytest.mark.parametrize(
    "seed",
    [
        *SEEDS,
        *(
            pytest.param(seed, marks=pytest.mark.xfail(strict=False, reason=reason))
            for seed, reason in sorted(STILL_DIVERGING.items())
        ),
    ],
)
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
