"""The control command `realize`: serve, init, area add, start, stop, status, mount-cmd,
source add, import, mark, ls, history, fsck, id, peer, sync, conflicts.

State lives in a state directory: `config.json` (areas and export options), `db/` (RocksDB),
and while a server runs `server.json` (pid and ports), `server.pid` and `server.log`.
`realize serve DIR` needs no configuration: it exports DIR, keeping its state in DIR/.realize.

This package owns `main`: parse the command line, set up logging, run the subcommand and turn
the user's mistakes into a sentence and exit status 2. Its modules: `parser` (the command
line), `locate` (which state directory a command talks to), `options` (the server options),
`config` (config.json and the ServerConfig), `daemon` (running the server and what it
reports), `configure` (the commands that write the configuration), `control_client` (calls
of the control program), `marks` (mark and ls), `status`, `conflicts`, `peers` (id, peer,
sync), `store_commands` (import, fsck, history), `output` (sizes, times, tables, progress),
`errors`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from nfsd.cli.config import default_state_dir
from nfsd.cli.control_client import ControlError
from nfsd.cli.errors import UsageError
from nfsd.cli.locate import find_state_dir
from nfsd.cli.parser import build_parser

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        if args.state_dir is None and args.command != "serve":
            args.state_dir = str(_state_dir_of(args))
        return args.func(args)
    except (UsageError, ControlError) as e:
        print(f"realize: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _state_dir_of(args: argparse.Namespace) -> Path:
    """The default state directory; for a command that reaches a server, the one its paths
    or the current directory lead to (nfsd/cli/locate.py)."""
    located_by = getattr(args, "located_by", None)
    if located_by is None:
        return default_state_dir()
    given = getattr(args, located_by, None) if located_by else None
    return find_state_dir([given] if isinstance(given, str) else list(given or []))
