"""The server as `realize` runs it: in the foreground (`serve`, `run`) or in the background
(`start`, `stop`, with its pid file and log), what a running one reports in server.json
(read by `status` and `mount-cmd`), and whether one runs at all."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import trio

from nfsd.cli.config import (
    area_name,
    areas_to_serve,
    is_configured,
    load_config,
    merged_options,
    server_config,
)
from nfsd.cli.errors import UsageError
from nfsd.cli.locate import register_server, unregister_server
from nfsd.cli.options import server_arguments
from nfsd.server import (
    RUNTIME_FILE,
    Running,
    Server,
    ServerConfig,
    default_port,
    mount_commands,
)
from nfsd.statedir import DB_DIR, StateDirError, open_private_append, prepare, write_private

PID_FILE = "server.pid"
LOG_FILE = "server.log"


# ---- running in the foreground ----


def announce_ready(config: ServerConfig, running: Running) -> None:
    """What a server in the foreground prints once it serves: where, and how to mount."""
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
        config.options.secure,
    )
    for os_name, lines in commands.items():
        print(f"  {os_name}:")
        for line in lines:
            print(f"    {line}")
    if not is_configured(config.state_dir):  # `realize serve DIR`
        print(
            "  control: realize status | ls | mark ... with a path inside the area, or "
            f"realize --state-dir {config.state_dir} ls | mark | history ..."
        )
    print("realize: ready (Ctrl-C stops)", flush=True)


def run_foreground(config: ServerConfig, announce: bool = True) -> int:
    server = Server(config)

    async def main() -> None:
        record = None
        try:
            async with trio.open_nursery() as nursery:
                running = await nursery.start(server.run)
                # So that a command finds this server from any directory (nfsd/cli/locate.py).
                record = register_server(server.state_dir)
                if announce:
                    announce_ready(config, running)
        finally:
            unregister_server(record)

    try:
        trio.run(main)
    except BaseException as e:
        # trio reports a task's error inside an exception group: find what the user caused.
        refused = find_exception(e, StateDirError)
        if refused is not None:
            raise UsageError(f"refusing the state directory: {refused}") from None
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
    name = area_name(args.name or directory.name or "root")
    options = merged_options({}, args)
    return run_foreground(server_config(state_dir, {name: str(directory)}, options))


def cmd_run(args: argparse.Namespace) -> int:
    """Serve what the state directory's configuration says (what `start` runs)."""
    state_dir = Path(args.state_dir).resolve()
    config = load_config(state_dir)
    areas = areas_to_serve(config)
    options = merged_options(config.get("server", {}), args)
    options["sources"] = config.get("sources", [])
    return run_foreground(server_config(state_dir, areas, options))


# ---- the server in the background ----


def runtime(state_dir: Path) -> dict | None:
    """What the running server wrote about itself (pid, ports, areas, counters, cache)."""
    try:
        return json.loads((state_dir / RUNTIME_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def server_pid(state_dir: Path) -> int | None:
    """The running server's pid: a background one's pid file, else a foreground one's
    runtime file."""
    try:
        pid = int((state_dir / PID_FILE).read_text().strip())
    except (FileNotFoundError, ValueError):
        about = runtime(state_dir)
        if about is None or not isinstance(about.get("pid"), int):
            return None
        pid = about["pid"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


def running(state_dir: Path) -> bool:
    return server_pid(state_dir) is not None


def served_areas(state_dir: Path) -> dict:
    """The areas of the server of `state_dir`: its configuration, or for `realize serve DIR`
    (which has none) what the running server says; for one that is not running, the
    UsageError that says so."""
    if is_configured(state_dir):
        return load_config(state_dir)
    about = runtime(state_dir) if running(state_dir) else None
    if about is not None:
        return {"areas": about.get("areas", {})}
    if (state_dir / DB_DIR).is_dir():  # `realize serve DIR` made it
        raise UsageError(not_running(state_dir))
    return load_config(state_dir)  # says it is not initialised


def not_running(state_dir: Path) -> str:
    """The sentence for a command that needs the server of `state_dir` while none runs."""
    if is_configured(state_dir):
        return f"no server is running for {state_dir}: start it with 'realize start'"
    return f"no server is running for {state_dir}: start it with 'realize serve DIR'"


def prepared(state_dir: Path) -> Path:
    """`state_dir` made ready for the server to write in, or the UsageError that says why
    it may not be (see nfsd.statedir)."""
    try:
        return prepare(state_dir)
    except StateDirError as e:
        raise UsageError(f"refusing the state directory: {e}") from None


def cmd_start(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    areas_to_serve(load_config(state_dir))
    if running(state_dir):
        raise UsageError(f"a server is already running (pid {server_pid(state_dir)})")
    prepared(state_dir)  # before the log and the pid file are written there
    (state_dir / RUNTIME_FILE).unlink(missing_ok=True)
    command = [sys.executable, "-m", "nfsd.cli", "--state-dir", str(state_dir), "run"]
    command += server_arguments(args)
    log_path = state_dir / LOG_FILE
    log_fd = open_private_append(log_path)
    try:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log_fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        os.close(log_fd)
    write_private(state_dir / PID_FILE, f"{process.pid}\n".encode())
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        about = runtime(state_dir)
        if about is not None and about.get("pid") == process.pid:
            print(
                f"realize: started (pid {process.pid}, nfs port {about['nfs_port']}); "
                f"log in {log_path}"
            )
            return 0
        if process.poll() is not None:
            (state_dir / PID_FILE).unlink(missing_ok=True)
            tail = log_path.read_text(errors="replace").strip().splitlines()[-5:]
            raise UsageError("the server did not start:\n  " + "\n  ".join(tail))
        time.sleep(0.1)
    raise UsageError(f"the server did not become ready in 30 s; see {log_path}")


def cmd_stop(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    pid = server_pid(state_dir)
    if pid is None:
        print("realize: no server is running")
        (state_dir / PID_FILE).unlink(missing_ok=True)
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
    (state_dir / PID_FILE).unlink(missing_ok=True)
    print(f"realize: stopped (pid {pid})")
    return 0


# ---- what a running server reports ----


def cmd_mount_cmd(args: argparse.Namespace) -> int:
    state_dir = Path(args.state_dir).resolve()
    config = load_config(state_dir)
    about = runtime(state_dir) if running(state_dir) else None
    saved = config.get("server", {})
    if about is not None:
        nfs_port, mount_port = about["nfs_port"], about["mount_port"]
        portmap = about["portmap_port"] is not None
        bind = about["bind"]
    else:
        nfs_port = saved.get("port") or default_port()
        mount_port = saved.get("mount_port") or nfs_port
        portmap = os.geteuid() == 0 and saved.get("portmap", "auto") != "off"
        bind = saved.get("bind") or "127.0.0.1"
    host = args.host or ("localhost" if bind in ("127.0.0.1", "::1", "0.0.0.0") else bind)
    exports = ["/" + name for name in sorted(config["areas"])] or ["/"]
    secure = not saved.get("insecure")
    commands = mount_commands(host, exports, nfs_port, mount_port, portmap, secure)
    for line in commands[args.os]:
        print(line)
    return 0
