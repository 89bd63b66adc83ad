"""The TLS of peer links: TLS 1.3 only, both sides authenticated, only roster keys accepted.

The roster's certificates are the only trust anchors (CERT_REQUIRED on both sides), so
OpenSSL itself refuses, during the handshake, a certificate that is not one of them: an
unknown key, or a certificate with a member's subject but another key (its signature does not
verify against the anchor of that name). After the handshake `authenticate` compares the
peer's public key with the roster anyway and names the peer; a connection is handed on only
then, so no data is read from or sent to a peer before it is known.

In TLS 1.3 a client finishes its handshake before the server has judged its certificate: a
refused client learns it on its first read, and what it sent meanwhile is never read.
Session tickets are off: a resumed session would skip the certificates.

The contexts are built from one roster and never change: when the roster changes, build new
ones (a context cannot forget a trust anchor). `handshake` runs one side of the handshake on
a connected stream and returns the `PeerStream`.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from nfsd.peer.identity import Identity, certificate_public_key
from nfsd.peer.roster import Peer, Roster
from nfsd.peer.tlsstream import TlsStream
from nfsd.rpc.client import RpcClient, RpcError
from xdr.codec import void
from xdr.peer import PEER_PROGRAM, PEER_V1, PEERPROC

HANDSHAKE_TIMEOUT = 10.0  # seconds a connection may take to authenticate


class PeerRefused(Exception):
    """The other side is not a member of the roster, or failed the handshake."""


@dataclass
class PeerStream:
    """An authenticated TLS 1.3 link: the stream (a trio Stream: send_all, receive_some,
    aclose) and the roster entry of the peer at the other end."""

    stream: TlsStream
    peer: Peer
    outgoing: bool  # this side dialled
    remote: tuple[str, int]  # the other side's address and port as the socket saw them

    async def aclose(self) -> None:
        await self.stream.aclose()


def _context(identity: Identity, roster: Roster, server_side: bool) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.check_hostname = False  # peers are named by key, not by host
    context.verify_mode = ssl.CERT_REQUIRED
    if server_side:
        context.num_tickets = 0
    context.options |= ssl.OP_NO_TICKET
    # A TCP end without close_notify is a truncation, never the stream's end (a cut link, or
    # someone between the peers ending it early). Python sets this option by default with
    # OpenSSL 3; with it, Debian 12's OpenSSL (3.0.19) reads a bare TCP end as close_notify.
    # Cleared, OpenSSL reports an unexpected EOF, and the stream reports the link broken.
    context.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
    # load_cert_chain reads only files: the certificate and key go through a private
    # temporary one, removed at once.
    cert_pem = x509.load_der_x509_certificate(identity.certificate).public_bytes(
        serialization.Encoding.PEM
    )
    with tempfile.TemporaryDirectory(prefix="realize-peer-") as private:
        chain = Path(private) / "chain.pem"
        fd = os.open(chain, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(cert_pem + identity.private_pem())
        context.load_cert_chain(chain)
    anchors = roster.certificates()
    if anchors:
        context.load_verify_locations(cadata=b"".join(anchors))
    return context


def server_context(identity: Identity, roster: Roster) -> ssl.SSLContext:
    return _context(identity, roster, server_side=True)


def client_context(identity: Identity, roster: Roster) -> ssl.SSLContext:
    return _context(identity, roster, server_side=False)


def authenticate(certificate: bytes | None, roster: Roster) -> Peer:
    """The roster member whose key the DER `certificate` carries; PeerRefused if none."""
    if not certificate:
        raise PeerRefused("no certificate")
    try:
        public_key = certificate_public_key(certificate)
    except ValueError as e:
        raise PeerRefused(f"unusable certificate: {e}") from None
    peer = roster.by_key(public_key)
    if peer is None:
        raise PeerRefused("a key not in the roster")
    return peer


async def handshake(
    transport: trio.SocketStream,
    context: ssl.SSLContext,
    roster: Roster,
    *,
    server_side: bool,
    expect: Peer | None = None,
) -> PeerStream:
    """Authenticate a connected TCP stream: the PeerStream, or PeerRefused (the transport is
    then closed). `expect`: the peer this side dialled, which must be the one that answers."""
    try:
        remote = transport.socket.getpeername()[:2]
    except OSError as e:
        await transport.aclose()
        raise PeerRefused(f"connection gone: {e}") from None
    stream = TlsStream(transport, context, server_side=server_side)
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            await stream.do_handshake()
        if stream.version() != "TLSv1.3":  # the context allows nothing else; be sure
            raise PeerRefused(f"{stream.version()} instead of TLS 1.3")
        peer = authenticate(stream.getpeercert(binary_form=True), roster)
        if expect is not None and peer.public_key != expect.public_key:
            raise PeerRefused(f"{peer.name} answered where {expect.name} was expected")
    except trio.TooSlowError:
        await trio.aclose_forcefully(stream)
        raise PeerRefused("the handshake took too long") from None
    except (trio.BrokenResourceError, ssl.SSLError, OSError) as e:
        await trio.aclose_forcefully(stream)
        cause = e.__cause__ if isinstance(e, trio.BrokenResourceError) and e.__cause__ else e
        raise PeerRefused(f"handshake failed: {cause}") from None
    except PeerRefused:
        await trio.aclose_forcefully(stream)
        raise
    return PeerStream(stream, peer, outgoing=not server_side, remote=(remote[0], remote[1]))


async def dial(
    address: tuple[str, int],
    identity: Identity,
    roster: Roster,
    expect: Peer | None = None,
    context: ssl.SSLContext | None = None,
) -> PeerStream:
    """Connect to a peer and authenticate it: OSError if it cannot be reached, PeerRefused
    if it is not who the roster says. Whether it accepted us shows in `confirmed`."""
    transport = await trio.open_tcp_stream(*address)
    with contextlib.suppress(OSError):
        transport.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, True)  # small calls
    return await handshake(
        transport,
        context or client_context(identity, roster),
        roster,
        server_side=False,
        expect=expect,
    )


async def confirmed(stream: PeerStream) -> RpcClient:
    """An RPC client on a dialled link, once the other side has answered a NULL call: in TLS
    1.3 the dialler's handshake ends before the listener has accepted its certificate, so
    only an answer proves the link is up. PeerRefused (the stream closed) if none comes."""
    client = RpcClient(stream.stream)
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            await client.call(PEER_PROGRAM, PEER_V1, PEERPROC.NULL, void, None, void)
    except (trio.TooSlowError, ConnectionError, RpcError, trio.BrokenResourceError) as e:
        await trio.aclose_forcefully(stream.stream)
        cause = e.__cause__ or e
        raise PeerRefused(f"{stream.peer.name} did not accept this peer: {cause}") from None
    return client
