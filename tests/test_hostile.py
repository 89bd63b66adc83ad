"""Hostile and broken clients against a running server: oversized records, lying lengths and
counts, garbage, replies sent as calls, silent and trickling connections, connection storms
and fuzzed arguments. The server must answer or close the offending connection, keep serving
everyone else, and never crash or log a traceback.
"""

from __future__ import annotations

import random
import socket
import struct
import time

import trio

from nfsd.rpc.client import encode_args, udp_call
from nfsd.rpc.record import LAST_FRAGMENT, RecordReader
from tests.conftest import HOST, OK, ROOT, ZERO_VERF, Nfs, Served
from xdr.codec import Arm, XdrError, decode, encode
from xdr.mount import MOUNT_PROGRAM, MOUNTPROC3
from xdr.nfs3 import (
    NFS_PROGRAM,
    NFSPROC3,
    PROCEDURES,
    ACCESS3args,
    COMMIT3args,
    CREATE3args,
    GETATTR3args,
    LOOKUP3args,
    MKNOD3args,
    READ3args,
    READDIR3args,
    READDIRPLUS3args,
    SETATTR3args,
    WRITE3args,
    createmode3,
    devicedata3,
    diropargs3,
    ftype3,
    nfsstat3,
    sattr3,
    specdata3,
    stable_how,
)
from xdr.rpc import (
    RPC_VERS,
    accept_stat,
    accepted_reply,
    auth_flavor,
    auth_stat,
    call_body,
    msg_type,
    opaque_auth,
    reject_stat,
    reply_stat,
    rpc_msg,
)
from xdr.rpc_fast import encode_call, parse_reply

NO_AUTH = opaque_auth(auth_flavor.AUTH_NONE, b"")


def record(data: bytes) -> bytes:
    return struct.pack(">I", LAST_FRAGMENT | len(data)) + data


def null_call(xid: int) -> bytes:
    return encode_call(xid, NFS_PROGRAM, 3, 0)


async def closed_by_server(stream: trio.SocketStream, timeout: float = 10) -> bool:
    """Read until the server closes the connection; False if it stays open `timeout` s."""
    with trio.move_on_after(timeout):
        try:
            while await stream.receive_some(1 << 16):
                pass
        except trio.BrokenResourceError:
            pass
        return True
    return False


async def null_works(port: int) -> None:
    """A fresh connection gets a NULL answered, and so does UDP."""
    stream = await trio.open_tcp_stream(HOST, port)
    try:
        await stream.send_all(record(null_call(0xC0FFEE)))
        reader = RecordReader()
        with trio.fail_after(5):
            while True:
                data = await stream.receive_some(1 << 16)
                assert data, "closed instead of answering NULL"
                replies = reader.feed(data)
                if replies:
                    reply = parse_reply(replies[0])
                    assert reply.xid == 0xC0FFEE and reply.stat == accept_stat.SUCCESS
                    break
    finally:
        await stream.aclose()
    reply, _ = await udp_call(HOST, port, NFS_PROGRAM, 3, 0, b"")
    assert reply.stat == accept_stat.SUCCESS


def test_oversized_record_closes_only_that_connection(server: Served) -> None:
    async def body() -> None:
        # one fragment announcing 100 MB
        stream = await trio.open_tcp_stream(HOST, server.port)
        await stream.send_all(struct.pack(">I", LAST_FRAGMENT | 100_000_000) + b"\0" * 1000)
        assert await closed_by_server(stream)
        await stream.aclose()
        await null_works(server.port)
        # fragments that each fit but add up beyond the bound
        stream = await trio.open_tcp_stream(HOST, server.port)
        chunk = struct.pack(">I", 1 << 20) + b"\0" * (1 << 20)
        try:
            for _ in range(4):
                await stream.send_all(chunk)
        except trio.BrokenResourceError:
            pass
        assert await closed_by_server(stream)
        await stream.aclose()
        await null_works(server.port)

    server.run(body, connect=False)


