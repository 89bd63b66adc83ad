"""The command line of `realize`: its global options and every subcommand, each with its
arguments and the function that carries it out."""

from __future__ import annotations

import argparse

from nfsd.cli.config import ENV_STATE_DIR
from nfsd.cli.configure import cmd_area_add, cmd_area_list, cmd_init, cmd_source_add
from nfsd.cli.conflicts import CONFLICTS_HELP, cmd_conflicts
from nfsd.cli.daemon import cmd_mount_cmd, cmd_run, cmd_serve, cmd_start, cmd_stop
from nfsd.cli.marks import MARKS, cmd_ls, cmd_mark
from nfsd.cli.options import add_server_options
from nfsd.cli.peers import (
    cmd_id,
    cmd_peer_add,
    cmd_peer_list,
    cmd_peer_ping,
    cmd_peer_remove,
    cmd_sync,
)
from nfsd.cli.status import STATUS_HELP, cmd_status
from nfsd.cli.store_commands import cmd_fsck, cmd_history, cmd_import

DESCRIPTION = (
    "The control command `realize`. A command that talks to a server finds it from the path "
    "it is given (or the current directory): the nearest state directory above it that has "
    "it inside an area, else the default one; --state-dir names one."
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="realize", description=DESCRIPTION)
    parser.add_argument(
        "--state-dir",
        default=None,
        help=f"state directory (default ${ENV_STATE_DIR} or ~/.realize)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every connection")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="export one directory in the foreground, no setup needed")
    p.add_argument("directory")
    p.add_argument("--name", help="export name (default: the directory's name)")
    add_server_options(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("init", help="create a state directory")
    add_server_options(p)
    p.set_defaults(func=cmd_init)

    area = sub.add_parser("area", help="manage areas").add_subparsers(
        dest="area_command", required=True, metavar="ACTION"
    )
    p = area.add_parser("add", help="add an area: a local directory exported as /NAME")
    p.add_argument("name")
    p.add_argument("directory")
    p.set_defaults(func=cmd_area_add)
    p = area.add_parser("list", help="list the areas")
    p.set_defaults(func=cmd_area_list)

    p = sub.add_parser("start", help="start the server in the background")
    add_server_options(p)
    p.set_defaults(func=cmd_start)
    p = sub.add_parser("run", help="serve the configured areas in the foreground")
    add_server_options(p)
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("stop", help="stop the background server")
    p.set_defaults(func=cmd_stop, located_by="")
    p = sub.add_parser(
        "status",
        help="show the server, its peers, each area's sync state and conflicts, and the cache",
        description=STATUS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("path", nargs="?", metavar="PATH", help="a path in an area: its server")
    p.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    p.set_defaults(func=cmd_status, located_by="path")
    source = sub.add_parser("source", help="attach other state directories").add_subparsers(
        dest="source_command", required=True, metavar="ACTION"
    )
    p = source.add_parser("add", help="read missing content from another state directory")
    p.add_argument("path")
    p.set_defaults(func=cmd_source_add)
    p = sub.add_parser("import", help="list a source's files of an area here (no copying)")
    p.add_argument("area")
    p.add_argument("source", help="the source's state directory")
    p.set_defaults(func=cmd_import)
    p = sub.add_parser(
        "mark",
        help="say what paths should be: real (local files), keep (cached, never evicted), "
        "unreal (cached, evictable), inherit (as their parent)",
    )
    p.add_argument("mark", choices=sorted(MARKS))
    p.add_argument("paths", nargs="+", metavar="PATH", help="AREA/path, or a path in an area")
    p.add_argument("--no-wait", action="store_true", help="return once the job is queued")
    p.set_defaults(func=cmd_mark, located_by="paths")
    p = sub.add_parser("ls", help="show each entry's layer, mark and how much is cached")
    p.add_argument(
        "paths", nargs="*", metavar="PATH", help="AREA/path, or a path in an area (default: all)"
    )
    p.set_defaults(func=cmd_ls, located_by="paths")
    p = sub.add_parser("fsck", help="check the store and repair what can be repaired")
    p.add_argument("--repair", action="store_true", help="drop damaged chunks (refetched later)")
    p.set_defaults(func=cmd_fsck, located_by="")
    p = sub.add_parser("history", help="show the changes recorded for an area")
    p.add_argument("area")
    p.add_argument("--after", type=int, default=0, metavar="SEQUENCE")
    p.add_argument("--limit", type=int, default=0)
    p.set_defaults(func=cmd_history, located_by="")
    p = sub.add_parser("id", help="show this peer's id and the line another machine pastes")
    p.add_argument("--host", help="the name other machines reach this one by")
    p.set_defaults(func=cmd_id, located_by="")
    peer = sub.add_parser("peer", help="manage the household's peers").add_subparsers(
        dest="peer_command", required=True, metavar="ACTION"
    )
    p = peer.add_parser("add", help="accept a peer by its token (from 'realize id' there)")
    p.add_argument("name", help="what this machine calls the peer, like 'laptop'")
    p.add_argument("token")
    p.add_argument(
        "--address", metavar="HOST:PORT", help="where to dial it (none: deaf, it dials in)"
    )
    p.add_argument("--areas", metavar="A,B", help="share only these areas with it")
    p.set_defaults(func=cmd_peer_add, located_by="")
    p = peer.add_parser("list", help="show each peer and its link")
    p.set_defaults(func=cmd_peer_list, located_by="")
    p = peer.add_parser("remove", help="revoke a peer's key: its link is closed at once")
    p.add_argument("name")
    p.set_defaults(func=cmd_peer_remove, located_by="")
    p = peer.add_parser("ping", help="call a connected peer over its link and time the answer")
    p.add_argument("name")
    p.set_defaults(func=cmd_peer_ping, located_by="")
    p = sub.add_parser("sync", help="dial every peer and exchange the shared areas' histories now")
    p.add_argument(
        "area", nargs="?", help="only this area, by name or directory (default: every shared one)"
    )
    p.set_defaults(func=cmd_sync, located_by="area")
    p = sub.add_parser(
        "conflicts",
        help="list every conflict: the version keeping each path and the copies beside it",
        description=CONFLICTS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("area", nargs="?", help="only this area, by name or directory")
    p.add_argument("--json", action="store_true", help="one JSON document, for scripts")
    p.set_defaults(func=cmd_conflicts, located_by="area")
    p = sub.add_parser("mount-cmd", help="print the commands that mount the areas")
    p.add_argument("--os", choices=["linux", "macos", "windows"], default="linux")
    p.add_argument("--host", help="the name clients reach this machine by")
    p.set_defaults(func=cmd_mount_cmd, located_by="")
    return parser
