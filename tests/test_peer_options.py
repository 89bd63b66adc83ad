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
                "--peer-forget", "2.5"]  # fmt: skip


def test_init_keeps_the_peer_options_and_every_server_command_takes_them(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ok(realize(state, "init", *PEER_OPTIONS))
    server = json.loads((state / "config.json").read_text())["server"]
    assert (server["peer_port"], server["peer_bind"], server["rest"]) == (0, "127.0.0.1", 0.5)
    assert server["peer_forget"] == 2.5
    assert {"peer_port", "peer_bind", "rest", "peer_forget"} <= set(SERVER_KEYS)
    parser = build_parser()
    for command in ("start", "run", "serve"):
        extra = [str(tmp_path)] if command == "serve" else []
        args = parser.parse_args([command, *PEER_OPTIONS, *extra])
        assert (args.peer_port, args.peer_bind, args.rest) == (0, "127.0.0.1", 0.5), command
        assert args.peer_forget == 2.5, command


def test_a_peer_forget_of_zero_days_is_refused_in_one_sentence(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ok(realize(state, "init"))
    ok(realize(state, "area", "add", "docs", str(tmp_path)))
    refused = realize(state, "run", "--port", "0", "--portmap", "off", "--peer-forget", "0")
    assert refused.returncode != 0
    assert "--peer-forget: a number of days above 0" in refused.stderr
