"""The commands that write the configuration: `init`, `area add`, `area list` and
`source add`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from nfsd.cli.config import area_name, is_configured, load_config, merged_options, save_config
from nfsd.cli.control_client import ControlClient
from nfsd.cli.daemon import prepared, running
from nfsd.cli.errors import UsageError
from nfsd.cli.peers import this_identity
from nfsd.store.source import is_state_dir
from xdr.control import CONTROLPROC, ctlstat


def cmd_init(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    if is_configured(state_dir):
        print(f"realize: {state_dir} is already initialised")
        this_identity(state_dir)  # one made before peers existed gets its key pair now
        return 0
    prepared(state_dir)
    save_config(state_dir, {"areas": {}, "server": merged_options({}, args)})
    print(f"realize: initialised {state_dir}")
    print(f"realize: peer id {this_identity(state_dir).peer_id} ('realize id' shows how to pair)")
    return 0


def cmd_area_add(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    config = load_config(state_dir)
    name = area_name(args.name)
    directory = Path(args.directory).resolve()
    if not directory.is_dir():
        raise UsageError(f"{args.directory} is not a directory")
    if name in config["areas"]:
        raise UsageError(f"area {name} exists already ({config['areas'][name]})")
    config["areas"][name] = str(directory)
    save_config(state_dir, config)
    print(f"realize: area {name} is {directory}")
    if running(state_dir):
        print("realize: restart the server (realize stop; realize start) to export it")
    return 0


def cmd_area_list(args: argparse.Namespace) -> int:
    config = load_config(Path(args.state_dir).resolve())
    for name, directory in sorted(config["areas"].items()):
        print(f"{name}\t{directory}")
    return 0


def cmd_source_add(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    config = load_config(state_dir)
    source = Path(args.path).expanduser().resolve()
    if not is_state_dir(source):
        raise UsageError(f"{args.path} is not a Realize state directory (no db/ in it)")
    if source == state_dir:
        raise UsageError("a state directory cannot be its own source")
    sources = config.setdefault("sources", [])
    if str(source) in sources:
        print(f"realize: {source} is already a source")
        return 0
    sources.append(str(source))
    save_config(state_dir, config)
    print(
        f"realize: attached {source} (read-only); 'realize import AREA {source}' lists its "
        "files here"
    )
    res = ControlClient(state_dir).call(CONTROLPROC.SOURCE, os.fsencode(source))
    if res.status != ctlstat.OK:
        raise UsageError(f"the running server cannot read it: {res.message.decode()}")
    return 0
