"""A peer's identity and the roster, without sockets: the key file, the peer id, the
certificate made deterministically from the key, the token and what it refuses, the roster's
refusals, and the rule that keeps one link when both peers dial."""

from __future__ import annotations

import base64
import datetime
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from nfsd.peer import identity, roster
from nfsd.peer.identity import IdentityError, TokenError
from nfsd.peer.links import keep_new
from nfsd.peer.roster import DEFAULT_PEER_PORT, RosterError
from nfsd.peer.service import BACKOFF_MAX, backoff
from nfsd.peer.tls import PeerRefused, authenticate

pytestmark = pytest.mark.inproc


def made(tmp_path: Path, name: str) -> identity.Identity:
    state = tmp_path / name
    state.mkdir(mode=0o700)
    return identity.load_or_create(state)[0]


def test_key_file_is_private_and_kept(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    first, was_made = identity.load_or_create(state)
    assert was_made
    key_file = state / identity.KEY_FILE
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    again, was_made = identity.load_or_create(state)
    assert not was_made
    assert again.public_key == first.public_key
    assert again.peer_id == first.peer_id
    assert [p.name for p in state.iterdir()] == [identity.KEY_FILE]  # no temporary left


def test_a_key_file_others_may_read_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    identity.load_or_create(state)
    os.chmod(state / identity.KEY_FILE, 0o644)
    with pytest.raises(IdentityError, match="read by other users"):
        identity.load(state)


def test_certificate_is_deterministic_and_names_the_key(tmp_path: Path) -> None:
    me = made(tmp_path, "a")
    again = identity.certificate(me.private_key)
    assert again == me.certificate == identity.load(me.key_path.parent).certificate
    cert = x509.load_der_x509_certificate(me.certificate)
    assert cert.serial_number == 1
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == me.peer_id
    assert identity.certificate_public_key(me.certificate) == me.public_key
    other = made(tmp_path, "b")
    assert other.certificate != me.certificate


def test_peer_id_is_grouped_base32_of_the_key_digest(tmp_path: Path) -> None:
    me = made(tmp_path, "a")
    groups = me.peer_id.split("-")
    assert [len(g) for g in groups] == [4] * 7
    assert set("".join(groups)) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")
    assert identity.peer_id(me.public_key) == me.peer_id
    assert identity.peer_id(bytes(32)) != identity.peer_id(b"\x01" + bytes(31))


def test_token_carries_the_certificate(tmp_path: Path) -> None:
    me = made(tmp_path, "a")
    key = identity.parse_token(me.token)
    assert key.public_key == me.public_key
    assert key.certificate == me.certificate  # rebuilt byte for byte from key and signature
    assert identity.parse_token(f"  {me.token}\n") == key


def _body(token: str) -> bytes:
    body = token[len(identity.TOKEN_PREFIX) :]
    return base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))


def _token(data: bytes) -> str:
    return identity.TOKEN_PREFIX + base64.urlsafe_b64encode(data).decode().rstrip("=")


def test_bad_tokens_are_refused(tmp_path: Path) -> None:
    me = made(tmp_path, "a")
    other = made(tmp_path, "b")
    data = _body(me.token)
    with pytest.raises(TokenError, match="starts with"):
        identity.parse_token(me.token[len(identity.TOKEN_PREFIX) :])
    with pytest.raises(TokenError, match="damaged"):
        identity.parse_token(_token(data[:-1]))
    flipped = bytearray(data)
    flipped[40] ^= 1
    with pytest.raises(TokenError, match="signature"):
        identity.parse_token(_token(bytes(flipped)))
    # Another key's signature with this key: the certificate would not verify.
    with pytest.raises(TokenError, match="signature"):
        identity.parse_token(_token(data[:32] + _body(other.token)[32:]))


