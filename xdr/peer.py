"""The peer protocol: what the peers of a household ask each other, over the TLS link that
nfsd/peer/ authenticates. An ONC RPC program in the private range beside the control
program; only NULL so far (the link's proof and heartbeat). The history exchange and the
fetching of chunks add their procedures here."""

from __future__ import annotations

from enum import IntEnum
from typing import Any

from .codec import XdrType, void

PEER_PROGRAM = 0x2052_4C5B  # the control program's number + 1, in RFC 5531's private range
PEER_V1 = 1


class PEERPROC(IntEnum):
    NULL = 0


PROCEDURES: dict[int, tuple[str, XdrType[Any], XdrType[Any]]] = {
    PEERPROC.NULL: ("NULL", void, void),
}
"""Peer procedure number -> (name, argument type, result type)."""
