"""Start a real Realize server process for a test, and talk to it over the wire."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass
class ServerProcess:
    process: subprocess.Popen
    state_dir: Path
    nfs_port: int
    mount_port: int
    log_path: Path

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(
    areas: dict[str, Path],
    state_dir: Path,
    *,
    port: int = 0,
    mount_port: int | None = None,
    portmap: str = "off",
    extra: list[str] | None = None,
    timeout: float = 30,
    sources: list[Path] | None = None,
) -> ServerProcess:
    """Run `realize run` on a fresh or existing state directory until it reports its ports."""
    state_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "areas": {name: str(path) for name, path in areas.items()},
        "server": {},
        "sources": [str(p) for p in sources or []],
    }
    (state_dir / "config.json").write_text(json.dumps(config))
    (state_dir / "server.json").unlink(missing_ok=True)
    command = [
        sys.executable,
        "-m",
        "nfsd.cli",
        "--state-dir",
        str(state_dir),
        "run",
        "--port",
        str(port),
        "--portmap",
        portmap,
    ]
    if mount_port is not None:
        command += ["--mount-port", str(mount_port)]
    command += extra or []
    log_path = state_dir / "test-server.log"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=REPO,
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            info = json.loads((state_dir / "server.json").read_text())
            if info["pid"] == process.pid:
                return ServerProcess(
                    process, state_dir, info["nfs_port"], info["mount_port"], log_path
                )
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            pass
        if process.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text(errors='replace')}")
        time.sleep(0.05)
    process.kill()
    raise RuntimeError("server did not start in time")
