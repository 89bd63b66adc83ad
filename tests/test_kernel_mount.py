"""The Linux kernel's own NFSv3 client against this server, in one qemu boot.

The guest runs the POSIX script on its tmpfs (proving the script's expectations), then on a
mount with explicit ports, then on a mount made through the portmapper on port 111 (no ports
given, as macOS and Windows clients do), and finally keeps a file open across a server restart
on the same state directory and ports: the stable handles must let it carry on.
"""

from __future__ import annotations

import pytest

from tests.support.kernel_mount import KernelMountConfig, run_kernel_mount_test
from tests.support.qemu_guest import unavailable_reason
from tests.support.server import ServerProcess, start_server

pytestmark = [pytest.mark.slow, pytest.mark.kernel]


def test_kernel_client_posix_behaviour_both_mount_paths_and_restart(tmp_path, capsys):
    reason = unavailable_reason()
    if reason:
        pytest.fail(f"the kernel-client guest cannot run here: {reason} (run scripts/test)")
    area = tmp_path / "area"
    area.mkdir()
    state = tmp_path / "state"
    # "auto": serve the portmapper on 111 when free, else register with the one running there.
    server: ServerProcess = start_server({"area": area}, state, portmap="auto")
    ports = (server.nfs_port, server.mount_port)
    restarts: list[ServerProcess] = []

    def restart() -> None:
        current = restarts[-1] if restarts else server
        assert current.stop() == 0, current.log()
        restarts.append(start_server({"area": area}, state, port=ports[0], portmap="auto"))

    try:
        report = run_kernel_mount_test(
            KernelMountConfig(
                export="/area",
                nfs_port=ports[0],
                mount_port=ports[1],
                portmap_too=True,
                restart=restart,
                timeout=900,
            )
        )
    finally:
        logs = []
        for process in [server, *restarts]:
            process.stop()
            logs.append(process.log())
    print(report.summary())
    assert report.passed, report.summary() + "\n--- server logs ---\n" + "\n".join(logs)[-4000:]
    assert "Traceback" not in "\n".join(logs)
