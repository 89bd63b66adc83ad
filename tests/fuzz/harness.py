"""Bytes from a client, through record marking and the dispatcher, over a real tree: the one
path the fuzzer (tests/fuzz/fuzz_dispatch.py) and the corpus replay (tests/test_fuzz_corpus.py)
both drive.

`DispatchTarget(base)` builds the server's programs (NFS, MOUNT, portmap) as `realize run`
assembles them, over areas with a few files in `base`, with a fixed handle key and a fixed
first walk of the tree, so the handles written into the seed corpus stay valid on every
build. `target.check_input(data)` feeds `data` to a `RecordReader` as a connection's bytes,
answers every record as a connection does (inline first, going on on the event loop if the
call pauses; in a task when the call must wait), and raises `Crash` when an exception escapes
the dispatcher, when the dispatcher logs a traceback or an error (its SYSTEM_ERR path), when a
call takes longer than `HANG_SECONDS`, or when a call record gets no reply.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import os
import shutil
import threading
import time
import traceback
import types
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import trio

from nfsd.rpc.dispatch import DEFERRED, Dispatcher, Reply
from nfsd.rpc.record import RecordReader, RecordTooLarge, record_mark
from nfsd.store.db import Store
from tests.support.inproc import OWNER, InProcessServer, make_dispatcher
from xdr.codec import decode, encode
from xdr.mount import MOUNT_PROGRAM, MOUNT_V3, MOUNTPROC3, dirpath, mountres3
from xdr.nfs3 import NFS_PROGRAM, NFS_V3, NFSPROC3, LOOKUP3args, LOOKUP3res, diropargs3, nfs_fh3
from xdr.rpc import auth_flavor
from xdr.rpc_fast import Credential, NotACall, encode_call, parse_call, parse_reply

HANG_SECONDS = 2.0
CLIENT = ("127.0.0.1", 40000)
LOCAL = "127.0.0.1"
ROOT = Credential(auth_flavor.AUTH_SYS, 0, 0, [], b"fuzz")
# A fixed handle key: handles in the corpus are the ones every build of the target makes.
HANDLE_SECRET = bytes(range(32))

# What the areas hold before the server starts: area -> relative path -> content
# (bytes: a file; None: a directory; str: a symlink's target).
TREE: dict[str, dict[str, bytes | str | None]] = {
    "a": {
        "hello.txt": b"hello, fuzzer\n" * 4,
        "sub": None,
        "sub/inner.txt": b"inner\n",
        "sub/deeper": None,
        "link": "hello.txt",
        "empty": b"",
    },
    "b": {"other.bin": bytes(range(256))},
}
# Looked up in this order at every build, so each gets the same fileid (and handle) each time.
PRIMED = ("hello.txt", "sub", "sub/inner.txt", "sub/deeper", "link", "empty")


class Crash(AssertionError):
    """The server misbehaved on an input: what happened, with the traceback when there is one."""


class _ErrorLog(logging.Handler):
    """Keeps what the server logs at ERROR or above, or with a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)

    def take(self) -> list[str]:
        formatter = logging.Formatter("%(name)s %(levelname)s: %(message)s")
        found = [formatter.format(r) for r in self.records]
        self.records.clear()
        return found


def _populate(base: Path) -> None:
    for area, entries in TREE.items():
        root = base / "areas" / area
        root.mkdir(parents=True, exist_ok=True)
        for relative, content in entries.items():
            path = root / relative
            if content is None:
                path.mkdir()
            elif isinstance(content, str):
                path.symlink_to(content)
            else:
                path.write_bytes(content)
    store = Store(base / "state" / "db")
    try:
        store.family("meta")[b"handle-secret"] = HANDLE_SECRET
    finally:
        store.close()


class _Suspended:
    """An inline call that paused on the event loop (`Pause.now_and_then` in a long listing):
    the coroutine, what it awaits, and the context it runs in."""

    def __init__(self, coroutine: Any, awaited: Any, context: contextvars.Context) -> None:
        self.coroutine, self.awaited, self.context = coroutine, awaited, context


