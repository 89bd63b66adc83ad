"""A second host for tests: a network namespace joined to this one by a veth pair, and a
client run inside it that sends MOUNT and NFS calls from a chosen source port.

`peer_host()` makes the pair (made with `ip`, removed on the way out, needs root):
this side's address is where a server listens, the peer's is what the server sees the calls
come from, an address of another machine (not loopback). `PeerHost.run_client(port, plan)`
runs `python -m tests.support.netns` in the namespace: each step of the plan is one connection
from a source port (a reserved one, or any ephemeral one), with one AUTH_SYS identity, that
mounts an export and may CREATE a file or SETATTR a file's mode; it prints what each call
answered, as JSON. The client is the project's own (`nfsd.rpc.client`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
# A /30 of this range per pair; a random one, so that runs side by side do not collide.
_NETWORK = "10.213"


@dataclass
class PeerHost:
    namespace: str
    local_address: str  # this side's end: where the server listens
    peer_address: str  # the namespace's end: where the calls come from

    def run_client(self, server_port: int, plan: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run the plan's steps in the namespace against the server; what each answered."""
        inside = ["ip", "netns", "exec", self.namespace, sys.executable, "-m", __name__]
        done = subprocess.run(
            [*inside, self.local_address, str(server_port), self.peer_address, json.dumps(plan)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )
        assert done.returncode == 0, f"the client in the namespace failed:\n{done.stderr}"
        return json.loads(done.stdout)


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=30)


def netns_unavailable() -> str | None:
    """Why no namespace can be made here (None when one can)."""
    if os.geteuid() != 0:
        return "making a network namespace needs root"
    if shutil.which("ip") is None:
        return "no `ip` command (iproute2)"
    return None


@contextmanager
def peer_host() -> Iterator[PeerHost]:
    """A namespace with a veth pair to this one, both ends up; removed on the way out."""
    tag = uuid.uuid4().hex[:8]
    namespace, here, there = f"rz-{tag}", f"rzh{tag}", f"rzp{tag}"
    subnet = f"{_NETWORK}.{random.randrange(1, 255)}"
    local, peer = f"{subnet}.1", f"{subnet}.2"
    _ip("netns", "add", namespace)
    try:
        _ip("link", "add", here, "type", "veth", "peer", "name", there)
        try:
            _ip("link", "set", there, "netns", namespace)
            _ip("addr", "add", f"{local}/30", "dev", here)
            _ip("link", "set", here, "up")
            inside = ("netns", "exec", namespace, "ip")
            _ip(*inside, "addr", "add", f"{peer}/30", "dev", there)
            _ip(*inside, "link", "set", there, "up")
            _ip(*inside, "link", "set", "lo", "up")
            yield PeerHost(namespace, local, peer)
        finally:
            _ip("link", "del", here)  # takes its peer end with it
    finally:
        _ip("netns", "del", namespace)


# ---- the client, run inside the namespace ----


async def _step(
    server: tuple[str, int], source: tuple[str, int], step: dict[str, Any], known: bytes | None
) -> dict[str, Any]:
    """One connection's calls. When its MNT is refused, the calls after it go on with the
    handle an earlier step was given (`known`): a handle got elsewhere must be no key."""
    import trio

    from nfsd.rpc.client import RpcClient, encode_args
    from xdr.codec import Arm, decode
    from xdr.mount import MOUNT_PROGRAM, MOUNT_V3, MOUNTPROC3, dirpath, mountres3
    from xdr.nfs3 import (
        NFS_PROGRAM,
        NFS_V3,
        NFSPROC3,
        CREATE3args,
        CREATE3res,
        LOOKUP3args,
        LOOKUP3res,
        SETATTR3args,
        SETATTR3res,
        createmode3,
        diropargs3,
        nfs_fh3,
        sattr3,
    )
    from xdr.rpc import auth_flavor
    from xdr.rpc_fast import Credential

    cred = Credential(auth_flavor.AUTH_SYS, step["uid"], step["gid"], [], b"peer")
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    await sock.bind(source)
    await sock.connect(server)
    result: dict[str, Any] = {"port": sock.getsockname()[1]}
    rpc = RpcClient(trio.SocketStream(sock), cred)
    try:

        async def call(prog: int, vers: int, proc: int, args_type, args, res_type) -> Any:
            header, body = await rpc.call_raw(prog, vers, proc, encode_args(args_type, args))
            if not header.accepted or header.stat != 0:
                return {"rpc": [header.accepted, header.stat]}
            return decode(res_type, body)

        mounted = await call(
            MOUNT_PROGRAM, MOUNT_V3, MOUNTPROC3.MNT, dirpath, step["export"].encode(), mountres3
        )
        result["mnt"] = mounted if isinstance(mounted, dict) else int(mounted.tag)
        if result["mnt"] == 0:
            result["root"] = mounted.value.fhandle.hex()
            root = nfs_fh3(mounted.value.fhandle)
        elif known is not None:
            root = nfs_fh3(known)
        else:
            return result
        if "create" in step:
            how = Arm(createmode3.GUARDED, sattr3(mode=0o644))
            where = diropargs3(root, step["create"].encode())
            made = await call(
                NFS_PROGRAM, NFS_V3, NFSPROC3.CREATE, CREATE3args, CREATE3args(where, how),
                CREATE3res,
            )  # fmt: skip
            result["create"] = made if isinstance(made, dict) else int(made.tag)
        if "chmod" in step:
            name, mode = step["chmod"]
            found = await call(
                NFS_PROGRAM, NFS_V3, NFSPROC3.LOOKUP, LOOKUP3args,
                LOOKUP3args(diropargs3(root, name.encode())), LOOKUP3res,
            )  # fmt: skip
            if isinstance(found, dict) or found.tag != 0:
                result["chmod"] = found if isinstance(found, dict) else int(found.tag)
            else:
                changed = await call(
                    NFS_PROGRAM, NFS_V3, NFSPROC3.SETATTR, SETATTR3args,
                    SETATTR3args(found.value.object, sattr3(mode=mode), None), SETATTR3res,
                )  # fmt: skip
                result["chmod"] = changed if isinstance(changed, dict) else int(changed.tag)
        return result
    finally:
        await rpc.aclose()


def _client_main(argv: list[str]) -> None:
    import trio

    server = (argv[0], int(argv[1]))
    peer = argv[2]
    plan = json.loads(argv[3])

    async def main() -> list[dict[str, Any]]:
        results: list[dict[str, Any]] = []
        known: bytes | None = None
        with trio.fail_after(30):
            for step in plan:
                results.append(await _step(server, (peer, step["source_port"]), step, known))
                if "root" in results[-1]:
                    known = bytes.fromhex(results[-1]["root"])
        return results

    print(json.dumps(trio.run(main)))


if __name__ == "__main__":
    _client_main(sys.argv[1:])
