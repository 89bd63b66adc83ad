"""Who a call may act as, tried as an attacker would (nfsd/identity.py has the policy):

- a local unprivileged process claiming uid 0 over loopback acts as itself, so it can make
  no setuid-root file and own nothing as root;
- the kernel's word on a loopback socket's owner is found for TCP and UDP;
- callers whose owner is not known (other machines) need a reserved port and have root
  squashed, unless --insecure / --no-root-squash say otherwise;
- one user's cached reply is never replayed to another user's call with the same xid.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
from pathlib import Path

import pytest
import trio

from nfsd.exports import NOBODY, ExportOptions, RootSquash
from nfsd.identity import loopback_owner, loopback_udp_owner
from nfsd.rpc.client import encode_args
from tests.conftest import ROOT, user
from tests.support.inproc import make_dispatcher, server_umask
from xdr.codec import Arm, decode
from xdr.mount import MOUNT_PROGRAM, MOUNT_V3, MOUNTPROC3, dirpath, mountres3, mountstat3
from xdr.nfs3 import (
    NFS_PROGRAM,
    NFS_V3,
    NFSPROC3,
    CREATE3args,
    CREATE3res,
    GETATTR3args,
    GETATTR3res,
    LOOKUP3args,
    LOOKUP3res,
    MKNOD3args,
    MKNOD3res,
    REMOVE3args,
    REMOVE3res,
    SETATTR3args,
    SETATTR3res,
    createmode3,
    devicedata3,
    diropargs3,
    ftype3,
    nfs_fh3,
    nfsstat3,
    sattr3,
    specdata3,
)
from xdr.rpc import auth_flavor
from xdr.rpc_fast import Credential, encode_call, parse_reply

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")

# Run as an unprivileged user (uid NOBODY) by the system's Python (the tests' virtual
# environment is root's): send the given call records over loopback, print the replies.
_SENDER = """
import socket, struct, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
for record in sys.argv[2:]:
    data = bytes.fromhex(record)
    s.sendall(struct.pack(">I", 0x80000000 | len(data)) + data)
    mark = b""
    while len(mark) < 4:
        mark += s.recv(4 - len(mark))
    size = struct.unpack(">I", mark)[0] & 0x7FFFFFFF
    reply = b""
    while len(reply) < size:
        reply += s.recv(size - len(reply))
    print(reply.hex())
