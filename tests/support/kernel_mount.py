"""The Linux-kernel-NFS-client test: one qemu boot that mounts a server on the host and checks it.

This module owns the test plan and its verdict. In one boot of the guest
(:mod:`qemu_guest`), it

1. runs ``tests/guest/posix.sh`` on the guest's own tmpfs (the *reference* run: proves the
   expected values in the script are right for a local file system),
2. mounts the export with explicit NFS and MOUNT ports and runs ``posix.sh`` there,
3. optionally mounts it a second time through the portmapper on the host's port 111 (no ports
   given) and runs the smoke subset of ``posix.sh`` (or all of it) there; meanwhile the host
   checks that the portmapper maps NFS and MOUNT to the ports given, so a portmapper of some
   other server on port 111 cannot pass for this one,
4. optionally runs ``tests/guest/restart.sh``: the guest asks for a server restart with a
   ``HOST-ACTION: restart-server`` console line, the host calls ``restart`` and answers
   ``HOST-DONE: ok``, and the guest checks that its open file, its directory and new operations
   carry on over the hard mount,
5. unmounts.

The guest marks each phase with ``PHASE-BEGIN name`` / ``PHASE-END name rc=N`` and each check
with ``ok NAME`` / ``FAIL NAME: details``; :func:`run_kernel_mount_test` parses them into a
:class:`KernelMountReport`. A pytest test starts a server, calls that function and asserts
``report.passed`` (with ``report.summary()`` as the message).
"""

from __future__ import annotations

import shlex
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .oncrpc import portmap_mismatch
from .qemu_guest import HOST_ADDR, GuestResult, mount_options, run_guest

GUEST_DIR = Path(__file__).resolve().parent.parent / "guest"
RESTART_REQUEST = "HOST-ACTION: restart-server"


@dataclass
class KernelMountConfig:
    """What to mount and which phases to run."""

    export: str
    """The export as the server's MOUNT service names it, e.g. ``/srv/export``."""
    nfs_port: int
    mount_port: int
    portmap_too: bool = False
    """Also mount through the portmapper on the host's port 111 (no ports in the options)."""
    portmap_full: bool = False
    """Run all of posix.sh through the portmapper mount, not just the smoke subset."""
    restart: Callable[[], None] | None = None
    """Restarts the server on the host; enables the restart phase."""
    reference: bool = True
    """Run posix.sh on the guest's tmpfs first."""
    posix_mode: str = "nfs"
    """``nfs`` (every check) or ``smoke`` for the explicit-ports mount."""
    timeout: float = 1200.0
    log: Callable[[str], None] | None = None
    """Called with every console line as it arrives (e.g. ``print``), and with the driver's own
    notes, which start with ``[host] ``."""


@dataclass
class PhaseResult:
    name: str
    rc: int | None = None
    passed: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)
    started: float = 0.0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.rc == 0 and not self.failed


@dataclass
class KernelMountReport:
    guest: GuestResult
    phases: list[PhaseResult]
    expected_phases: list[str]
    host_errors: list[str] = field(default_factory=list)
    restart_seconds: float | None = None

    @property
    def passed(self) -> bool:
        names = [p.name for p in self.phases]
        return (
            self.guest.ok
            and not self.host_errors
            and names == self.expected_phases
            and all(p.ok for p in self.phases)
        )

    def summary(self) -> str:
        out = ["kernel NFS client test summary", "-" * 64]
        done = {p.name: p for p in self.phases}
        for name in self.expected_phases:
            phase = done.get(name)
            if phase is None:
                out.append(f"  {name:<18} NOT RUN")
                continue
            verdict = "pass" if phase.ok else "FAIL"
            rc = "unfinished" if phase.rc is None else f"rc={phase.rc}"
            out.append(
                f"  {name:<18} {verdict}  {len(phase.passed):>3} ok, {len(phase.failed):>2} failed"
                f"  {rc:<10} {phase.seconds:6.1f} s"
            )
            out.extend(f"      FAIL {line}" for line in phase.failed)
        for error in self.host_errors:
            out.append(f"  host error: {error}")
        out.append("-" * 64)
        boot = self.guest.boot_seconds
        out.append(f"  boot {boot:.1f} s, " if boot is not None else "  boot unknown, ")
        out[-1] += f"total {self.guest.elapsed_seconds:.1f} s; {self.guest.describe()}"
        if self.restart_seconds is not None:
            out.append(f"  server restart on the host took {self.restart_seconds:.1f} s")
        out.append(f"  RESULT: {'PASS' if self.passed else 'FAIL'}")
        return "\n".join(out)


