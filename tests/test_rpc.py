"""ONC RPC over the wire against a running server: NULL on every program over TCP and UDP,
the RFC 5531 refusals (PROG_UNAVAIL, PROG_MISMATCH, PROC_UNAVAIL, GARBAGE_ARGS, RPC_MISMATCH,
AUTH_ERROR), record marking, pipelining, the duplicate-request cache, MOUNT and the
portmapper/rpcbind. Also checks that the precompiled reply headers of xdr.rpc_fast are the
bytes the declarative xdr.rpc types give.
"""

from __future__ import annotations

import socket
import struct

import pytest
import trio

from nfsd.rpc.client import encode_args, open_client, udp_call
from nfsd.rpc.record import LAST_FRAGMENT, RecordReader
from tests.conftest import HOST, ROOT, Nfs, Served
from xdr.codec import Arm, String, XdrError, boolean, decode, encode, uint32, void
from xdr.mount import (
    MOUNT_PROGRAM,
    MOUNT_V1,
    MOUNT_V3,
    MOUNTPROC3,
    dirpath,
    exports,
    fhstatus,
    mountlist,
    mountres3,
    mountstat3,
)
from xdr.nfs3 import (
    NFS_PROGRAM,
    NFSPROC3,
    CREATE3args,
    CREATE3res,
    GETATTR3args,
    GETATTR3res,
    REMOVE3args,
    REMOVE3res,
    RENAME3args,
    RENAME3res,
    createmode3,
    diropargs3,
    nfsstat3,
    sattr3,
)
from xdr.portmap import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    PMAP_PROG,
    PMAPPROC,
    RPCBPROC_GETADDR,
    mapping,
    parse_uaddr,
    pmaplist,
    rpcb,
)
from xdr.rpc import (
    RPC_VERS,
    accept_stat,
    accepted_reply,
    auth_flavor,
    auth_stat,
    authsys_parms,
    call_body,
    mismatch_info,
    msg_type,
    opaque_auth,
    reject_stat,
    reply_stat,
    rpc_msg,
)
from xdr.rpc_fast import (
    Credential,
    auth_error_reply,
    encode_call,
    parse_call,
    parse_reply,
    prog_mismatch_reply,
    rpc_mismatch_reply,
)
from xdr.rpc_fast import (
    accepted_reply as fast_accepted_reply,
)

NFS_ACL_PROGRAM = 100227
NLM_PROGRAM = 100021
NO_AUTH = opaque_auth(auth_flavor.AUTH_NONE, b"")


def call_header(
    xid: int,
    prog: int,
    vers: int,
    proc: int,
    *,
    rpcvers: int = RPC_VERS,
    cred: opaque_auth = NO_AUTH,
) -> bytes:
    """A call header made with the declarative types, for calls the client would not make."""
    body = call_body(rpcvers, prog, vers, proc, cred, NO_AUTH)
    return encode(rpc_msg, rpc_msg(xid, Arm(msg_type.CALL, body)))


async def raw(nfs: Nfs, prog: int, vers: int, proc: int, args: bytes = b"", **kw):
    return await nfs.rpc.call_raw(prog, vers, proc, args, **kw)


# ---- NULL everywhere ----


@pytest.mark.parametrize(
    ("prog", "vers"),
    [(NFS_PROGRAM, 3), (MOUNT_PROGRAM, 3), (MOUNT_PROGRAM, 1), (PMAP_PROG, 2), (PMAP_PROG, 3)],
)
def test_null_over_tcp_and_udp(server: Served, prog: int, vers: int) -> None:
    async def body(nfs: Nfs) -> None:
        reply, data = await raw(nfs, prog, vers, 0)
        assert (reply.accepted, reply.stat, data) == (True, accept_stat.SUCCESS, b"")
        reply, data = await udp_call(HOST, server.port, prog, vers, 0, b"")
        assert (reply.accepted, reply.stat, data) == (True, accept_stat.SUCCESS, b"")

    server.run(body)


# ---- refusals ----


