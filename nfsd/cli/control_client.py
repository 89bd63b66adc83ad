"""The control client: `realize`'s calls of the control program (xdr/control.py) on the
server of a state directory, over its Unix socket."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio

from nfsd.control import socket_address
from nfsd.rpc.client import RpcError, open_unix_client
from xdr.control import CONTROL_PROGRAM, CONTROL_SOCKET, CONTROL_V1, CONTROLPROC, PROCEDURES


class ControlError(Exception):
    """The server could not be reached or refused; printed for the user."""


def call(state_dir: Path, proc: CONTROLPROC, args: Any = None) -> Any:
    """One control call to the server of `state_dir`."""
    _, args_type, res_type = PROCEDURES[proc]

    async def run() -> Any:
        with socket_address(state_dir) as address:
            async with open_unix_client(address) as client:
                return await client.call(
                    CONTROL_PROGRAM, CONTROL_V1, proc, args_type, args, res_type
                )

    if not (state_dir / CONTROL_SOCKET).exists():
        raise ControlError("no server is running: start it with 'realize start'")
    try:
        return trio.run(run)
    except (OSError, ConnectionError) as e:
        raise ControlError(f"cannot reach the server: {e}") from None
    except RpcError as e:
        raise ControlError(f"the server refused the call: {e}") from None
