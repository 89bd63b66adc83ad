"""nfs-ganesha as a reference NFSv3 server for tests and benchmarks, on the host's loopback.

This module owns starting and stopping Debian's ``ganesha.nfsd`` (FSAL VFS) exporting one
directory with given ports, and the portmapper it needs: ganesha refuses to start without one,
so ``rpcbind -f -w`` is started first when nothing answers a portmapper NULL call on
127.0.0.1:111, and stopped again by whoever started it. Everything it writes (config, log, pid
file, NFSv4 recovery directory) lives in a private work directory.

    with GaneshaServer(Path("/srv/export"), nfs_port=20490, mount_port=20048) as server:
        ...  # mount 127.0.0.1:/srv/export (NFSv3 names the export by its Path)
        server.restart()  # same config, same ports; file handles stay valid
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from .oncrpc import MOUNT_PROG, NFS_PROG, portmap_mismatch, portmapper_answers, rpc_null

#: Debian packages this module needs.
DEBIAN_PACKAGES = ("nfs-ganesha", "nfs-ganesha-vfs", "rpcbind")


class GaneshaError(RuntimeError):
    """ganesha or its portmapper did not start or stop as asked."""


def _wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise GaneshaError(f"{what}: process exited with status {proc.returncode}")
        if predicate():
            return
        time.sleep(0.1)
    raise GaneshaError(f"{what}: not ready after {timeout:.0f} s")


def _stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class Rpcbind:
    """A portmapper on 127.0.0.1:111: reuses one that answers, else runs ``rpcbind -f -w``."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def started_here(self) -> bool:
        return self.proc is not None

    def start(self) -> None:
        if portmapper_answers():
            return
        rpcbind = shutil.which("rpcbind") or "/usr/sbin/rpcbind"
        if not Path(rpcbind).is_file():
            raise GaneshaError("no portmapper answers on 127.0.0.1:111 and rpcbind is missing")
        Path("/run/rpcbind").mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [rpcbind, "-f", "-w"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        _wait_for(portmapper_answers, 10, "rpcbind", self.proc)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None


class GaneshaServer:
    """One ganesha.nfsd serving ``export`` over NFSv3/TCP on 127.0.0.1."""

    def __init__(
        self,
        export: Path,
        *,
        nfs_port: int = 20490,
        mount_port: int = 20048,
        nlm_port: int = 20491,
        rquota_port: int = 20492,
        workdir: Path | None = None,
    ) -> None:
        self.export = Path(export).resolve()
        self.nfs_port = nfs_port
        self.mount_port = mount_port
        self.nlm_port = nlm_port
        self.rquota_port = rquota_port
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="realize-ganesha-"))
        self.config_path = self.workdir / "ganesha.conf"
        self.log_path = self.workdir / "ganesha.log"
        self.pid_path = self.workdir / "ganesha.pid"
        self.portmapper = Rpcbind()
        self.proc: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        recovery = self.workdir / "recovery"
        return f"""
NFS_CORE_PARAM {{
    Protocols = 3;
    NFS_Port = {self.nfs_port};
    MNT_Port = {self.mount_port};
    NLM_Port = {self.nlm_port};
    Rquota_Port = {self.rquota_port};
    Enable_NLM = false;
    Enable_RQUOTA = false;
    Bind_addr = 127.0.0.1;
}}
NFSV4 {{
    Graceless = true;
    RecoveryRoot = "{recovery}";
}}
EXPORT {{
    Export_Id = 1;
    Path = "{self.export}";
    Pseudo = "{self.export}";
    Access_Type = RW;
    Squash = No_Root_Squash;
    Protocols = 3;
    Transports = TCP;
    SecType = sys;
    FSAL {{ Name = VFS; }}
}}
"""

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _ready(self) -> bool:
        return rpc_null("127.0.0.1", self.nfs_port, NFS_PROG, 3) and rpc_null(
            "127.0.0.1", self.mount_port, MOUNT_PROG, 3
        )

    def portmap_problem(self) -> str | None:
        """None if the portmapper on 127.0.0.1:111 points at this ganesha, else what's wrong."""
        return portmap_mismatch(self.nfs_port, self.mount_port)

    def start(self, timeout: float = 60.0) -> None:
        if self.proc is not None:
            raise GaneshaError("ganesha already running")
        binary = shutil.which("ganesha.nfsd")
        if binary is None:
            raise GaneshaError(f"ganesha.nfsd not found (install {' '.join(DEBIAN_PACKAGES)})")
        self.portmapper.start()
        (self.workdir / "recovery").mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config())
        self.proc = subprocess.Popen(
            [binary, "-F", "-f", str(self.config_path), "-L", str(self.log_path),
             "-p", str(self.pid_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            _wait_for(self._ready, timeout, "ganesha.nfsd", self.proc)
        except GaneshaError as exc:
            self.stop()
            raise GaneshaError(f"{exc}\n--- ganesha log ---\n{self.log_tail()}") from None
        # ganesha registers with the portmapper as it starts; give that a moment, but leave
        # judging it to portmap_problem(): explicit-port use does not need the portmapper
        deadline = time.monotonic() + 5
        while self.portmap_problem() is not None and time.monotonic() < deadline:
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None

    def restart(self, downtime: float = 0.0) -> None:
        """Stop, stay down ``downtime`` seconds, start again with the same config and ports.

        The portmapper stays up.
        """
        self.stop()
        time.sleep(downtime)
        self.start()

    def close(self) -> None:
        """Stop ganesha, the portmapper if started here, and remove a private work directory."""
        try:
            self.stop()
        finally:
            self.portmapper.stop()
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> GaneshaServer:
        try:
            self.start()
        except BaseException:
            with contextlib.suppress(Exception):
                self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