@pytest.mark.parametrize("prog", [NFS_ACL_PROGRAM, NLM_PROGRAM, 0x20000000])
def test_unknown_program_is_prog_unavail(server: Served, prog: int) -> None:
    async def body(nfs: Nfs) -> None:
        for vers in (1, 3, 4):
            reply, _ = await raw(nfs, prog, vers, 0)
            assert reply.accepted and reply.stat == accept_stat.PROG_UNAVAIL
        reply, _ = await udp_call(HOST, server.port, prog, 3, 0, b"")
        assert reply.accepted and reply.stat == accept_stat.PROG_UNAVAIL

    server.run(body)


@pytest.mark.parametrize(
    ("prog", "vers", "low", "high"),
    [
        (NFS_PROGRAM, 2, 3, 3),
        (NFS_PROGRAM, 4, 3, 3),
        (MOUNT_PROGRAM, 2, 1, 3),
        (MOUNT_PROGRAM, 4, 1, 3),
        (PMAP_PROG, 5, 2, 4),
    ],
)
def test_unknown_version_is_prog_mismatch_with_range(
    server: Served, prog: int, vers: int, low: int, high: int
) -> None:
    async def body(nfs: Nfs) -> None:
        reply, _ = await raw(nfs, prog, vers, 0)
        assert reply.accepted and reply.stat == accept_stat.PROG_MISMATCH
        assert reply.detail == (low, high)

    server.run(body)


def test_unknown_procedure_is_proc_unavail(server: Served) -> None:
    async def body(nfs: Nfs) -> None:
        for prog, vers, proc in [
            (NFS_PROGRAM, 3, 22),
            (NFS_PROGRAM, 3, 0xFFFFFFFF),
            (MOUNT_PROGRAM, 3, 6),
            (PMAP_PROG, 2, 99),
        ]:
            reply, _ = await raw(nfs, prog, vers, proc)
            assert reply.accepted and reply.stat == accept_stat.PROC_UNAVAIL, (prog, proc)

    server.run(body)


def test_truncated_or_overlong_arguments_are_garbage_args(server: Served) -> None:
    async def body(nfs: Nfs) -> None:
        root = await nfs.mount("/a")
        good = encode_args(GETATTR3args, GETATTR3args(root))
        reply, data = await raw(nfs, NFS_PROGRAM, 3, NFSPROC3.GETATTR, good)
        assert reply.stat == accept_stat.SUCCESS
        assert decode(GETATTR3res, data).tag == nfsstat3.NFS3_OK
        for bad in (good[:2], good[:-4], good + b"\0\0\0\0", b""):
            reply, _ = await raw(nfs, NFS_PROGRAM, 3, NFSPROC3.GETATTR, bad)
            assert reply.accepted and reply.stat == accept_stat.GARBAGE_ARGS, bad
        # NULL takes no arguments: anything after the header is garbage
        reply, _ = await raw(nfs, NFS_PROGRAM, 3, NFSPROC3.NULL, b"\0\0\0\0")
        assert reply.accepted and reply.stat == accept_stat.GARBAGE_ARGS
        # MNT with a path longer than MNTPATHLEN
        reply, _ = await raw(nfs, MOUNT_PROGRAM, 3, MOUNTPROC3.MNT, encode_args(dirpath, b"/a")[:5])
        assert reply.stat == accept_stat.GARBAGE_ARGS
        # the connection still works
        reply, _ = await raw(nfs, NFS_PROGRAM, 3, NFSPROC3.GETATTR, good)
        assert reply.stat == accept_stat.SUCCESS

    server.run(body)


def test_rpc_version_3_is_rpc_mismatch(server: Served) -> None:
    async def body(nfs: Nfs) -> None:
        xid = 0x1234
        header = call_header(xid, NFS_PROGRAM, 3, 0, rpcvers=3)
        reply, _ = await raw(nfs, NFS_PROGRAM, 3, 0, xid=xid, header=header)
        assert reply.xid == xid
        assert not reply.accepted and reply.stat == reject_stat.RPC_MISMATCH
        assert reply.detail == (2, 2)

    server.run(body)


