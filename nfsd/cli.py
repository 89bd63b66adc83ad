"""The control command `realize`: serve, init, area add, start, stop, status, mount-cmd,
source add, import, mark, ls, history, fsck.

State lives in a state directory: `config.json` (areas and export options), `db/` (RocksDB),
and while a server runs `server.json` (pid and ports), `server.pid` and `server.log`.
`realize serve DIR` needs no configuration: it exports DIR, keeping its state in DIR/.realize.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import trio

from nfsd import cli_control
from nfsd.cli_control import ControlError, human
from nfsd.exports import NOBODY, ExportOptions
from nfsd.server import Server, ServerConfig, mount_commands
from nfsd.store.db import Store
from nfsd.store.history import History
from nfsd.store.limits import AreaLimit, CacheLimits
from nfsd.store.source import is_state_dir
from nfsd.vfs.journal import DEFAULT_REST
from xdr.control import CONTROLPROC, ctlstat, importargs

ENV_STATE_DIR = "REALIZE_STATE_DIR"


class UsageError(Exception):
    """A mistake in what the user asked; printed without a traceback."""


def default_state_dir() -> Path:
    return Path(os.environ.get(ENV_STATE_DIR) or Path.home() / ".realize")


def _area_name(name: str) -> str:
    if not name or "/" in name or name in (".", "..") or len(name.encode()) > 255:
        raise UsageError(f"invalid area name {name!r}: use a plain name like 'photos'")
    return name


# ---- configuration file ----


def load_config(state_dir: Path) -> dict:
    path = state_dir / "config.json"
    if not path.exists():
        raise UsageError(f"{state_dir} is not initialised: run 'realize init' first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is damaged: {e}") from None


def save_config(state_dir: Path, config: dict) -> None:
    path = state_dir / "config.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(config, indent=2) + "\n")
    os.replace(tmp, path)


def add_server_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bind", default=None, help="address to listen on (default 127.0.0.1)")
    p.add_argument(
        "--port",
        type=int,
        default=None,
        help="NFS and MOUNT port (default 2049 as root, else 20490; 0: any)",
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
    p.add_argument("--anon-uid", type=int, default=None)
    p.add_argument("--anon-gid", type=int, default=None)
    p.add_argument(
        "--root-squash",
        action="store_true",
        default=None,
        help="map client root to the anonymous user",
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


SERVER_KEYS = (
    "bind",
    "port",
    "mount_port",
    "portmap",
    "read_only",
    "allow",
    "anon_uid",
    "anon_gid",
    "root_squash",
    "all_squash",
    "rest",
    "cache_max",
    "cache_free",
    "area_cache_max",
)

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str, option: str) -> tuple[int | None, float | None]:
    """(bytes, percent) from "10G", "500M", "123" or "20%"."""
    value = text.strip().upper().removesuffix("B").removesuffix("I")
    try:
        if value.endswith("%"):
            percent = float(value[:-1])
            if not 0 <= percent <= 100:
                raise ValueError
            return None, percent
        unit = value[-1] if value and value[-1] in _UNITS else ""
        number = float(value[: len(value) - len(unit)])
        if number < 0:
            raise ValueError
        return int(number * _UNITS[unit]), None
    except (ValueError, IndexError):
        raise UsageError(f"{option}: {text!r} is not a size like 10G, 500M or 20%") from None


def merged_options(saved: dict, args: argparse.Namespace) -> dict:
    options = dict(saved)
    for key in SERVER_KEYS:
        value = getattr(args, key, None)
        if value is not None:
            options[key] = value
    return options


def cache_limits(options: dict) -> CacheLimits:
    max_bytes = max_percent = None
    free_bytes, free_percent = 0, None
    if options.get("cache_max"):
        max_bytes, max_percent = parse_size(str(options["cache_max"]), "--cache-max")
    if options.get("cache_free"):
        free, free_percent = parse_size(str(options["cache_free"]), "--cache-free")
        free_bytes = free or 0
    areas = {}
    for item in options.get("area_cache_max") or []:
        name, sep, size = str(item).partition("=")
        if not sep or not name:
            raise UsageError(f"--area-cache-max: {item!r} is not AREA=SIZE, like photos=20G")
        areas[name] = AreaLimit(*parse_size(size, f"--area-cache-max {name}"))
    return CacheLimits(
        max_bytes=max_bytes,
        max_percent=max_percent,
        min_free_bytes=free_bytes,
        min_free_percent=free_percent,
        areas=areas,
    )


def server_config(state_dir: Path, areas: dict[str, str], options: dict) -> ServerConfig:
    try:
        allowed = [ipaddress.ip_network(n, strict=False) for n in options.get("allow") or []]
    except ValueError as e:
        raise UsageError(f"--allow: {e}") from None
    export_options = ExportOptions(
        read_only=bool(options.get("read_only")),
        allowed=allowed,
        anon_uid=options.get("anon_uid", NOBODY) or NOBODY,
        anon_gid=options.get("anon_gid", NOBODY) or NOBODY,
        root_squash=bool(options.get("root_squash")),
        all_squash=bool(options.get("all_squash")),
    )
    limits = cache_limits(options)
    unknown = sorted(set(limits.areas) - set(areas))
    if unknown:
        raise UsageError(f"--area-cache-max: no area named {', '.join(unknown)}")
    return ServerConfig(
        state_dir=state_dir,
        areas=areas,
        bind=options.get("bind") or "127.0.0.1",
        port=options.get("port"),
        mount_port=options.get("mount_port"),
        portmap=options.get("portmap") or "auto",
        options=export_options,
        rest=float(options.get("rest") or DEFAULT_REST),
        cache_limits=limits,
        sources=list(options.get("sources") or []),
    )


# ---- running in the foreground ----


def run_foreground(config: ServerConfig, announce: bool = True) -> int:
    server = Server(config)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            running = await nursery.start(server.run)
            if announce:
                host = "localhost" if config.bind in ("127.0.0.1", "::1") else config.bind
                print(
                    f"realize: serving {', '.join(running.exports)} on {config.bind} "
                    f"(nfs port {running.nfs_port}, mount port {running.mount_port}, "
                    f"portmapper {'on 111' if running.portmap_port else 'not served'})"
                )
                commands = mount_commands(
                    host,
                    running.exports,
                    running.nfs_port,
                    running.mount_port,
                    running.portmap_port is not None,
                )
                for os_name, lines in commands.items():
                    print(f"  {os_name}:")
                    for line in lines:
                        print(f"    {line}")
                if not (config.state_dir / "config.json").exists():  # `realize serve DIR`
                    print(
                        f"  marks, ls, history: realize --state-dir {config.state_dir} "
                        "ls | mark | history ..."
                    )
                print("realize: ready (Ctrl-C stops)", flush=True)

    try:
        trio.run(main)
    except BaseException as e:
        # trio reports a task's error inside an exception group: find what the user caused.
        error = find_exception(e, OSError)
        if error is not None:
            raise UsageError(
                f"cannot serve: {error.strerror or error} ({config.bind}:{config.port})"
            ) from None
        if find_exception(e, KeyboardInterrupt) is not None:
            return 130
        raise
    return 0


def find_exception(error: BaseException, kind: type[BaseException]) -> BaseException | None:
    """`error` itself if it is a `kind`, else the first `kind` inside its exception groups."""
    if isinstance(error, kind):
        return error
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            found = find_exception(inner, kind)
            if found is not None:
                return found
    return None


def cmd_serve(args: argparse.Namespace) -> int:
    directory = Path(args.directory).expanduser().resolve()
    if not directory.exists():
        directory.mkdir(parents=True)
        print(f"realize: created {directory}")
    if not directory.is_dir():
        raise UsageError(f"{args.directory} is not a directory")
    state_dir = Path(args.state_dir).resolve() if args.state_dir else directory / ".realize"
    name = _area_name(args.name or directory.name or "root")
    options = merged_options({}, args)
    return run_foreground(server_config(state_dir, {name: str(directory)}, options))


def cmd_run(args: argparse.Namespace) -> int:
    """Serve what the state directory's configuration says (what `start` runs)."""
    state_dir = Path(args.state_dir).resolve()
    config = load_config(state_dir)
    if not config.get("areas"):
        raise UsageError("no areas configured: add one with 'realize area add NAME DIR'")
    options = merged_options(config.get("server", {}), args)
    options["sources"] = config.get("sources", [])
    return run_foreground(server_config(state_dir, config["areas"], options))


