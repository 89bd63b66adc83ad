"""The state directory's configuration: where the state directory is, its config.json (areas,
sources and saved server options), area names, sizes, cache limits, and the ServerConfig that
saved and given options make together."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
from pathlib import Path

from nfsd import statedir
from nfsd.cli.errors import UsageError
from nfsd.cli.options import SERVER_KEYS
from nfsd.exports import NOBODY, ExportOptions, RootSquash
from nfsd.rpc.transport import Limits
from nfsd.server import ServerConfig
from nfsd.store.limits import AreaLimit, CacheLimits
from nfsd.vfs.journal import DEFAULT_REST
from xdr.nfs3 import NAME_MAX

ENV_STATE_DIR = "REALIZE_STATE_DIR"
CONFIG_FILE = "config.json"


def default_state_dir() -> Path:
    return Path(os.environ.get(ENV_STATE_DIR) or Path.home() / ".realize")


def is_configured(state_dir: Path) -> bool:
    """Whether `realize init` made `state_dir` (`realize serve DIR` writes no configuration)."""
    return (state_dir / CONFIG_FILE).exists()


def area_name(name: str) -> str:
    # Exported as /NAME: one file name, at most NAME_MAX bytes like any other.
    if not name or "/" in name or name in (".", "..") or len(name.encode()) > NAME_MAX:
        raise UsageError(f"invalid area name {name!r}: use a plain name like 'photos'")
    return name


def load_config(state_dir: Path) -> dict:
    path = state_dir / CONFIG_FILE
    if not path.exists():
        raise UsageError(f"{state_dir} is not initialised: run 'realize init' first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UsageError(f"{path} is damaged: {e}") from None


def save_config(state_dir: Path, config: dict) -> None:
    """config.json replaced whole (old or new after a crash), private like the rest."""
    statedir.write_private(state_dir / CONFIG_FILE, (json.dumps(config, indent=2) + "\n").encode())


def areas_to_serve(config: dict) -> dict[str, str]:
    """The configuration's areas; a UsageError that says what to do when there are none."""
    areas = config.get("areas")
    if not areas:
        raise UsageError("no areas configured: add one with 'realize area add NAME DIR'")
    return areas


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
    """The saved server options, overridden by those given on the command line."""
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


def max_connections(options: dict) -> int:
    value = options.get("max_connections")
    if value is None:
        return Limits.max_connections
    if int(value) < 1:
        raise UsageError("--max-connections: at least 1")
    return int(value)


def peer_forget(options: dict) -> float | None:
    """--peer-forget in seconds (None: the history exchange's default)."""
    value = options.get("peer_forget")
    if value is None:
        return None
    if not float(value) > 0:
        raise UsageError("--peer-forget: a number of days above 0")
    return float(value) * 86400


def peer_rate(options: dict) -> int | None:
    """--peer-rate in bytes per second (None: no limit)."""
    value = options.get("peer_rate")
    if value is None:
        return None
    rate, percent = parse_size(str(value), "--peer-rate")
    if percent is not None:
        raise UsageError(f"--peer-rate: {value!r} is not a rate like 10M (bytes per second)")
    return rate or None


def sync_every(options: dict) -> float | None:
    value = options.get("sync_every")
    if value is None:
        return None
    if not float(value) > 0:
        raise UsageError("--sync-every: a number of seconds above 0")
    return float(value)


def root_squash(options: dict) -> RootSquash:
    if options.get("root_squash") and options.get("no_root_squash"):
        raise UsageError("--root-squash and --no-root-squash: choose one")
    if options.get("root_squash"):
        return RootSquash.ALL
    if options.get("no_root_squash"):
        return RootSquash.NONE
    return RootSquash.REMOTE


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
        root_squash=root_squash(options),
        all_squash=bool(options.get("all_squash")),
        secure=not options.get("insecure"),
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
        peer_port=options.get("peer_port"),
        peer_bind=options.get("peer_bind"),
        cache_limits=limits,
        sources=list(options.get("sources") or []),
        max_connections=max_connections(options),
        peer_forget=peer_forget(options),
        peer_rate=peer_rate(options),
        sync_every=sync_every(options),
    )
