"""The household roster: the peers this one accepts, by key, kept in `peers.json` in the
state directory, and when each was last heard from (`peers-seen.json`).

`peers.json` has one writer at a time: the `realize peer` commands, under `peers.lock`
(`edit`), replacing the file whole and durably (a crash leaves the old roster or the new).
A running server only reads it, when told to (the control program's ROSTER call) or at start.
`peers-seen.json` is the server's alone (`record_contact`), so the two writers never race.

A `Roster` is an immutable value: `with_peer` and `without` return a new one, or raise
`RosterError` with the sentence a user sees, having changed nothing.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from nfsd.peer.identity import PeerKey, TokenError, certificate_public_key, parse_token
from nfsd.statedir import write_private

ROSTER_FILE = "peers.json"
SEEN_FILE = "peers-seen.json"
LOCK_FILE = "peers.lock"
DEFAULT_PEER_PORT = 20491
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_FORMAT = 1


class RosterError(Exception):
    """A roster change that cannot be made, or a roster file that cannot be read."""


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise RosterError(
            f"invalid peer name {name!r}: use up to 64 letters, digits, '.', '_' or '-', "
            "like 'laptop'"
        )
    return name


def parse_address(text: str) -> tuple[str, int]:
    """(host, port) from "HOST:PORT", "[IPV6]:PORT", "HOST" or "[IPV6]" (the default port)."""
    text = text.strip()
    host, port_text = text, ""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or (end + 1 < len(text) and text[end + 1] != ":"):
            raise RosterError(f"invalid address {text!r}: write an IPv6 one as [::1]:PORT")
        host, port_text = text[1:end], text[end + 2 :]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif ":" in text:
        raise RosterError(f"invalid address {text!r}: write an IPv6 one as [{text}]:PORT")
    if not host or any(c.isspace() or c in "/[]" for c in host):
        raise RosterError(f"invalid address {text!r}: give HOST:PORT, like 192.0.2.7:20491")
    if not port_text:
        return host, DEFAULT_PEER_PORT
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise RosterError(f"invalid port in {text!r}: a number from 1 to 65535")
    return host, int(port_text)


def format_address(address: tuple[str, int]) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Peer:
    """One member of the household as this peer knows it."""

    name: str
    key: PeerKey
    address: tuple[str, int] | None  # None: deaf, never dialled; it dials in
    areas: tuple[str, ...] | None  # None: every area both have
    added: float  # unix time

    @property
    def peer_id(self) -> str:
        return self.key.peer_id

    @property
    def public_key(self) -> bytes:
        return self.key.public_key

    def shares(self, area: str) -> bool:
        return self.areas is None or area in self.areas

    def to_json(self) -> dict:
        return {
            "id": self.peer_id,
            "certificate": base64.b64encode(self.key.certificate).decode(),
            "address": None if self.address is None else format_address(self.address),
            "areas": None if self.areas is None else list(self.areas),
            "added": self.added,
        }

    @classmethod
    def from_json(cls, name: str, entry: dict) -> Peer:
        certificate = base64.b64decode(entry["certificate"], validate=True)
        public_key = certificate_public_key(certificate)
        address = entry.get("address")
        areas = entry.get("areas")
        return cls(
            check_name(name),
            PeerKey(public_key, certificate),
            None if address is None else parse_address(address),
            None if areas is None else tuple(str(a) for a in areas),
            float(entry.get("added", 0)),
        )


@dataclass(frozen=True)
class Roster:
    peers: dict[str, Peer]

    def by_key(self, public_key: bytes) -> Peer | None:
        for peer in self.peers.values():
            if peer.public_key == public_key:
                return peer
        return None

    def certificates(self) -> list[bytes]:
        """The DER certificates TLS trusts: one per peer, and no other."""
        return [peer.key.certificate for peer in self.peers.values()]

    def with_peer(self, peer: Peer, own_key: bytes) -> Roster:
        if peer.public_key == own_key:
            raise RosterError(
                "that token is this peer's own: run 'realize id' on the other machine and "
                "paste its line here"
            )
        if peer.name in self.peers:
            raise RosterError(
                f"a peer named {peer.name} exists already ({self.peers[peer.name].peer_id}): "
                f"remove it first with 'realize peer remove {peer.name}'"
            )
        known = self.by_key(peer.public_key)
        if known is not None:
            raise RosterError(f"that key is in the roster already, as {known.name}")
        return Roster({**self.peers, peer.name: peer})

    def without(self, name: str) -> Roster:
        if name not in self.peers:
            known = ", ".join(sorted(self.peers)) or "none"
            raise RosterError(f"no peer named {name} (peers: {known})")
        return Roster({n: p for n, p in self.peers.items() if n != name})

    def to_bytes(self) -> bytes:
        body = {"format": _FORMAT, "peers": {n: p.to_json() for n, p in sorted(self.peers.items())}}
        return (json.dumps(body, indent=2) + "\n").encode()


def new_peer(name: str, token_text: str, address: str | None, areas: list[str] | None) -> Peer:
    """The peer a `realize peer add` line describes; RosterError for a bad one."""
    try:
        key = parse_token(token_text)
    except TokenError as e:
        raise RosterError(str(e)) from None
    return Peer(
        check_name(name),
        key,
        None if address is None else parse_address(address),
        None if areas is None else tuple(areas),
        time.time(),
    )


def load(state_dir: Path) -> Roster:
    """The roster of `state_dir` (empty when it has none); RosterError if it is damaged."""
    path = Path(state_dir) / ROSTER_FILE
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        return Roster({})
    except (OSError, ValueError) as e:
        raise RosterError(f"{path} cannot be read: {e}") from None
    try:
        if raw.get("format") != _FORMAT:
            raise ValueError(f"unknown format {raw.get('format')!r}")
        peers = {name: Peer.from_json(name, entry) for name, entry in raw["peers"].items()}
    except (KeyError, TypeError, ValueError, AttributeError, RosterError) as e:
        raise RosterError(f"{path} is damaged: {e}") from None
    return Roster(peers)


def save(state_dir: Path, roster: Roster) -> None:
    write_private(Path(state_dir) / ROSTER_FILE, roster.to_bytes(), durable=True)


@contextlib.contextmanager
def edit(state_dir: Path) -> Iterator[list[Roster]]:
    """Change the roster: the block gets a one-item list holding the current roster and puts
    the new one in its place; it is saved when the block ends without an error. Other editors
    wait meanwhile."""
    lock_path = Path(state_dir) / LOCK_FILE
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        current = load(state_dir)
        holder = [current]
        yield holder
        if holder[0] is not current:
            save(state_dir, holder[0])
    finally:
        os.close(fd)


# ---- last contact: the server's own file ----


def load_contacts(state_dir: Path) -> dict[str, float]:
    """When each peer (by peer id) was last connected, as the server last wrote it."""
    try:
        raw = json.loads((Path(state_dir) / SEEN_FILE).read_bytes())
        return {str(k): float(v) for k, v in raw.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def record_contact(state_dir: Path, contacts: dict[str, float]) -> None:
    """Best effort: a full disk costs only the last-contact times."""
    with contextlib.suppress(OSError):
        write_private(Path(state_dir) / SEEN_FILE, json.dumps(contacts, indent=1).encode())
