"""Run the `realize` control command from tests, and build a source: a state directory whose
area's files are hashed into its index, ready to be attached and imported elsewhere."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.support.server import REPO, start_server


def realize_command(state_dir: Path, *args: str) -> list[str]:
    """The command line of `realize --state-dir STATE ARGS...` run from this checkout."""
    return [sys.executable, "-m", "nfsd.cli", "--state-dir", str(state_dir), *args]


def realize_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO))


def run_realize(state_dir: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the control command to its end; the caller looks at the exit code."""
    return subprocess.run(
        realize_command(state_dir, *args),
        capture_output=True,
        text=True,
        cwd=REPO,
        env=realize_env(),
        timeout=timeout,
    )


def make_source(
    base: Path, files: dict[str, bytes], *, area_name: str = "area", timeout: float = 60
) -> Path:
    """A source state directory (`base/source-state`) whose area `area_name` holds `files`
    (relative path -> content) as Real files, every one hashed into the index (a server runs
    on it until its history records their creation)."""
    area, state = base / "source-area", base / "source-state"
    for path, data in files.items():
        (area / path).parent.mkdir(parents=True, exist_ok=True)
        (area / path).write_bytes(data)
    area.mkdir(parents=True, exist_ok=True)
    server = start_server({area_name: area}, state, extra=["--rest", "0.1"])
    try:
        deadline = time.monotonic() + timeout
        while True:
            done = run_realize(state, "history", area_name)
            assert done.returncode == 0, done.stderr
            if done.stdout.count(" create ") >= len(files):
                break
            assert time.monotonic() < deadline, f"the source never hashed its files:\n{done}"
            time.sleep(0.2)
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()
    return state