# ---- configuration commands ----


def cmd_init(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    if (state_dir / "config.json").exists():
        print(f"realize: {state_dir} is already initialised")
        return 0
    state_dir.mkdir(parents=True, exist_ok=True)
    save_config(state_dir, {"areas": {}, "server": merged_options({}, args)})
    print(f"realize: initialised {state_dir}")
    return 0


def cmd_area_add(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    config = load_config(state_dir)
    name = _area_name(args.name)
    directory = Path(args.directory).resolve()
    if not directory.is_dir():
        raise UsageError(f"{args.directory} is not a directory")
    if name in config["areas"]:
        raise UsageError(f"area {name} exists already ({config['areas'][name]})")
    config["areas"][name] = str(directory)
    save_config(state_dir, config)
    print(f"realize: area {name} is {directory}")
    if _running(state_dir):
        print("realize: restart the server (realize stop; realize start) to export it")
    return 0


def cmd_area_list(args: argparse.Namespace) -> int:
    config = load_config(Path(args.state_dir).resolve())
    for name, directory in sorted(config["areas"].items()):
        print(f"{name}\t{directory}")
    return 0


# ---- the daemon ----


def _runtime(state_dir: Path) -> dict | None:
    try:
        return json.loads((state_dir / "server.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _pid(state_dir: Path) -> int | None:
    """The running server's pid: a background one's pid file, else a foreground one's
    runtime file."""
    try:
        pid = int((state_dir / "server.pid").read_text().strip())
    except (FileNotFoundError, ValueError):
        runtime = _runtime(state_dir)
        if runtime is None or not isinstance(runtime.get("pid"), int):
            return None
        pid = runtime["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


def _running(state_dir: Path) -> bool:
    return _pid(state_dir) is not None


def cmd_start(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    config = load_config(state_dir)
    if not config.get("areas"):
        raise UsageError("no areas configured: add one with 'realize area add NAME DIR'")
    if _running(state_dir):
        raise UsageError(f"a server is already running (pid {_pid(state_dir)})")
    (state_dir / "server.json").unlink(missing_ok=True)
    command = [sys.executable, "-m", "nfsd.cli", "--state-dir", str(state_dir), "run"]
    for key in SERVER_KEYS:
        value = getattr(args, key, None)
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            command.append(flag)
        elif isinstance(value, list):
            for item in value:
                command += [flag, str(item)]
        else:
            command += [flag, str(value)]
    log_path = state_dir / "server.log"
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (state_dir / "server.pid").write_text(f"{process.pid}\n")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        runtime = _runtime(state_dir)
        if runtime is not None and runtime.get("pid") == process.pid:
            print(
                f"realize: started (pid {process.pid}, nfs port {runtime['nfs_port']}); "
                f"log in {log_path}"
            )
            return 0
        if process.poll() is not None:
            (state_dir / "server.pid").unlink(missing_ok=True)
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise UsageError("the server did not start:\n  " + "\n  ".join(tail))
        time.sleep(0.1)
    raise UsageError(f"the server did not become ready in 30 s; see {log_path}")


def cmd_stop(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    pid = _pid(state_dir)
    if pid is None:
        print("realize: no server is running")
        (state_dir / "server.pid").unlink(missing_ok=True)
        return 0
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        raise UsageError(f"server (pid {pid}) did not stop within 20 s")
    (state_dir / "server.pid").unlink(missing_ok=True)
    print(f"realize: stopped (pid {pid})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    config = load_config(state_dir)
    pid = _pid(state_dir)
    runtime = _runtime(state_dir) if pid else None
    if runtime is None:
        print("server:  not running")
    else:
        portmap = runtime["portmap_port"] or "not served"
        print(
            f"server:  running, pid {runtime['pid']}, {runtime['bind']} nfs port "
            f"{runtime['nfs_port']}, mount port {runtime['mount_port']}, portmapper {portmap}"
        )
        print(f"clients: {runtime['connections']} connections, {runtime['calls']} calls")
    print(f"state:   {state_dir}")
    cache = runtime.get("cache") if runtime else None
    if cache:
        print(
            f"cache:   {human(cache['cached'])} used of {human(cache['limit'])} limit "
            f"({human(cache['pinned'])} pinned); disk {human(cache['disk_free'])} free, "
            f"keeping {human(cache['reserve'])} free"
        )
        if cache["areas"]:
            print(f"  {'area':<16} {'cached':>10} {'pinned':>10} {'limit':>10} {'use':>6}")
            for name, area in sorted(cache["areas"].items()):
                use = f"{100 * area['cached'] / area['cap']:.0f}%" if area["cap"] else "-"
                print(
                    f"  {name:<16} {human(area['cached']):>10} {human(area['pinned']):>10} "
                    f"{human(area['cap']):>10} {use:>6}"
                )
    print("areas:")
    width = max([len(n) for n in config["areas"]] + [4])
    for name, directory in sorted(config["areas"].items()):
        print(f"  {name:<{width}}  {directory}")
    if not config["areas"]:
        print("  (none: realize area add NAME DIR)")
    return 0


def cmd_mount_cmd(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    config = load_config(state_dir)
    runtime = _runtime(state_dir) if _running(state_dir) else None
    saved = config.get("server", {})
    if runtime is not None:
        nfs_port, mount_port = runtime["nfs_port"], runtime["mount_port"]
        portmap = runtime["portmap_port"] is not None
        bind = runtime["bind"]
    else:
        nfs_port = saved.get("port") or (2049 if os.geteuid() == 0 else 20490)
        mount_port = saved.get("mount_port") or nfs_port
        portmap = os.geteuid() == 0 and saved.get("portmap", "auto") != "off"
        bind = saved.get("bind") or "127.0.0.1"
    host = args.host or ("localhost" if bind in ("127.0.0.1", "::1", "0.0.0.0") else bind)
    exports = ["/" + name for name in sorted(config["areas"])] or ["/"]
    commands = mount_commands(host, exports, nfs_port, mount_port, portmap)
    for line in commands[args.os]:
        print(line)
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
    if _running(state_dir):
        res = cli_control.call(state_dir, CONTROLPROC.SOURCE, os.fsencode(source))
        if res.status != ctlstat.OK:
            raise UsageError(f"the running server cannot read it: {res.message.decode()}")
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    """Make a source's files of an area appear here as Unreal entries (server stopped)."""
    from nfsd.store.blobs import BlobStore
    from nfsd.store.source import StateDirSource, import_area
    from nfsd.vfs.real import RealTree

    state_dir = Path(args.state_dir).resolve()
    config = load_config(state_dir)
    if args.area not in config["areas"]:
        raise UsageError(f"no area named {args.area} here: add it with 'realize area add'")
    source_dir = Path(args.source).expanduser().resolve()
    if not is_state_dir(source_dir):
        raise UsageError(f"{args.source} is not a Realize state directory")
    if _running(state_dir):
        res = cli_control.call(
            state_dir, CONTROLPROC.IMPORT, importargs(args.area.encode(), os.fsencode(source_dir))
        )
        if res.status != ctlstat.OK:
            raise UsageError(res.message.decode(errors="replace"))
        _imported(args.area, res, source_dir, config)
        return 0
    try:
        source = StateDirSource(source_dir)
    except Exception as e:  # rocksdict reports open failures as plain Exception
        raise UsageError(f"cannot open {source_dir}: {e}") from None
    store = Store(state_dir / "db")
    try:
        tree = RealTree(store, config["areas"])
        area = tree.area_by_name[args.area]
        try:
            report = import_area(store, BlobStore(store), area.id, area.path, source, args.area)
        except KeyError as e:
            raise UsageError(str(e.args[0])) from None
        tree.close()
    finally:
        source.close()
        store.close()
    _imported(args.area, report, source_dir, config)
    return 0


def _imported(area: str, report: Any, source_dir: Path, config: dict) -> None:
    print(
        f"realize: {report.files} files ({human(report.bytes)}), {report.directories} "
        f"directories, {report.symlinks} symlinks now listed in {area}; "
        f"{report.skipped} skipped"
    )
    if str(source_dir) not in config.get("sources", []):
        print(f"realize: attach it to read their content: realize source add {source_dir}")


def cmd_fsck(args: argparse.Namespace) -> int:
    """Check the blob cache (manifests, chunks re-hashed) and the index's Unreal entries."""
    from nfsd.store.blobs import BlobStore
    from nfsd.store.check import check_store

    state_dir = Path(args.state_dir).resolve()
    if not is_state_dir(state_dir):
        raise UsageError(f"no server state in {state_dir}")
    if _running(state_dir):
        res = cli_control.call(state_dir, CONTROLPROC.FSCK, args.repair)
        lines, ok = [line.decode(errors="replace") for line in res.lines], res.ok
    else:
        store = Store(state_dir / "db")
        try:
            lines, ok = check_store(store, BlobStore(store), args.repair)
        finally:
            store.close()
    for line in lines:
        print(line)
    return 0 if ok else 1


def _served_areas(state_dir: Path) -> dict:
    """The areas of the server of `state_dir`: its configuration, or for `realize serve DIR`
    (which has none) what the running server says."""
    if (state_dir / "config.json").exists() or not _running(state_dir):
        return load_config(state_dir)
    runtime = _runtime(state_dir) or {}
    return {"areas": runtime.get("areas", {})}


def cmd_mark(args: argparse.Namespace) -> int:
    """Say what paths should be; the running server applies it, with a progress bar."""
    state_dir = Path(args.state_dir).resolve()
    return cli_control.cmd_mark(args, _served_areas(state_dir), state_dir)


def cmd_ls(args: argparse.Namespace) -> int:
    """Each entry's layer, mark and how much of it is cached."""
    state_dir = Path(args.state_dir).resolve()
    return cli_control.cmd_ls(args, _served_areas(state_dir), state_dir)


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="realize", description=__doc__.split("\n")[0])
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
    p.set_defaults(func=cmd_stop)
    p = sub.add_parser("status", help="show the server, its clients and areas")
    p.set_defaults(func=cmd_status)
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
    p.add_argument("mark", choices=sorted(cli_control.MARKS))
    p.add_argument("paths", nargs="+", metavar="PATH", help="AREA/path, or a path in an area")
    p.add_argument("--no-wait", action="store_true", help="return once the job is queued")
    p.set_defaults(func=cmd_mark)
    p = sub.add_parser("ls", help="show each entry's layer, mark and how much is cached")
    p.add_argument("paths", nargs="*", metavar="PATH", help="AREA/path (default: every area)")
    p.set_defaults(func=cmd_ls)
    p = sub.add_parser("fsck", help="check the store and repair what can be repaired")
    p.add_argument("--repair", action="store_true", help="drop damaged chunks (refetched later)")
    p.set_defaults(func=cmd_fsck)
    p = sub.add_parser("history", help="show the changes recorded for an area")
    p.add_argument("area")
    p.add_argument("--after", type=int, default=0, metavar="SEQUENCE")
    p.add_argument("--limit", type=int, default=0)
    p.set_defaults(func=cmd_history)
    p = sub.add_parser("mount-cmd", help="print the commands that mount the areas")
    p.add_argument("--os", choices=["linux", "macos", "windows"], default="linux")
    p.add_argument("--host", help="the name clients reach this machine by")
    p.set_defaults(func=cmd_mount_cmd)
    return parser


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


if __name__ == "__main__":
    sys.exit(main())
