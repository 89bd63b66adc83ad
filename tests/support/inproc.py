"""The server in-process, for the fast test tier: no server process, no sockets.

- `make_dispatcher(base, areas=...)`: the NFS, MOUNT and portmap programs over a real tree (a
  RocksDB store and real area directories under `base`), assembled as `realize run` assembles
  them. It is the one place that builds store and tree objects for in-process tests.
- `InProcessServer.call(...)`: one call through the dispatcher, as a connection's task makes it.
- `open_memory_client(rpc)`: an `RpcClient` over an in-memory stream served by the real
  `RpcServer` connection handler, so record marking, pipelining and the limits all run.
- `server_umask()`: the umask the server runs with (0), for the span of an in-process run.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
import trio.testing

from nfsd.exports import ExportOptions
from nfsd.rpc.client import RpcClient, RpcError, _running, encode_args
from nfsd.rpc.dispatch import DEFERRED, Dispatcher
from nfsd.rpc.transport import Limits, RpcServer
from nfsd.server import Server, ServerConfig
from xdr.codec import decode
from xdr.rpc import accept_stat
from xdr.rpc_fast import Credential, encode_call, parse_reply

# The addresses an in-memory connection claims: a client on the loopback, as in wire tests,
# whose socket root owns (the tests run as root, as CI does).
PEER = ("127.0.0.1", 40000)
LOCAL = "127.0.0.1"
OWNER = 0


@dataclass
class InProcessServer:
    """A server's programs over a tree in a temporary directory, without listeners."""

    server: Server
    areas: dict[str, Path]
    state_dir: Path

    @property
    def dispatcher(self) -> Dispatcher:
        assert self.server.dispatcher is not None
        return self.server.dispatcher

    def transport(self, limits: Limits | None = None) -> RpcServer:
        """The server's RPC transport (or one with other limits) over the same dispatcher."""
        if limits is None:
            assert self.server.rpc is not None
            return self.server.rpc
        return RpcServer(self.dispatcher, limits)

    async def call(
        self,
        prog: int,
        vers: int,
        proc: int,
        args_type: Any,
        args: Any,
        res_type: Any,
        *,
        cred: Credential | None = None,
        xid: int = 1,
        client: tuple[str, int] = PEER,
        owner: int | None = OWNER,
    ) -> Any:
        """The decoded result of one call handed straight to the dispatcher; RpcError when
        the call is not accepted. A call that must wait is run again as a task runs it.
        `owner`: the uid the kernel would say owns the caller's socket (None: unknown, as for
        a caller on another machine)."""
        record = encode_call(xid, prog, vers, proc, cred) + encode_args(args_type, args)
        reply = await self.dispatcher.handle(record, client, "tcp", LOCAL, inline=True, owner=owner)
        if reply is DEFERRED:
            reply = await self.dispatcher.handle(record, client, "tcp", LOCAL, owner=owner)
        assert reply is not None and reply is not DEFERRED, "the dispatcher sent no reply"
        data = b"".join(reply)
        header = parse_reply(data)
        if not header.accepted or header.stat != accept_stat.SUCCESS:
            raise RpcError(header)
        return decode(res_type, data[header.body_offset :])

    @asynccontextmanager
    async def connect(
        self, cred: Credential | None = None, *, limits: Limits | None = None
    ) -> AsyncIterator[RpcClient]:
        """An RPC client on a new in-memory connection to this server's transport."""
        async with open_memory_client(self.transport(limits), cred) as client:
            yield client

    def close(self) -> None:
        self.server.close()


def make_dispatcher(
    base: Path, areas: Iterable[str] = ("a", "b"), *, options: ExportOptions | None = None
) -> InProcessServer:
    """The server's programs over areas `base/areas/<name>` and a state directory
    `base/state` (reused if it exists: building again on it is a restart)."""
    area_paths = {name: base / "areas" / name for name in areas}
    for path in area_paths.values():
        path.mkdir(parents=True, exist_ok=True)
    state_dir = base / "state"
    config = ServerConfig(
        state_dir,
        {name: str(path) for name, path in area_paths.items()},
        options=options or ExportOptions(),
    )
    server = Server(config)
    # The server's own assembly (store, tree, Unreal layer, exports, programs), so the
    # in-process tier tests what `realize run` serves; only the listeners are left out.
    server._build()
    return InProcessServer(server, area_paths, state_dir)


@asynccontextmanager
async def open_memory_client(
    rpc: RpcServer,
    cred: Credential | None = None,
    *,
    peer: tuple[str, int] = PEER,
    local: str = LOCAL,
    owner: int | None = OWNER,
) -> AsyncIterator[RpcClient]:
    """An RpcClient whose connection is an in-memory stream served by `rpc.serve_stream`."""
    async with (
        open_memory_stream(rpc, peer=peer, local=local, owner=owner) as stream,
        _running(RpcClient(stream, cred)) as client,
    ):
        yield client


@asynccontextmanager
async def open_memory_stream(
    rpc: RpcServer,
    *,
    peer: tuple[str, int] = PEER,
    local: str = LOCAL,
    owner: int | None = OWNER,
) -> AsyncIterator[trio.abc.Stream]:
    """The client end of an in-memory connection served by `rpc`, for raw bytes; closed on
    the way out, when the server's side of it is stopped too."""
    client_end, server_end = trio.testing.memory_stream_pair()
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rpc.serve_stream, server_end, peer, local, owner)
            try:
                yield client_end
            finally:
                nursery.cancel_scope.cancel()
                with trio.CancelScope(shield=True):
                    await client_end.aclose()
    except BaseExceptionGroup as group:
        # The caller's own exception, as a plain block would raise it.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


@contextmanager
def server_umask() -> Iterator[None]:
    """umask 0 while in-process calls run: the server applies client modes as sent."""
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)
