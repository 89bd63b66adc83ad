"""`mark` and `ls`, which only a running server answers: paths as the user types them
("AREA/path/inside", or a path on this machine inside an area's directory), a mark job
followed with a progress bar, and the `ls` table of layers, marks and what is cached."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from nfsd.cli.control_client import ControlClient, ControlError
from nfsd.cli.daemon import served_areas
from nfsd.cli.locate import area_of, local_path, resolved
from nfsd.cli.output import ProgressBar, human
from xdr.control import CONTROLPROC, ctlstat, jobstate, layer, lsargs, lsentry, mark, markargs

MARKS = {"real": mark.REAL, "keep": mark.KEEP, "unreal": mark.UNREAL, "inherit": mark.INHERIT}
POLL = 0.2


def area_path(config: dict, text: str) -> bytes:
    """The control path of what the user typed: "AREA/inside" as given, unless it is a path of
    this machine (absolute, or starting at something in the current directory) inside an
    area's directory, Unreal files included (they are not on the disk). Typed inside an
    area's directory, a relative path is one of this machine unless it starts with an area's
    name: an Unreal file there is not on the disk for the test above."""
    local = local_path(text)
    areas = config["areas"]
    if (
        local is None
        and text.split("/", 1)[0] not in areas
        and area_of(areas, resolved(Path.cwd())) is not None
    ):
        local = resolved(Path(text))
    if local is not None:
        found = area_of(config["areas"], local)
        if found is not None:
            name, inside = found
            return os.fsencode(name if str(inside) == "." else f"{name}/{inside}")
        if os.path.isabs(text):
            where = ", ".join(f"{n} in {d}" for n, d in sorted(config["areas"].items()))
            raise ControlError(f"{text} is not inside an area's directory ({where or 'none'})")
    return os.fsencode(text.strip("/"))


def area_named(state_dir: Path, text: str | None) -> str | None:
    """The area a command limited to one names: by name, or by a path in it (its directory,
    or anything inside, which stands for the whole area)."""
    if text is None:
        return None
    path = area_path(served_areas(state_dir), text)
    return os.fsdecode(path).split("/", 1)[0]


def follow(client: ControlClient, job_id: int, label: str) -> Any:
    """Poll a job until it ends, drawing its progress; its last state."""
    bar = ProgressBar(label)
    try:
        while True:
            res = client.call(CONTROLPROC.JOB, job_id)
            if res.status != ctlstat.OK:
                raise ControlError(res.message.decode(errors="replace"))
            bar.update(res.files_done, res.files_total, res.bytes_done, res.bytes_total)
            if res.state != jobstate.RUNNING:
                return res
            time.sleep(POLL)
    finally:
        bar.end()


def cmd_mark(args: argparse.Namespace) -> int:
    """Say what paths should be; the running server applies it, with a progress bar."""
    state_dir = Path(args.state_dir).resolve()
    config = served_areas(state_dir)
    client = ControlClient(state_dir)
    wanted = MARKS[args.mark]
    failed = False
    for text in args.paths:
        path = area_path(config, text)
        res = client.call(CONTROLPROC.MARK, markargs(path, wanted))
        if res.status != ctlstat.OK:
            print(f"realize: {res.message.decode(errors='replace')}", file=sys.stderr)
            failed = True
            continue
        shown = os.fsdecode(path)
        if args.no_wait:
            print(f"realize: {shown} marked {args.mark}; job {res.job} applies it")
            continue
        end = follow(client, res.job, f"{args.mark} {shown}:")
        for error in end.errors:
            print(f"realize: {error.decode(errors='replace')}", file=sys.stderr)
        if end.state == jobstate.FAILED:
            failed = True
            print(
                f"realize: {shown} marked {args.mark}; {len(end.errors)} of "
                f"{end.files_total} files could not follow (see above)",
                file=sys.stderr,
            )
        else:
            print(
                f"realize: {shown} marked {args.mark}; {end.files_total} files, "
                f"{human(end.bytes_done)} moved"
            )
    return 1 if failed else 0


_LAYER = {layer.NONE: "-", layer.REAL: "real", layer.UNREAL: "unreal"}
_KIND_SUFFIX = {2: "/", 3: "@"}


def _mark_text(entry: lsentry) -> str:
    if entry.own_mark != mark.INHERIT:
        return entry.own_mark.name.lower()
    if not entry.mark_from:
        return "-"
    return f"{entry.mark.name.lower()} (from {os.fsdecode(entry.mark_from)})"


def _cached_text(entry: lsentry) -> str:
    if entry.layer != layer.UNREAL or entry.kind != 1:
        return "-"
    percent = 100 * entry.cached / entry.size if entry.size else 100
    return f"{percent:.0f}%" + (" pinned" if entry.pinned else "")


def _row(entry: lsentry, name: str) -> str:
    size = human(entry.size) if entry.kind == 1 else ""
    return (
        f"{_LAYER[entry.layer]:<7} {_mark_text(entry):<24} {_cached_text(entry):<12} "
        f"{size:>10}  {name}{_KIND_SUFFIX.get(int(entry.kind), '')}"
    )


def cmd_ls(args: argparse.Namespace) -> int:
    """Each entry's layer, mark and how much of it is cached."""
    state_dir = Path(args.state_dir).resolve()
    config = served_areas(state_dir)
    paths = [area_path(config, text) for text in args.paths] or [
        os.fsencode(name) for name in sorted(config["areas"])
    ]
    client = ControlClient(state_dir)
    print(f"{'LAYER':<7} {'MARK':<24} {'CACHED':<12} {'SIZE':>10}  NAME")
    status = 0
    for path in paths:
        after = b""
        while True:
            res = client.call(CONTROLPROC.LS, lsargs(path, after))
            if res.status != ctlstat.OK:
                print(f"realize: {res.message.decode(errors='replace')}", file=sys.stderr)
                status = 1
                break
            if not after:
                print(_row(res.self_entry[0], os.fsdecode(path)))
            for entry in res.entries:
                print(_row(entry, "  " + os.fsdecode(entry.name)))
            if not res.more or not res.entries:
                break
            after = res.entries[-1].name
    return status
