"""The peer program's handlers (xdr/peer.py): what one peer answers another over their link.
NULL is the link's proof and heartbeat; HISTORY and ACK serve this peer's history
(nfsd/peer/exchange.py) to the peer on the link, which `peer_of` names from the call (the
link's authenticated key, never anything the caller says). FETCH, CHUNKS, CUTS and HOLDS
serve content (nfsd/peer/fetch.py); NOTIFY is handed to `notified` (the service pulls from
that peer).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nfsd.peer.exchange import Exchange, refused
from nfsd.peer.fetch import (
    ChunkServer,
    chunks_handler,
    cuts_handler,
    fetch_handler,
    holds_handler,
)
from nfsd.rpc.dispatch import CallContext, Procedure, Program
from xdr.peer import PEER_PROGRAM, PEER_V1, PEERPROC, PROCEDURES, history_status

PeerOf = Callable[[CallContext], str | None]
"""The roster peer id of the link a call came on; None when it is not known."""


async def _null(ctx: CallContext, args: Any) -> None:
    return None


def peer_program(
    exchange: Exchange | None = None,
    peer_of: PeerOf | None = None,
    chunks: ChunkServer | None = None,
    notified: Callable[[CallContext, str], None] | None = None,
) -> Program:
    """The peer program; without an `exchange` (and `peer_of`) HISTORY answers UNAVAILABLE
    and ACK is dropped."""

    def caller(ctx: CallContext) -> str | None:
        return None if exchange is None or peer_of is None else peer_of(ctx)

    def shared(ctx: CallContext, area: bytes) -> bool:
        """Whether the roster lets the link's peer have this area (`peer add --areas`)."""
        allowed = getattr(ctx.caller, "areas", None)
        return allowed is None or bytes(area).decode(errors="replace") in allowed

    async def _history(ctx: CallContext, args: Any) -> Any:
        peer = caller(ctx)
        if exchange is None or peer is None:
            return refused(history_status.UNAVAILABLE)
        if not shared(ctx, args.area):
            return refused(history_status.NO_AREA)  # as if there were no such area here
        return exchange.serve(peer, args)

    async def _ack(ctx: CallContext, args: Any) -> None:
        peer = caller(ctx)
        if exchange is not None and peer is not None and shared(ctx, args.area):
            exchange.acknowledge(peer, args)

    async def _notify(ctx: CallContext, area: Any) -> None:
        if notified is not None:
            notified(ctx, bytes(area).decode(errors="replace"))

    handlers = {
        PEERPROC.NULL: _null,
        PEERPROC.HISTORY: _history,
        PEERPROC.ACK: _ack,
        PEERPROC.NOTIFY: _notify,
    }
    handlers[PEERPROC.FETCH] = fetch_handler(chunks)  # nfsd/peer/fetch.py
    handlers[PEERPROC.CHUNKS] = chunks_handler(chunks)
    handlers[PEERPROC.HOLDS] = holds_handler(chunks)
    handlers[PEERPROC.CUTS] = cuts_handler(chunks)
    return Program(
        PEER_PROGRAM,
        "PEER",
        {
            PEER_V1: {
                number: Procedure(name, args, res, handlers[number])
                for number, (name, args, res) in PROCEDURES.items()
            }
        },
    )
