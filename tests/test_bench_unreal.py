"""Smoke test of the Unreal benchmark: `scripts/bench-unreal --quick` runs end to end.

Checks that the harness works (data, ingest and its ceilings, the source, the cached and Real
READs, the memory pass, the report) and that everything it read was the right content, not
any speed: small sizes, one round, no thresholds. Also checks where `--update-readme` puts
its subsection, on a copy of the README.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.bench.unreal import (
    CEILINGS,
    CHECKS,
    METRICS,
    README_END,
    README_START,
    update_readme,
)
from tests.support.server import REPO

pytestmark = pytest.mark.slow


def test_bench_unreal_quick_measures_everything_and_verifies_content(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "bench-unreal"), "--quick", "--out", str(out),
         "--workdir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, f"bench-unreal --quick failed:\n{proc.stdout}\n{proc.stderr}"

    raw = json.loads((out / "unreal.json").read_text())
    assert raw["errors"] == []
    assert raw["checks"] == dict.fromkeys(CHECKS, True), raw["checks"]
    for metric in [*METRICS, *CEILINGS]:
        values = raw["values"].get(metric.key)
        assert values, f"no figure for {metric.label!r}"
        assert all(v > 0 for v in values), f"{metric.label}: {values}"
    assert raw["values"]["cache_end"][0] <= raw["settings"]["cache_max"] / (1 << 20)
    assert raw["notes"]["rss_series"], "no RSS samples during the memory pass"

    table = (out / "unreal.md").read_text()
    for metric in [*METRICS, *CEILINGS]:
        assert f"| {metric.label} | {metric.unit} |" in table, f"no row for {metric.label!r}"
    assert "**NO**" not in table
    assert list(tmp_path.iterdir()) == [out], "the run left data behind"


README = """# Title

## Performance

Intro.

<!-- bench:start -->
table
<!-- bench:end -->

What limits it.

## Not built yet

- things
"""


def test_update_readme_adds_then_replaces_the_subsection(tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert update_readme(readme, "### The Unreal layer\n\nfirst\n")
    text = readme.read_text()
    block = f"{README_START}\n### The Unreal layer\n\nfirst\n{README_END}\n"
    assert text == README.replace("\n## Not built yet", f"\n{block}\n## Not built yet")
    assert update_readme(readme, "### The Unreal layer\n\nsecond\n")
    assert readme.read_text() == text.replace("first", "second")
    readme.write_text("# Title\n\nno such section\n")
    assert not update_readme(readme, "x")