def test_lying_opaque_lengths_are_garbage_args(server: Served) -> None:
    async def body(nfs: Nfs) -> None:
        root = await nfs.mount("/a")
        fh = encode_args(GETATTR3args, GETATTR3args(root))
        huge = b"\xff\xff\xff\xff"
        cases = [
            (NFS_PROGRAM, NFSPROC3.GETATTR, huge),
            (NFS_PROGRAM, NFSPROC3.GETATTR, huge + b"\0" * 64),
            (NFS_PROGRAM, NFSPROC3.LOOKUP, fh + huge + b"abcd"),
            (NFS_PROGRAM, NFSPROC3.LOOKUP, fh + struct.pack(">I", 100) + b"abcd"),
            # WRITE: offset, count, stable, then a data length far beyond the record
            (NFS_PROGRAM, NFSPROC3.WRITE, fh + struct.pack(">QIII", 0, 4, 2, 0xFFFFFFF0)),
            (NFS_PROGRAM, NFSPROC3.WRITE, fh + struct.pack(">QIII", 0, 4, 2, 5_000_000)),
            (MOUNT_PROGRAM, MOUNTPROC3.MNT, huge),
            (MOUNT_PROGRAM, MOUNTPROC3.MNT, struct.pack(">I", 2000) + b"/a" * 1000),
            # an optional (bool) that is neither 0 nor 1
            (NFS_PROGRAM, NFSPROC3.SETATTR, fh + struct.pack(">I", 2) + b"\0" * 40),
            # an enum value the RFC does not define (createmode3 = 9)
            (NFS_PROGRAM, NFSPROC3.CREATE, fh + struct.pack(">I", 1) + b"x\0\0\0" + b"\0\0\0\x09"),
        ]
        for prog, proc, args in cases:
            reply, _ = await nfs.rpc.call_raw(prog, 3, proc, args)
            assert reply.accepted and reply.stat == accept_stat.GARBAGE_ARGS, (proc, args[-12:])
        assert (await nfs.getattr(root)).nlink >= 2

    server.run(body)


def test_array_counts_beyond_the_data(server: Served) -> None:
    async def body(nfs: Nfs) -> None:
        for count in (0xFFFFFFFF, 17, 16, 3):
            # AUTH_SYS: stamp, machinename "m", uid, gid, then a gids count with no gids
            parms = struct.pack(">II", 0, 1) + b"m\0\0\0" + struct.pack(">III", 0, 0, count)
            body_ = call_body(
                RPC_VERS, NFS_PROGRAM, 3, 0, opaque_auth(auth_flavor.AUTH_SYS, parms), NO_AUTH
            )
            xid = nfs.rpc.next_xid()
            header = encode(rpc_msg, rpc_msg(xid, Arm(msg_type.CALL, body_)))
            reply, _ = await nfs.rpc.call_raw(NFS_PROGRAM, 3, 0, b"", xid=xid, header=header)
            assert not reply.accepted and reply.stat == reject_stat.AUTH_ERROR
            assert reply.detail == (auth_stat.AUTH_BADCRED,)
        # a credential body length beyond the record
        raw = struct.pack(">6I", 1, 0, 2, NFS_PROGRAM, 3, 0) + struct.pack(">II", 1, 400)
        header = raw + b"\0" * 20
        reply, _ = await nfs.rpc.call_raw(NFS_PROGRAM, 3, 0, b"", xid=1, header=header)
        assert not reply.accepted and reply.stat == reject_stat.AUTH_ERROR
        # and a working call on the same connection
        reply, _ = await nfs.rpc.call_raw(NFS_PROGRAM, 3, 0, b"")
        assert reply.stat == accept_stat.SUCCESS

    server.run(body)


