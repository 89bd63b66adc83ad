"""Smoke test of the household benchmark: `scripts/bench-household --quick` runs end to end
with small sizes: the ceilings, a cold read of a peer's file (its content checked against its
blob id by the benchmark itself), a read of that file after an edit (built from the old
version), the visibility of a rename and a delete, and a catch-up after missed changes. It
checks that the harness works and what it read was right, not any speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.server import REPO

pytestmark = pytest.mark.slow


def test_bench_household_quick_measures_everything(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench-household"), "--quick", "--out", str(out),
         "--workdir", str(tmp_path), "--changes", "200", "--read-mib", "8"],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, f"bench-household failed:\n{proc.stdout}\n{proc.stderr}"
    results = json.loads((out / "household.json").read_text())
    for key in ("tls_ceiling", "blocking_tls_ceiling", "cache_write_ceiling", "cold_read"):
        assert results[key] > 0, key
    cpu = results["cold_read_cpu"]  # what the read cost each process, per GB
    assert cpu["reading_peer"] > 0 and cpu["client"] > 0
    assert 0 < results["rename_seconds"] < 60 and 0 < results["delete_seconds"] < 60
    assert results["settings"]["changes"] == 200 and results["catchup_seconds"] > 0
    assert results["full_catchup_seconds"] > 0 and results["full_catchup_peak_rss"] > 0
    # The edited file was read right (checked by the benchmark), built from the old version:
    # less came over the link than the 8 MiB file.
    assert 0 < results["edit_moved"] < 8 << 20 and results["edit_read"] > 0
    assert results["cut_listing"] > 0 and results["fixed_listing"] > 0
    assert results["fixed_ingest"] > 0 and results["cut_ingest"] > 0  # each checked its blob id
    table = (out / "household.md").read_text()
    assert "CPU per GB of that read" in table
    assert "cold READ of a peer's file" in table and "catch-up of 200 changes" in table
    from tests.support.bench.household import readme_section

    section = readme_section(results, "scripts/bench-household --quick")
    assert section.startswith("### The household\n") and "| cold READ of a peer's file" in section