@pytest.mark.parametrize(
    ("flavor", "expected"),
    [
        (auth_flavor.AUTH_DH, {auth_stat.AUTH_REJECTEDCRED, auth_stat.AUTH_BADCRED}),
        (auth_flavor.RPCSEC_GSS, {auth_stat.AUTH_REJECTEDCRED, auth_stat.AUTH_BADCRED}),
        (77, {auth_stat.AUTH_REJECTEDCRED, auth_stat.AUTH_BADCRED}),
    ],
)
def test_unknown_auth_flavor_is_auth_error(server: Served, flavor: int, expected: set) -> None:
    async def body(nfs: Nfs) -> None:
        xid = 0x4242
        header = call_header(xid, NFS_PROGRAM, 3, 0, cred=opaque_auth(flavor, b"\0" * 8))
        reply, _ = await raw(nfs, NFS_PROGRAM, 3, 0, xid=xid, header=header)
        assert reply.xid == xid
        assert not reply.accepted and reply.stat == reject_stat.AUTH_ERROR
        assert reply.detail[0] in expected

    server.run(body)


def test_malformed_auth_sys_credential_is_auth_badcred(server: Served) -> None:
    async def body(nfs: Nfs) -> None:
        xid = 0x77
        # machinename length far beyond the credential body
        bad = struct.pack(">II", 0, 200) + b"x" * 8
        header = call_header(xid, NFS_PROGRAM, 3, 0, cred=opaque_auth(auth_flavor.AUTH_SYS, bad))
        reply, _ = await raw(nfs, NFS_PROGRAM, 3, 0, xid=xid, header=header)
        assert not reply.accepted and reply.stat == reject_stat.AUTH_ERROR
        assert reply.detail == (auth_stat.AUTH_BADCRED,)

    server.run(body)


def test_auth_sys_and_auth_none_are_both_accepted(server: Served) -> None:
    async def body(nfs: Nfs) -> None:
        root = await nfs.mount("/a")
        for cred in (ROOT, None):
            reply, data = await nfs.rpc.call_raw(
                NFS_PROGRAM,
                3,
                NFSPROC3.GETATTR,
                encode_args(GETATTR3args, GETATTR3args(root)),
                cred=cred,
            )
            assert reply.accepted and reply.stat == accept_stat.SUCCESS
            assert decode(GETATTR3res, data).tag == nfsstat3.NFS3_OK

    server.run(body)


# ---- record marking and concurrency ----


def test_multi_fragment_record_is_reassembled(server: Served) -> None:
    async def body(nfs: Nfs) -> None:
        root = await nfs.mount("/a")
        xid = 0x5151
        record = encode_call(xid, NFS_PROGRAM, 3, NFSPROC3.GETATTR, ROOT) + encode_args(
            GETATTR3args, GETATTR3args(root)
        )
        # cut into fragments of 1, 3, 7, ... bytes, sent in pieces of odd sizes
        pieces, pos, size = [], 0, 1
        while pos < len(record):
            chunk = record[pos : pos + size]
            pos += len(chunk)
            last = LAST_FRAGMENT if pos == len(record) else 0
            pieces.append(struct.pack(">I", last | len(chunk)) + chunk)
            size = size * 2 + 1
        stream = b"".join(pieces)
        pending = nfs.rpc.expect(xid)
        for i in range(0, len(stream), 5):
            await nfs.rpc.send_bytes(stream[i : i + 5])
            await trio.sleep(0)  # a checkpoint: each piece leaves on its own
        with trio.fail_after(5):
            reply_record = await nfs.rpc.reply(pending)
        assert len(pieces) > 3
        reply = parse_reply(reply_record)
        assert reply.xid == xid and reply.stat == accept_stat.SUCCESS
        res = decode(GETATTR3res, reply_record[reply.body_offset :])
        assert res.tag == nfsstat3.NFS3_OK

    server.run(body)