def guest_script(cfg: KernelMountConfig) -> tuple[str, list[str]]:
    """The guest's /run/script.sh for ``cfg`` and the phase names it will report, in order."""
    source = shlex.quote(f"{HOST_ADDR}:{cfg.export}")
    ports_opts = shlex.quote(mount_options(cfg.nfs_port, cfg.mount_port))
    # a separate superblock, so the second mount is really a second mount
    pmap_opts = shlex.quote(mount_options(None, None, extra="nosharecache"))
    lines = [
        "failures=0",
        'phase_end() { echo "PHASE-END $1 rc=$2"; [ "$2" = 0 ] || failures=$((failures + 1)); }',
        "mountit() {  # NAME SOURCE TARGET OPTIONS",
        '    echo "PHASE-BEGIN $1"',
        '    mkdir -p "$3"',
        '    echo "info options $4"',
        '    if out=$(nfsmount "$2" "$3" "$4" 2>&1); then',
        '        echo "ok mount $2 on $3"; phase_end "$1" 0; return 0',
        "    fi",
        '    echo "FAIL mount: $out"; dmesg | tail -n 5; phase_end "$1" 1; return 1',
        "}",
        "unmountit() {  # NAME TARGET",
        '    echo "PHASE-BEGIN $1"',
        '    if out=$(umount "$2" 2>&1); then echo "ok umount $2"; phase_end "$1" 0;',
        '    else echo "FAIL umount: $out"; phase_end "$1" 1; fi',
        "}",
        "echo 3 > /proc/sys/vm/drop_caches",
    ]
    phases: list[str] = []
    if cfg.reference:
        phases.append("reference")
        lines += [
            "echo PHASE-BEGIN reference",
            "mkdir -p /tmp/reference",
            "sh /run/posix.sh /tmp/reference reference </dev/null",
            "phase_end reference $?",
        ]
    phases += ["mount-ports", "posix-ports"]
    lines += [
        f"if mountit mount-ports {source} /mnt/ports {ports_opts}; then",
        "    echo PHASE-BEGIN posix-ports",
        f"    sh /run/posix.sh /mnt/ports {shlex.quote(cfg.posix_mode)} </dev/null",
        "    phase_end posix-ports $?",
        "fi",
    ]
    if cfg.portmap_too:
        mode = "nfs" if cfg.portmap_full else "smoke"
        phases += ["mount-portmap", "posix-portmap"]
        lines += [
            f"if mountit mount-portmap {source} /mnt/portmap {pmap_opts}; then",
            "    echo PHASE-BEGIN posix-portmap",
            f"    sh /run/posix.sh /mnt/portmap {mode} </dev/null",
            "    phase_end posix-portmap $?",
            "fi",
        ]
    if cfg.restart is not None:
        phases.append("restart")
        lines += [
            "if grep -q ' /mnt/ports nfs ' /proc/mounts; then",
            "    echo PHASE-BEGIN restart",
            "    sh /run/restart.sh /mnt/ports",  # reads the host's answer from the console
            "    phase_end restart $?",
            "fi",
        ]
    phases.append("umount-ports")
    lines.append("grep -q ' /mnt/ports nfs ' /proc/mounts && unmountit umount-ports /mnt/ports")
    if cfg.portmap_too:
        phases.append("umount-portmap")
        lines.append(
            "grep -q ' /mnt/portmap nfs ' /proc/mounts && unmountit umount-portmap /mnt/portmap"
        )
    lines.append("exit $failures")
    return "\n".join(lines) + "\n", phases


def run_kernel_mount_test(cfg: KernelMountConfig) -> KernelMountReport:
    """Boot the guest once, run every configured phase against the server, and judge them."""
    script, expected = guest_script(cfg)
    files = {
        "posix.sh": (GUEST_DIR / "posix.sh").read_text(),
        "restart.sh": (GUEST_DIR / "restart.sh").read_text(),
    }
    phases: list[PhaseResult] = []
    host_errors: list[str] = []
    restart_seconds: list[float] = []
    current: list[PhaseResult] = []  # the phase in progress, if any

    def on_line(line: str) -> str | None:
        if cfg.log is not None:
            cfg.log(line)
        text = line.strip()
        if text.startswith("PHASE-BEGIN "):
            phase = PhaseResult(name=text.split(None, 1)[1], started=time.monotonic())
            phases.append(phase)
            current[:] = [phase]
            if phase.name == "mount-portmap":
                # the guest is asking the portmapper on the host's port 111 right now: make sure
                # that is this server's portmapper and not some other server's
                problem = portmap_mismatch(cfg.nfs_port, cfg.mount_port)
                if problem is not None:
                    host_errors.append(f"while the guest mounted through the portmapper: {problem}")
        elif text.startswith("PHASE-END ") and current:
            phase = current[0]
            name, _, rc = text[len("PHASE-END ") :].partition(" rc=")
            if name != phase.name:
                host_errors.append(f"phase {phase.name} ended as {name}")
            phase.rc = int(rc) if rc.lstrip("-").isdigit() else None
            phase.seconds = time.monotonic() - phase.started
            current.clear()
        elif current and text.startswith("ok "):
            current[0].passed.append(text[3:])
        elif current and text.startswith("FAIL "):
            current[0].failed.append(text[5:])
        elif current and text.startswith("info "):
            current[0].info.append(text[5:])
        elif text == RESTART_REQUEST:
            if cfg.restart is None:
                host_errors.append("guest asked for a restart, but none is configured")
                return "HOST-DONE: unsupported\n"
            if cfg.log is not None:
                cfg.log("[host] restarting the server")
            started = time.monotonic()
            try:
                cfg.restart()
            except Exception:
                host_errors.append("restart failed:\n" + traceback.format_exc())
                return "HOST-DONE: failed\n"
            finally:
                restart_seconds.append(time.monotonic() - started)
            if cfg.log is not None:
                cfg.log(f"[host] server restarted in {restart_seconds[-1]:.1f} s")
            return "HOST-DONE: ok\n"
        return None

    guest = run_guest(script, timeout=cfg.timeout, on_line=on_line, files=files)
    if current:
        current[0].seconds = time.monotonic() - current[0].started
    return KernelMountReport(
        guest=guest,
        phases=phases,
        expected_phases=expected,
        host_errors=host_errors,
        restart_seconds=restart_seconds[0] if restart_seconds else None,
    )