def test_garbage_records(server: Served) -> None:
    async def body() -> None:
        rng = random.Random(1234)
        stream = await trio.open_tcp_stream(HOST, server.port)
        for i in range(60):
            junk = rng.randbytes(rng.randrange(0, 300))
            if i % 3 == 0 and len(junk) >= 12:
                # looks like a call header, then garbage
                junk = struct.pack(">III", i, msg_type.CALL, RPC_VERS) + junk[12:]
            try:
                await stream.send_all(record(junk))
            except trio.BrokenResourceError:
                break
        # whatever happened to this connection, its NULL is answered or it was closed
        try:
            await stream.send_all(record(null_call(0xABCDEF)))
            reader = RecordReader()
            with trio.fail_after(10):
                done = False
                while not done:
                    data = await stream.receive_some(1 << 16)
                    if not data:
                        break
                    for r in reader.feed(data):
                        if struct.unpack_from(">I", r)[0] == 0xABCDEF:
                            assert parse_reply(r).stat == accept_stat.SUCCESS
                            done = True
        except trio.BrokenResourceError:
            pass
        await stream.aclose()
        await null_works(server.port)

    server.run(body, connect=False)


def test_reply_sent_as_a_call_is_ignored(server: Served) -> None:
    async def body(nfs: Nfs) -> None:
        accepted = accepted_reply(NO_AUTH, Arm(accept_stat.SUCCESS))
        fake = encode(
            rpc_msg, rpc_msg(77, Arm(msg_type.REPLY, Arm(reply_stat.MSG_ACCEPTED, accepted)))
        )
        await nfs.rpc.send_record(fake)
        await nfs.rpc.send_record(fake + b"\0" * 100)
        with trio.fail_after(5):
            reply, _ = await nfs.rpc.call_raw(NFS_PROGRAM, 3, 0, b"")
        assert reply.stat == accept_stat.SUCCESS

    server.run(body)


def test_udp_garbage(server: Served) -> None:
    async def body() -> None:
        rng = random.Random(99)
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for size in (0, 1, 3, 4, 27, 28, 100, 1400, 60000):
            await sock.sendto(rng.randbytes(size), (HOST, server.port))
        await sock.sendto(
            struct.pack(">6I", 5, 0, 2, NFS_PROGRAM, 3, 0) + b"\xff" * 8, (HOST, server.port)
        )
        sock.close()
        await null_works(server.port)

    server.run(body, connect=False)


async def _getattr_burst(nfs: Nfs, n: int) -> float:
    """Time for n GETATTRs one after another."""
    root = await nfs.mount("/a")
    start = time.monotonic()
    for _ in range(n):
        await nfs.getattr(root)
    return time.monotonic() - start


def test_silent_clients_do_not_block_others(server: Served) -> None:
    async def body(nfs: Nfs) -> None:
        silent = [await trio.open_tcp_stream(HOST, server.port) for _ in range(5)]
        # one that started a record and stopped
        await silent[0].send_all(struct.pack(">I", LAST_FRAGMENT | 100) + b"\0" * 10)
        elapsed = await _getattr_burst(nfs, 200)
        assert elapsed < 10
        for stream in silent:
            await stream.aclose()

    server.run(body)


def test_trickling_client_does_not_block_others(server: Served) -> None:
    async def body(nfs: Nfs) -> None:
        stream = await trio.open_tcp_stream(HOST, server.port)
        message = record(null_call(0x5107))
        latencies: list[float] = []

        async def trickle() -> None:
            for byte in message[:15]:
                await stream.send_all(bytes([byte]))
                await trio.sleep(0.2)  # the behaviour under test: a byte every 0.2 s
            await stream.send_all(message[15:])

        async def others() -> None:
            root = await nfs.mount("/a")
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                start = time.monotonic()
                await nfs.getattr(root)
                latencies.append(time.monotonic() - start)
                await trio.sleep(0.01)  # a client calling now and then, not flat out

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trickle)
            nursery.start_soon(others)
        assert len(latencies) > 50
        assert max(latencies) < 1.0
        # the trickled call was reassembled and answered
        reader = RecordReader()
        with trio.fail_after(5):
            replies: list[bytes] = []
            while not replies:
                data = await stream.receive_some(1 << 16)
                assert data
                replies = reader.feed(data)
        assert parse_reply(replies[0]).xid == 0x5107
        await stream.aclose()

    server.run(body)


