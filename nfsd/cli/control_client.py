"""The control client: every call `realize` makes of the control program (xdr/control.py) on a
state directory, and where it is answered. While the directory's server runs, over its control
socket (the database is then the server's alone). While none runs, the procedures that need no
running server (import, fsck, source) are answered in this process, by the control program's
own handlers over the store opened here; the others say that no server is running."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import trio

from nfsd.cli.daemon import not_running, running
from nfsd.control import ControlService, socket_address
from nfsd.control import log as control_log
from nfsd.rpc.client import RpcError, open_unix_client
from nfsd.rpc.dispatch import CallContext
from nfsd.store.blobs import BlobStore
from nfsd.store.db import Store
from nfsd.vfs.merged import MergedTree
from xdr.control import (
    CONTROL_PROGRAM,
    CONTROL_SOCKET,
    CONTROL_V1,
    CONTROLPROC,
    PROCEDURES,
    ctlres,
    ctlstat,
)
from xdr.rpc_fast import Credential

ANSWERED_WITHOUT_SERVER = frozenset({CONTROLPROC.IMPORT, CONTROLPROC.FSCK, CONTROLPROC.SOURCE})


class ControlError(Exception):
    """The server could not be reached or refused; printed for the user."""


class ControlClient:
    """Control calls on the state directory `state_dir`; whether they go to its server is
    decided once, when the client is made. `areas` are the areas an import without a server
    may write into (the configuration's)."""

    def __init__(self, state_dir: Path, areas: dict[str, str] | None = None) -> None:
        self.state_dir = state_dir
        self.areas = areas or {}
        self.server_runs = running(state_dir)

    def call(self, proc: CONTROLPROC, args: Any = None) -> Any:
        """The result of one control procedure, whoever answers it."""
        if self.server_runs or proc not in ANSWERED_WITHOUT_SERVER:
            return self._call_server(proc, args)
        if proc == CONTROLPROC.SOURCE:
            # Nothing runs that could attach it now; the next server reads config.json's sources.
            return ctlres(ctlstat.OK, b"")
        return self._call_here(proc, args)

    def _call_server(self, proc: CONTROLPROC, args: Any) -> Any:
        _, args_type, res_type = PROCEDURES[proc]

        async def run() -> Any:
            with socket_address(self.state_dir) as address:
                async with open_unix_client(address) as client:
                    return await client.call(
                        CONTROL_PROGRAM, CONTROL_V1, proc, args_type, args, res_type
                    )

        if not (self.state_dir / CONTROL_SOCKET).exists():
            raise ControlError(not_running(self.state_dir))
        try:
            return trio.run(run)
        except (OSError, ConnectionError) as e:
            raise ControlError(f"cannot reach the server: {e}") from None
        except RpcError as e:
            raise ControlError(f"the server refused the call: {e}") from None

    def _call_here(self, proc: CONTROLPROC, args: Any) -> Any:
        """Run the control program's handler of `proc` on the store, opened in this process."""
        with contextlib.ExitStack() as opened:
            store = Store(self.state_dir / "db")
            opened.callback(store.close)
            tree = MergedTree(store, self.areas)
            opened.callback(tree.close)
            blobs = BlobStore(store)
            opened.callback(blobs.quiesce)
            program = ControlService(tree, blobs).program()
            handler = program.versions[CONTROL_V1][proc].handler
            # No RPC call carries it: the context says so; the handlers do not read it.
            context = CallContext(
                0, CONTROL_PROGRAM, CONTROL_V1, proc, Credential(), ("", 0), "local"
            )
            with _quieter(control_log):
                return trio.run(handler, context, args)


@contextlib.contextmanager
def _quieter(log: logging.Logger) -> Iterator[None]:
    """What a handler logs is for a server's log; here the command prints the result."""
    level = log.level
    log.setLevel(logging.WARNING)
    try:
        yield
    finally:
        log.setLevel(level)
