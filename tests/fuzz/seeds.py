"""The seed corpus: valid calls of every program the dispatcher serves, made with the
package's own encoders and the handles a `DispatchTarget` makes on every build.

    .venv/bin/python -m tests.fuzz.seeds     # (re)writes tests/fuzz/corpus/seed-*.bin

Each seed is one input as the fuzzer sees it: record-marked calls, as a connection carries
them. Files the fuzzer found are kept beside them under other names (found-*, crash-*).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from tests.fuzz.harness import ROOT, DispatchTarget, framed
from xdr.codec import Arm, encode
from xdr.mount import MOUNT_PROGRAM, MOUNT_V1, MOUNT_V3, MOUNTPROC3, dirpath
from xdr.nfs3 import (
    NFS_PROGRAM,
    NFS_V3,
    NFSPROC3,
    PROCEDURES,
    ACCESS3args,
    COMMIT3args,
    CREATE3args,
    FSINFO3args,
    GETATTR3args,
    LINK3args,
    LOOKUP3args,
    MKDIR3args,
    READ3args,
    READDIR3args,
    READDIRPLUS3args,
    READLINK3args,
    REMOVE3args,
    RENAME3args,
    RMDIR3args,
    SETATTR3args,
    SYMLINK3args,
    WRITE3args,
    createmode3,
    diropargs3,
    nfs_fh3,
    sattr3,
    stable_how,
    symlinkdata3,
)
from xdr.portmap import PMAP_PROCEDURES, PMAP_PROG, PMAP_VERS, PMAPPROC, mapping
from xdr.rpc_fast import encode_call

CORPUS = Path(__file__).parent / "corpus"
ZERO_VERF = b"\0" * 8


def _nfs(xid: int, proc: NFSPROC3, args: Any) -> bytes:
    return encode_call(xid, NFS_PROGRAM, NFS_V3, proc, ROOT) + encode(PROCEDURES[proc][1], args)


def seeds(handles: dict[str, bytes]) -> dict[str, bytes]:
    """Seed name -> input."""
    root = nfs_fh3(handles["/a"])
    hello = nfs_fh3(handles["/a/hello.txt"])
    sub = nfs_fh3(handles["/a/sub"])
    link = nfs_fh3(handles["/a/link"])
    mode = sattr3(mode=0o644)
    calls: dict[str, bytes] = {
        "mnt": encode_call(1, MOUNT_PROGRAM, MOUNT_V3, MOUNTPROC3.MNT, ROOT)
        + encode(dirpath, b"/a"),
        "mnt-v1": encode_call(2, MOUNT_PROGRAM, MOUNT_V1, MOUNTPROC3.MNT, ROOT)
        + encode(dirpath, b"/b"),
        "dump": encode_call(3, MOUNT_PROGRAM, MOUNT_V3, MOUNTPROC3.DUMP, ROOT),
        "export": encode_call(4, MOUNT_PROGRAM, MOUNT_V3, MOUNTPROC3.EXPORT, ROOT),
        "umnt": encode_call(5, MOUNT_PROGRAM, MOUNT_V3, MOUNTPROC3.UMNT, ROOT)
        + encode(dirpath, b"/a"),
        "getport": encode_call(6, PMAP_PROG, PMAP_VERS, PMAPPROC.GETPORT)
        + encode(PMAP_PROCEDURES[PMAPPROC.GETPORT][1], mapping(NFS_PROGRAM, NFS_V3, 6, 0)),
        "pmap-dump": encode_call(7, PMAP_PROG, PMAP_VERS, PMAPPROC.DUMP),
        "null": encode_call(8, NFS_PROGRAM, NFS_V3, NFSPROC3.NULL),
        "getattr": _nfs(9, NFSPROC3.GETATTR, GETATTR3args(hello)),
        "setattr": _nfs(10, NFSPROC3.SETATTR, SETATTR3args(hello, sattr3(size=5), None)),
        "lookup": _nfs(11, NFSPROC3.LOOKUP, LOOKUP3args(diropargs3(sub, b"inner.txt"))),
        "access": _nfs(12, NFSPROC3.ACCESS, ACCESS3args(hello, 0x3F)),
        "readlink": _nfs(13, NFSPROC3.READLINK, READLINK3args(link)),
        "read": _nfs(14, NFSPROC3.READ, READ3args(hello, 0, 4096)),
        "write": _nfs(15, NFSPROC3.WRITE, WRITE3args(hello, 3, 5, stable_how.FILE_SYNC, b"fuzz!")),
        "create": _nfs(
            16,
            NFSPROC3.CREATE,
            CREATE3args(diropargs3(root, b"new"), Arm(createmode3.UNCHECKED, mode)),
        ),
        "mkdir": _nfs(17, NFSPROC3.MKDIR, MKDIR3args(diropargs3(root, b"dir"), mode)),
        "symlink": _nfs(
            18,
            NFSPROC3.SYMLINK,
            SYMLINK3args(diropargs3(sub, b"sl"), symlinkdata3(sattr3(), b"../hello.txt")),
        ),
        "remove": _nfs(19, NFSPROC3.REMOVE, REMOVE3args(diropargs3(root, b"empty"))),
        "rmdir": _nfs(20, NFSPROC3.RMDIR, RMDIR3args(diropargs3(sub, b"deeper"))),
        "rename": _nfs(
            21,
            NFSPROC3.RENAME,
            RENAME3args(diropargs3(root, b"hello.txt"), diropargs3(sub, b"moved.txt")),
        ),
        "link": _nfs(22, NFSPROC3.LINK, LINK3args(hello, diropargs3(sub, b"hard"))),
        "readdir": _nfs(23, NFSPROC3.READDIR, READDIR3args(root, 0, ZERO_VERF, 4096)),
        "readdirplus": _nfs(
            24, NFSPROC3.READDIRPLUS, READDIRPLUS3args(root, 0, ZERO_VERF, 1024, 8192)
        ),
        "fsinfo": _nfs(25, NFSPROC3.FSINFO, FSINFO3args(root)),
        "commit": _nfs(26, NFSPROC3.COMMIT, COMMIT3args(hello, 0, 0)),
    }
    made = {name: framed(record) for name, record in calls.items()}
    # A connection's several calls in one input, one of them in two fragments.
    lookup, readdirplus = calls["lookup"], calls["readdirplus"]
    half = len(readdirplus) // 2 & ~3
    made["pipelined"] = (
        framed(calls["mnt"], lookup)
        + (half.to_bytes(4, "big") + readdirplus[:half])
        + framed(readdirplus[half:])
    )
    return made


def write_seeds(corpus: Path = CORPUS) -> list[Path]:
    corpus.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        target = DispatchTarget(Path(tmp) / "target")
        try:
            made = seeds(target.handles)
        finally:
            target.close()
    written = []
    for name, data in made.items():
        path = corpus / f"seed-{name}.bin"
        path.write_bytes(data)
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write_seeds():
        print(path.name, path.stat().st_size)
