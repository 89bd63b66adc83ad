"""Peers of a household over TLS 1.3, as a user pairs them: two state directories, `realize
init` each, tokens exchanged with `realize peer add`, servers started with `realize start`;
then links in either direction, one link when both dial, keys outside the roster refused
before any call is answered, and `realize peer remove` closing a live link at once.

The attacker's side runs in this process with the project's own TLS and RPC code (or plain
`ssl` for what that code would never send); every refusal is checked against the same call
from a roster member being answered.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import os
import re
import ssl
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from nfsd.cli import main
from nfsd.peer import identity, roster, tls
from nfsd.peer.identity import Identity
from nfsd.rpc.client import RpcClient, RpcError
from tests.support.server import REPO, start_server
from xdr.codec import void
from xdr.peer import PEER_PROGRAM, PEER_V1, PEERPROC

pytestmark = pytest.mark.wire

ENV = dict(os.environ, PYTHONPATH=str(REPO))


def realize_process(state: Path, *args: str) -> subprocess.CompletedProcess:
    """`realize` as a user runs it, in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "nfsd.cli", "--state-dir", str(state), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        env=ENV,
    )


def realize(state: Path, *args: str) -> subprocess.CompletedProcess:
    """The same command's `main` in this process: a process start costs seconds on a busy
    machine, and these tests run dozens of commands. Servers still run in their own."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["--state-dir", str(state), *args])
    return subprocess.CompletedProcess(args, status, out.getvalue(), err.getvalue())


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stdout}{result.stderr}"
    return result.stdout


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


def token_of(state: Path) -> str:
    out = ok(realize(state, "id"))
    line = next(line for line in out.splitlines() if "realize peer add NAME" in line)
    return re.search(r"rz1\.\S+", line).group(0)


def connected(state: Path, name: str) -> str:
    """The CONNECTED column of `name` in `realize peer list`."""
    for line in ok(realize(state, "peer", "list")).splitlines()[1:]:
        cells = re.split(r"\s{2,}", line.strip())
        if cells[0] == name:
            return cells[3]
    raise AssertionError(f"{name} not listed")


@pytest.fixture
def household(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """Makes initialised state directories, each with one area; stops what they started."""
    made: list[Path] = []

    def make(name: str) -> Path:
        state = tmp_path / name / "state"
        area = tmp_path / name / "docs"
        area.mkdir(parents=True)
        ok(realize(state, "init"))
        ok(realize(state, "area", "add", "docs", str(area)))
        made.append(state)
        return state

    yield make
    for state in made:
        if (state / "server.pid").exists():
            realize(state, "stop")


def start(state: Path) -> int:
    """`realize start` on ephemeral ports; the peer port it listens on."""
    # A process of its own, so the server it leaves is not this process's child (a zombie
    # of ours would look alive to `realize stop`).
    ok(realize_process(state, "start", "--port", "0", "--peer-port", "0", "--portmap", "off"))
    port = json.loads((state / "server.json").read_text())["peer_port"]
    assert isinstance(port, int) and port > 0
    return port


def test_two_peers_pair_and_connect_either_way(household: Callable[[str], Path]) -> None:
    a, b = household("a"), household("b")
    assert stat.S_IMODE((a / identity.KEY_FILE).stat().st_mode) == 0o600
    port_a = start(a)
    # b dials a; a knows b without an address (deaf: it dials in).
    ok(realize_process(a, "peer", "add", "b", token_of(b)))
    ok(realize_process(b, "peer", "add", "a", token_of(a), "--address", f"127.0.0.1:{port_a}"))
    assert connected(b, "a") == "no (server not running)"
    port_b = start(b)
    wait_for("a sees b dialled in", lambda: connected(a, "b") == "yes (dialled in)")
    wait_for("b sees its link to a", lambda: connected(b, "a") == "yes (dialled)")
    listed = ok(realize(a, "peer", "list"))
    assert "deaf" in listed and "never" not in listed.splitlines()[1]

    # The other way round, changed while both run: b forgets a's address, a learns b's.
    ok(realize_process(b, "peer", "remove", "a"))
    ok(realize_process(b, "peer", "add", "a", token_of(a)))
    ok(realize(a, "peer", "remove", "b"))
    ok(realize(a, "peer", "add", "b", token_of(b), "--address", f"127.0.0.1:{port_b}"))
    wait_for("a dials b", lambda: connected(a, "b") == "yes (dialled)")
    wait_for("b sees a dialled in", lambda: connected(b, "a") == "yes (dialled in)")


def test_when_both_have_an_address_one_link_serves_the_pair(
    household: Callable[[str], Path],
) -> None:
    # Which link stays when both dial at the same moment is the rule keep_new, tested
    # without sockets in test_peer_identity.py; here: both dial, and one link results.
    a, b = household("a"), household("b")
    port_a, port_b = start(a), start(b)
    ok(realize(a, "peer", "add", "b", token_of(b), "--address", f"127.0.0.1:{port_b}"))
    ok(realize(b, "peer", "add", "a", token_of(a), "--address", f"127.0.0.1:{port_a}"))

    def one_link() -> bool:
        return {connected(a, "b"), connected(b, "a")} == {"yes (dialled)", "yes (dialled in)"}

    wait_for("one link, seen the same way from both sides", one_link)
    ok(realize(a, "stop"))
    wait_for("b sees the link end", lambda: connected(b, "a") == "no", timeout=45)


# ---- refusals, from this process ----


async def _null_answered(port: int, context: ssl.SSLContext) -> bool:
    """Whether a NULL call over TLS with `context` gets an answer from the peer port."""
    transport = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(transport, context, server_side=False)
    try:
        with trio.fail_after(10):
            await stream.do_handshake()
            client = RpcClient(stream)
            await client.call(PEER_PROGRAM, PEER_V1, PEERPROC.NULL, void, None, void)
        return True
    except (ssl.SSLError, trio.BrokenResourceError, ConnectionError, RpcError):
        return False
    finally:
        await trio.aclose_forcefully(stream)


def null_answered(port: int, context: ssl.SSLContext) -> bool:
    return trio.run(_null_answered, port, context)


def _context_of(cert_der: bytes, key: Ed25519PrivateKey, trusted: bytes) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_verify_locations(cadata=trusted)
    with tempfile.TemporaryDirectory() as private:
        chain = Path(private) / "chain.pem"
        pem = x509.load_der_x509_certificate(cert_der).public_bytes(serialization.Encoding.PEM)
        chain.write_bytes(
            pem
            + key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context.load_cert_chain(chain)
    return context


def _roster_of(server: Path, me: Identity) -> roster.Roster:
    return roster.Roster({}).with_peer(
        roster.new_peer("server", token_of(server), None, None), me.public_key
    )


def test_only_roster_keys_are_answered(tmp_path: Path, household: Callable[[str], Path]) -> None:
    a_area = tmp_path / "a-docs"
    a_area.mkdir()
    a = tmp_path / "a-state"
    # start_server writes config.json itself: the server makes the key pair on first start.
    server = start_server({"docs": a_area}, a, extra=["--peer-port", "0"])
    try:
        assert stat.S_IMODE((a / identity.KEY_FILE).stat().st_mode) == 0o600
        port = json.loads((a / "server.json").read_text())["peer_port"]
        member_state = household("member")
        member = identity.load(member_state)
        ok(realize(a, "peer", "add", "member", token_of(member_state)))
        a_roster = _roster_of(a, member)
        a_cert = identity.load(a).certificate

        # The member's own TLS and RPC: answered, so the refusals below are the key's doing.
        assert null_answered(port, tls.client_context(member, a_roster))

        stranger_dir = tmp_path / "stranger"
        stranger_dir.mkdir(mode=0o700)
        stranger = identity.load_or_create(stranger_dir)[0]
        assert not null_answered(port, tls.client_context(stranger, _roster_of(a, stranger)))

        # A certificate with the member's name (its peer id as subject) on another key.
        forger = Ed25519PrivateKey.generate()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, member.peer_id)])
        forged = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(forger.public_key())
            .serial_number(1)
            .not_valid_before(datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC))
            .not_valid_after(datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC))
            .sign(forger, None)
            .public_bytes(serialization.Encoding.DER)
        )
        assert not null_answered(port, _context_of(forged, forger, a_cert))

        # The member's real key and certificate, over TLS 1.2 only.
        old = _context_of(member.certificate, member.private_key, a_cert)
        old.maximum_version = ssl.TLSVersion.TLSv1_2
        assert not null_answered(port, old)
        # The same context allowed TLS 1.3 is answered: the version alone was refused.
        assert null_answered(port, _context_of(member.certificate, member.private_key, a_cert))

        log = server.log()
        assert log.count("peer refused") >= 1
        assert "calls" in json.loads((a / "server.json").read_text())
    finally:
        server.stop()


def test_peer_remove_closes_the_live_link_and_refuses_the_key(
    household: Callable[[str], Path],
) -> None:
    a, b = household("a"), household("b")
    port = start(a)
    ok(realize(a, "peer", "add", "b", token_of(b)))
    member = identity.load(b)
    b_roster = _roster_of(a, member)

    async def scenario() -> None:
        stream = await tls.dial(("127.0.0.1", port), member, b_roster)
        client = await tls.confirmed(stream)  # a NULL call answered over the TLS stream
        assert stream.peer.name == "server"
        listed = await trio.to_thread.run_sync(connected, a, "b")
        assert listed == "yes (dialled in)"
        removed = await trio.to_thread.run_sync(realize, a, "peer", "remove", "b")
        ok(removed)
        # Nothing is sent on an idle link for 30 s (the heartbeat's timeout): only the
        # removal closes it this soon.
        with trio.fail_after(10):
            try:
                data = await stream.stream.receive_some(4096)
            except trio.BrokenResourceError:
                data = b""
        assert data == b""
        await client.aclose()

    trio.run(scenario)
    assert not null_answered(port, tls.client_context(member, b_roster))
    assert ok(realize(a, "peer", "list")).startswith("no peers")


def test_peer_command_mistakes_are_sentences_and_change_nothing(
    household: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # In this process (the same `main` the command runs): twenty process starts cost more
    # than the rest of this file on a busy machine.
    a, b = household("a"), household("b")
    own, theirs = token_of(a), token_of(b)
    capsys.readouterr()

    def run(*args: str) -> tuple[int, str, str]:
        status = main(["--state-dir", str(a), *args])
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    status, out, _ = run("id")
    assert status == 0
    assert "realize peer add NAME rz1." in out
    assert identity.load(a).peer_id in out
    assert run("peer", "add", "b", theirs, "--areas", "docs")[0] == 0
    before = (a / roster.ROSTER_FILE).read_bytes()
    damaged = theirs[:-4] + ("AAAA" if not theirs.endswith("AAAA") else "BBBB")
    other = token_of(household("c"))
    mistakes = {
        "damaged": (("peer", "add", "c", damaged), "signature"),
        "cut": (("peer", "add", "c", theirs[:40]), "damaged"),
        "not a token": (("peer", "add", "c", "hello"), "starts with"),
        "name taken": (("peer", "add", "b", other), "exists already"),
        "same key": (("peer", "add", "c", theirs), "as b"),
        "own key": (("peer", "add", "c", own), "own"),
        "unknown area": (("peer", "add", "c", theirs, "--areas", "music"), "no area named"),
        "bad address": (("peer", "add", "c", theirs, "--address", "host:99999"), "port"),
        "bad name": (("peer", "add", "c d", theirs), "invalid peer name"),
        "unknown name": (("peer", "remove", "nobody"), "no peer named nobody"),
    }
    for what, (args, expected) in mistakes.items():
        status, _, err = run(*args)
        assert status == 2, what
        assert err.startswith("realize: ") and expected in err, f"{what}: {err}"
    assert (a / roster.ROSTER_FILE).read_bytes() == before
    status, listed, _ = run("peer", "list")
    assert re.search(r"^b\s+\S+\s+deaf\s+no \(server not running\)\s+never\s+docs$", listed, re.M)


def test_a_peer_with_an_address_is_known_by_its_host_when_it_dials_in() -> None:
    """What the listener compares a dialling member's source address with: the roster's host,
    as an IP (an IPv4-mapped IPv6 source is the IPv4 one) or as a name resolved then."""
    from nfsd.peer.service import _is_host

    async def check(source: str, host: str) -> bool:
        return await _is_host(source, host)

    assert trio.run(check, "127.0.0.1", "127.0.0.1")
    assert trio.run(check, "::ffff:127.0.0.1", "127.0.0.1")
    assert trio.run(check, "127.0.0.1", "localhost")  # by /etc/hosts, no network
    assert not trio.run(check, "127.0.0.2", "127.0.0.1")
    assert not trio.run(check, "192.0.2.7", "localhost")
    assert not trio.run(check, "127.0.0.1", "no-such-host.invalid")  # unresolvable: refused
