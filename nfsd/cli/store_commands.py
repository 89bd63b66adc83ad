"""The commands about the store's content: `import` (a source's files listed here), `fsck`
(the blob cache and the index checked) and `history` (an area's recorded changes)."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from nfsd.cli.config import load_config
from nfsd.cli.control_client import ControlClient
from nfsd.cli.errors import UsageError
from nfsd.cli.output import human
from nfsd.store.db import Store
from nfsd.store.history import History
from nfsd.store.source import is_state_dir
from xdr.control import CONTROLPROC, ctlstat, importargs


def cmd_import(args: argparse.Namespace) -> int:
    """Make a source's files of an area appear here as Unreal entries."""
    state_dir = Path(args.state_dir).resolve()
    config = load_config(state_dir)
    if args.area not in config["areas"]:
        raise UsageError(f"no area named {args.area} here: add it with 'realize area add'")
    source_dir = Path(args.source).expanduser().resolve()
    if not is_state_dir(source_dir):
        raise UsageError(f"{args.source} is not a Realize state directory")
    report = ControlClient(state_dir, config["areas"]).call(
        CONTROLPROC.IMPORT, importargs(args.area.encode(), os.fsencode(source_dir))
    )
    if report.status != ctlstat.OK:
        raise UsageError(report.message.decode(errors="replace"))
    print(
        f"realize: {report.files} files ({human(report.bytes)}), {report.directories} "
        f"directories, {report.symlinks} symlinks now listed in {args.area}; "
        f"{report.skipped} skipped"
    )
    if report.refused:
        print(f"realize: {report.refused} entries of the source refused, for their paths:")
        for refusal in report.refusals:
            print(f"  {refusal.decode(errors='replace')}")
        if report.refused > len(report.refusals):
            print(f"  ... and {report.refused - len(report.refusals)} more")
    if str(source_dir) not in config.get("sources", []):
        print(f"realize: attach it to read their content: realize source add {source_dir}")
    return 0


def cmd_fsck(args: argparse.Namespace) -> int:
    """Check the blob cache (manifests, chunks re-hashed) and the index's Unreal entries."""
    state_dir = Path(args.state_dir).resolve()
    if not is_state_dir(state_dir):
        raise UsageError(f"no server state in {state_dir}")
    res = ControlClient(state_dir).call(CONTROLPROC.FSCK, args.repair)
    for line in res.lines:
        print(line.decode(errors="replace"))
    return 0 if res.ok else 1


def cmd_history(args: argparse.Namespace) -> int:
    """Print an area's history; works beside a running server (read-only open)."""
    state_dir = Path(args.state_dir).resolve()
    try:
        store = Store(state_dir / "db", read_only=True)
    except Exception as e:  # rocksdict reports open failures as plain Exception
        raise UsageError(f"no server state in {state_dir}: {e}") from None
    try:
        raw = store.family("meta").get(b"area:" + args.area.encode())
        if raw is None:
            raise UsageError(f"no area named {args.area} in {state_dir}")
        area = int.from_bytes(raw[:4], "big")
        if "history" not in store._families:
            return 0
        changes = History(store).since(area, args.after)
        for shown, (sequence, change) in enumerate(changes, 1):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(change.time_ns / 1e9))
            line = f"{sequence:>6}  {when}  {change.op.name.lower():<8} {os.fsdecode(change.path)}"
            if change.new_path:
                line += f" -> {os.fsdecode(change.new_path)}"
            if change.new_blob:
                line += f"  blob {change.new_blob.hex()[:16]}"
            if change.old_blob:
                line += f"  (was {change.old_blob.hex()[:16]})"
            print(line)
            if args.limit and shown >= args.limit:
                break
    finally:
        store.close()
    return 0
