"""TLS over a trio SocketStream for the peer links, with less work per byte than
trio.SSLStream: the links carry chunks of a quarter MiB, and trio's general stream passes
every 16 KiB record through its scheduler and its locks (about four CPU-seconds per GB at each
end on these machines, several times what OpenSSL itself costs).

`TlsStream` drives an `ssl.SSLObject` over two memory BIOs: what the socket gives is fed in up
to `RAW_BUFFER` bytes at a time (non-blocking, through nfsd/rpc/streamio.py `SocketIO`), and
decrypted records are read straight into the caller's buffer in one loop with no await
between them. Sending encrypts the whole message into the outgoing BIO and sends it in one
go. It is TLS 1.3 only (the contexts of nfsd/peer/tls.py allow nothing else), so there is no
renegotiation; what a read makes the TLS layer send (a KeyUpdate's answer) is sent after it.

One task receives at a time (the link's reader) and sends are serialized by a lock, under which
a message is encrypted and sent, which keeps what the BIO holds in order on the wire. The
reader never waits for that lock: what a read makes the TLS layer write is sent by the reader
only when no send is under way, else by that send after its own; a reader stuck behind a
sender of a big message while the other side did the same would stop both ends reading. A
send or receive cancelled halfway leaves the stream broken (the link then ends), as trio's
does. Besides the trio Stream methods it offers `receive_into` and `send` (streamio's
protocol), so RpcClient decrypts into its record buffer without a copy in between.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Sequence

import trio

from nfsd.rpc.streamio import Buffer, SocketIO

RAW_BUFFER = 256 * 1024  # encrypted bytes taken from the socket at once
_DEFAULT_RECEIVE = 64 * 1024


class TlsStream(trio.abc.Stream):
    def __init__(
        self, transport: trio.SocketStream, context: ssl.SSLContext, *, server_side: bool
    ) -> None:
        self.transport_stream = transport
        self._io = SocketIO(transport)
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side)
        self._raw = memoryview(bytearray(RAW_BUFFER))
        self._send_lock = trio.Lock()
        self._receiving = False
        self._eof = False
        self._broken: str | None = None
        self._closed = False

    # ---- what the handshake leaves ----

    def version(self) -> str | None:
        return self._tls.version()

    def getpeercert(self, binary_form: bool = False) -> bytes | None:
        return self._tls.getpeercert(binary_form=True) if binary_form else None

    async def do_handshake(self) -> None:
        """Run the TLS handshake; trio.BrokenResourceError (from the ssl.SSLError that
        failed it) when it fails or the other side hangs up."""
        while True:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                await self._flush()
                if not await self._fill():
                    raise trio.BrokenResourceError(
                        "the other side closed during the handshake"
                    ) from None
                continue
            except ssl.SSLError as e:
                await self._flush_quietly()  # the alert tells the other side why
                raise trio.BrokenResourceError(f"handshake failed: {e}") from e
            await self._flush()
            return

    # ---- receiving ----

    def _check(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        if self._broken is not None:
            raise trio.BrokenResourceError(self._broken)

    async def _fill(self) -> bool:
        """Feed the TLS layer what the socket has (waiting for some); False at its end."""
        try:
            n = await self._io.receive_into(self._raw)
        except BaseException as e:
            if not isinstance(e, trio.Cancelled):  # a cancelled wait loses nothing
                self._broken = f"cannot receive: {e}"
            raise
        if n == 0:
            self._incoming.write_eof()
            return False
        self._incoming.write(self._raw[:n])
        return True

    def _decrypt_into(self, view: memoryview) -> int:
        """Decrypted bytes already at hand, into `view`: as many records as fit."""
        filled, tls = 0, self._tls
        if not len(view):
            return 0
        while filled < len(view):
            try:
                got = tls.read(len(view) - filled, view[filled:])
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self._eof = True
                break
            except ssl.SSLError as e:
                self._broken = f"TLS failed: {e}"
                raise trio.BrokenResourceError(self._broken) from e
            if not got:  # asked for more than 0: the other side's close_notify
                self._eof = True
                break
            filled += got
        return filled

    async def receive_into(self, view: memoryview) -> int:
        """Decrypted bytes into `view`, waiting until some arrive; 0 at the end of the stream."""
        self._check()
        if self._receiving:
            raise trio.BusyResourceError("another task is receiving on this stream")
        self._receiving = True
        try:
            while True:
                n = self._decrypt_into(view)
                if self._outgoing.pending and not self._send_lock.locked():
                    await self._flush()  # a sender holding the lock flushes it after its own
                if n or self._eof:
                    return n
                if not await self._fill():
                    n = self._decrypt_into(view)
                    if n:
                        return n
                    if not self._eof:  # TCP ended without close_notify: a truncation
                        self._broken = "the connection ended without closing TLS"
                        raise trio.BrokenResourceError(self._broken)
                    return 0
        finally:
            self._receiving = False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        buffer = bytearray(max_bytes or _DEFAULT_RECEIVE)
        n = await self.receive_into(memoryview(buffer))
        return bytes(buffer[:n])

    # ---- sending ----

    async def _flush(self) -> None:
        """Send what the TLS layer has written, in order."""
        async with self._send_lock:
            await self._send_pending()

    async def _send_pending(self) -> None:
        """With the send lock held: send the outgoing BIO until it is empty (what a read
        added to it while this sent is sent too)."""
        while self._outgoing.pending:
            data = self._outgoing.read()
            try:
                await self._io.send([data])
            except BaseException as e:
                self._broken = f"cannot send: {e}"  # some of `data` may have left
                raise

    async def _flush_quietly(self) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await self._flush()

    async def send(self, parts: Sequence[Buffer]) -> None:
        """Encrypt and send one message made of `parts`."""
        self._check()
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        view = memoryview(data)
        async with self._send_lock:  # encrypted under it: a waiting reader never sends this
            self._check()
            while view:
                try:
                    written = self._tls.write(view)
                except ssl.SSLError as e:
                    self._broken = f"TLS failed: {e}"
                    raise trio.BrokenResourceError(self._broken) from e
                view = view[written:]
            await self._send_pending()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if data:
            await self.send([data])
        else:
            self._check()
            await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        await self.transport_stream.wait_send_all_might_not_block()

    def detach(self) -> None:
        """Nothing to forget: the stream's own `aclose` closes the socket (streamio's
        protocol)."""

    # ---- closing ----

    async def aclose(self) -> None:
        """Say close_notify if the link still works (briefly), then close the socket."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        try:
            if self._broken is None:
                with contextlib.suppress(ssl.SSLError):  # the other side's is not awaited
                    self._tls.unwrap()
                with trio.move_on_after(1.0):
                    await self._flush_quietly()
        finally:
            self._closed = True
            self._io.detach()
            await self.transport_stream.aclose()