"""
CLAIM_ROOT = Credential(auth_flavor.AUTH_SYS, 0, 0, [0], b"attacker")


def _as_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _record(xid: int, prog: int, vers: int, proc: int, args_type, args) -> str:
    return (encode_call(xid, prog, vers, proc, CLAIM_ROOT) + encode_args(args_type, args)).hex()


def _result(reply_hex: str, res_type):
    data = bytes.fromhex(reply_hex)
    header = parse_reply(data)
    assert header.accepted and header.stat == 0, header
    return decode(res_type, data[header.body_offset :])


@root_only
@pytest.mark.wire
def test_a_local_user_claiming_root_acts_as_itself(make_server) -> None:
    srv = make_server()
    area = srv.areas["a"]
    rootfile = area / "rootfile"
    rootfile.write_text("root's\n")
    os.chown(rootfile, 0, 0)
    os.chmod(rootfile, 0o755)
    (area / "pub").mkdir()
    os.chmod(area / "pub", 0o777)
    handles = {}

    async def find(nfs) -> None:
        root = await nfs.mount(b"/a")
        handles["rootfile"] = await nfs.lookup(root, b"rootfile")
        handles["pub"] = await nfs.lookup(root, b"pub")

    srv.run(find)
    how = Arm(createmode3.GUARDED, sattr3(mode=0o4755, uid=0, gid=0))
    records = [
        _record(1, MOUNT_PROGRAM, MOUNT_V3, MOUNTPROC3.MNT, dirpath, b"/a"),
        _record(
            2, NFS_PROGRAM, NFS_V3, NFSPROC3.SETATTR, SETATTR3args,
            SETATTR3args(handles["rootfile"], sattr3(mode=0o4755), None),
        ),
        _record(
            3, NFS_PROGRAM, NFS_V3, NFSPROC3.CREATE, CREATE3args,
            CREATE3args(diropargs3(handles["pub"], b"claimed"), how),
        ),
    ]  # fmt: skip
    done = subprocess.run(
        ["/usr/bin/python3", "-c", _SENDER, str(srv.port), *records],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=_as_nobody,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    mnt, setattr_, create = done.stdout.split()
    # An unreserved port is fine from this machine: the kernel vouches for who sent it.
    assert _result(mnt, mountres3).tag == mountstat3.MNT3_OK
    assert _result(setattr_, SETATTR3res).tag == nfsstat3.NFS3ERR_PERM
    assert stat.S_IMODE(rootfile.stat().st_mode) == 0o755
    made = area / "pub" / "claimed"
    created = _result(create, CREATE3res)
    if created.tag == nfsstat3.NFS3_OK:
        st = made.stat()
        assert (st.st_uid, st.st_gid) == (NOBODY, NOBODY)
    else:
        assert not made.exists()
    assert "claimed uid 0" in srv.process.log()


@root_only
@pytest.mark.wire
def test_the_owner_of_a_loopback_socket_is_found_for_tcp_and_udp(tmp_path: Path) -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    server_address = listener.getsockname()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    script = (
        "import socket, sys\n"
        "t = socket.create_connection(('127.0.0.1', int(sys.argv[1])))\n"
        "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "u.sendto(b'x', ('127.0.0.1', int(sys.argv[2])))\n"
        "sys.stdin.read()\n"
    )
    child = subprocess.Popen(
        ["/usr/bin/python3", "-c", script, str(server_address[1]), str(udp.getsockname()[1])],
        stdin=subprocess.PIPE,
        preexec_fn=_as_nobody,
    )
    try:
        accepted, peer = listener.accept()
        _, udp_peer = udp.recvfrom(16)
        assert loopback_owner(peer[:2], server_address) == NOBODY
        assert loopback_udp_owner(udp_peer[:2]) == NOBODY
        ours = socket.create_connection(server_address)
        mine, my_peer = listener.accept()
        assert loopback_owner(my_peer[:2], server_address) == os.geteuid()
        for s in (ours, mine):
            s.close()
        accepted.close()
        # A port nobody is connected from has no owner to tell.
        assert loopback_owner(("127.0.0.1", 1), server_address) is None
        assert loopback_owner(("10.0.0.1", peer[1]), server_address) is None
    finally:
        child.stdin.close()
        child.wait(10)
        listener.close()
        udp.close()


def _server(tmp_path: Path, **options):
    inproc = make_dispatcher(tmp_path, ("a",), options=ExportOptions(**options))
    area = inproc.areas["a"]
    os.chmod(area, 0o777)
    return inproc, area


async def _mount(inproc, cred, client, owner):
    res = await inproc.call(
        MOUNT_PROGRAM, MOUNT_V3, MOUNTPROC3.MNT, dirpath, b"/a", mountres3,
        cred=cred, client=client, owner=owner,
    )  # fmt: skip
    return res


async def _create(inproc, root: nfs_fh3, name: bytes, cred, client, owner):
    how = Arm(createmode3.GUARDED, sattr3(mode=0o644))
    return await inproc.call(
        NFS_PROGRAM, NFS_V3, NFSPROC3.CREATE, CREATE3args, CREATE3args(diropargs3(root, name), how),
        CREATE3res, cred=cred, client=client, owner=owner,
    )  # fmt: skip


@pytest.mark.inproc
def test_other_machines_need_a_reserved_port_and_have_root_squashed(tmp_path: Path) -> None:
    inproc, area = _server(tmp_path)
    remote_high, remote_low = ("192.0.2.7", 40000), ("192.0.2.7", 800)

    async def body() -> None:
        refused = await _mount(inproc, ROOT, remote_high, None)
        assert refused.tag == mountstat3.MNT3ERR_ACCES
        mounted = await _mount(inproc, ROOT, remote_low, None)
        assert mounted.tag == mountstat3.MNT3_OK
        root = nfs_fh3(mounted.value.fhandle)
        # A handle got elsewhere is no key either: every call from a high port is refused.
        got = await inproc.call(
            NFS_PROGRAM, NFS_V3, NFSPROC3.GETATTR, GETATTR3args, GETATTR3args(root),
            GETATTR3res, cred=ROOT, client=remote_high, owner=None,
        )  # fmt: skip
        assert got.tag == nfsstat3.NFS3ERR_ACCES
        made = await _create(inproc, root, b"by-remote-root", ROOT, remote_low, None)
        assert made.tag == nfsstat3.NFS3_OK
        assert made.value.obj_attributes.uid == NOBODY
        local = await _create(inproc, root, b"by-local-root", ROOT, ("127.0.0.1", 40001), 0)
        assert local.value.obj_attributes.uid == 0  # this machine's root is root

    with server_umask():
        trio.run(body)
    assert (area / "by-remote-root").stat().st_uid == NOBODY
    inproc.close()


@pytest.mark.inproc
def test_insecure_and_no_root_squash_trade_those_away(tmp_path: Path) -> None:
    inproc, _ = _server(tmp_path, secure=False, root_squash=RootSquash.NONE)
    remote_high = ("192.0.2.7", 40000)

    async def body() -> None:
        mounted = await _mount(inproc, ROOT, remote_high, None)
        assert mounted.tag == mountstat3.MNT3_OK
        root = nfs_fh3(mounted.value.fhandle)
        made = await _create(inproc, root, b"f", ROOT, remote_high, None)
        assert made.value.obj_attributes.uid == 0

    with server_umask():
        trio.run(body)
    inproc.close()


@pytest.mark.inproc
def test_a_cached_reply_is_not_replayed_to_another_user(tmp_path: Path) -> None:
    inproc, area = _server(tmp_path)
    os.chmod(area, 0o755)  # only root may remove here
    (area / "victim").write_text("x")
    client = ("127.0.0.1", 40002)

    async def body() -> None:
        root = nfs_fh3((await _mount(inproc, ROOT, client, 0)).value.fhandle)
        args = REMOVE3args(diropargs3(root, b"victim"))
        denied = await inproc.call(
            NFS_PROGRAM, NFS_V3, NFSPROC3.REMOVE, REMOVE3args, args, REMOVE3res,
            cred=user(1000), xid=77, client=client, owner=0,
        )  # fmt: skip
        assert denied.tag == nfsstat3.NFS3ERR_ACCES
        allowed = await inproc.call(
            NFS_PROGRAM, NFS_V3, NFSPROC3.REMOVE, REMOVE3args, args, REMOVE3res,
            cred=ROOT, xid=77, client=client, owner=0,
        )  # fmt: skip
        assert allowed.tag == nfsstat3.NFS3_OK
        gone = await inproc.call(
            NFS_PROGRAM, NFS_V3, NFSPROC3.LOOKUP, LOOKUP3args, LOOKUP3args(args.object),
            LOOKUP3res, cred=ROOT, client=client, owner=0,
        )  # fmt: skip
        assert gone.tag == nfsstat3.NFS3ERR_NOENT

    with server_umask():
        trio.run(body)
    inproc.close()


@pytest.mark.inproc
def test_an_ordinary_user_makes_no_device_node_and_gives_nothing_away(tmp_path: Path) -> None:
    inproc, area = _server(tmp_path)
    client = ("127.0.0.1", 40003)
    alice = user(1000)

    async def body() -> None:
        root = nfs_fh3((await _mount(inproc, alice, client, 0)).value.fhandle)
        device = MKNOD3args(
            diropargs3(root, b"disk"),
            Arm(ftype3.NF3BLK, devicedata3(sattr3(mode=0o666), specdata3(8, 0))),
        )
        made = await inproc.call(
            NFS_PROGRAM, NFS_V3, NFSPROC3.MKNOD, MKNOD3args, device, MKNOD3res,
            cred=alice, client=client, owner=0,
        )  # fmt: skip
        assert made.tag == nfsstat3.NFS3ERR_PERM
        how = Arm(createmode3.GUARDED, sattr3(mode=0o4755, uid=0))
        given = await inproc.call(
            NFS_PROGRAM, NFS_V3, NFSPROC3.CREATE, CREATE3args,
            CREATE3args(diropargs3(root, b"gift"), how), CREATE3res,
            cred=alice, client=client, owner=0,
        )  # fmt: skip
        assert given.tag == nfsstat3.NFS3ERR_PERM

    with server_umask():
        trio.run(body)
    assert not (area / "disk").exists() and not (area / "gift").exists()
    inproc.close()
