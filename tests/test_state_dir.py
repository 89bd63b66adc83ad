"""The state directory keeps the handle key: it must be private to the server's user."""

from __future__ import annotations

import stat

from tests.support.server import start_server


def test_state_directory_is_private_even_if_created_open(tmp_path):
    area = tmp_path / "area"
    area.mkdir()
    state = tmp_path / "state"
    state.mkdir(mode=0o777)
    state.chmod(0o777)
    server = start_server({"area": area}, state)
    try:
        assert stat.S_IMODE(state.stat().st_mode) == 0o700
    finally:
        server.stop()
