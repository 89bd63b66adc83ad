"""The household's server options are taken alike by `init`, `start`, `run` and `serve`, kept
in config.json by `init`, and refused with one sentence when out of range."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nfsd.cli.options import SERVER_KEYS
from nfsd.cli.parser import build_parser
from tests.test_peer_link import ok, realize

pytestmark = pytest.mark.inproc

PEER_OPTIONS = ["--peer-port", "0", "--peer-bind", "127.0.0.1", "--rest", "0.5",
                "--peer-forget", "2.5", "--peer-rate", "10M", "--sync-every", "60"]  # fmt: skip


def test_init_keeps_the_peer_options_and_every_server_command_takes_them(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ok(realize(state, "init", *PEER_OPTIONS))
    server = json.loads((state / "config.json").read_text())["server"]
    assert (server["peer_port"], server["peer_bind"], server["rest"]) == (0, "127.0.0.1", 0.5)
    assert (server["peer_forget"], server["peer_rate"], server["sync_every"]) == (2.5, "10M", 60)
    assert {"peer_port", "peer_bind", "rest", "peer_forget", "peer_rate", "sync_every"} <= set(
        SERVER_KEYS
    )
    parser = build_parser()
    for command in ("start", "run", "serve"):
        extra = [str(tmp_path)] if command == "serve" else []
        args = parser.parse_args([command, *PEER_OPTIONS, *extra])
        assert (args.peer_port, args.peer_bind, args.rest) == (0, "127.0.0.1", 0.5), command
        assert (args.peer_forget, args.peer_rate, args.sync_every) == (2.5, "10M", 60), command


def test_a_peer_forget_of_zero_days_is_refused_in_one_sentence(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ok(realize(state, "init"))
    ok(realize(state, "area", "add", "docs", str(tmp_path)))
    refused = realize(state, "run", "--port", "0", "--portmap", "off", "--peer-forget", "0")
    assert refused.returncode != 0
    assert "--peer-forget: a number of days above 0" in refused.stderr


@pytest.mark.parametrize(
    ("option", "said"),
    [
        (["--peer-rate", "20%"], "--peer-rate: '20%' is not a rate like 10M (bytes per second)"),
        (["--peer-rate", "fast"], "--peer-rate: 'fast' is not a size like 10G, 500M or 20%"),
        (["--sync-every", "0"], "--sync-every: a number of seconds above 0"),
    ],
)
def test_a_rate_or_schedule_out_of_range_is_refused_in_one_sentence(
    tmp_path: Path, option: list[str], said: str
) -> None:
    state = tmp_path / "state"
    ok(realize(state, "init"))
    ok(realize(state, "area", "add", "docs", str(tmp_path)))
    refused = realize(state, "run", "--port", "0", "--portmap", "off", *option)
    assert refused.returncode != 0
    assert said in refused.stderr