def test_fifty_connections_at_once(server: Served) -> None:
    async def body() -> None:
        streams: list[trio.SocketStream] = []

        async def connect_and_call(i: int) -> None:
            stream = await trio.open_tcp_stream(HOST, server.port)
            streams.append(stream)
            await stream.send_all(record(null_call(0x9000 + i)))
            reader = RecordReader()
            while True:
                data = await stream.receive_some(1 << 16)
                assert data
                replies = reader.feed(data)
                if replies:
                    assert parse_reply(replies[0]).xid == 0x9000 + i
                    return

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(connect_and_call, i)
        assert len(streams) == 50
        # half leave in the middle of a record, half cleanly
        for i, stream in enumerate(streams):
            if i % 2:
                await stream.send_all(struct.pack(">I", LAST_FRAGMENT | 64) + b"\0" * 7)
            await stream.aclose()
        await null_works(server.port)

    server.run(body, connect=False)


def test_identical_calls_in_flight_together(server: Served) -> None:
    """A retransmission may arrive while the original is still running: over UDP, and over
    TCP for calls that run in tasks (READ). Such duplicates once crashed the whole server."""

    async def body(nfs: Nfs) -> None:
        _, d, name = await nfs.scratch()
        (server.areas["a"] / name / "f").write_bytes(b"x" * 200_000)
        fh = await nfs.lookup(d, "f")
        read = encode_args(READ3args, READ3args(fh, 0, 1 << 20))
        message = record(encode_call(0xD0D0, NFS_PROGRAM, 3, NFSPROC3.READ, ROOT) + read)
        stream = await trio.open_tcp_stream(HOST, server.port)
        await stream.send_all(message * 10)
        reader, replies = RecordReader(64 << 20), []
        with trio.fail_after(10):
            while len(replies) < 10:
                data = await stream.receive_some(1 << 20)
                assert data, "the server closed the connection"
                replies += reader.feed(data)
        assert {parse_reply(r).xid for r in replies} == {0xD0D0}
        await stream.aclose()

        small = encode_args(READ3args, READ3args(fh, 0, 30_000))
        datagram = encode_call(0xD1D1, NFS_PROGRAM, 3, NFSPROC3.READ, ROOT) + small
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with sock:
            for _ in range(20):
                await sock.sendto(datagram, (HOST, server.port))
            with trio.fail_after(10):
                reply = parse_reply(await sock.recv(1 << 16))
            assert reply.xid == 0xD1D1 and reply.stat == accept_stat.SUCCESS
            # A NULL sent after the duplicates is answered once the server has taken them all.
            await sock.sendto(null_call(0xD2D2), (HOST, server.port))
            with trio.fail_after(10):
                while parse_reply(await sock.recv(1 << 16)).xid != 0xD2D2:
                    pass
        assert server.alive(), server.log()
        await null_works(server.port)

    server.run(body)


def _rss_mib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    raise AssertionError("no VmRSS")


async def _rss_settled(pid: int, timeout: float = 10.0) -> int:
    """A process's RSS in MiB once it stops changing (polled every 0.25 s, up to `timeout`)."""
    with trio.fail_after(timeout):
        previous = _rss_mib(pid)
        while True:
            await trio.sleep(0.25)
            current = _rss_mib(pid)
            if abs(current - previous) <= 1:
                return current
            previous = current


def _records(calls: list[tuple[int, NFSPROC3, bytes]]) -> bytes:
    return b"".join(
        record(encode_call(xid, NFS_PROGRAM, 3, proc, ROOT) + args) for xid, proc, args in calls
    )


def test_client_that_never_reads_its_replies(server: Served) -> None:
    """400 READs of 1 MiB sent in one go, replies never read: the server stops reading that
    client's calls instead of holding 400 MiB of replies, and serves others meanwhile."""

    async def body(nfs: Nfs) -> None:
        _, d, name = await nfs.scratch()
        (server.areas["a"] / name / "big").write_bytes(random.Random(2).randbytes(1 << 20))
        fh = await nfs.lookup(d, "big")
        args = encode_args(READ3args, READ3args(fh, 0, 1 << 20))
        before = _rss_mib(server.process.process.pid)
        greedy = await trio.open_tcp_stream(HOST, server.port)
        with trio.move_on_after(5):
            await greedy.send_all(_records([(i, NFSPROC3.READ, args) for i in range(400)]))
        await _rss_settled(server.process.process.pid)  # it has handled what it read
        start = time.monotonic()
        assert (await nfs.read(fh, 0, 16)).count == 16
        assert time.monotonic() - start < 2
        grown = _rss_mib(server.process.process.pid) - before
        assert grown < 150, f"the server grew by {grown} MiB for a client that does not read"
        await greedy.aclose()
        await null_works(server.port)

    server.run(body)


