"""An attacker's flood of idle TCP connections against a real server process: from a host that
`--allow` leaves out, and from the allowed host itself. Either way a legitimate client still
gets NULL and GETATTR answered within a deadline, and a connection in the middle of a call is
not dropped to make room (nfsd/rpc/slots.py)."""

from __future__ import annotations

import os
import resource
import selectors
import socket
import struct
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
import trio

from nfsd import sockdiag
from nfsd.identity import loopback_owner
from nfsd.rpc.client import open_client
from nfsd.rpc.record import LAST_FRAGMENT, RecordReader
from tests.conftest import HOST, OK, ROOT, Nfs, Served
from xdr.nfs3 import NFS_PROGRAM, NFSPROC3, GETATTR3args
from xdr.rpc import accept_stat
from xdr.rpc_fast import encode_call, parse_reply

pytestmark = pytest.mark.wire

FLOOD = 600  # beyond the 512 slots the server had for everyone together
OUTSIDE = "127.0.0.3"  # loopback, but not in --allow 127.0.0.1/32
DEADLINE = 20.0  # seconds for a legitimate client's calls


@pytest.fixture(autouse=True)
def _descriptors() -> None:
    """Room for the flood's sockets here, and in the server, which inherits the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * FLOOD
    if soft < wanted and (hard == resource.RLIM_INFINITY or hard >= wanted):
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    elif soft < wanted:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} is below {wanted}")


@contextmanager
def flood(port: int, source: str, count: int = FLOOD) -> Iterator[list[socket.socket]]:
    """`count` connections from `source` that never send a byte; all closed on the way out."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind((source, 0))
            sock.settimeout(10)
            sock.connect((HOST, port))  # completes in the kernel's backlog, accepted or not
            sock.setblocking(False)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()


def closed_by_server(
    sockets: list[socket.socket], timeout: float, enough: int | None = None
) -> int:
    """How many of `sockets` the server closes within `timeout` seconds, or as soon as
    `enough` of them are (polled, not slept)."""
    open_ones = set(sockets)
    closed = 0
    enough = len(sockets) if enough is None else enough
    with selectors.DefaultSelector() as selector:
        for sock in sockets:
            selector.register(sock, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while closed < enough and (left := deadline - time.monotonic()) > 0:
            for key, _ in selector.select(left):
                sock = key.fileobj
                assert isinstance(sock, socket.socket)
                try:
                    data = sock.recv(1 << 16)
                except (BlockingIOError, InterruptedError):
                    continue
                except ConnectionResetError:
                    data = b""
                assert data == b"", "an idle connection was sent something"
                selector.unregister(sock)
                open_ones.discard(sock)
                closed += 1
    return closed


async def legitimate_calls(port: int) -> None:
    """A new client from the allowed address: NULL, MNT and GETATTR, within the deadline."""
    with trio.fail_after(DEADLINE):
        async with open_client(HOST, port, ROOT) as rpc:
            reply, _ = await rpc.call_raw(NFS_PROGRAM, 3, 0, b"")
            assert reply.stat == accept_stat.SUCCESS
            nfs = Nfs(rpc)
            root = await nfs.mount("/a")
            res = await nfs.call(NFSPROC3.GETATTR, GETATTR3args(root))
            assert res.tag == OK


def test_a_flood_from_a_host_outside_allow_locks_nobody_out(
    make_server: Callable[..., Served],
) -> None:
    server = make_server(extra=["--allow", "127.0.0.1/32"])
    with flood(server.port, OUTSIDE) as sockets:
        # Every one of them is closed at accept: none waits for its first-call timeout.
        assert closed_by_server(sockets, DEADLINE) == FLOOD
        trio.run(legitimate_calls, server.port)
    assert server.alive()
    # One line for the whole flood, not one per connection.
    assert server.log().count("refused connections from hosts no export allows") == 1


def _null_record(xid: int) -> bytes:
    call = encode_call(xid, NFS_PROGRAM, 3, 0)
    return struct.pack(">I", LAST_FRAGMENT | len(call)) + call


def test_a_flood_from_the_allowed_host_closes_its_own_idle_connections_first(
    make_server: Callable[..., Served],
) -> None:
    server = make_server(extra=["--allow", "127.0.0.1/32"])
    record = _null_record(0x51075)
    # The oldest connection of all is in the middle of a call: half its record has arrived.
    with socket.create_connection((HOST, server.port), timeout=DEADLINE) as mid_call:
        mid_call.sendall(record[:20])
        with flood(server.port, HOST) as sockets:
            # The host may hold 64 of the 512 slots: the flood's oldest idle ones make room.
            assert closed_by_server(sockets, DEADLINE, enough=FLOOD - 64) >= FLOOD - 64
            trio.run(legitimate_calls, server.port)
        mid_call.sendall(record[20:])
        reader = RecordReader()
        replies: list[bytes] = []
        while not replies:
            data = mid_call.recv(1 << 16)
            assert data, "the connection in the middle of a call was closed"
            replies = reader.feed(data)
        assert parse_reply(replies[0]).xid == 0x51075
    assert server.alive()
    made_room = "closed a host's longest idle connections to make room for its new ones"
    assert server.log().count(made_room) == 1


def test_the_owner_of_a_loopback_socket_is_found_at_once_by_sock_diag() -> None:
    """What bounds a local caller's claims, found per accept without reading every socket
    of the machine (which made each accept of a flood slower than the last)."""
    listener = socket.create_server((HOST, 0), backlog=1024)  # never accepts: the kernel does
    port = listener.getsockname()[1]
    others = [socket.create_connection((HOST, port), timeout=5) for _ in range(200)]
    try:
        started = time.monotonic()
        for sock in others:
            client = sock.getsockname()[:2]
            assert sockdiag.tcp_owner(client, (HOST, port)) == os.geteuid()
        assert time.monotonic() - started < 2.0
        assert sockdiag.tcp_owner((HOST, 1), (HOST, port)) is None
        if os.geteuid() == 0:
            assert _owner_of_a_socket_made_by(65534, port) == 65534
    finally:
        for sock in others:
            sock.close()
        listener.close()


def _owner_of_a_socket_made_by(uid: int, port: int) -> int | None:
    """Fork a child that becomes `uid` and connects to `port`; the owner sock_diag names."""
    ready_r, ready_w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no Python cleanup, whatever happens
        code = 1
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            sock = socket.create_connection((HOST, port), timeout=5)
            os.write(ready_w, str(sock.getsockname()[1]).encode())
            os.read(done_r, 1)
            code = 0
        finally:
            os._exit(code)
    os.close(ready_w)
    try:
        child_port = int(os.read(ready_r, 16) or b"0")
        assert child_port, "the child could not connect"
        owner = sockdiag.tcp_owner((HOST, child_port), (HOST, port))
        assert loopback_owner((HOST, child_port), (HOST, port)) == owner
        return owner
    finally:
        os.write(done_w, b"x")
        for fd in (ready_r, done_r, done_w):
            os.close(fd)
        os.waitpid(pid, 0)
