"""Turns one RPC call record into its reply, without I/O.

Owns the RFC 5531 answers that do not depend on a program: RPC_MISMATCH, AUTH_ERROR,
PROG_UNAVAIL, PROG_MISMATCH (with the supported range), PROC_UNAVAIL, GARBAGE_ARGS and
SYSTEM_ERR, plus the duplicate-request cache for non-idempotent procedures. Programs register
their procedures as `Procedure`s with XDR argument and result types and an async handler.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from nfsd.rpc.drc import DuplicateRequestCache, Lookup
from nfsd.waiting import WouldWait, allow_waiting, forbid_waiting
from xdr.codec import Packer, XdrError, as_type, decode, void
from xdr.rpc import accept_stat
from xdr.rpc_fast import (
    BadCredential,
    BadRpcVersion,
    Credential,
    NotACall,
    accepted_reply,
    auth_error_reply,
    parse_call,
    peek_procedure,
    peek_xid,
    prog_mismatch_reply,
    rpc_mismatch_reply,
)

log = logging.getLogger("realize.rpc")


@dataclass(slots=True)
class CallContext:
    """What a handler knows of its call besides the arguments."""

    xid: int
    prog: int
    vers: int
    proc: int
    cred: Credential
    client: tuple[str, int]
    transport: str  # "tcp", "udp" or "tls"
    server: str | None = None  # the local address the call arrived at, when known
    owner: int | None = None  # the uid owning the caller's socket, when this machine's says
    caller: Any = None  # who is at the other end, as its link names it (a peer link's Peer)


Handler = Callable[[CallContext, Any], Awaitable[Any]]


@dataclass(slots=True)
class Procedure:
    name: str
    args: Any
    res: Any
    handler: Handler
    idempotent: bool = True
    # Inline handlers are usually quick: the connection's reader runs them at once, without a
    # task of their own, and batches their replies. Whether one call must wait (realize an
    # Unreal file, fetch, fsync) is for the tree to say: it raises WouldWait before changing
    # anything, and the call is run again in a task (`handle` answers DEFERRED).
    inline: bool = True

    def __post_init__(self) -> None:
        self.args = as_type(self.args)
        self.res = as_type(self.res)


@dataclass
class Program:
    number: int
    name: str
    versions: dict[int, dict[int, Procedure]] = field(default_factory=dict)

    @property
    def version_range(self) -> tuple[int, int]:
        return min(self.versions), max(self.versions)


class RawReply:
    """A result already encoded by its handler, as buffers to send without joining."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[bytes | memoryview]) -> None:
        self.parts = parts


class OncePerWindow:
    """Logs a kind of bad input from one client once per window, then counts silently."""

    def __init__(self, window: float = 60.0) -> None:
        self.window = window
        self._seen: dict[tuple[str, str], float] = {}

    def warn(self, kind: str, client: str, detail: str) -> None:
        now = time.monotonic()
        key = (kind, client)
        if now - self._seen.get(key, -self.window) >= self.window:
            if len(self._seen) > 10_000:
                self._seen.clear()
            self._seen[key] = now
            log.warning("%s from %s: %s", kind, client, detail)


Reply = list[bytes | memoryview]


class _Deferred:
    """`handle`'s answer for an inline call that must wait: run it again with inline=False."""

    __slots__ = ()


DEFERRED = _Deferred()


