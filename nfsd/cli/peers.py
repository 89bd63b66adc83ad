"""The commands about the household: `id` (this peer's id and the line another machine
pastes), `peer add`, `peer list`, `peer remove`, `peer ping` (a NULL call over the
live link, whichever side dialled it) and `sync` (dial every peer and pull the shared areas'
histories now, returning when done).

The roster (nfsd/peer/roster.py) is written here, whether or not a server runs; a running
server is then told over the control program (ROSTER) and takes the change at once: a
removed peer's link is closed and its key refused from then on. Every mistake a user can make
(a bad token, a name taken, an unknown name, this peer's own token) is a sentence and changes
nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from nfsd.cli.config import area_name, is_configured, load_config
from nfsd.cli.control_client import ControlClient, ControlError
from nfsd.cli.daemon import not_running, prepared, running, runtime
from nfsd.cli.errors import UsageError
from nfsd.cli.marks import area_named
from nfsd.cli.output import table, when
from nfsd.peer import identity, roster
from nfsd.peer.identity import Identity, IdentityError
from nfsd.peer.roster import DEFAULT_PEER_PORT, RosterError, format_address
from xdr.control import CONTROLPROC, ctlstat

_LOCAL = ("", "127.0.0.1", "::1", "0.0.0.0", "::", "localhost")


def this_identity(state_dir: Path) -> Identity:
    """The state directory's identity; made now for one `realize init` made before peers
    existed. A UsageError if the state directory is not set up."""
    try:
        found = identity.load(state_dir)
        if found is not None:
            return found
        if not is_configured(state_dir):
            raise UsageError(
                f"{state_dir} has no peer identity: run 'realize init' (or start the server) first"
            )
        prepared(state_dir)
        return identity.load_or_create(state_dir)[0]
    except IdentityError as e:
        raise UsageError(str(e)) from None


def _tell_server(state_dir: Path) -> None:
    """A running server re-reads the roster now; else the next one reads it at start."""
    if not running(state_dir):
        return
    try:
        res = ControlClient(state_dir).call(CONTROLPROC.ROSTER)
    except ControlError as e:
        print(
            f"realize: the running server did not take the change ({e}); it will at its next start"
        )
        return
    if res.status != ctlstat.OK:
        raise UsageError(f"the running server refused the roster: {res.message.decode()}")
    if res.message:
        print(f"realize: {res.message.decode(errors='replace')}")


def _peer_port(state_dir: Path) -> tuple[str, int]:
    """Where this peer listens for others: the running server's word, else its options."""
    about = runtime(state_dir) if running(state_dir) else None
    saved = load_config(state_dir).get("server", {}) if is_configured(state_dir) else {}
    bind = saved.get("peer_bind") or saved.get("bind") or ""
    if about is not None and about.get("peer_port"):
        return bind, int(about["peer_port"])
    return bind, int(saved.get("peer_port") or DEFAULT_PEER_PORT)


