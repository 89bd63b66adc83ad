"""The control command `realize`: serve, init, area add, start, stop, status, mount-cmd,
source add, import, mark, ls, history, fsck.

State lives in a state directory: `config.json` (areas and export options), `db/` (RocksDB),
and while a server runs `server.json` (pid and ports), `server.pid` and `server.log`.
`realize serve DIR` needs no configuration: it exports DIR, keeping its state in DIR/.realize.

This package owns `main`: parse the command line, set up logging, run the subcommand and turn
the user's mistakes into a sentence and exit status 2. Its modules: `parser` (the command
line), `options` (the server options), `config` (config.json and the ServerConfig), `daemon`
(running the server and what it reports), `configure` (the commands that write the
configuration), `control_client` (calls of the control program), `marks` (mark and ls),
`store_commands` (import, fsck, history), `output` (sizes and progress), `errors`.
"""

from __future__ import annotations

import logging
import sys

from nfsd.cli.config import default_state_dir
from nfsd.cli.control_client import ControlError
from nfsd.cli.errors import UsageError
from nfsd.cli.parser import build_parser

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.state_dir is None and args.command != "serve":
        args.state_dir = str(default_state_dir())
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    try:
        return args.func(args)
    except (UsageError, ControlError) as e:
        print(f"realize: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
