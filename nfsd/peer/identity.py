"""This peer's identity: its Ed25519 key pair in the state directory, the peer id people
compare, the certificate TLS presents, and the token another machine pastes to add it.

- `load_or_create(state_dir)` / `load(state_dir)`: the `Identity` kept in `peer.key` (PKCS#8
  PEM, mode 0600, refused when others may read it). Creation is exclusive: two processes
  starting at once end up with the same key.
- `peer_id(public_key)`: the first 140 bits of the SHA-256 of the raw public key in base32,
  seven groups of four ("ABCD-EFGH-..."), short enough to read aloud, long enough that nobody
  can make a key with a chosen id.
- `certificate(...)`: Python's `ssl` has no raw public keys (RFC 7250), so each key has one
  X.509 certificate made deterministically from it: self-signed, fixed serial, fixed validity,
  subject and issuer CN = the peer id, no extensions. Ed25519 signatures are deterministic, so
  the same key always gives the same bytes.
- `token(identity)` / `parse_token(text)`: the token carries the public key and the
  certificate's signature (96 bytes); the rest of the certificate follows from the key, so the
  receiver rebuilds it and checks the signature. A token that does not rebuild to a valid
  certificate is refused (`TokenError`).
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from nfsd.statedir import FILE_MODE, StateDirError

KEY_FILE = "peer.key"
TOKEN_PREFIX = "rz1."
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
_ID_CHARS = 28  # 140 bits of the digest
_ID_GROUP = 4
_SERIAL = 1
_NOT_BEFORE = datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC)
_NOT_AFTER = datetime.datetime(9999, 12, 31, 23, 59, 59, tzinfo=datetime.UTC)
# AlgorithmIdentifier { id-Ed25519 } (RFC 8410), as it follows the TBSCertificate.
_ED25519_ALGORITHM = bytes.fromhex("300506032b6570")


class IdentityError(StateDirError):
    """The key file cannot be used; the message says why and what to do."""


class TokenError(ValueError):
    """A token that does not carry a valid peer key; the message says what is wrong."""


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def peer_id(public_key: bytes) -> str:
    """The readable id of a raw Ed25519 public key."""
    text = base64.b32encode(hashlib.sha256(public_key).digest()).decode()[:_ID_CHARS]
    return "-".join(text[i : i + _ID_GROUP] for i in range(0, _ID_CHARS, _ID_GROUP))


def _unsigned_certificate(public_key: bytes) -> x509.CertificateBuilder:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, peer_id(public_key))])
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(Ed25519PublicKey.from_public_bytes(public_key))
        .serial_number(_SERIAL)
        .not_valid_before(_NOT_BEFORE)
        .not_valid_after(_NOT_AFTER)
    )


def certificate(private_key: Ed25519PrivateKey) -> bytes:
    """The DER certificate of `private_key`: the same bytes every time."""
    public = raw_public_key(private_key.public_key())
    cert = _unsigned_certificate(public).sign(private_key, None)
    return cert.public_bytes(serialization.Encoding.DER)


def _der_length(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def rebuild_certificate(public_key: bytes, signature: bytes) -> bytes:
    """The certificate of `public_key` given its signature; TokenError unless the signature
    is the key's own over the certificate's fixed content."""
    try:
        claimed = Ed25519PublicKey.from_public_bytes(public_key)
    except ValueError:
        raise TokenError("the token's key is not an Ed25519 public key") from None
    # The content signed is the same whoever signs it: sign with a throwaway key to get it.
    tbs = _unsigned_certificate(public_key).sign(Ed25519PrivateKey.generate(), None)
    tbs_bytes = tbs.tbs_certificate_bytes
    try:
        claimed.verify(signature, tbs_bytes)
    except InvalidSignature:
        raise TokenError("the token's signature does not match its key") from None
    bit_string = b"\x03" + _der_length(len(signature) + 1) + b"\x00" + signature
    body = tbs_bytes + _ED25519_ALGORITHM + bit_string
    return b"\x30" + _der_length(len(body)) + body


def certificate_public_key(der: bytes) -> bytes:
    """The raw Ed25519 public key a DER certificate names; ValueError for any other."""
    key = x509.load_der_x509_certificate(der).public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError("not an Ed25519 certificate")
    return raw_public_key(key)


@dataclass(frozen=True)
class PeerKey:
    """Another peer's key as a token gives it: what the roster keeps."""

    public_key: bytes  # raw, 32 bytes
    certificate: bytes  # DER, the one its TLS presents

    @property
    def peer_id(self) -> str:
        return peer_id(self.public_key)