def cmd_id(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    me = this_identity(state_dir)
    bind, port = _peer_port(state_dir)
    host = args.host or ("HOST" if bind in _LOCAL else bind)
    address = format_address((host, port))
    print(f"peer id: {me.peer_id}")
    print("On the other machine, add this one with (NAME: what it will call this one):")
    print(f"  realize peer add NAME {me.token} --address {address}")
    if host == "HOST":
        print(
            "HOST: this machine's name or address as the other one reaches it (serve with "
            "--peer-bind 0.0.0.0 to be reachable). Leave --address out if the other machine "
            "cannot reach this one: this one then dials it."
        )
    return 0


def _areas(text: str | None, state_dir: Path) -> list[str] | None:
    if text is None:
        return None
    names: list[str] = []
    for part in text.split(","):
        name = area_name(part.strip())
        if name not in names:
            names.append(name)
    if is_configured(state_dir):
        unknown = [n for n in names if n not in load_config(state_dir)["areas"]]
        if unknown:
            raise UsageError(
                f"--areas: no area named {', '.join(unknown)} here (add it first with "
                "'realize area add NAME DIR')"
            )
    return names


def cmd_peer_add(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    me = this_identity(state_dir)
    areas = _areas(args.areas, state_dir)
    try:
        peer = roster.new_peer(args.name, args.token, args.address, areas)
        with roster.edit(state_dir) as held:
            held[0] = held[0].with_peer(peer, me.public_key)
    except RosterError as e:
        raise UsageError(str(e)) from None
    reach = (
        f"dialled at {format_address(peer.address)}"
        if peer.address
        else "deaf: never dialled, it dials in"
    )
    shared = "every area both have" if peer.areas is None else "areas " + ", ".join(peer.areas)
    print(f"realize: added peer {peer.name} ({peer.peer_id}), {reach}; shares {shared}")
    _tell_server(state_dir)
    return 0


def cmd_peer_remove(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    this_identity(state_dir)
    try:
        with roster.edit(state_dir) as held:
            removed = held[0].peers.get(args.name)
            held[0] = held[0].without(args.name)
    except RosterError as e:
        raise UsageError(str(e)) from None
    assert removed is not None
    print(f"realize: removed peer {args.name} ({removed.peer_id}); its key is refused from now on")
    _tell_server(state_dir)
    return 0


def cmd_peer_ping(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    this_identity(state_dir)
    if not running(state_dir):
        raise UsageError(not_running(state_dir))
    try:
        res = ControlClient(state_dir).call(CONTROLPROC.PING, args.name.encode())
    except ControlError as e:
        raise UsageError(str(e)) from None
    if res.status != ctlstat.OK:
        raise UsageError(res.message.decode(errors="replace"))
    print(f"realize: {res.message.decode(errors='replace')}")
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    this_identity(state_dir)
    if not running(state_dir):
        raise UsageError(not_running(state_dir))
    area = area_named(state_dir, args.area)
    try:
        res = ControlClient(state_dir).call(CONTROLPROC.SYNC, (area or "").encode())
    except ControlError as e:
        raise UsageError(str(e)) from None
    if res.status != ctlstat.OK:
        raise UsageError(res.message.decode(errors="replace"))
    for line in res.message.decode(errors="replace").splitlines():
        print(f"realize: {line}")
    return 0


def cmd_peer_list(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    this_identity(state_dir)
    try:
        members = roster.load(state_dir)
    except RosterError as e:
        raise UsageError(str(e)) from None
    if not members.peers:
        print(
            "no peers: add one with 'realize peer add NAME TOKEN', the line 'realize id' "
            "prints on the other machine"
        )
        return 0
    links: dict[str, str] = {}
    last = {p.peer_id: t for p, t in _contacts(state_dir, members)}
    if running(state_dir):
        try:
            res = ControlClient(state_dir).call(CONTROLPROC.PEERS)
        except ControlError as e:
            res = None
            unknown = f"unknown ({e})"
        if res is not None and res.status == ctlstat.OK:
            for state in res.peers:
                name = state.name.decode(errors="replace")
                if state.connected:
                    side = "dialled" if state.outgoing else "dialled in"
                    links[name] = f"yes ({side})"
                if state.last_contact:
                    last[members.peers[name].peer_id] = float(state.last_contact)
        elif res is not None:
            unknown = f"unknown ({res.message.decode(errors='replace')})"
        default = "no" if res is not None and res.status == ctlstat.OK else unknown
    else:
        default = "no (server not running)"
    rows = [("NAME", "PEER ID", "ADDRESS", "CONNECTED", "LAST CONTACT", "AREAS")]
    for name, peer in sorted(members.peers.items()):
        rows.append(
            (
                name,
                peer.peer_id,
                format_address(peer.address) if peer.address else "deaf",
                links.get(name, default),
                when(last.get(peer.peer_id, 0.0)),
                "all" if peer.areas is None else ",".join(peer.areas),
            )
        )
    for line in table(rows):
        print(line)
    return 0


def _contacts(state_dir: Path, members: roster.Roster) -> list[tuple[roster.Peer, float]]:
    seen = roster.load_contacts(state_dir)
    return [(p, seen[p.peer_id]) for p in members.peers.values() if p.peer_id in seen]
