"""What is exported and to whom: the root export "/" (every area), one export per area, and
the options of each (read-only, allowed client networks, reserved ports, squashing of root or
everyone), applied to each call's credential as nfsd/identity.py describes.
"""

from __future__ import annotations

import enum
import ipaddress
import logging
import time
from dataclasses import dataclass, field

from nfsd.identity import RESERVED_PORTS, claims_fit, client_address, identity_of
from xdr.rpc import auth_flavor
from xdr.rpc_fast import Credential

log = logging.getLogger("realize.exports")

ROOT_EXPORT_ID = 0
NOBODY = 65534


class RootSquash(enum.Enum):
    """Whose uid 0 acts as the anonymous user."""

    REMOTE = "remote"  # callers whose socket owner is not known: other machines (knfsd's default)
    ALL = "all"  # this machine's root too
    NONE = "none"  # nobody's


@dataclass
class ExportOptions:
    read_only: bool = False
    allowed: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)
    anon_uid: int = NOBODY
    anon_gid: int = NOBODY
    root_squash: RootSquash = RootSquash.REMOTE
    all_squash: bool = False
    secure: bool = True  # callers from other machines must use a reserved port

    def allows(self, host: str) -> bool:
        if not self.allowed:
            return True
        address = client_address(host)
        return address is not None and any(address in network for network in self.allowed)

    def port_allowed(self, client: tuple[str, int], owner: int | None) -> bool:
        """`secure`: a caller whose owner is not known must come from a reserved port."""
        return owner is not None or not self.secure or client[1] < RESERVED_PORTS

    def user(self, cred: Credential, owner: int | None = None) -> Credential:
        """The identity a call acts as (nfsd/identity.py says why). `owner`: the uid owning
        the caller's socket, when this machine's kernel says (a loopback connection)."""
        anonymous = Credential(auth_flavor.AUTH_NONE, self.anon_uid, self.anon_gid, [])
        if cred.flavor != auth_flavor.AUTH_SYS or self.all_squash:
            return anonymous
        if owner is not None and owner != 0:
            known = _local_identity(owner)
            if not claims_fit(cred, known):
                _refused_claims.warn(owner, cred)
                return known
            return cred
        squash = self.root_squash is RootSquash.ALL or (
            self.root_squash is RootSquash.REMOTE and owner is None
        )
        if squash and cred.uid == 0:
            return Credential(cred.flavor, self.anon_uid, self.anon_gid, [], cred.machinename)
        return cred


class _ClaimLog:
    """Logs a local user's claim to be someone else once a minute per user."""

    def __init__(self) -> None:
        self._last: dict[int, float] = {}

    def warn(self, owner: int, cred: Credential) -> None:
        now = time.monotonic()
        if now - self._last.get(owner, -60.0) >= 60.0:
            if len(self._last) > 10_000:
                self._last.clear()
            self._last[owner] = now
            log.warning(
                "local uid %d claimed uid %d gid %d groups %s: acting as uid %d",
                owner,
                cred.uid,
                cred.gid,
                cred.gids,
                owner,
            )


_refused_claims = _ClaimLog()
_identities: dict[int, tuple[float, Credential]] = {}


def _local_identity(uid: int) -> Credential:
    """identity_of, looked up again after a minute (groups change rarely)."""
    now = time.monotonic()
    known = _identities.get(uid)
    if known is not None and now - known[0] < 60.0:
        return known[1]
    if len(_identities) > 10_000:
        _identities.clear()
    cred = identity_of(uid)
    _identities[uid] = (now, cred)
    return cred


@dataclass
class Export:
    id: int
    path: str  # "/" or "/<area name>"
    area: int | None  # None: the root export, holding every area
    options: ExportOptions


class Exports:
    def __init__(self) -> None:
        self.by_id: dict[int, Export] = {}
        self.by_path: dict[str, Export] = {}

    def add(self, export: Export) -> None:
        self.by_id[export.id] = export
        self.by_path[export.path] = export

    def find(self, path: str) -> Export | None:
        """The export named by a MNT path ("/", "/area", "area" or "/area/")."""
        clean = "/" + path.strip("/")
        return self.by_path.get(clean)

    def __iter__(self):
        return iter(sorted(self.by_id.values(), key=lambda e: e.id))