def test_a_burst_of_large_listings_does_not_stall_others(server: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, name = await nfs.scratch()
        for i in range(3000):
            (server.areas["a"] / name / f"entry-{i:05d}-{'x' * 40}").touch()
        args = encode_args(READDIRPLUS3args, READDIRPLUS3args(d, 0, ZERO_VERF, 1 << 20, 1 << 20))
        root = await nfs.mount("/a")
        latencies: list[float] = []
        burst = await trio.open_tcp_stream(HOST, server.port)
        done = trio.Event()

        async def read_replies() -> None:
            reader, got = RecordReader(64 << 20), 0
            while got < 60:
                data = await burst.receive_some(1 << 20)
                assert data
                got += len(reader.feed(data))
            done.set()

        measuring = trio.Event()

        async def others() -> None:
            while not done.is_set():
                start = time.monotonic()
                await nfs.getattr(root)
                latencies.append(time.monotonic() - start)
                measuring.set()
                await trio.sleep(0.01)  # a client calling now and then, not flat out

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read_replies)
            nursery.start_soon(others)
            await measuring.wait()  # the burst comes while the other client is calling
            await burst.send_all(_records([(i, NFSPROC3.READDIRPLUS, args) for i in range(60)]))
        await burst.aclose()
        assert len(latencies) > 3
        assert max(latencies) < 0.5, f"a GETATTR waited {max(latencies):.2f} s"

    server.run(body)