class Dispatcher:
    def __init__(self, programs: list[Program], drc: DuplicateRequestCache | None = None):
        self.programs = {p.number: p for p in programs}
        self.drc = drc if drc is not None else DuplicateRequestCache()
        self.bad_input = OncePerWindow()
        self.calls = 0

    def add(self, program: Program) -> None:
        self.programs[program.number] = program

    def is_inline(self, record: bytes) -> bool:
        """Whether the call can be answered without waiting (see Procedure.inline)."""
        numbers = peek_procedure(record)
        if numbers is None:
            return True
        program = self.programs.get(numbers[0])
        if program is None:
            return True
        procedure = program.versions.get(numbers[1], {}).get(numbers[2])
        return procedure is None or procedure.inline

    async def handle(
        self,
        record: bytes,
        client: tuple[str, int],
        transport: str,
        server: str | None = None,
        *,
        inline: bool = False,
        owner: int | None = None,
        caller: Any = None,
    ) -> Reply | _Deferred | None:
        """The reply to `record`, or None when nothing must be sent.

        `inline`: the caller is a connection's reader, which must not wait; a call that
        would is answered DEFERRED, having changed nothing, for the caller to run again."""
        self.calls += 1
        try:
            call = parse_call(record)
        except NotACall as e:
            self.bad_input.warn("dropped non-call record", client[0], str(e))
            return None
        except BadRpcVersion:
            return [rpc_mismatch_reply(peek_xid(record) or 0)]
        except BadCredential as e:
            self.bad_input.warn("bad credential", client[0], e.stat.name)
            return [auth_error_reply(peek_xid(record) or 0, e.stat)]

        program = self.programs.get(call.prog)
        if program is None:
            return [accepted_reply(call.xid, accept_stat.PROG_UNAVAIL)]
        procedures = program.versions.get(call.vers)
        if procedures is None:
            low, high = program.version_range
            return [prog_mismatch_reply(call.xid, low, high)]
        procedure = procedures.get(call.proc)
        if procedure is None:
            return [accepted_reply(call.xid, accept_stat.PROC_UNAVAIL)]
        try:
            if procedure.args is void:  # NULL: nothing to decode, nothing may follow
                if call.args_offset != len(record):
                    raise XdrError("trailing bytes")
                args = None
            else:
                # A view, so bulk data (WRITE) is not copied out of the record.
                args = decode(procedure.args, memoryview(record), call.args_offset)
        except XdrError as e:
            self.bad_input.warn(
                f"garbage arguments to {program.name} {procedure.name}", client[0], str(e)
            )
            return [accepted_reply(call.xid, accept_stat.GARBAGE_ARGS)]

        ctx = CallContext(
            call.xid,
            call.prog,
            call.vers,
            call.proc,
            call.cred,
            client,
            transport,
            server,
            owner,
            caller,
        )
        if procedure.idempotent:
            return await self._run(procedure, ctx, args, inline)

        # A retransmission comes from the same socket with the same credential: another
        # user's call with the same xid and arguments is another call.
        cred = call.cred
        key = self.drc.key(
            client,
            call.xid,
            call.prog,
            call.vers,
            call.proc,
            (cred.flavor, cred.uid, cred.gid, tuple(cred.gids), owner),
            memoryview(record)[call.args_offset :],  # checksummed, not copied
        )
        state, cached = self.drc.begin(key)
        if state is Lookup.DONE:
            return [cached] if cached is not None else None
        if state is Lookup.IN_PROGRESS:
            return None
        try:
            reply = await self._run(procedure, ctx, args, inline)
        except BaseException:
            self.drc.abandon(key)
            raise
        if reply is DEFERRED:
            self.drc.abandon(key)
            return reply
        self.drc.finish(key, b"".join(reply))
        return reply

    async def _run(
        self, procedure: Procedure, ctx: CallContext, args: Any, inline: bool
    ) -> Reply | _Deferred:
        token = forbid_waiting() if inline else None
        try:
            result = await procedure.handler(ctx, args)
        except WouldWait:
            if inline:
                return DEFERRED
            log.error("%s: WouldWait outside an inline call", procedure.name)
            return [accepted_reply(ctx.xid, accept_stat.SYSTEM_ERR)]
        except Exception:
            log.exception("%s failed", procedure.name)
            return [accepted_reply(ctx.xid, accept_stat.SYSTEM_ERR)]
        finally:
            if token is not None:
                allow_waiting(token)
        if isinstance(result, RawReply):
            return [accepted_reply(ctx.xid), *result.parts]
        if procedure.res is void:
            return [accepted_reply(ctx.xid)]
        p = Packer()
        procedure.res.pack(p, result)
        return [accepted_reply(ctx.xid), p.get_buffer()]
