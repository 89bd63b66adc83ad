"""The peer program's handlers (xdr/peer.py): what one peer answers another over their link.
Only NULL so far, the link's proof and heartbeat; the history exchange and chunk fetching
add theirs here."""

from __future__ import annotations

from typing import Any

from nfsd.peer.fetch import ChunkServer, fetch_handler
from nfsd.rpc.dispatch import CallContext, Procedure, Program
from xdr.peer import PEER_PROGRAM, PEER_V1, PEERPROC, PROCEDURES


async def _null(ctx: CallContext, args: Any) -> None:
    return None


def peer_program(chunks: ChunkServer | None = None) -> Program:
    handlers = {PEERPROC.NULL: _null}
    handlers[PEERPROC.FETCH] = fetch_handler(chunks)  # nfsd/peer/fetch.py
    return Program(
        PEER_PROGRAM,
        "PEER",
        {
            PEER_V1: {
                number: Procedure(name, args, res, handlers[number])
                for number, (name, args, res) in PROCEDURES.items()
                if number in handlers  # a procedure typed but not served yet: PROC_UNAVAIL
            }
        },
    )
