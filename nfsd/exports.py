"""What is exported and to whom: the root export "/" (every area), one export per area, and
the options of each (read-only, allowed client networks, squashing of root or everyone).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from xdr.rpc import auth_flavor
from xdr.rpc_fast import Credential

ROOT_EXPORT_ID = 0
NOBODY = 65534


@dataclass
class ExportOptions:
    read_only: bool = False
    allowed: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)
    anon_uid: int = NOBODY
    anon_gid: int = NOBODY
    root_squash: bool = False
    all_squash: bool = False

    def allows(self, host: str) -> bool:
        if not self.allowed:
            return True
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped
        return any(address in network for network in self.allowed)

    def user(self, cred: Credential) -> Credential:
        """The identity a call acts as, after squashing."""
        anonymous = Credential(auth_flavor.AUTH_NONE, self.anon_uid, self.anon_gid, [])
        if cred.flavor != auth_flavor.AUTH_SYS or self.all_squash:
            return anonymous
        if self.root_squash and cred.uid == 0:
            return Credential(cred.flavor, self.anon_uid, self.anon_gid, [], cred.machinename)
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