def test_roster_refuses_and_changes_nothing(tmp_path: Path) -> None:
    me = made(tmp_path, "a")
    laptop = made(tmp_path, "b")
    state = me.key_path.parent
    with roster.edit(state) as held:
        held[0] = held[0].with_peer(
            roster.new_peer("laptop", laptop.token, "192.0.2.7", ["photos"]), me.public_key
        )
    saved = (state / roster.ROSTER_FILE).read_bytes()
    attempts = [
        lambda r: r.with_peer(
            roster.new_peer("laptop", made(tmp_path, "c").token, None, None), me.public_key
        ),
        lambda r: r.with_peer(roster.new_peer("again", laptop.token, None, None), me.public_key),
        lambda r: r.with_peer(roster.new_peer("me", me.token, None, None), me.public_key),
        lambda r: r.without("desktop"),
    ]
    messages = []
    for attempt in attempts:
        with pytest.raises(RosterError) as refused, roster.edit(state) as held:
            held[0] = attempt(held[0])
        messages.append(str(refused.value))
    assert "exists already" in messages[0]
    assert "as laptop" in messages[1]
    assert "own" in messages[2]
    assert "no peer named desktop" in messages[3]
    assert (state / roster.ROSTER_FILE).read_bytes() == saved
    kept = roster.load(state).peers["laptop"]
    assert kept.address == ("192.0.2.7", DEFAULT_PEER_PORT)
    assert kept.areas == ("photos",)
    assert kept.key.certificate == laptop.certificate
    assert stat.S_IMODE((state / roster.ROSTER_FILE).stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("host.example:7000", ("host.example", 7000)),
        ("192.0.2.7", ("192.0.2.7", DEFAULT_PEER_PORT)),
        ("[::1]:7000", ("::1", 7000)),
        ("[fe80::1]", ("fe80::1", DEFAULT_PEER_PORT)),
    ],
)
def test_addresses(text: str, address: tuple[str, int]) -> None:
    assert roster.parse_address(text) == address
    assert roster.parse_address(roster.format_address(address)) == address


@pytest.mark.parametrize("text", ["::1", "host:0", "host:70000", "host:x", ":7000", "[::1"])
def test_bad_addresses(text: str) -> None:
    with pytest.raises(RosterError):
        roster.parse_address(text)


def test_authenticate_names_only_roster_keys(tmp_path: Path) -> None:
    me = made(tmp_path, "a")
    laptop = made(tmp_path, "b")
    members = roster.Roster({}).with_peer(
        roster.new_peer("laptop", laptop.token, None, None), me.public_key
    )
    assert authenticate(laptop.certificate, members).name == "laptop"
    with pytest.raises(PeerRefused):
        authenticate(me.certificate, members)
    # The laptop's name on another key: refused by key, whatever the certificate says.
    forger = Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, laptop.peer_id)])
    forged = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(forger.public_key())
        .serial_number(1)
        .not_valid_before(datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC))
        .not_valid_after(datetime.datetime(9999, 1, 1, tzinfo=datetime.UTC))
        .sign(forger, None)
        .public_bytes(serialization.Encoding.DER)
    )
    with pytest.raises(PeerRefused):
        authenticate(forged, members)
    with pytest.raises(PeerRefused):
        authenticate(None, members)


def test_both_dial_and_both_keep_the_link_the_lower_id_dialled() -> None:
    low, high = "AAAA-AAAA", "ZZZZ-ZZZZ"
    # Seen from each side, whichever link arrived first, the survivor is the one `low` dialled.
    for first_outgoing in (True, False):
        # On `low`: its own dial is outgoing.
        new_outgoing = not first_outgoing
        kept_new = keep_new(new_outgoing, first_outgoing, low, high)
        low_keeps_outgoing = new_outgoing if kept_new else first_outgoing
        assert low_keeps_outgoing
        # On `high`: the link `low` dialled is incoming.
        kept_new = keep_new(new_outgoing, first_outgoing, high, low)
        high_keeps_outgoing = new_outgoing if kept_new else first_outgoing
        assert not high_keeps_outgoing
    # A new link in the same direction replaces the old (a reconnect after a half-open link).
    assert keep_new(True, True, low, high)
    assert keep_new(False, False, high, low)


def test_backoff_grows_to_its_ceiling_with_jitter() -> None:
    first = [backoff(0) for _ in range(200)]
    assert all(0.5 <= b <= 1.0 for b in first)
    assert len(set(first)) > 100  # jittered, not one value
    assert all(BACKOFF_MAX / 2 <= backoff(30) <= BACKOFF_MAX for _ in range(50))
    assert all(4 <= backoff(3) <= 8 for _ in range(50))
