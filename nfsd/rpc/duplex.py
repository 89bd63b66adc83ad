"""ONC RPC calls both ways on one connection (a peer link: either side may call the other).

One reader per connection splits the records by message type (RFC 5531: the word after the
xid, CALL or REPLY): a reply goes to the waiting call of the connection's `RpcClient` (which
never reads the connection itself here: `RpcClient.read_elsewhere`), a call to the
`Dispatcher`, in a task of its own, its reply sent between the client's calls. So the side
that dialled serves the side it dialled as well as calling it.

Bounded whatever the other side sends: records up to `max_record` (a larger one closes the
connection), at most `inflight` calls being answered (the reader waits for one to finish
before reading on, so TCP pushes back on a flood), and a connection that sends nothing for
`idle_timeout` seconds is closed. A record that is neither a call nor a reply closes the
connection too: the two sides no longer agree on what the stream holds.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

import trio

from nfsd.rpc.client import RpcClient
from nfsd.rpc.dispatch import Dispatcher
from nfsd.rpc.record import DEFAULT_MAX_RECORD, Record, RecordReader, RecordTooLarge
from xdr.rpc import msg_type

log = logging.getLogger("realize.rpc")

_HEAD = struct.Struct(">II")  # xid, msg_type


class DuplexConnection:
    """Serve `dispatcher` and make calls (`client`) over one connected stream."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        dispatcher: Dispatcher,
        remote: tuple[str, int],
        local: str | None,
        *,
        caller: Any = None,
        transport: str = "tls",
        max_record: int = DEFAULT_MAX_RECORD,
        inflight: int = 32,
        idle_timeout: float = 30.0,
    ) -> None:
        self.stream = stream
        self.dispatcher = dispatcher
        self.remote = remote
        self.local = local
        self.caller = caller  # handed to every handler as CallContext.caller
        self.transport = transport
        self.idle_timeout = idle_timeout
        self.client = RpcClient(stream)
        self.client.read_elsewhere()
        self._records = RecordReader(max_record)
        self._inflight = trio.Semaphore(inflight)
        self.calls_served = 0

    async def run(self) -> None:
        """Read until the connection ends, is idle too long or sends what is not RPC; then
        every call still waiting for a reply fails with ConnectionError. Calls being
        answered are cancelled (nobody will read their replies)."""
        try:
            async with trio.open_nursery() as nursery:
                await self._read(nursery)
                nursery.cancel_scope.cancel()
        finally:
            self.client.ended()

    async def _read(self, nursery: trio.Nursery) -> None:
        records, client = self._records, self.client
        with trio.CancelScope() as idle:
            while True:
                idle.deadline = trio.current_time() + self.idle_timeout
                try:
                    received = await client.receive_into(records.receive_buffer())
                    if not received:
                        return
                    batch = records.received(received)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                except RecordTooLarge as e:
                    self.dispatcher.bad_input.warn("peer link closed", self.remote[0], str(e))
                    return
                for record in batch:
                    if not await self._route(record, nursery):
                        return
        if idle.cancelled_caught:
            log.info(
                "link with %s closed: nothing received for %g s", self.remote[0], self.idle_timeout
            )

    async def _route(self, record: Record, nursery: trio.Nursery) -> bool:
        """Hand one record on; False if it is neither a call nor a reply."""
        if len(record) < _HEAD.size:
            self.dispatcher.bad_input.warn("peer link closed", self.remote[0], "a runt record")
            return False
        _, kind = _HEAD.unpack_from(record)
        if kind == msg_type.REPLY:
            self.client.deliver(record)
            return True
        if kind != msg_type.CALL:
            self.dispatcher.bad_input.warn(
                "peer link closed", self.remote[0], f"a record of message type {kind}"
            )
            return False
        await self._inflight.acquire()
        nursery.start_soon(self._answer, record)
        return True

    async def _answer(self, record: Record) -> None:
        try:
            reply = await self.dispatcher.handle(
                record, self.remote, self.transport, self.local, caller=self.caller
            )
            self.calls_served += 1
            if reply is not None:
                await self.client.send_parts(reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the link is gone: its reader ends too
        finally:
            self._inflight.release()
