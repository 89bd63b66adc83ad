"""The options that configure a server (`serve`, `init`, `start`, `run`): their definitions,
the keys they are saved under in config.json, and the command line that passes them on."""

from __future__ import annotations

import argparse

from nfsd.peer.roster import DEFAULT_PEER_PORT
from nfsd.server import DEFAULT_PORT, DEFAULT_UNPRIVILEGED_PORT


def add_server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bind", default=None, help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help=f"NFS and MOUNT port (default {DEFAULT_PORT} as root, else "
        f"{DEFAULT_UNPRIVILEGED_PORT}; 0: any)",
    )
    p.add_argument("--mount-port", type=int, default=None, help="separate MOUNT port")
    p.add_argument(
        "--portmap",
        choices=["auto", "on", "off"],
        default=None,
        help="serve the portmapper on port 111 (auto: when allowed)",
    )
    p.add_argument("--read-only", action="store_true", default=None)
    p.add_argument(
        "--allow",
        action="append",
        default=None,
        metavar="NETWORK",
        help="client network allowed to mount, e.g. 192.168.1.0/24 (repeatable)",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=None,
        metavar="N",
        help="TCP connections served at once (default 512); one client host may hold an "
        "eighth, and when slots run out the longest idle connection is closed",
    )
    p.add_argument("--anon-uid", type=int, default=None)
    p.add_argument("--anon-gid", type=int, default=None)
    p.add_argument(
        "--root-squash",
        action="store_true",
        default=None,
        help="map root to the anonymous user from this machine too (by default only root on "
        "other machines is: this machine's root can read the files anyway)",
    )
    p.add_argument(
        "--no-root-squash",
        action="store_true",
        default=None,
        help="let root on other machines act as root here (trades away knfsd's root_squash)",
    )
    p.add_argument(
        "--insecure",
        action="store_true",
        default=None,
        help="accept calls from other machines' unreserved ports (>= 1024), which any of "
        "their users can send from: then any user there may claim to be anyone",
    )
    p.add_argument(
        "--all-squash",
        action="store_true",
        default=None,
        help="map every client user to the anonymous user",
    )
    p.add_argument(
        "--cache-max",
        default=None,
        metavar="SIZE",
        help="largest the blob cache may grow: bytes (10G, 500M) or a share of the disk (20%%)",
    )
    p.add_argument(
        "--cache-free",
        default=None,
        metavar="SIZE",
        help="free disk space the cache leaves: bytes (2G) or a share of the disk (5%%)",
    )
    p.add_argument(
        "--area-cache-max",
        action="append",
        default=None,
        metavar="AREA=SIZE",
        help="largest share of the cache one area may use, e.g. photos=20G (repeatable)",
    )
    p.add_argument(
        "--rest",
        type=float,
        default=None,
        metavar="SECONDS",
        help="how long a changed file rests before it is hashed into the history (default 3)",
    )
    p.add_argument(
        "--peer-port",
        type=int,
        default=None,
        help=f"TLS port other peers of the household dial (default {DEFAULT_PEER_PORT}; 0: any)",
    )
    p.add_argument(
        "--peer-bind",
        default=None,
        metavar="ADDRESS",
        help="address to listen for peers on (default: the --bind address; 0.0.0.0 for every "
        "network)",
    )
    p.add_argument(
        "--peer-rate",
        default=None,
        metavar="RATE",
        help="bytes per second each peer may send this one for background transfers (files "
        "realized or kept, by a mark or as they arrive), e.g. 10M; NFS reads are never "
        "limited (default: no limit)",
    )
    p.add_argument(
        "--sync-every",
        type=float,
        default=None,
        metavar="SECONDS",
        help="exchange histories with every connected peer this often, besides at once after "
        "each change (default: only then, and on `realize sync`)",
    )
    p.add_argument(
        "--peer-forget",
        type=float,
        default=None,
        metavar="DAYS",
        help="a peer not heard from for this long no longer holds back the trimming of the "
        "history; it gets a full catch-up when it returns (default 30)",
    )


def _server_keys() -> tuple[str, ...]:
    """The destination of every server option, in the order they are defined above."""
    parser = argparse.ArgumentParser(add_help=False)
    add_server_options(parser)
    return tuple(vars(parser.parse_args([])))


SERVER_KEYS = _server_keys()
"""The server options' names in parsed arguments and in config.json's "server" object."""


def server_arguments(args: argparse.Namespace) -> list[str]:
    """The command-line flags that give another `realize` the server options set in `args`."""
    flags: list[str] = []
    for key in SERVER_KEYS:
        value = getattr(args, key, None)
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            flags.append(flag)
        elif isinstance(value, list):
            for item in value:
                flags += [flag, str(item)]
        else:
            flags += [flag, str(value)]
    return flags
