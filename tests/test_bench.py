"""Smoke test of the benchmark harness: `scripts/bench --quick` runs and writes its outputs.

Checks that the harness works end to end (both servers, every workload, the ceilings, the
report and the chart), not any timing: tiny sizes, one round, no thresholds.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.bench.run import CEILINGS, METRICS
from tests.support.server import REPO

pytestmark = pytest.mark.slow

NUMBER = r"[0-9][0-9,]*(?:\.[0-9]+)?"


def test_bench_quick_writes_table_chart_and_json(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench"), "--quick", "--out", str(out),
         "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, f"scripts/bench --quick failed:\n{proc.stdout}\n{proc.stderr}"

    table = (out / "results.md").read_text()
    for metric in METRICS:
        rows = [line for line in table.splitlines() if line.startswith(f"| {metric.label} |")]
        assert len(rows) == 1, f"no single row for {metric.label!r} in results.md:\n{table}"
        cells = [c.strip() for c in rows[0].strip("|").split("|")]
        # workload, unit, realize median, realize min-max, ganesha median, ganesha min-max, ratio
        assert cells[1] == metric.unit
        for cell in (cells[2], cells[4], cells[6]):
            assert re.fullmatch(NUMBER, cell), f"{metric.label}: not a number: {cell!r}"
        for cell in (cells[3], cells[5]):
            assert re.fullmatch(f"{NUMBER}-{NUMBER}", cell), f"{metric.label}: {cell!r}"
    for ceiling in CEILINGS:
        assert f"| {ceiling.label} |" in table, f"no row for ceiling {ceiling.label!r}"

    # the metadata walk by name, so the check fails if its row is dropped from METRICS too
    [walk] = [m for m in METRICS if m.key == "walk"]
    assert walk.unit == "entries/s"
    [row] = [line for line in table.splitlines() if line.startswith(f"| {walk.label} |")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    for cell in (cells[2], cells[4], cells[6]):
        assert float(cell.replace(",", "")) > 0, f"metadata walk: {cell!r} in {row}"
    assert "Metadata walk: one walk of the whole tree took" in table

    png = (out / "results.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000

    raw = json.loads((out / "results.json").read_text())
    assert raw["errors"] == []
    assert raw["values"]["tcp"]["machine"], "no loopback TCP ceiling"
    for server in ("realize", "ganesha"):
        assert raw["values"]["null_1x1"][server], f"no RPC NULL ceiling against {server}"
        # one walk per round; the client checked it found every entry of the tree
        walks = raw["values"]["walk"][server]
        assert len(walks) == 1 and walks[0] > 0, f"metadata walk against {server}: {walks}"
        assert raw["values"]["walk_calls"][server][0] > 0, server