def _start(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run an inline call up to its end, or to its first pause (then a _Suspended)."""
    context = contextvars.copy_context()
    try:
        awaited = context.run(coroutine.send, None)
    except StopIteration as done:
        return done.value
    return _Suspended(coroutine, awaited, context)


@types.coroutine
def _resume(suspended: _Suspended) -> Any:
    """Go on with a paused call on the event loop, as the reader's task would: what it awaits
    goes to the loop, the loop's answers to it, each step in the call's own context."""
    coroutine, awaited, context = suspended.coroutine, suspended.awaited, suspended.context
    while True:
        try:
            answer = yield awaited
        except BaseException as e:
            step, value = coroutine.throw, e
        else:
            step, value = coroutine.send, answer
        try:
            awaited = context.run(step, value)
        except StopIteration as done:
            return done.value


async def _finish(suspended: _Suspended) -> Any:
    return await _resume(suspended)


class _TrioThread:
    """An event loop in a thread, for calls that run in a task of their own (WRITE, COMMIT,
    calls that must wait), so each such call does not pay for a new loop."""

    def __init__(self) -> None:
        self._ready = threading.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stop: trio.Event | None = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)
        self._thread.start()
        self._ready.wait()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._stop = trio.Event()
        self._ready.set()
        await self._stop.wait()

    def run(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any) -> Any:
        return trio.from_thread.run(fn, *args, trio_token=self._token)

    def close(self) -> None:
        assert self._stop is not None
        trio.from_thread.run_sync(self._stop.set, trio_token=self._token)
        self._thread.join()


class DispatchTarget:
    """The server's programs over a real tree under `base`, and how to feed them bytes."""

    def __init__(self, base: Path, *, loop_thread: bool = True) -> None:
        self.base = base
        self.errors = _ErrorLog()
        logging.getLogger().addHandler(self.errors)
        self._loop = _TrioThread() if loop_thread else None
        self.inputs = 0
        self.server = self._build()

    def _build(self) -> InProcessServer:
        if self.base.exists():
            shutil.rmtree(self.base)
        # The server refuses a state directory others may write to: build it under a usual
        # umask, whatever the one calls run with.
        umask = os.umask(0o022)
        try:
            self.base.mkdir(parents=True)
            _populate(self.base)
            server = make_dispatcher(self.base, areas=tuple(TREE))
        finally:
            os.umask(umask)
        self.server = server
        self.handles = self._prime()
        return server

    def rebuild(self) -> None:
        """A fresh tree and server: what earlier inputs created is gone."""
        self.server.close()
        self.server = self._build()

    def close(self) -> None:
        self.server.close()
        if self._loop is not None:
            self._loop.close()
        logging.getLogger().removeHandler(self.errors)

    @property
    def dispatcher(self) -> Dispatcher:
        return self.server.dispatcher

    # --- the calls every build makes first, and the seeds' handles ---

    def call_now(self, prog: int, vers: int, proc: int, args_type: Any, args: Any) -> bytes:
        """The reply body (after the RPC header) of one call, run as the fuzzer runs it."""
        record = encode_call(1, prog, vers, proc, ROOT) + encode(args_type, args)
        reply = self.answer_now(record)
        assert reply is not None
        data = b"".join(reply)
        return data[parse_reply(data).body_offset :]

    def _prime(self) -> dict[str, bytes]:
        handles: dict[str, bytes] = {}
        for export in ("/", *(f"/{area}" for area in TREE)):
            body = self.call_now(MOUNT_PROGRAM, MOUNT_V3, MOUNTPROC3.MNT, dirpath, export.encode())
            handles[export] = decode(mountres3, body).value.fhandle
        for relative in PRIMED:
            parent, _, name = ("/a/" + relative).rpartition("/")
            args = LOOKUP3args(diropargs3(nfs_fh3(handles[parent]), name.encode()))
            body = self.call_now(NFS_PROGRAM, NFS_V3, NFSPROC3.LOOKUP, LOOKUP3args, args)
            handles["/a/" + relative] = decode(LOOKUP3res, body).value.object.data
        self.errors.take()
        return handles

    # --- answering records ---

    async def answer(self, record: bytes) -> Reply | None:
        """A record answered as a connection's task answers it."""
        dispatcher = self.dispatcher
        if dispatcher.is_inline(record):
            reply = await dispatcher.handle(record, CLIENT, "tcp", LOCAL, inline=True, owner=OWNER)
            if reply is not DEFERRED:
                return reply
        reply = await dispatcher.handle(record, CLIENT, "tcp", LOCAL, owner=OWNER)
        assert reply is not DEFERRED
        return reply

    def answer_now(self, record: bytes) -> Reply | None:
        """`answer`, with inline calls run straight away (they must not wait) and the others
        in the loop thread: a fuzzer's input costs no event loop of its own."""
        dispatcher = self.dispatcher
        if dispatcher.is_inline(record):
            reply = _start(
                dispatcher.handle(record, CLIENT, "tcp", LOCAL, inline=True, owner=OWNER)
            )
            if isinstance(reply, _Suspended):
                assert self._loop is not None, "a call that pauses needs the loop thread"
                reply = self._loop.run(_finish, reply)
            if reply is not DEFERRED:
                return reply
        assert self._loop is not None, "calls that wait need the loop thread"
        return self._loop.run(
            functools.partial(dispatcher.handle, owner=OWNER), record, CLIENT, "tcp", LOCAL
        )

    def check_input(self, data: bytes) -> int:
        """Feed `data` as a connection's bytes; the number of replies. Raises Crash."""
        self.inputs += 1
        try:
            records = RecordReader().feed(data)
        except RecordTooLarge:
            return 0  # the connection is closed: nothing more to answer
        replies = 0
        for record in records:
            record = bytes(record)
            started = time.monotonic()
            try:
                reply = self.answer_now(record)
            except Crash:
                raise
            except BaseException as e:
                raise Crash(
                    "an exception escaped the dispatcher:\n" + traceback.format_exc()
                ) from e
            self.check_reply(record, reply, time.monotonic() - started)
            replies += reply is not None
        return replies

    def check_reply(self, record: bytes, reply: Reply | None, elapsed: float) -> None:
        logged = self.errors.take()
        if logged:
            raise Crash("the server logged:\n" + "\n".join(logged))
        if elapsed > HANG_SECONDS:
            raise Crash(f"a call took {elapsed:.1f} s")
        # Calls are answered one at a time, so none is ever still in progress in the
        # duplicate-request cache: every call gets an answer.
        if reply is None and expects_reply(record):
            raise Crash("a call got no reply")


def expects_reply(record: bytes) -> bool:
    """Whether the server must answer `record`: anything but a non-call."""
    try:
        parse_call(record)
    except NotACall:
        return False
    except Exception:
        return True  # a bad version or credential is answered with an error
    return True


def framed(*records: bytes) -> bytes:
    """Records as a connection carries them (one fragment each)."""
    return b"".join(record_mark(len(r)) + r for r in records)


def rss_bytes() -> int:
    """This process's resident memory."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
