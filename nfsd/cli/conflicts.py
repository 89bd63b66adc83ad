"""`realize conflicts [AREA]`: every conflict the running server holds, the version keeping
each path and the copies shown beside it under their conflict names, as a table or with
--json as one JSON document (its shape: `CONFLICTS_HELP`). The server answers a page at a
time (CONFLICTS in xdr/control.py); this command follows the pages to the end."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from nfsd.cli.control_client import ControlClient
from nfsd.cli.daemon import not_running, running
from nfsd.cli.errors import UsageError
from nfsd.cli.marks import area_named
from nfsd.cli.output import human, table
from nfsd.peer.conflicts import HASH_SHOWN
from xdr.control import CONTROLPROC, conflictsargs, conflictversion, ctlstat, kind

CONFLICTS_HELP = """\
List every conflict: a path that concurrent changes on different peers left with more than
one version. One version keeps the path; every other stays visible beside it under its
conflict name (report.conflict-PEER-HASH.odt), its content kept until resolved. Resolve one
as any change: delete the copy, or rename it.

--json prints one document of this shape:
  {"conflicts": [{"area": str, "path": str,
                  "shown": VERSION,             (the version keeping the path)
                  "copies": [VERSION],          (by name)
                  "more_copies": int}]}         (copies beyond those listed)
  VERSION: {"name": str (its area path), "author": str (peer id),
            "author_name": str|null (the roster's name; null for this peer or unknown),
            "mine": bool (this peer made it), "kind": "file"|"directory"|"symlink",
            "size": int, "mtime_ns": int,
            "content": str (a file's blob id in hex, a symlink's target)}
"""

_KIND = {kind.FILE: "file", kind.DIR: "directory", kind.SYMLINK: "symlink", kind.OTHER: "other"}


def _version(v: conflictversion) -> dict[str, Any]:
    content = v.content.hex() if v.kind == kind.FILE else os.fsdecode(v.content)
    return {
        "name": os.fsdecode(v.name),
        "author": v.author.decode(errors="replace"),
        "author_name": v.author_name.decode(errors="replace") or None,
        "mine": v.mine,
        "kind": _KIND[v.kind],
        "size": v.size,
        "mtime_ns": v.mtime_ns,
        "content": content,
    }


def collect(state_dir: Path, area: str | None) -> list[dict[str, Any]]:
    """Every conflict of `area` (or of all), page after page, as `--json` prints them."""
    client = ControlClient(state_dir)
    found: list[dict[str, Any]] = []
    after_area, after_path = b"", b""
    while True:
        args = conflictsargs((area or "").encode(), after_area, after_path)
        res = client.call(CONTROLPROC.CONFLICTS, args)
        if res.status != ctlstat.OK:
            raise UsageError(res.message.decode(errors="replace"))
        for c in res.conflicts:
            found.append(
                {
                    "area": c.area.decode(errors="replace"),
                    "path": os.fsdecode(c.path),
                    "shown": _version(c.shown),
                    "copies": [_version(v) for v in c.copies],
                    "more_copies": c.more_copies,
                }
            )
        if not res.more:
            return found
        after_area, after_path = res.next_area, res.next_path


def _author(v: dict[str, Any]) -> str:
    if v["mine"]:
        return "this peer"
    return v["author_name"] or v["author"].split("-")[0]


def _content(v: dict[str, Any]) -> str:
    if v["kind"] == "file":
        return v["content"][:HASH_SHOWN]
    if v["kind"] == "symlink":
        return "-> " + v["content"]
    return v["kind"]


def render(conflicts: list[dict[str, Any]], area: str | None) -> list[str]:
    if not conflicts:
        return [f"no conflicts in {area}" if area else "no conflicts"]
    rows = [("AREA", "PATH", "VERSION", "AUTHOR", "SIZE", "HASH")]
    for c in conflicts:
        versions = [(c["shown"], "(keeps the path)"), *((v, v["name"]) for v in c["copies"])]
        for v, label in versions:
            size = human(v["size"]) if v["kind"] == "file" else ""
            rows.append((c["area"], c["path"], label, _author(v), size, _content(v)))
        if c["more_copies"]:
            rows.append((c["area"], c["path"], f"... {c['more_copies']} more copies", "", "", ""))
    total = len(conflicts)
    return [*table(rows), f"{total} conflict{'s' if total != 1 else ''}"]


def cmd_conflicts(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    if not running(state_dir):
        raise UsageError(not_running(state_dir))
    area = area_named(state_dir, args.area)
    conflicts = collect(state_dir, area)
    if args.json:
        print(json.dumps({"conflicts": conflicts}, indent=2))
    else:
        for line in render(conflicts, area):
            print(line)
    return 0