def test_two_records_in_one_segment_both_answered(server: Served) -> None:
    async def body(nfs: Nfs) -> None:
        xids = [0x6001, 0x6002]
        waiting = [nfs.rpc.expect(xid) for xid in xids]
        data = b""
        for xid in xids:
            record = encode_call(xid, NFS_PROGRAM, 3, 0)
            data += struct.pack(">I", LAST_FRAGMENT | len(record)) + record
        await nfs.rpc.send_bytes(data)
        with trio.fail_after(5):
            for pending in waiting:
                assert await nfs.rpc.reply(pending)

    server.run(body)


def test_200_pipelined_getattrs_from_several_tasks(server: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, _ = await nfs.scratch()
        files = [await nfs.create(d, f"f{i}") for i in range(8)]
        expected = {i: (await nfs.getattr(fh)).fileid for i, fh in enumerate(files)}
        seen: list[tuple[int, int, int]] = []

        async def worker(task: int) -> None:
            for n in range(40):
                i = (task + n) % len(files)
                xid = nfs.rpc.next_xid()
                reply, data = await nfs.rpc.call_raw(
                    NFS_PROGRAM,
                    3,
                    NFSPROC3.GETATTR,
                    encode_args(GETATTR3args, GETATTR3args(files[i])),
                    xid=xid,
                )
                res = decode(GETATTR3res, data)
                assert reply.xid == xid
                seen.append((i, res.value.obj_attributes.fileid, xid))

        async with trio.open_nursery() as nursery:
            for task in range(5):
                nursery.start_soon(worker, task)
        assert len(seen) == 200
        assert len({xid for _, _, xid in seen}) == 200
        for i, fileid, _ in seen:
            assert fileid == expected[i]

    server.run(body)


def test_pipelined_calls_on_a_raw_stream_all_answered(server: Served) -> None:
    """Send 150 calls back to back without waiting, then read the replies."""

    async def body() -> None:
        stream = await trio.open_tcp_stream(HOST, server.port)
        xids = list(range(0x7000, 0x7000 + 150))
        data = b""
        for xid in xids:
            record = encode_call(xid, NFS_PROGRAM, 3, 0)
            data += struct.pack(">I", LAST_FRAGMENT | len(record)) + record
        await stream.send_all(data)
        reader = RecordReader()
        got: list[int] = []
        with trio.fail_after(10):
            while len(got) < len(xids):
                chunk = await stream.receive_some(1 << 16)
                assert chunk, "connection closed"
                got += [struct.unpack_from(">I", r)[0] for r in reader.feed(chunk)]
        assert sorted(got) == xids
        await stream.aclose()

    server.run(body, connect=False)


# ---- duplicate-request cache ----


def test_retransmitted_create_guarded_is_answered_from_the_cache(server: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, _ = await nfs.scratch()
        args = encode_args(
            CREATE3args,
            CREATE3args(diropargs3(d, b"once"), Arm(createmode3.GUARDED, sattr3(mode=0o644))),
        )
        xid = nfs.rpc.next_xid()
        first = await nfs.rpc.call_raw(NFS_PROGRAM, 3, NFSPROC3.CREATE, args, xid=xid)
        second = await nfs.rpc.call_raw(NFS_PROGRAM, 3, NFSPROC3.CREATE, args, xid=xid)
        one, two = decode(CREATE3res, first[1]), decode(CREATE3res, second[1])
        assert one.tag == two.tag == nfsstat3.NFS3_OK
        assert one.value.obj == two.value.obj
        assert first[1] == second[1]  # the very same reply
        # a new call (new xid) is executed: the file exists
        third = await nfs.rpc.call_raw(NFS_PROGRAM, 3, NFSPROC3.CREATE, args)
        assert decode(CREATE3res, third[1]).tag == nfsstat3.NFS3ERR_EXIST

    server.run(body)


def test_retransmitted_remove_is_ok_and_a_new_remove_is_noent(server: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, _ = await nfs.scratch()
        await nfs.create(d, "victim")
        args = encode_args(REMOVE3args, REMOVE3args(diropargs3(d, b"victim")))
        xid = nfs.rpc.next_xid()
        for _ in range(2):
            _, data = await nfs.rpc.call_raw(NFS_PROGRAM, 3, NFSPROC3.REMOVE, args, xid=xid)
            assert decode(REMOVE3res, data).tag == nfsstat3.NFS3_OK
        _, data = await nfs.rpc.call_raw(NFS_PROGRAM, 3, NFSPROC3.REMOVE, args)
        assert decode(REMOVE3res, data).tag == nfsstat3.NFS3ERR_NOENT

    server.run(body)


def test_retransmissions_over_udp_are_answered_from_the_cache(server: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, _ = await nfs.scratch()
        await nfs.mkdir(d, "dir")
        args = encode_args(
            RENAME3args, RENAME3args(diropargs3(d, b"dir"), diropargs3(d, b"renamed"))
        )
        xid = 0x0DD0
        message = encode_call(xid, NFS_PROGRAM, 3, NFSPROC3.RENAME, ROOT) + args
        sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        replies = []
        with sock, trio.fail_after(10):
            for _ in range(2):
                await sock.sendto(message, (HOST, server.port))
                data = await sock.recv(1 << 16)
                reply = parse_reply(data)
                assert reply.xid == xid
                replies.append(decode(RENAME3res, data[reply.body_offset :]).tag)
        assert replies == [nfsstat3.NFS3_OK, nfsstat3.NFS3_OK]
        assert await nfs.names(d) == {b"renamed"}
        # the same RENAME as a new call fails: the name is gone
        _, data = await nfs.rpc.call_raw(NFS_PROGRAM, 3, NFSPROC3.RENAME, args)
        assert decode(RENAME3res, data).tag == nfsstat3.NFS3ERR_NOENT

    server.run(body)


def test_same_xid_with_other_arguments_is_not_a_retransmission(server: Served) -> None:
    async def body(nfs: Nfs) -> None:
        _, d, _ = await nfs.scratch()
        xid = nfs.rpc.next_xid()
        for name in (b"x1", b"x2"):
            args = encode_args(
                CREATE3args, CREATE3args(diropargs3(d, name), Arm(createmode3.GUARDED, sattr3()))
            )
            _, data = await nfs.rpc.call_raw(NFS_PROGRAM, 3, NFSPROC3.CREATE, args, xid=xid)
            assert decode(CREATE3res, data).tag == nfsstat3.NFS3_OK
        assert await nfs.names(d) == {b"x1", b"x2"}

    server.run(body)


# ---- MOUNT ----


def test_mount_export_dump_umnt(server: Served) -> None:
    async def body(nfs: Nfs) -> None:
        listed = await nfs.rpc.call(MOUNT_PROGRAM, MOUNT_V3, MOUNTPROC3.EXPORT, void, None, exports)
        assert {e.ex_dir for e in listed} == {b"/", b"/a", b"/b"}
        await nfs.mount("/b")
        dumped = await nfs.rpc.call(MOUNT_PROGRAM, MOUNT_V3, MOUNTPROC3.DUMP, void, None, mountlist)
        assert any(m.ml_directory == b"/b" for m in dumped)
        await nfs.rpc.call(MOUNT_PROGRAM, MOUNT_V3, MOUNTPROC3.UMNT, dirpath, b"/b", void)
        dumped = await nfs.rpc.call(MOUNT_PROGRAM, MOUNT_V3, MOUNTPROC3.DUMP, void, None, mountlist)
        assert not any(m.ml_directory == b"/b" for m in dumped)
        res = await nfs.mnt("/nonexistent")
        assert res.tag == mountstat3.MNT3ERR_NOENT
        res = await nfs.mnt("/a")
        assert res.tag == mountstat3.MNT3_OK
        assert set(res.value.auth_flavors) >= {auth_flavor.AUTH_SYS, auth_flavor.AUTH_NONE}
        assert len(res.value.fhandle) <= 64 and len(res.value.fhandle) % 4 == 0
        # MOUNT v1 gives a 32-byte handle for the same export
        v1 = await nfs.rpc.call(MOUNT_PROGRAM, MOUNT_V1, MOUNTPROC3.MNT, dirpath, b"/a", fhstatus)
        assert v1.tag == 0 and len(v1.value) == 32

    server.run(body)


def test_mount_of_a_directory_below_an_export(server: Served) -> None:
    async def body(nfs: Nfs) -> None:
        root, d, name = await nfs.scratch()
        sub = await nfs.mkdir(d, "sub")
        await nfs.create(sub, "file")
        (server.areas["a"] / name / "link").symlink_to("sub")
        assert await nfs.mount(f"/a/{name}/sub") == sub
        assert await nfs.mount(f"/a/{name}/sub/") == sub
        for path, status in [
            (f"/a/{name}/sub/file", mountstat3.MNT3ERR_NOTDIR),
            (f"/a/{name}/link", mountstat3.MNT3ERR_NOTDIR),
            (f"/a/{name}/missing", mountstat3.MNT3ERR_NOENT),
        ]:
            assert (await nfs.mnt(path)).tag == status, path
        for path in (f"/a/{name}/../../b", "/a/.."):
            assert (await nfs.mnt(path)).tag != mountstat3.MNT3_OK, path
        assert root == await nfs.mount("/a/")

    server.run(body)


def test_mount_over_udp(server: Served) -> None:
    async def body() -> None:
        reply, data = await udp_call(
            HOST, server.port, MOUNT_PROGRAM, 3, MOUNTPROC3.MNT, encode_args(dirpath, b"/a")
        )
        assert reply.stat == accept_stat.SUCCESS
        assert decode(mountres3, data).tag == mountstat3.MNT3_OK

    server.run(body, connect=False)


# ---- portmapper / rpcbind on the NFS port ----


def test_portmap_getport_and_dump(server: Served) -> None:
    async def body(nfs: Nfs) -> None:
        port = server.port
        mount_port = server.process.mount_port
        for prog, vers, proto, expected in [
            (NFS_PROGRAM, 3, IPPROTO_TCP, port),
            (NFS_PROGRAM, 3, IPPROTO_UDP, port),
            (MOUNT_PROGRAM, 3, IPPROTO_TCP, mount_port),
            (MOUNT_PROGRAM, 3, IPPROTO_UDP, mount_port),
            (MOUNT_PROGRAM, 1, IPPROTO_UDP, mount_port),
            (NLM_PROGRAM, 4, IPPROTO_TCP, 0),
        ]:
            got = await _getport(nfs, prog, vers, proto)
            assert got == expected, (prog, vers, proto)
        dump = await nfs.rpc.call(PMAP_PROG, 2, PMAPPROC.DUMP, void, None, pmaplist)
        entries = {(m.prog, m.vers, m.prot, m.port) for m in dump}
        for needed in [
            (NFS_PROGRAM, 3, IPPROTO_TCP, port),
            (NFS_PROGRAM, 3, IPPROTO_UDP, port),
            (MOUNT_PROGRAM, 3, IPPROTO_TCP, mount_port),
            (MOUNT_PROGRAM, 1, IPPROTO_TCP, mount_port),
            (MOUNT_PROGRAM, 3, IPPROTO_UDP, mount_port),
        ]:
            assert needed in entries

    server.run(body)


async def _getport(nfs: Nfs, prog: int, vers: int, proto: int) -> int:
    return await nfs.rpc.call(
        PMAP_PROG, 2, PMAPPROC.GETPORT, mapping, mapping(prog, vers, proto, 0), uint32
    )


def test_portmap_getport_over_udp(server: Served) -> None:
    async def body() -> None:
        reply, data = await udp_call(
            HOST,
            server.port,
            PMAP_PROG,
            2,
            PMAPPROC.GETPORT,
            encode_args(mapping, mapping(NFS_PROGRAM, 3, IPPROTO_UDP, 0)),
        )
        assert reply.stat == accept_stat.SUCCESS
        assert struct.unpack(">I", data)[0] == server.port

    server.run(body, connect=False)


@pytest.mark.parametrize("vers", [3, 4])
def test_rpcbind_getaddr_gives_the_uaddr(server: Served, vers: int) -> None:
    async def body(nfs: Nfs) -> None:
        for prog, netid, port in [
            (NFS_PROGRAM, b"tcp", server.port),
            (NFS_PROGRAM, b"udp", server.port),
            (MOUNT_PROGRAM, b"tcp", server.process.mount_port),
        ]:
            addr = await nfs.rpc.call(
                PMAP_PROG,
                vers,
                RPCBPROC_GETADDR,
                rpcb,
                rpcb(prog, 3, netid, b"", b""),
                String(),
            )
            host, got = parse_uaddr(addr)
            assert (host, got) == (HOST, port)
        nlm = rpcb(NLM_PROGRAM, 4, b"tcp", b"", b"")
        missing = await nfs.rpc.call(PMAP_PROG, vers, RPCBPROC_GETADDR, rpcb, nlm, String())
        assert missing == b""

    server.run(body)


def test_portmap_set_is_refused_for_taken_mappings(server: Served) -> None:
    """SET may not steal NFS's own registration, even from loopback."""

    async def body(nfs: Nfs) -> None:
        taken = mapping(NFS_PROGRAM, 3, IPPROTO_TCP, 1)
        assert not await nfs.rpc.call(PMAP_PROG, 2, PMAPPROC.SET, mapping, taken, boolean)
        assert await _getport(nfs, NFS_PROGRAM, 3, IPPROTO_TCP) == server.port

    server.run(body)


# ---- the client itself ----


def test_client_propagates_errors_from_its_block(server: Served) -> None:
    """An exception inside `async with open_client(...)` reaches the caller (it was once
    absorbed by the client's cancelled nursery, which made failing checks pass)."""

    class Marker(Exception):
        pass

    async def body() -> None:
        async with open_client(HOST, server.port) as rpc:
            reply, _ = await rpc.call_raw(NFS_PROGRAM, 3, 0, b"")
            assert reply.stat == accept_stat.SUCCESS
            raise Marker()

    with pytest.raises(Marker):
        server.run(body, connect=False)


def test_client_fails_calls_when_the_server_closes(server: Served) -> None:
    """Calls on a connection the server closed fail at once, whether they were sent before
    the close was seen or after (they once waited forever)."""

    async def body(nfs: Nfs) -> None:
        # an oversized record makes the server close the connection
        await nfs.rpc.send_bytes(struct.pack(">I", LAST_FRAGMENT | 100_000_000) + b"\0" * 64)
        with trio.fail_after(5), pytest.raises(ConnectionError):
            await nfs.rpc.call_raw(NFS_PROGRAM, 3, 0, b"")
        with trio.fail_after(5):
            await nfs.rpc.closed.wait()
        for _ in range(3):
            with trio.fail_after(5), pytest.raises(ConnectionError):
                await nfs.rpc.call_raw(NFS_PROGRAM, 3, 0, b"")

    server.run(body)


# ---- the fast encoders against the RFC types ----


@pytest.mark.inproc
def test_fast_reply_headers_match_the_declarative_types() -> None:
    none = opaque_auth(auth_flavor.AUTH_NONE, b"")

    def reply(xid: int, body: Arm) -> bytes:
        return encode(rpc_msg, rpc_msg(xid, Arm(msg_type.REPLY, body)))

    accepted = Arm(reply_stat.MSG_ACCEPTED, accepted_reply(none, Arm(accept_stat.SUCCESS)))
    assert fast_accepted_reply(7) == reply(7, accepted)
    garbage = Arm(reply_stat.MSG_ACCEPTED, accepted_reply(none, Arm(accept_stat.GARBAGE_ARGS)))
    assert fast_accepted_reply(8, accept_stat.GARBAGE_ARGS) == reply(8, garbage)
    mismatch = Arm(
        reply_stat.MSG_ACCEPTED,
        accepted_reply(none, Arm(accept_stat.PROG_MISMATCH, mismatch_info(3, 3))),
    )
    assert prog_mismatch_reply(9, 3, 3) == reply(9, mismatch)
    rpc_mm = Arm(reply_stat.MSG_DENIED, Arm(reject_stat.RPC_MISMATCH, mismatch_info(2, 2)))
    assert rpc_mismatch_reply(10) == reply(10, rpc_mm)
    auth = Arm(reply_stat.MSG_DENIED, Arm(reject_stat.AUTH_ERROR, auth_stat.AUTH_TOOWEAK))
    assert auth_error_reply(11, auth_stat.AUTH_TOOWEAK) == reply(11, auth)


@pytest.mark.inproc
def test_fast_call_header_matches_the_declarative_types() -> None:
    cred = ROOT
    parms = encode(authsys_parms, authsys_parms(0, cred.machinename, 0, 0, []))
    expected = call_header(5, NFS_PROGRAM, 3, 1, cred=opaque_auth(auth_flavor.AUTH_SYS, parms))
    assert encode_call(5, NFS_PROGRAM, 3, 1, cred) == expected
    parsed = parse_call(expected)
    assert (parsed.xid, parsed.prog, parsed.vers, parsed.proc) == (5, NFS_PROGRAM, 3, 1)
    assert (parsed.cred.uid, parsed.cred.gid) == (0, 0)
    assert parsed.args_offset == len(expected)


@pytest.mark.inproc
def test_parse_reply_reads_every_reply_the_declarative_types_make() -> None:
    def reply(xid: int, body: Arm) -> bytes:
        return encode(rpc_msg, rpc_msg(xid, Arm(msg_type.REPLY, body)))

    def accepted(verf: opaque_auth, stat: Arm) -> Arm:
        return Arm(reply_stat.MSG_ACCEPTED, accepted_reply(verf, stat))

    body = b"\0\0\0\x05"
    # (record, xid, accepted, stat, detail, offset of the body)
    cases = [
        (reply(1, accepted(NO_AUTH, Arm(accept_stat.SUCCESS))) + body, 1, True, 0, (), 24),
        (reply(2, accepted(NO_AUTH, Arm(accept_stat.GARBAGE_ARGS))), 2, True, 4, (), 24),
        # a verifier with a body: not the one-step case
        (
            reply(3, accepted(opaque_auth(auth_flavor.AUTH_SYS, b"abcde"), Arm(0))) + body,
            3,
            True,
            0,
            (),
            32,
        ),
        (
            reply(4, accepted(NO_AUTH, Arm(accept_stat.PROG_MISMATCH, mismatch_info(2, 3)))),
            4,
            True,
            accept_stat.PROG_MISMATCH,
            (2, 3),
            32,
        ),
        (rpc_mismatch_reply(5), 5, False, reject_stat.RPC_MISMATCH, (2, 2), 24),
        (auth_error_reply(6, auth_stat.AUTH_BADCRED), 6, False, reject_stat.AUTH_ERROR, (1,), 20),
    ]
    for record, xid, ok, stat, detail, offset in cases:
        header = parse_reply(record)
        assert (header.xid, header.accepted, header.stat, header.detail) == (xid, ok, stat, detail)
        assert header.body_offset == offset
    with pytest.raises(XdrError):
        parse_reply(encode_call(7, NFS_PROGRAM, 3, 0))  # a call, not a reply
    with pytest.raises(XdrError):
        parse_reply(fast_accepted_reply(8)[:20])


@pytest.mark.inproc
def test_a_credential_seen_before_parses_the_same_and_on_its_own() -> None:
    """The parsed credentials of one client's calls are equal, and each call gets its own."""
    cred = Credential(auth_flavor.AUTH_SYS, 1000, 100, [4, 5], b"host")
    record = encode_call(1, NFS_PROGRAM, 3, 0, cred)
    first = parse_call(record).cred
    first.gids.append(6)  # what one call does with its credential stays with it
    again = parse_call(record).cred
    assert again == cred and again is not first
    other = parse_call(encode_call(2, NFS_PROGRAM, 3, 0, ROOT)).cred
    assert (other.uid, other.machinename) == (ROOT.uid, ROOT.machinename)