@dataclass(frozen=True)
class Identity:
    """This peer's key pair and what follows from it."""

    private_key: Ed25519PrivateKey
    public_key: bytes
    certificate: bytes  # DER
    key_path: Path

    @property
    def peer_id(self) -> str:
        return peer_id(self.public_key)

    @property
    def token(self) -> str:
        return token(self)

    def private_pem(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def certificate_pem(self) -> bytes:
        return x509.load_der_x509_certificate(self.certificate).public_bytes(
            serialization.Encoding.PEM
        )


def token(identity: Identity) -> str:
    """What another machine pastes to add this peer: its public key and certificate."""
    signature = x509.load_der_x509_certificate(identity.certificate).signature
    data = identity.public_key + signature
    return TOKEN_PREFIX + base64.urlsafe_b64encode(data).decode().rstrip("=")


def parse_token(text: str) -> PeerKey:
    """The peer key a token carries; TokenError says what is wrong with a bad one."""
    text = text.strip()
    if not text.startswith(TOKEN_PREFIX):
        raise TokenError(
            f"a peer token starts with {TOKEN_PREFIX!r}: copy it from 'realize id' on the other "
            "machine"
        )
    body = text[len(TOKEN_PREFIX) :]
    try:
        data = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (ValueError, TypeError):
        raise TokenError("the token is damaged (not base64): copy it again, whole") from None
    if len(data) != PUBLIC_KEY_SIZE + SIGNATURE_SIZE:
        raise TokenError(
            f"the token is damaged ({len(data)} bytes instead of "
            f"{PUBLIC_KEY_SIZE + SIGNATURE_SIZE}): copy it again, whole"
        )
    public_key, signature = data[:PUBLIC_KEY_SIZE], data[PUBLIC_KEY_SIZE:]
    return PeerKey(public_key, rebuild_certificate(public_key, signature))


def _identity(private_key: Ed25519PrivateKey, path: Path) -> Identity:
    public = raw_public_key(private_key.public_key())
    return Identity(private_key, public, certificate(private_key), path)


def load(state_dir: Path) -> Identity | None:
    """The identity kept in `state_dir`, or None if it has none yet."""
    path = Path(state_dir) / KEY_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise IdentityError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            raise IdentityError(f"{path} is not a file of the server's user")
        if st.st_mode & 0o077:
            raise IdentityError(
                f"{path} may be read by other users (mode {stat.S_IMODE(st.st_mode):04o}): "
                "its key must be treated as known; remove the file to make a new identity "
                "(every peer must then add the new one)"
            )
        with os.fdopen(os.dup(fd), "rb") as f:
            pem = f.read()
    finally:
        os.close(fd)
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as e:
        raise IdentityError(f"{path} is damaged: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"{path} holds no Ed25519 private key")
    return _identity(key, path)


def load_or_create(state_dir: Path) -> tuple[Identity, bool]:
    """This state directory's identity, made now if it had none: (identity, made)."""
    existing = load(state_dir)
    if existing is not None:
        return existing, False
    path = Path(state_dir) / KEY_FILE
    made = _identity(Ed25519PrivateKey.generate(), path)
    tmp = path.with_name(f"{KEY_FILE}.{os.getpid()}.tmp")
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # whatever the umask
            os.write(fd, made.private_pem())
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # fails if another process made one first: then use theirs
        except FileExistsError:
            theirs = load(state_dir)
            if theirs is None:
                raise IdentityError(f"{path} vanished while being made") from None
            return theirs, False
        _fsync_directory(path.parent)
    except OSError as e:
        raise IdentityError(f"cannot write {path}: {e.strerror or e}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return made, True


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
