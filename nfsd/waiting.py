"""Whether the current call may wait: the one rule between the transport and the tree.

A connection's reader answers quick calls itself and must never wait. It runs them under
`forbid_waiting`; the tree calls `about_to_wait` before anything that may block for long
(realizing an Unreal file, a fetch, an fsync) and so raises WouldWait before it changes
anything. The dispatcher then runs the call again in a task of its own.

A long loop that does not wait (a listing of thousands of entries, a reconcile) lets the
others in with `Pause.now_and_then` instead.
"""

from __future__ import annotations

import contextvars
import time

import trio


class WouldWait(Exception):
    """Raised by the tree, before it changes anything, when a call that must not wait (one
    answered by a connection's reader) needs to: realize an Unreal file, fetch, fsync. The
    caller runs the call again where waiting is allowed."""


_MUST_NOT_WAIT = contextvars.ContextVar("must_not_wait", default=False)


def forbid_waiting() -> contextvars.Token[bool]:
    """From now on in this context, `about_to_wait` raises WouldWait (undo with `allow`)."""
    return _MUST_NOT_WAIT.set(True)


def allow_waiting(token: contextvars.Token[bool]) -> None:
    _MUST_NOT_WAIT.reset(token)


def about_to_wait() -> None:
    """Called by the tree before an operation that may block for long."""
    if _MUST_NOT_WAIT.get():
        raise WouldWait


SLICE = 0.005  # the longest a loop keeps the event loop before letting other calls in


class Pause:
    """In a long loop on the event loop: a checkpoint whenever SLICE has passed."""

    __slots__ = ("_until",)

    def __init__(self) -> None:
        self._until = time.monotonic() + SLICE

    async def now_and_then(self) -> None:
        if time.monotonic() >= self._until:
            await trio.lowlevel.checkpoint()
            self._until = time.monotonic() + SLICE