def _mutate(rng: random.Random, args: bytes) -> bytes:
    data = bytearray(args)
    kind = rng.randrange(6)
    if kind == 0 and data:  # flip some bytes
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
    elif kind == 1:  # truncate
        del data[rng.randrange(len(data) + 1) :]
    elif kind == 2:  # extend
        data += rng.randbytes(rng.randrange(1, 64))
    elif kind == 3 and len(data) >= 4:  # a word set to an edge value
        pos = rng.randrange(len(data) // 4) * 4
        data[pos : pos + 4] = struct.pack(
            ">I", rng.choice([0, 1, 2, 3, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 255, 256])
        )
    elif kind == 4:  # random bytes of a plausible length
        data = bytearray(rng.randbytes(rng.randrange(0, 160)))
    elif len(data) >= 8:  # a word inside the tail (counts, cookies) set at random
        pos = len(data) - 4 * rng.randrange(1, min(6, len(data) // 4) + 1)
        data[pos : pos + 4] = rng.randbytes(4)
    return bytes(data)


def test_fuzzed_arguments_are_answered(server: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, name = await nfs.scratch()
        for i in range(20):
            await nfs.create(d, f"file{i}")
        f = await nfs.lookup(d, "file3")
        seeds = [
            (NFSPROC3.GETATTR, encode_args(GETATTR3args, GETATTR3args(f))),
            (NFSPROC3.LOOKUP, encode_args(LOOKUP3args, LOOKUP3args(diropargs3(d, b"file1")))),
            (NFSPROC3.READDIR, encode_args(READDIR3args, READDIR3args(d, 0, ZERO_VERF, 1024))),
            (
                NFSPROC3.READDIRPLUS,
                encode_args(READDIRPLUS3args, READDIRPLUS3args(d, 0, ZERO_VERF, 512, 2048)),
            ),
            (
                NFSPROC3.SETATTR,
                encode_args(SETATTR3args, SETATTR3args(f, sattr3(mode=0o644), None)),
            ),
            (NFSPROC3.READ, encode_args(READ3args, READ3args(f, 0, 4096))),
            (
                NFSPROC3.WRITE,
                encode_args(WRITE3args, WRITE3args(f, 0, 8, stable_how.UNSTABLE, b"12345678")),
            ),
            (NFSPROC3.COMMIT, encode_args(COMMIT3args, COMMIT3args(f, 0, 0))),
            (NFSPROC3.ACCESS, encode_args(ACCESS3args, ACCESS3args(f, 0x3F))),
        ]
        rng = random.Random(20240601)
        answered = garbage = 0
        for case in range(400):
            proc, seed = seeds[case % len(seeds)]
            args = _mutate(rng, seed)
            with trio.fail_after(10):
                reply, data = await nfs.rpc.call_raw(NFS_PROGRAM, 3, proc, args, cred=ROOT)
            assert reply.accepted, (proc, args.hex())
            assert reply.stat in (accept_stat.SUCCESS, accept_stat.GARBAGE_ARGS), (
                proc.name,
                accept_stat(reply.stat).name,
                args.hex(),
            )
            if reply.stat == accept_stat.SUCCESS:
                answered += 1
                try:
                    decode(PROCEDURES[proc][2], data)  # a well-formed result
                except XdrError as e:
                    raise AssertionError(f"{proc.name} reply does not decode: {e}") from None
            else:
                garbage += 1
        assert answered > 50 and garbage > 50
        # the directory and file are still what they were
        assert len(await nfs.names(d)) == 20
        assert (await nfs.getattr(f)).fileid
        del name

    server.run(body)


def test_fuzzed_records_on_fresh_connections(server: Served) -> None:
    """Whole call records mutated: each is answered or the connection is closed."""

    async def body() -> None:
        rng = random.Random(7)
        base = encode_call(1, NFS_PROGRAM, 3, NFSPROC3.GETATTR, ROOT) + b"\0\0\0\x20" + b"\0" * 32
        stream = await trio.open_tcp_stream(HOST, server.port)
        for _ in range(100):
            mutated = _mutate(rng, base)
            try:
                await stream.send_all(record(mutated))
            except trio.BrokenResourceError:
                await stream.aclose()
                stream = await trio.open_tcp_stream(HOST, server.port)
        await stream.aclose()
        await null_works(server.port)

    server.run(body, connect=False)


def test_edge_values_are_answered_with_a_status(server: Served) -> None:
    """Offsets and sizes the XDR types allow but no file can have get an NFS status."""

    async def body(nfs: Nfs) -> None:
        _, d, name = await nfs.scratch()
        f = await nfs.create(d, "f")
        await nfs.write(f, b"abc")
        for offset in (2**63 - 1, 2**63, 2**64 - 1):
            res = await nfs.read(f, offset, 4096)
            assert (bytes(res.data), res.eof) == (b"", True)
        for offset in (2**63 - 2, 2**63, 2**64 - 4):
            args = WRITE3args(f, offset, 3, stable_how.FILE_SYNC, b"xyz")
            assert await nfs.status(NFSPROC3.WRITE, args) == nfsstat3.NFS3ERR_FBIG
        for size in (2**63, 2**64 - 1):
            args = SETATTR3args(f, sattr3(size=size), None)
            assert await nfs.status(NFSPROC3.SETATTR, args) == nfsstat3.NFS3ERR_FBIG
            create = CREATE3args(diropargs3(d, b"g"), Arm(createmode3.GUARDED, sattr3(size=size)))
            assert await nfs.status(NFSPROC3.CREATE, create) == nfsstat3.NFS3ERR_FBIG
        device = Arm(ftype3.NF3CHR, devicedata3(sattr3(), specdata3(2**32 - 1, 2**32 - 1)))
        status = await nfs.status(NFSPROC3.MKNOD, MKNOD3args(diropargs3(d, b"dev"), device))
        assert status == nfsstat3.NFS3ERR_INVAL
        assert await nfs.names(d) == {b"f"}
        assert bytes((await nfs.read(f)).data) == b"abc"
        del name

    server.run(body)


def test_server_survived_everything(server: Served) -> None:
    async def body(nfs: Nfs) -> None:
        await null_works(server.port)
        root = await nfs.mount("/a")
        assert (await nfs.call(NFSPROC3.GETATTR, GETATTR3args(root))).tag == OK

    server.run(body)
    assert server.alive()
    assert "Traceback" not in server.log()
