"""Who a call from another machine may act as, over a real network path: the server listens
on a veth address, the client runs in its own network namespace (tests/support/netns.py), so
the server sees calls from another host's address and cannot know who sent them. knfsd's
defaults hold there (nfsd/identity.py): `secure`, calls from unreserved ports are refused;
`root_squash`, uid 0 acts as the anonymous user while other uids act as themselves; and
`--insecure` and `--no-root-squash` trade each away. (tests/test_identity.py has the loopback
owner rules and the same policy in process.)
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from nfsd.exports import NOBODY
from tests.support.netns import PeerHost, netns_unavailable, peer_host
from xdr.mount import mountstat3
from xdr.nfs3 import nfsstat3

pytestmark = [
    pytest.mark.wire,
    pytest.mark.skipif(netns_unavailable() is not None, reason=str(netns_unavailable())),
]

ALICE = 1000
ANY_PORT = 0  # an ephemeral port: unreserved, any user on the peer can send from one
OK = nfsstat3.NFS3_OK


@pytest.fixture
def peer() -> Iterator[PeerHost]:
    with peer_host() as host:
        yield host


def _serve(make_server, peer: PeerHost, *options: str):
    srv = make_server(extra=["--bind", peer.local_address, *options], areas=("a",))
    area = srv.areas["a"]
    os.chmod(area, 0o777)  # anyone may make files here: who owns them is the question
    rootfile = area / "rootfile"
    rootfile.write_text("root's\n")
    os.chown(rootfile, 0, 0)
    os.chmod(rootfile, 0o644)
    return srv, area


def _step(port: int, uid: int, **calls) -> dict:
    return {"source_port": port, "uid": uid, "gid": uid, "export": "/a", **calls}


def _owner(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_uid, st.st_gid


def test_by_default_unreserved_ports_are_refused_and_root_is_squashed(
    make_server, peer: PeerHost
) -> None:
    srv, area = _serve(make_server, peer)
    high_root, high_alice, low_root, low_alice, high_after = peer.run_client(
        srv.port,
        [
            _step(ANY_PORT, 0, create="high-root"),
            _step(ANY_PORT, ALICE, create="high-alice"),
            _step(700, 0, create="low-root", chmod=("rootfile", 0o4755)),
            _step(701, ALICE, create="low-alice"),
            # With the handle a reserved port was given: still refused from a high one.
            _step(ANY_PORT, 0, create="high-with-handle", chmod=("rootfile", 0o4755)),
        ],
    )
    for refused in (high_root, high_alice, high_after):
        assert refused["port"] >= 1024
        assert refused["mnt"] == mountstat3.MNT3ERR_ACCES, refused
    assert high_after["create"] == nfsstat3.NFS3ERR_ACCES, high_after
    assert high_after["chmod"] == nfsstat3.NFS3ERR_ACCES, high_after
    for name in ("high-root", "high-alice", "high-with-handle"):
        assert not (area / name).exists(), name

    # From a reserved port: root acts as the anonymous user, Alice as herself.
    assert low_root["mnt"] == mountstat3.MNT3_OK and low_alice["mnt"] == mountstat3.MNT3_OK
    assert low_root["create"] == OK and low_alice["create"] == OK
    assert _owner(area / "low-root") == (NOBODY, NOBODY)
    assert _owner(area / "low-alice") == (ALICE, ALICE)
    # A squashed root may not make root's file setuid.
    assert low_root["chmod"] in (nfsstat3.NFS3ERR_PERM, nfsstat3.NFS3ERR_ACCES), low_root
    assert stat.S_IMODE((area / "rootfile").stat().st_mode) == 0o644


def test_insecure_accepts_unreserved_ports_and_still_squashes_root(
    make_server, peer: PeerHost
) -> None:
    srv, area = _serve(make_server, peer, "--insecure")
    high_root, high_alice = peer.run_client(
        srv.port,
        [_step(ANY_PORT, 0, create="high-root"), _step(ANY_PORT, ALICE, create="high-alice")],
    )
    assert high_root["port"] >= 1024 and high_alice["port"] >= 1024
    assert high_root["mnt"] == mountstat3.MNT3_OK and high_alice["mnt"] == mountstat3.MNT3_OK
    assert high_root["create"] == OK and high_alice["create"] == OK
    assert _owner(area / "high-root") == (NOBODY, NOBODY)
    assert _owner(area / "high-alice") == (ALICE, ALICE)


def test_no_root_squash_lets_root_from_a_reserved_port_be_root(make_server, peer: PeerHost) -> None:
    srv, area = _serve(make_server, peer, "--no-root-squash")
    high_root, low_root = peer.run_client(
        srv.port,
        [
            _step(ANY_PORT, 0, create="high-root"),
            _step(702, 0, create="low-root", chmod=("rootfile", 0o600)),
        ],
    )
    assert high_root["mnt"] == mountstat3.MNT3ERR_ACCES  # still `secure`
    assert not (area / "high-root").exists()
    assert low_root["create"] == OK and low_root["chmod"] == OK
    assert _owner(area / "low-root") == (0, 0)
    assert stat.S_IMODE((area / "rootfile").stat().st_mode) == 0o600
