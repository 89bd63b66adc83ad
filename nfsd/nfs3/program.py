"""The NFS program (100003, version 3): each procedure number bound to its handler."""

from __future__ import annotations

from functools import partial
from typing import Any

from nfsd.nfs3 import attrs, fsinfo, io, lookup, namespace
from nfsd.nfs3.common import Nfs3State
from nfsd.rpc.dispatch import CallContext, Procedure, Program
from xdr.nfs3 import NFS_PROGRAM, NFS_V3, NFSPROC3, PROCEDURES

HANDLERS = {
    NFSPROC3.GETATTR: attrs.getattr_,
    NFSPROC3.SETATTR: attrs.setattr_,
    NFSPROC3.LOOKUP: lookup.lookup,
    NFSPROC3.ACCESS: attrs.access,
    NFSPROC3.READLINK: lookup.readlink,
    NFSPROC3.READ: io.read,
    NFSPROC3.WRITE: io.write,
    NFSPROC3.CREATE: namespace.create,
    NFSPROC3.MKDIR: namespace.mkdir,
    NFSPROC3.SYMLINK: namespace.symlink,
    NFSPROC3.MKNOD: namespace.mknod,
    NFSPROC3.REMOVE: namespace.remove,
    NFSPROC3.RMDIR: namespace.rmdir,
    NFSPROC3.RENAME: namespace.rename,
    NFSPROC3.LINK: namespace.link,
    NFSPROC3.READDIR: lookup.readdir,
    NFSPROC3.READDIRPLUS: lookup.readdirplus,
    NFSPROC3.FSSTAT: fsinfo.fsstat,
    NFSPROC3.FSINFO: fsinfo.fsinfo,
    NFSPROC3.PATHCONF: fsinfo.pathconf,
    NFSPROC3.COMMIT: io.commit,
}

# The changes to directories: each syncs what it changed before it answers.
NAMESPACE_CHANGES = {
    NFSPROC3.CREATE,
    NFSPROC3.MKDIR,
    NFSPROC3.SYMLINK,
    NFSPROC3.MKNOD,
    NFSPROC3.REMOVE,
    NFSPROC3.RMDIR,
    NFSPROC3.RENAME,
    NFSPROC3.LINK,
}

# Re-running these changes the result (a second REMOVE fails, a second CREATE EXCLUSIVE is
# a different file...), so retransmissions are answered from the duplicate-request cache.
NON_IDEMPOTENT = NAMESPACE_CHANGES | {NFSPROC3.SETATTR}

# These may wait on the disk (large transfers, fsync) and run in tasks of their own.
WAITING = NAMESPACE_CHANGES | {NFSPROC3.READ, NFSPROC3.WRITE, NFSPROC3.COMMIT}


async def null(ctx: CallContext, args: Any) -> None:
    return None


def nfs_program(state: Nfs3State) -> Program:
    procedures: dict[int, Procedure] = {}
    for number, (name, args_type, res_type) in PROCEDURES.items():
        handler = HANDLERS.get(number)
        bound = null if handler is None else partial(handler, state)
        procedures[number] = Procedure(
            name,
            args_type,
            res_type,
            bound,
            idempotent=number not in NON_IDEMPOTENT,
            inline=number not in WAITING,
        )
    return Program(NFS_PROGRAM, "NFS", {NFS_V3: procedures})
