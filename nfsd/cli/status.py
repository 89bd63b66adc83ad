"""`realize status`: the server of a state directory (or that none runs), its clients, each
peer's link (connected, last seen, bytes in and out), each area's sync state with every peer
sharing it and its conflicts, and the cache. One document is collected (`collect`); the
table and `--json` both show it, so a script sees what a person sees. Its shape is
`STATUS_HELP`, the command's help.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from nfsd.cli.config import is_configured, load_config
from nfsd.cli.control_client import ControlClient, ControlError
from nfsd.cli.daemon import running, runtime
from nfsd.cli.errors import UsageError
from nfsd.cli.locate import area_of, local_path, resolved
from nfsd.cli.output import human, table, when
from nfsd.peer import roster
from nfsd.peer.roster import RosterError
from nfsd.statedir import DB_DIR
from nfsd.store.paths import STATE_DIR_NAME
from xdr.control import CONTROLPROC, ctlstat, statusres

STATUS_HELP = """\
Show the server of the state directory, its peers, each area's sync state and conflicts, and
the cache. Per area and peer, BEHIND is how many changes of this server's log (up to its
stamped mark, what peers can be served) the peer has not acknowledged yet, and APPLIED how
far this server has applied the peer's log (its sequence).

--json prints one document of this shape (times are unix seconds; null: never, or not known
while no server runs):
  {"state_dir": str,
   "server": {"running": bool, "pid": int, "bind": str, "nfs_port": int, "mount_port": int,
              "portmap_port": int|null, "peer_port": int|null, "connections": int,
              "calls": int},                     (only "running" while none runs)
   "problem": str|null,                          (why the server's own word is missing)
   "peer_id": str|null,
   "peer_links": bool,                           (false: no peer service, or none runs)
   "peers": [{"name": str, "peer_id": str, "connected": bool, "dialled": bool,
              "connected_since": float|null, "last_seen": float|null,
              "bytes_in": int, "bytes_out": int}],
   "areas": [{"name": str, "directory": str, "stamped": int|null,
              "conflicts": int|null, "conflicts_complete": bool,
              "peers": [{"peer": str, "behind": int, "acknowledged": int,
                         "acknowledged_at": float|null, "last_asked": float|null,
                         "applied": int, "catching_up": bool, "refused": int}]}],
   "cache": {"cached": int, "pinned": int, "limit": int, "disk_free": int, "reserve": int,
             "areas": {AREA: {"cached": int, "pinned": int, "cap": int}}} | null}
"""

_SERVER_KEYS = (
    "pid",
    "bind",
    "nfs_port",
    "mount_port",
    "portmap_port",
    "peer_port",
    "connections",
    "calls",
)


def _areas_of(state_dir: Path, about: dict | None) -> dict[str, str]:
    """The state directory's areas: its configuration, the running server's word, or for a
    `realize serve DIR` that is not running, DIR; else the UsageError of no configuration."""
    if is_configured(state_dir):
        return dict(load_config(state_dir)["areas"])
    if about is not None:
        return dict(about.get("areas", {}))
    if (state_dir / DB_DIR).is_dir() and state_dir.name == STATE_DIR_NAME:
        return {state_dir.parent.name or "root": str(state_dir.parent)}
    return dict(load_config(state_dir)["areas"])  # says it is not initialised


def _nothing(seconds: float) -> float | None:
    return float(seconds) if seconds else None


def _roster_peers(state_dir: Path) -> list[dict[str, Any]]:
    """The roster's peers as status shows them while no server runs."""
    try:
        members = roster.load(state_dir)
    except RosterError:
        return []
    seen = roster.load_contacts(state_dir)
    return [
        {
            "name": name,
            "peer_id": peer.peer_id,
            "connected": False,
            "dialled": False,
            "connected_since": None,
            "last_seen": _nothing(seen.get(peer.peer_id, 0.0)),
            "bytes_in": 0,
            "bytes_out": 0,
        }
        for name, peer in sorted(members.peers.items())
    ]


def collect(state_dir: Path) -> dict[str, Any]:
    """Everything `realize status` shows, as the document `--json` prints."""
    about = runtime(state_dir) if running(state_dir) else None
    directories = _areas_of(state_dir, about)
    doc: dict[str, Any] = {
        "state_dir": str(state_dir),
        "server": {"running": about is not None},
        "problem": None,
        "peer_id": None,
        "peer_links": False,
        "peers": [],
        "areas": [],
        "cache": about.get("cache") if about else None,
    }
    areas = {
        name: {
            "name": name,
            "directory": directory,
            "stamped": None,
            "conflicts": None,
            "conflicts_complete": False,
            "peers": [],
        }
        for name, directory in sorted(directories.items())
    }
    res: statusres | None = None
    if about is None:
        doc["peers"] = _roster_peers(state_dir)
    else:
        doc["server"].update({key: about.get(key) for key in _SERVER_KEYS})
        doc["peer_id"] = about.get("peer_id")
        try:
            res = ControlClient(state_dir).call(CONTROLPROC.STATUS)
        except ControlError as e:
            doc["problem"] = str(e)
        if res is not None and res.status != ctlstat.OK:
            doc["problem"] = res.message.decode(errors="replace")
            res = None
    if res is not None:
        doc["peer_links"] = res.linked
        doc["peer_id"] = res.peer_id.decode() or doc["peer_id"]
        doc["peers"] = [
            {
                "name": p.name.decode(errors="replace"),
                "peer_id": p.peer_id.decode(errors="replace"),
                "connected": p.connected,
                "dialled": p.outgoing,
                "connected_since": _nothing(p.since),
                "last_seen": _nothing(p.last_contact),
                "bytes_in": p.bytes_in,
                "bytes_out": p.bytes_out,
            }
            for p in res.peers
        ]
        for a in res.areas:
            name = a.name.decode(errors="replace")
            area = areas.setdefault(name, {"name": name, "directory": ""})
            area["stamped"] = a.stamped
            area["conflicts"] = a.conflicts
            area["conflicts_complete"] = a.conflicts_counted
            area["peers"] = [
                {
                    "peer": s.peer.decode(errors="replace"),
                    "behind": max(0, a.stamped - s.acked),
                    "acknowledged": s.acked,
                    "acknowledged_at": _nothing(s.acked_at),
                    "last_asked": _nothing(s.heard),
                    "applied": s.applied,
                    "catching_up": s.catching_up,
                    "refused": s.refused,
                }
                for s in a.peers
            ]
    doc["areas"] = list(areas.values())
    return doc


def _server_lines(doc: dict[str, Any]) -> list[str]:
    server = doc["server"]
    if not server["running"]:
        return ["server:  not running"]
    portmap = server["portmap_port"] or "not served"
    lines = [
        f"server:  running, pid {server['pid']}, {server['bind']} nfs port "
        f"{server['nfs_port']}, mount port {server['mount_port']}, portmapper {portmap}",
        f"clients: {server['connections']} connections, {server['calls']} calls",
    ]
    if doc["problem"]:
        lines.append(f"problem: {doc['problem']}")
    return lines


def _cache_lines(cache: dict[str, Any] | None) -> list[str]:
    if not cache:
        return []
    lines = [
        f"cache:   {human(cache['cached'])} used of {human(cache['limit'])} limit "
        f"({human(cache['pinned'])} pinned); disk {human(cache['disk_free'])} free, "
        f"keeping {human(cache['reserve'])} free"
    ]
    if cache["areas"]:
        lines.append(f"  {'area':<16} {'cached':>10} {'pinned':>10} {'limit':>10} {'use':>6}")
        for name, area in sorted(cache["areas"].items()):
            use = f"{100 * area['cached'] / area['cap']:.0f}%" if area["cap"] else "-"
            lines.append(
                f"  {name:<16} {human(area['cached']):>10} {human(area['pinned']):>10} "
                f"{human(area['cap']):>10} {use:>6}"
            )
    return lines


def _conflicts_text(area: dict[str, Any]) -> str:
    count = area["conflicts"]
    if count is None:
        return "-"
    return f"{count}" if area["conflicts_complete"] else f"{count}+"


def _peer_lines(doc: dict[str, Any]) -> list[str]:
    if doc["server"]["running"] and not doc["peer_links"] and not doc["problem"]:
        return ["peers:   none (this server has no peer links)"]
    if not doc["peers"]:
        return ["peers:   none ('realize id' shows how to pair)"]
    rows = [("NAME", "CONNECTED", "LAST SEEN", "IN", "OUT")]
    for p in doc["peers"]:
        if p["connected"]:
            link = "yes (dialled)" if p["dialled"] else "yes (dialled in)"
        else:
            link = "no" if doc["server"]["running"] else "no (server not running)"
        seen = "now" if p["connected"] else when(p["last_seen"])
        rows.append((p["name"], link, seen, human(p["bytes_in"]), human(p["bytes_out"])))
    return ["peers:", *table(rows, "  ")]


def _area_lines(doc: dict[str, Any]) -> list[str]:
    if not doc["areas"]:
        return ["areas:", "  (none: realize area add NAME DIR)"]
    rows = [("NAME", "DIRECTORY", "LOG", "CONFLICTS")]
    for a in doc["areas"]:
        log = "-" if a["stamped"] is None else str(a["stamped"])
        rows.append((a["name"], a["directory"], log, _conflicts_text(a)))
    lines = ["areas:", *table(rows, "  ")]
    sync = [("AREA", "PEER", "BEHIND", "ACKNOWLEDGED", "APPLIED", "LAST ASKED", "REFUSED")]
    for a in doc["areas"]:
        for s in a["peers"]:
            applied = str(s["applied"]) + (" (catching up)" if s["catching_up"] else "")
            sync.append(
                (
                    a["name"],
                    s["peer"],
                    str(s["behind"]),
                    when(s["acknowledged_at"]) if s["acknowledged_at"] else "never",
                    applied,
                    when(s["last_asked"]),
                    str(s["refused"]),
                )
            )
    if len(sync) > 1:
        lines += ["sync:", *table(sync, "  ")]
    return lines


def render(doc: dict[str, Any]) -> list[str]:
    """The status document as the lines a person reads."""
    lines = _server_lines(doc)
    lines.append(f"state:   {doc['state_dir']}")
    if doc["peer_id"]:
        lines.append(f"peer id: {doc['peer_id']}")
    lines += _cache_lines(doc["cache"])
    lines += _peer_lines(doc)
    lines += _area_lines(doc)
    return lines


def cmd_status(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    if args.path is not None:
        # The server was found from it; one in none of its areas was a mistake.
        path = local_path(args.path) or resolved(Path(args.path))
        areas = _areas_of(state_dir, runtime(state_dir) if running(state_dir) else None)
        if area_of(areas, path) is None:
            where = ", ".join(f"{n} in {d}" for n, d in sorted(areas.items()))
            raise UsageError(f"{args.path} is not inside an area's directory ({where or 'none'})")
    doc = collect(state_dir)
    if args.json:
        print(json.dumps(doc, indent=2))
    else:
        for line in render(doc):
            print(line)
    return 0
