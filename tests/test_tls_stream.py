"""The peer links' TLS stream (nfsd/peer/tlsstream.py) between two real sockets on loopback,
with the peers' own contexts: messages of every size arrive whole and in order both ways at
once, a reader's buffer smaller than a record gets the rest on its next read, close_notify is
a clean end, a connection cut without it is reported broken, and an unknown key never gets a
byte through."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from nfsd.peer import identity, roster, tls
from nfsd.peer.tlsstream import TlsStream

pytestmark = pytest.mark.wire


def _pair(
    tmp_path: Path,
) -> tuple[identity.Identity, roster.Roster, identity.Identity, roster.Roster]:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, _ = identity.load_or_create(tmp_path / "a")
    b, _ = identity.load_or_create(tmp_path / "b")
    roster_a = roster.Roster({}).with_peer(roster.new_peer("b", b.token, None, None), a.public_key)
    roster_b = roster.Roster({}).with_peer(roster.new_peer("a", a.token, None, None), b.public_key)
    return a, roster_a, b, roster_b


async def _connected(tmp_path: Path) -> tuple[TlsStream, TlsStream]:
    a, roster_a, b, roster_b = _pair(tmp_path)
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    streams: dict[str, tls.PeerStream] = {}

    async def accept() -> None:
        transport = await listener.accept()
        context = tls.server_context(a, roster_a)
        streams["a"] = await tls.handshake(transport, context, roster_a, server_side=True)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        streams["b"] = await tls.dial(("127.0.0.1", port), b, roster_b)
    await listener.aclose()
    return streams["a"].stream, streams["b"].stream


async def _receive_exactly(stream: TlsStream, n: int, piece: int = 1 << 20) -> bytes:
    buffer = bytearray(n)
    view, got = memoryview(buffer), 0
    while got < n:
        k = await stream.receive_into(view[got : got + piece])
        assert k, f"ended after {got} of {n} bytes"
        got += k
    return bytes(buffer)


def test_messages_of_every_size_arrive_whole_both_ways_at_once(tmp_path: Path) -> None:
    sizes = [1, 100, 16 * 1024 - 1, 16 * 1024, 16 * 1024 + 1, 256 * 1024 + 7, 3 << 20]
    messages = [os.urandom(n) for n in sizes]

    async def main() -> None:
        a, b = await _connected(tmp_path)
        assert a.version() == b.version() == "TLSv1.3"
        received: dict[str, bytes] = {}

        async def send(stream: TlsStream) -> None:
            for message in messages:
                await stream.send([message[:5], message[5:]])

        async def receive(name: str, stream: TlsStream, piece: int) -> None:
            received[name] = await _receive_exactly(stream, sum(sizes), piece)

        with trio.fail_after(60):  # both ends sending big messages once stopped both reading
            async with trio.open_nursery() as nursery:
                nursery.start_soon(send, a)
                nursery.start_soon(send, b)
                nursery.start_soon(receive, "at a", a, 1 << 20)
                nursery.start_soon(receive, "at b", b, 1000)  # smaller than one record
        assert received["at a"] == received["at b"] == b"".join(messages)
        await b.aclose()
        assert await a.receive_into(memoryview(bytearray(10))) == 0  # close_notify: the end
        await a.aclose()

    trio.run(main)


def test_a_connection_cut_without_close_notify_is_broken_not_an_end(tmp_path: Path) -> None:
    async def main() -> None:
        a, b = await _connected(tmp_path)
        await b.send([b"half a message"])
        assert await _receive_exactly(a, 14) == b"half a message"
        await b.transport_stream.aclose()  # TCP ends, TLS never said goodbye
        with pytest.raises(trio.BrokenResourceError):
            await a.receive_into(memoryview(bytearray(10)))
        await a.aclose()

    trio.run(main)


def test_an_unknown_key_is_refused_before_any_byte(tmp_path: Path) -> None:
    async def main() -> None:
        a, roster_a, _, _ = _pair(tmp_path)
        (tmp_path / "stranger").mkdir()
        stranger, _ = identity.load_or_create(tmp_path / "stranger")
        stranger_roster = roster.Roster({}).with_peer(
            roster.new_peer("a", a.token, None, None), stranger.public_key
        )
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        port = listener.socket.getsockname()[1]
        outcome: dict[str, object] = {}

        async def accept() -> None:
            transport = await listener.accept()
            try:
                await tls.handshake(
                    transport, tls.server_context(a, roster_a), roster_a, server_side=True
                )
                outcome["server"] = "accepted"
            except tls.PeerRefused as e:
                outcome["server"] = str(e)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(accept)
            try:
                stream = await tls.dial(("127.0.0.1", port), stranger, stranger_roster)
                await stream.stream.send([b"let me in"])
                got = await stream.stream.receive_into(memoryview(bytearray(10)))
                outcome["client"] = f"read {got}"
            except (tls.PeerRefused, trio.BrokenResourceError) as e:
                outcome["client"] = f"refused: {e}"
        await listener.aclose()
        assert outcome["server"] != "accepted" and "handshake failed" in str(outcome["server"])
        assert str(outcome["client"]).startswith("refused")

    trio.run(main)
