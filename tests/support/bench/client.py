"""One benchmark client process: the package's own RPC client against one server.

    python -m tests.support.bench.client '{"kind": "getattr", "server": {...}, ...}'

The parent (tests/support/bench/run.py) starts one or two of these per measurement. Each sets
up (connects, mounts, looks up its handles), prints ``READY``, waits for a line on stdin that
holds the wall-clock time to start at, runs its workload and prints ``RESULT {json}``. So two
processes measure the same window, and neither process start-up nor setup is timed.

Calls go through `nfsd.rpc.client.RpcClient.call_raw` with arguments encoded once by the
`xdr` types and replies checked by their status word and the few fields the workload needs
(a READ's count, a listing's cookies): the same client code and the same cost for either
server. Every workload is bounded by a duration or a byte or file count, and a time cap.
A READ answered NFS3ERR_JUKEBOX (an Unreal file whose content is still arriving) is retried
after a pause, as the kernel's client does; `read` can also hash what it reads (`digest`),
in file order, to prove the content.

Two jobs use no event loop but a plain blocking socket, one call outstanding (`BlockingConn`):
the RPC NULL ceiling, and the metadata walk, which models a blocking walker (`find -exec
stat`, `ls -lR` on a mount: each system call waits for its one RPC) and whose per-call cost on
the client side should be as small as Python allows, so the walk measures the servers.
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time
from typing import Any

import trio
from blake3 import blake3

from nfsd.rpc.client import RpcClient, RpcError, open_client
from xdr.codec import Arm, decode, encode
from xdr.mount import MOUNT_PROGRAM, MOUNT_V3, MOUNTPROC3, dirpath, mountres3, mountstat3
from xdr.nfs3 import (
    NFS_PROGRAM,
    NFS_V3,
    NFSPROC3,
    PROCEDURES,
    CREATE3args,
    LOOKUP3args,
    MKDIR3args,
    REMOVE3args,
    RMDIR3args,
    createmode3,
    diropargs3,
    ftype3,
    nfs_fh3,
    nfsstat3,
    sattr3,
    stable_how,
)
from xdr.rpc import auth_flavor
from xdr.rpc_fast import Credential, encode_call, parse_reply

ROOT = Credential(auth_flavor.AUTH_SYS, 0, 0, [], b"realize-bench")
_CALL_FIXED = struct.Struct(">6I")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_FATTR3_SIZE = 84
_WCC_ATTR_SIZE = 24
OK = b"\0\0\0\0"
JUKEBOX = _U32.pack(nfsstat3.NFS3ERR_JUKEBOX)
JUKEBOX_PAUSE = 0.1  # seconds before a call answered NFS3ERR_JUKEBOX is sent again


class BenchError(Exception):
    """A call failed or answered something a workload cannot go on with."""


def _pad(n: int) -> int:
    return (n + 3) & ~3


class Conn:
    """Calls of one program over one `RpcClient`, with the credential encoded once."""

    def __init__(self, rpc: RpcClient, prog: int = NFS_PROGRAM, vers: int = NFS_V3) -> None:
        self.rpc = rpc
        self.prog = prog
        self.vers = vers
        self._auth = encode_call(0, prog, vers, 0, ROOT)[_CALL_FIXED.size :]

    async def call(self, proc: int, args: bytes) -> bytes:
        """The reply body (the procedure's result) of an accepted call."""
        rpc = self.rpc
        xid = rpc.next_xid()
        header = _CALL_FIXED.pack(xid, 0, 2, self.prog, self.vers, proc) + self._auth
        reply, body = await rpc.call_raw(self.prog, self.vers, proc, args, xid=xid, header=header)
        if not reply.accepted or reply.stat != 0:
            raise RpcError(reply)
        return body

    async def ok(self, proc: int, args: bytes) -> bytes:
        """The reply body of a call that must answer NFS3_OK."""
        body = await self.call(proc, args)
        if body[:4] != OK:
            status = _U32.unpack_from(body)[0]
            raise BenchError(f"{NFSPROC3(proc).name}: {nfsstat3(status).name}")
        return body

    async def ok_patient(self, proc: int, args: bytes, waits: list[int]) -> bytes:
        """`ok`, but a call answered NFS3ERR_JUKEBOX is sent again after a pause (counted in
        `waits[0]`), for at most the job's time limit."""
        while True:
            body = await self.call(proc, args)
            if body[:4] == OK:
                return body
            if body[:4] != JUKEBOX:
                status = _U32.unpack_from(body)[0]
                raise BenchError(f"{NFSPROC3(proc).name}: {nfsstat3(status).name}")
            waits[0] += 1
            await trio.sleep(JUKEBOX_PAUSE)

    async def decoded(self, proc: int, args: Any) -> Any:
        """A call with declarative arguments; the resok, decoded by the xdr types."""
        _, args_type, res_type = PROCEDURES[proc]
        body = await self.ok(proc, encode(args_type, args))
        return decode(res_type, body).value


def fh_bytes(fh: bytes) -> bytes:
    """An `nfs_fh3` as XDR."""
    return encode(nfs_fh3, nfs_fh3(fh))


async def mount(server: dict[str, Any]) -> bytes:
    """The export's root handle, from MNT on the server's mount port."""
    async with open_client(server["host"], server["mount_port"], ROOT) as rpc:
        conn = Conn(rpc, MOUNT_PROGRAM, MOUNT_V3)
        body = await conn.call(MOUNTPROC3.MNT, encode(dirpath, server["export"].encode()))
    res = decode(mountres3, body)
    if res.tag != mountstat3.MNT3_OK:
        raise BenchError(f"MNT {server['export']}: {mountstat3(res.tag).name}")
    return res.value.fhandle


async def lookup(conn: Conn, directory: bytes, name: str) -> bytes:
    res = await conn.decoded(
        NFSPROC3.LOOKUP, LOOKUP3args(diropargs3(nfs_fh3(directory), name.encode()))
    )
    return res.object.data


async def lookup_path(conn: Conn, root: bytes, path: str) -> bytes:
    fh = root
    for part in path.strip("/").split("/"):
        if part:
            fh = await lookup(conn, fh, part)
    return fh


def created_handle(body: bytes) -> bytes | None:
    """The handle in a CREATE3resok / MKDIR3resok body (after the status), if any."""
    if _U32.unpack_from(body, 4)[0] != 1:
        return None
    (n,) = _U32.unpack_from(body, 8)
    return bytes(body[12 : 12 + n])


# ---- timing helpers ----


async def wait_for_start() -> float:
    """Print READY, read the start time from the parent, sleep until then; perf_counter now."""
    print("READY", flush=True)
    line = await trio.to_thread.run_sync(sys.stdin.readline)
    if not line:
        raise BenchError("the parent went away before the start")
    delay = float(line) - time.time()
    if delay > 0:
        await trio.sleep(delay)
    return time.perf_counter()


async def for_duration(
    outstanding: int, duration: float, one_call: Any, start: float
) -> dict[str, Any]:
    """`outstanding` tasks each calling `one_call(task, i)` until `duration` has passed."""
    deadline = start + duration
    counts = [0] * outstanding

    async def task(t: int) -> None:
        i = t
        n = 0
        while time.perf_counter() < deadline:
            await one_call(t, i)
            i += outstanding
            n += 1
        counts[t] = n

    async with trio.open_nursery() as nursery:
        for t in range(outstanding):
            nursery.start_soon(task, t)
    elapsed = time.perf_counter() - start
    calls = sum(counts)
    return {"ops": calls, "seconds": elapsed, "rate": calls / elapsed}


# ---- workloads ----


async def job_null(conn: Conn, root: bytes, job: dict[str, Any]) -> dict[str, Any]:
    async def one(_t: int, _i: int) -> None:
        await conn.call(NFSPROC3.NULL, b"")

    start = await wait_for_start()
    return await for_duration(job["outstanding"], job["duration"], one, start)


async def job_getattr(conn: Conn, root: bytes, job: dict[str, Any]) -> dict[str, Any]:
    args = fh_bytes(await lookup_path(conn, root, job["file"]))

    async def one(_t: int, _i: int) -> None:
        await conn.ok(NFSPROC3.GETATTR, args)

    start = await wait_for_start()
    return await for_duration(job["outstanding"], job["duration"], one, start)


async def job_lookup(conn: Conn, root: bytes, job: dict[str, Any]) -> dict[str, Any]:
    directory = await lookup_path(conn, root, job["dir"])
    names = [job["name_format"] % i for i in range(job["names"])]
    offset = job.get("proc_index", 0) * 7919
    all_args = [
        encode(LOOKUP3args, LOOKUP3args(diropargs3(nfs_fh3(directory), n.encode())))
        for n in names[offset % len(names) :] + names[: offset % len(names)]
    ]
    count = len(all_args)

    async def one(_t: int, i: int) -> None:
        await conn.ok(NFSPROC3.LOOKUP, all_args[i % count])

    start = await wait_for_start()
    return await for_duration(job["outstanding"], job["duration"], one, start)


async def transfer(
    outstanding: int, size: int, chunk: int, cap: float, one_call: Any, start: float
) -> dict[str, Any]:
    """Move `size` bytes in `chunk`-byte calls with `outstanding` calls in flight."""
    state = {"next": 0, "done": 0}
    deadline = start + cap

    async def task() -> None:
        while state["next"] < size and time.perf_counter() < deadline:
            offset = state["next"]
            n = min(chunk, size - offset)
            state["next"] = offset + n
            moved = await one_call(offset, n)  # not `+= await`: that would read "done" early
            state["done"] += moved

    async with trio.open_nursery() as nursery:
        for _ in range(outstanding):
            nursery.start_soon(task)
    return {"bytes": state["done"], "complete": state["done"] >= size}


class OrderedHash:
    """BLAKE3 of pieces that arrive out of order, fed to the hash in file order (holding at
    most the pieces read ahead of the first one still missing)."""

    def __init__(self) -> None:
        self.hasher = blake3()
        self.next = 0
        self.waiting: dict[int, bytes] = {}

    def add(self, offset: int, data: bytes) -> None:
        self.waiting[offset] = data
        while self.next in self.waiting:
            piece = self.waiting.pop(self.next)
            self.hasher.update(piece)
            self.next += len(piece)

    def hexdigest(self) -> str:
        return self.hasher.hexdigest()


async def job_read(conn: Conn, root: bytes, job: dict[str, Any]) -> dict[str, Any]:
    fh = fh_bytes(await lookup_path(conn, root, job["file"]))
    pack = struct.Struct(">QI").pack
    digest = OrderedHash() if job.get("digest") else None
    waits = [0]

    async def one(offset: int, n: int) -> int:
        body = await conn.ok_patient(NFSPROC3.READ, fh + pack(offset, n), waits)
        pos = 8 + _FATTR3_SIZE if _U32.unpack_from(body, 4)[0] else 8
        (count,) = _U32.unpack_from(body, pos)
        if count != n:
            raise BenchError(f"READ at {offset} answered {count} of {n} bytes")
        if digest is not None:  # count, eof, the opaque's length, then the data
            digest.add(offset, bytes(body[pos + 12 : pos + 12 + count]))
        return count

    start = await wait_for_start()
    result = await transfer(
        job["outstanding"], job["size"], job["chunk"], job["time_cap"], one, start
    )
    result["seconds"] = time.perf_counter() - start
    result["rate"] = result["bytes"] / result["seconds"] / 1e6
    result["jukebox"] = waits[0]
    if digest is not None:
        result["blake3"] = digest.hexdigest()
    return result


async def job_write(conn: Conn, root: bytes, job: dict[str, Any]) -> dict[str, Any]:
    name = job["name"].encode()
    how = Arm(createmode3.UNCHECKED, sattr3(mode=0o644, size=0))
    body = await conn.ok(
        NFSPROC3.CREATE, encode(CREATE3args, CREATE3args(diropargs3(nfs_fh3(root), name), how))
    )
    handle = created_handle(body) or await lookup(conn, root, job["name"])
    fh = fh_bytes(handle)
    chunk = job["chunk"]
    data = (bytes(range(256)) * (chunk // 256 + 1))[:chunk]
    head = struct.Struct(">QII").pack
    # WRITE3resok after the status: wcc_data (pre_op_attr, post_op_attr), count, committed
    unstable = stable_how.UNSTABLE

    async def one(offset: int, n: int) -> int:
        piece = data if n == chunk else data[:n]
        args = b"".join((fh, head(offset, n, unstable), _U32.pack(n), piece, b"\0" * (-n % 4)))
        reply = await conn.ok(NFSPROC3.WRITE, args)
        pos = 4
        pos += 4 + _WCC_ATTR_SIZE if _U32.unpack_from(reply, pos)[0] else 4
        pos += 4 + _FATTR3_SIZE if _U32.unpack_from(reply, pos)[0] else 4
        (count,) = _U32.unpack_from(reply, pos)
        if count != n:
            raise BenchError(f"WRITE at {offset} wrote {count} of {n} bytes")
        return count

    start = await wait_for_start()
    result = await transfer(job["outstanding"], job["size"], chunk, job["time_cap"], one, start)
    await conn.ok(NFSPROC3.COMMIT, fh + struct.pack(">QI", 0, 0))
    result["seconds"] = time.perf_counter() - start
    result["rate"] = result["bytes"] / result["seconds"] / 1e6
    await conn.ok(
        NFSPROC3.REMOVE, encode(REMOVE3args, REMOVE3args(diropargs3(nfs_fh3(root), name)))
    )
    return result


def count_entries(body: bytes, plus: bool) -> tuple[int, int, bytes, bool]:
    """(entries, last cookie, cookieverf, eof) of a READDIR3resok / READDIRPLUS3resok body."""
    u32 = _U32.unpack_from
    pos = 8 + _FATTR3_SIZE if u32(body, 4)[0] else 8
    verf = bytes(body[pos : pos + 8])
    pos += 8
    entries = 0
    cookie = 0
    while u32(body, pos)[0]:
        # value_follows, fileid, name, cookie
        (n,) = u32(body, pos + 12)
        pos += 16 + _pad(n)
        (cookie,) = _U64.unpack_from(body, pos)
        pos += 8
        if plus:
            pos += 4 + _FATTR3_SIZE if u32(body, pos)[0] else 4
            if u32(body, pos)[0]:
                pos += 8 + _pad(u32(body, pos + 4)[0])
            else:
                pos += 4
        entries += 1
    (eof,) = u32(body, pos + 4)
    return entries, cookie, verf, bool(eof)


async def job_readdir(conn: Conn, root: bytes, job: dict[str, Any]) -> dict[str, Any]:
    directory = fh_bytes(await lookup_path(conn, root, job["dir"]))
    plus = job["kind"] == "readdirplus"
    proc = NFSPROC3.READDIRPLUS if plus else NFSPROC3.READDIR
    count = job["count"]
    sizes = struct.pack(">II", count, count) if plus else _U32.pack(count)

    async def listing() -> int:
        cookie, verf, total = 0, b"\0" * 8, 0
        for _ in range(1_000_000):
            body = await conn.ok(proc, directory + _U64.pack(cookie) + verf + sizes)
            n, last, verf, eof = count_entries(body, plus)
            total += n
            if eof:
                return total
            if n == 0:
                raise BenchError("a listing reply with no entries and no eof")
            cookie = last
        raise BenchError("listing never reached eof")

    start = await wait_for_start()
    deadline = start + job["duration"]
    listings = entries = 0
    while listings == 0 or time.perf_counter() < deadline:
        got = await listing()
        if got < job["expect"]:
            raise BenchError(f"a listing gave {got} entries, expected {job['expect']}+")
        entries += got
        listings += 1
    seconds = time.perf_counter() - start
    return {"ops": entries, "listings": listings, "seconds": seconds, "rate": entries / seconds}


async def job_smallfiles(conn: Conn, root: bytes, job: dict[str, Any]) -> dict[str, Any]:
    """Create + write 4 KiB (UNSTABLE) + COMMIT `count` files, then REMOVE them."""
    dirname = job["dir"].encode()
    made = await conn.decoded(
        NFSPROC3.MKDIR, MKDIR3args(diropargs3(nfs_fh3(root), dirname), sattr3(mode=0o755))
    )
    directory = made.obj.data if made.obj is not None else await lookup(conn, root, job["dir"])
    files, workers, size = job["count"], job["outstanding"], job["file_size"]
    data = (bytes(range(256)) * (size // 256 + 1))[:size] + b"\0" * (-size % 4)
    how = Arm(createmode3.UNCHECKED, sattr3(mode=0o644))
    names = [b"f%06d" % i for i in range(files)]
    create_args = [
        encode(CREATE3args, CREATE3args(diropargs3(nfs_fh3(directory), n), how)) for n in names
    ]
    remove_args = [
        encode(REMOVE3args, REMOVE3args(diropargs3(nfs_fh3(directory), n))) for n in names
    ]
    write_tail = struct.pack(">QII", 0, size, stable_how.UNSTABLE) + _U32.pack(size) + data
    commit_tail = struct.pack(">QI", 0, 0)
    cap = job["time_cap"]

    async def run_phase(one: Any) -> tuple[int, float]:
        state = {"next": 0, "done": 0}
        start = time.perf_counter()
        deadline = start + cap

        async def task() -> None:
            while state["next"] < files and time.perf_counter() < deadline:
                i = state["next"]
                state["next"] = i + 1
                await one(i)
                state["done"] += 1

        async with trio.open_nursery() as nursery:
            for _ in range(workers):
                nursery.start_soon(task)
        return state["done"], time.perf_counter() - start

    async def create(i: int) -> None:
        body = await conn.ok(NFSPROC3.CREATE, create_args[i])
        handle = created_handle(body)
        if handle is None:
            handle = await lookup(conn, directory, names[i].decode())
        fh = fh_bytes(handle)
        await conn.ok(NFSPROC3.WRITE, fh + write_tail)
        await conn.ok(NFSPROC3.COMMIT, fh + commit_tail)

    async def remove(i: int) -> None:
        await conn.ok(NFSPROC3.REMOVE, remove_args[i])

    await wait_for_start()
    created, create_seconds = await run_phase(create)
    removed, remove_seconds = await run_phase(remove)
    if removed < created:  # the cap cut the removal short: clean up, untimed
        for i in range(removed, created):
            await remove(i)
    await conn.ok(
        NFSPROC3.RMDIR, encode(RMDIR3args, RMDIR3args(diropargs3(nfs_fh3(root), dirname)))
    )
    return {
        "created": created,
        "create_seconds": create_seconds,
        "create_rate": created / create_seconds,
        "removed": removed,
        "remove_seconds": remove_seconds,
        "remove_rate": removed / remove_seconds,
    }


NFS_JOBS = {
    "null": job_null,
    "getattr": job_getattr,
    "lookup": job_lookup,
    "read": job_read,
    "write": job_write,
    "readdir": job_readdir,
    "readdirplus": job_readdir,
    "smallfiles": job_smallfiles,
}


async def run_nfs_job(job: dict[str, Any]) -> dict[str, Any]:
    server = job["server"]
    root = await mount(server)
    async with open_client(server["host"], server["nfs_port"], ROOT) as rpc:
        conn = Conn(rpc)
        with trio.fail_after(job.get("timeout", 600)):
            return await NFS_JOBS[job["kind"]](conn, root, job)


# ---- ceilings that do not use the package's client ----


def null_raw(job: dict[str, Any]) -> dict[str, Any]:
    """NULL calls one at a time from a plain blocking socket: the cheapest client there is."""
    server = job["server"]
    sock = socket.create_connection((server["host"], server["nfs_port"]))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    call = bytearray(struct.pack(">I", 0x80000000 | 40) + encode_call(1, NFS_PROGRAM, 3, 0))
    buf = bytearray(4096)
    view = memoryview(buf)
    print("READY", flush=True)
    delay = float(sys.stdin.readline()) - time.time()
    if delay > 0:
        time.sleep(delay)
    start = time.perf_counter()
    deadline = start + job["duration"]
    calls = 0
    xid = 1
    while time.perf_counter() < deadline:
        xid += 1
        struct.pack_into(">I", call, 4, xid)
        sock.sendall(call)
        got = 0
        need = 4
        while got < need:
            got += sock.recv_into(view[got:])
            if got >= 4:
                need = 4 + (struct.unpack_from(">I", buf)[0] & 0x7FFFFFFF)
        if struct.unpack_from(">I", buf, 4)[0] != xid:
            raise BenchError("NULL reply to another xid")
        calls += 1
    seconds = time.perf_counter() - start
    sock.close()
    return {"ops": calls, "seconds": seconds, "rate": calls / seconds}


# ---- the metadata walk: a blocking client, one call outstanding ----


class BlockingConn:
    """Calls of one program over a blocking TCP socket, one at a time: the shape of a
    blocking walker's traffic, at the smallest client cost (no event loop, no tasks)."""

    _LAST_FRAGMENT = 0x80000000

    def __init__(self, host: str, port: int, prog: int = NFS_PROGRAM, vers: int = NFS_V3) -> None:
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.prog = prog
        self.vers = vers
        self.xid = 0
        self.calls = 0
        self._auth = encode_call(0, prog, vers, 0, ROOT)[_CALL_FIXED.size :]

    def close(self) -> None:
        self.sock.close()

    def _recv_exact(self, n: int) -> bytes:
        buf = bytearray(n)
        view = memoryview(buf)
        got = 0
        while got < n:
            k = self.sock.recv_into(view[got:])
            if not k:
                raise BenchError("the server closed the connection")
            got += k
        return bytes(buf)

    def call(self, proc: int, args: bytes) -> bytes:
        """The reply body (the procedure's result) of an accepted call."""
        self.xid += 1
        self.calls += 1
        header = _CALL_FIXED.pack(self.xid, 0, 2, self.prog, self.vers, proc) + self._auth
        size = len(header) + len(args)
        self.sock.sendall(b"".join((_U32.pack(self._LAST_FRAGMENT | size), header, args)))
        pieces = []
        while True:
            (mark,) = _U32.unpack(self._recv_exact(4))
            pieces.append(self._recv_exact(mark & 0x7FFFFFFF))
            if mark & self._LAST_FRAGMENT:
                break
        record = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        reply = parse_reply(record)
        if reply.xid != self.xid:
            raise BenchError(f"reply to xid {reply.xid}, expected {self.xid}")
        if not reply.accepted or reply.stat != 0:
            raise BenchError(f"call {proc} not accepted: {reply}")
        return record[reply.body_offset :]

    def ok(self, proc: int, args: bytes) -> bytes:
        """The reply body of a call that must answer NFS3_OK."""
        body = self.call(proc, args)
        if body[:4] != OK:
            status = _U32.unpack_from(body)[0]
            raise BenchError(f"{NFSPROC3(proc).name}: {nfsstat3(status).name}")
        return body


def blocking_mount(server: dict[str, Any]) -> bytes:
    """The export's root handle, from MNT over a blocking socket."""
    conn = BlockingConn(server["host"], server["mount_port"], MOUNT_PROGRAM, MOUNT_V3)
    try:
        body = conn.call(MOUNTPROC3.MNT, encode(dirpath, server["export"].encode()))
    finally:
        conn.close()
    res = decode(mountres3, body)
    if res.tag != mountstat3.MNT3_OK:
        raise BenchError(f"MNT {server['export']}: {mountstat3(res.tag).name}")
    return res.value.fhandle


def plus_entries(body: bytes) -> tuple[list[tuple[bytes, bytes | None]], int, bytes, bool]:
    """([(name, handle or None)], last cookie, cookieverf, eof) of a READDIRPLUS3resok body,
    "." and ".." left out (a walker neither stats nor descends into them)."""
    u32 = _U32.unpack_from
    pos = 8 + _FATTR3_SIZE if u32(body, 4)[0] else 8
    verf = bytes(body[pos : pos + 8])
    pos += 8
    entries: list[tuple[bytes, bytes | None]] = []
    cookie = 0
    while u32(body, pos)[0]:
        # value_follows, fileid, name, cookie, post_op_attr, post_op_fh3
        (n,) = u32(body, pos + 12)
        name = bytes(body[pos + 16 : pos + 16 + n])
        pos += 16 + _pad(n)
        (cookie,) = _U64.unpack_from(body, pos)
        pos += 8
        pos += 4 + _FATTR3_SIZE if u32(body, pos)[0] else 4
        handle = None
        if u32(body, pos)[0]:
            (length,) = u32(body, pos + 4)
            handle = bytes(body[pos + 8 : pos + 8 + length])
            pos += 8 + _pad(length)
        else:
            pos += 4
        if name not in (b".", b".."):
            entries.append((name, handle))
    (eof,) = u32(body, pos + 4)
    return entries, cookie, verf, bool(eof)


def walk_tree(conn: BlockingConn, top: bytes, count: int) -> tuple[int, int]:
    """Walk the tree below the directory `top` as `find TOP -exec stat` does on a mount, one
    call at a time: READDIRPLUS of a directory (every page), then a GETATTR of each entry's
    handle (LOOKUP first when the listing gave none), then its subdirectories in order,
    depth first (fts's order). (entries, directories listed).

    READDIRPLUS, not READDIR + LOOKUP: the Linux client lists a directory the first time with
    READDIRPLUS (`ls -l` does too) and takes names, handles and attributes from it, so it
    sends no LOOKUP for what it has just listed. The GETATTR per entry is `stat` revalidating
    the attributes the listing brought once they are older than the attribute cache's 3 s, as
    in any walk longer than that: the most a walk on a mount sends, the listings the least."""
    sizes = struct.pack(">II", count, count)
    entries = directories = 0
    stack = [top]
    while stack:
        directory = fh_bytes(stack.pop())
        directories += 1
        listed: list[tuple[bytes, bytes | None]] = []
        cookie, verf = 0, b"\0" * 8
        while True:
            body = conn.ok(NFSPROC3.READDIRPLUS, directory + _U64.pack(cookie) + verf + sizes)
            page, last, verf, eof = plus_entries(body)
            listed += page
            if eof:
                break
            if not page:
                raise BenchError("a listing reply with no entries and no eof")
            cookie = last
        below = []
        for name, handle in listed:
            if handle is None:
                found = conn.ok(NFSPROC3.LOOKUP, directory + _U32.pack(len(name)) + name
                                + b"\0" * (-len(name) % 4))  # fmt: skip
                handle = bytes(found[8 : 8 + _U32.unpack_from(found, 4)[0]])
            attrs = conn.ok(NFSPROC3.GETATTR, fh_bytes(handle))
            entries += 1
            if _U32.unpack_from(attrs, 4)[0] == ftype3.NF3DIR:
                below.append(handle)
        stack.extend(reversed(below))  # the first subdirectory is walked first
    return entries, directories


def walk(job: dict[str, Any]) -> dict[str, Any]:
    """One timed walk of the tree `job["dir"]` (looked up before the start)."""
    server = job["server"]
    root = blocking_mount(server)
    conn = BlockingConn(server["host"], server["nfs_port"])
    try:
        top = root
        for part in job["dir"].strip("/").split("/"):
            found = conn.ok(NFSPROC3.LOOKUP, encode(
                LOOKUP3args, LOOKUP3args(diropargs3(nfs_fh3(top), part.encode()))
            ))  # fmt: skip
            top = bytes(found[8 : 8 + _U32.unpack_from(found, 4)[0]])
        print("READY", flush=True)
        delay = float(sys.stdin.readline()) - time.time()
        if delay > 0:
            time.sleep(delay)
        calls_before = conn.calls
        start = time.perf_counter()
        entries, directories = walk_tree(conn, top, job["count"])
        seconds = time.perf_counter() - start
        calls = conn.calls - calls_before
    finally:
        conn.close()
    if entries != job["expect"]:
        raise BenchError(f"the walk found {entries} entries, expected {job['expect']}")
    return {
        "ops": entries,
        "directories": directories,
        "calls": calls,
        "seconds": seconds,
        "rate": entries / seconds,
    }


def tcp_recv(job: dict[str, Any]) -> dict[str, Any]:
    """Receive `size` bytes on a loopback socket; prints the port, then READY is implied."""
    listener = socket.create_server(("127.0.0.1", 0))
    print(f"PORT {listener.getsockname()[1]}", flush=True)
    conn, _ = listener.accept()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    size = job["size"]
    got = conn.recv_into(view)
    start = time.perf_counter()
    while got < size:
        n = conn.recv_into(view)
        if not n:
            break
        got += n
    seconds = time.perf_counter() - start
    conn.close()
    listener.close()
    return {"bytes": got, "seconds": seconds, "rate": got / seconds / 1e6}


def tcp_send(job: dict[str, Any]) -> dict[str, Any]:
    sock = socket.create_connection(("127.0.0.1", job["port"]))
    data = bytes(1 << 20)
    left = job["size"]
    start = time.perf_counter()
    while left > 0:
        n = min(left, len(data))
        sock.sendall(data if n == len(data) else data[:n])
        left -= n
    sock.close()
    return {"seconds": time.perf_counter() - start}


def main(argv: list[str]) -> int:
    job = json.loads(argv[1])
    kind = job["kind"]
    if kind == "null_raw":
        result = null_raw(job)
    elif kind == "walk":
        result = walk(job)
    elif kind == "tcp_recv":
        result = tcp_recv(job)
    elif kind == "tcp_send":
        result = tcp_send(job)
    else:
        result = trio.run(run_nfs_job, job)
    print("RESULT " + json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
