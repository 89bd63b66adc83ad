"""NFS file handles: 32 bytes, MAC-signed, naming an export and a persistent fileid.

Layout: version (1 byte), reserved (1), export id (2), fileid (8), keyed BLAKE3 MAC of those
12 bytes (20). The MAC key lives in the state directory, so handles survive restarts but a
client cannot forge one; a handle that fails the check is NFS3ERR_BADHANDLE.

The handle carries no generation of its own: a fileid is never reused, and the fileid table
checks that it still names the very file it was given for (nfsd/vfs/inodes.py), so a handle
whose file is gone is NFS3ERR_STALE even when another file took its inode number. Handles
made before that check look the same and go through it too.
"""

from __future__ import annotations

import struct

import blake3

from nfsd.vfs.errors import FsError
from xdr.nfs3 import nfsstat3

HANDLE_VERSION = 1
_BODY = struct.Struct(">BBHQ")
_MAC_SIZE = 20
HANDLE_SIZE = _BODY.size + _MAC_SIZE  # 32: within NFS3_FHSIZE and a multiple of 4
_MADE_KEPT = 100_000  # handles remembered (about 10 MB), then forgotten all at once


class HandleCodec:
    def __init__(self, secret: bytes) -> None:
        if len(secret) != 32:
            raise ValueError("handle secret must be 32 bytes")
        self.secret = secret
        self._made: dict[tuple[int, int], bytes] = {}  # a listing asks for thousands again

    def _mac(self, body: bytes) -> bytes:
        return blake3.blake3(body, key=self.secret).digest(_MAC_SIZE)

    def encode(self, export_id: int, fid: int) -> bytes:
        made = self._made.get((export_id, fid))
        if made is not None:
            return made
        body = _BODY.pack(HANDLE_VERSION, 0, export_id, fid)
        handle = body + self._mac(body)
        if len(self._made) >= _MADE_KEPT:
            self._made.clear()
        self._made[(export_id, fid)] = handle
        return handle

    def decode(self, handle: bytes) -> tuple[int, int]:
        """(export id, fileid) of a handle this server made, else NFS3ERR_BADHANDLE."""
        if len(handle) != HANDLE_SIZE:
            raise FsError(nfsstat3.NFS3ERR_BADHANDLE, "wrong handle size")
        body, mac = handle[: _BODY.size], handle[_BODY.size :]
        version, _, export_id, fid = _BODY.unpack(body)
        if version != HANDLE_VERSION or self._mac(body) != mac:
            raise FsError(nfsstat3.NFS3ERR_BADHANDLE, "handle fails its check")
        return export_id, fid
