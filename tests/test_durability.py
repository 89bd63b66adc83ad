"""Durability where NFS promises it: a namespace change that is answered survives a power cut.

A power cut cannot be staged here (no device-mapper), so the test watches the promise being
kept: the server process runs under strace, and for CREATE, MKDIR, SYMLINK, REMOVE, RENAME and
LINK the change's own system call must be followed, before the reply leaves on the socket, by
an fsync of a directory and by a sync of RocksDB's log. Without both, the kernel may keep the
new name only in memory, and the fileid table may lose the handle the client was given.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import trio

from nfsd.vfs.tree import Owner
from tests.conftest import Nfs, Served
from tests.support.inproc import make_dispatcher
from xdr.nfs3 import (
    NFSPROC3,
    LINK3args,
    RENAME3args,
    SYMLINK3args,
    diropargs3,
    sattr3,
    symlinkdata3,
)

_TRACED = (
    "openat,mkdirat,symlinkat,unlinkat,renameat,renameat2,linkat,fsync,fdatasync,sendto,sendmsg"
)
_CALL = re.compile(r"^(?P<pid>\d+)\s+(?P<call>\w+)\((?P<args>.*)$")
_RESUMED = re.compile(r"^(?P<pid>\d+)\s+<\.\.\. (?P<call>\w+) resumed>(?P<rest>.*)$")
_RESULT = re.compile(r"= (-?\d+)")


def _attach(pid: int, out: Path) -> subprocess.Popen:
    tracer = subprocess.Popen(
        ["strace", "-f", "-qq", "-e", f"trace={_TRACED}", "-o", str(out), "-p", str(pid)],
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # attached once the server's threads are traced
        status = Path(f"/proc/{pid}/status").read_text()
        if re.search(r"TracerPid:\s+[1-9]", status):
            return tracer
        time.sleep(0.02)
    tracer.kill()
    raise AssertionError("strace did not attach")


def _calls(trace: Path) -> list[tuple[str, str]]:
    """(call, its whole text with the result) in the order the calls began; a call another
    thread interrupted is joined with its resumption."""
    calls: list[list[str]] = []
    pending: dict[str, list[str]] = {}
    for line in trace.read_text(errors="replace").splitlines():
        resumed = _RESUMED.match(line)
        if resumed:
            started = pending.pop(resumed["pid"], None)
            if started is not None:
                started[1] += resumed["rest"]
            continue
        m = _CALL.match(line)
        if not m:
            continue
        call = [m["call"], m["args"]]
        calls.append(call)
        if m["args"].endswith("<unfinished ...>"):
            call[1] = call[1].removesuffix("<unfinished ...>")
            pending[m["pid"]] = call
    return [(c, a) for c, a in calls]


def _synced_before_reply(calls: list[tuple[str, str]], change: int) -> tuple[bool, bool, bool]:
    """After the change's system call at `change`, until the next reply sent: (a directory
    fsync seen, a log sync seen, a reply seen)."""
    directories: set[str] = set()  # descriptors of directories opened for syncing
    for call, args in calls[:change]:
        if call == "openat" and '"."' in args and "O_DIRECTORY" in args and "O_PATH" not in args:
            result = _RESULT.search(args)
            if result:
                directories.add(result[1])
    directory = log = False
    for call, args in calls[change + 1 :]:
        if call in ("sendto", "sendmsg") and '"\\200' in args:  # a record's last fragment
            return directory, log, True
        if call == "openat" and '"."' in args and "O_DIRECTORY" in args and "O_PATH" not in args:
            result = _RESULT.search(args)
            if result:
                directories.add(result[1])
        if call in ("fsync", "fdatasync"):
            if args.split(")")[0].strip() in directories:
                directory = True
            else:
                log = True
    return directory, log, False


def test_each_answered_namespace_change_was_synced_first(make_server) -> None:
    served: Served = make_server()
    names = {"CREATE": b"dur-file", "MKDIR": b"dur-dir", "SYMLINK": b"dur-link",
             "LINK": b"dur-hard", "RENAME": b"dur-moved", "REMOVE": b"dur-moved"}  # fmt: skip
    trace = served.state_dir.parent / "strace.out"

    async def body(nfs: Nfs) -> None:
        _, d, _ = await nfs.scratch()
        tracer = _attach(served.process.process.pid, trace)
        try:
            f = await nfs.create(d, names["CREATE"])
            await nfs.mkdir(d, names["MKDIR"])
            target = symlinkdata3(sattr3(), b"dur-file")
            await nfs.ok(NFSPROC3.SYMLINK, SYMLINK3args(diropargs3(d, names["SYMLINK"]), target))
            await nfs.ok(NFSPROC3.LINK, LINK3args(f, diropargs3(d, names["LINK"])))
            where, to = diropargs3(d, names["LINK"]), diropargs3(d, names["RENAME"])
            await nfs.ok(NFSPROC3.RENAME, RENAME3args(where, to))
            await nfs.remove(d, names["REMOVE"])
        finally:
            tracer.send_signal(signal.SIGINT)  # detaches, leaving the server running
            tracer.wait(timeout=10)

    served.run(body)
    calls = _calls(trace)
    changes = {
        "CREATE": ("openat", "O_CREAT"),
        "MKDIR": ("mkdirat", ""),
        "SYMLINK": ("symlinkat", ""),
        "LINK": ("linkat", ""),
        "RENAME": ("rename", ""),
        "REMOVE": ("unlinkat", ""),
    }
    for proc, (call, flag) in changes.items():
        name = names[proc].decode()
        quoted = f'"{name}"'
        found = [
            i
            for i, (c, args) in enumerate(calls)
            if c.startswith(call) and quoted in args and flag in args
        ]
        if proc == "REMOVE":
            found = found[-1:]
        assert found, f"{proc}: no {call} of {name} traced:\n" + "\n".join(map(str, calls))
        directory, log, replied = _synced_before_reply(calls, found[-1])
        assert replied, f"{proc}: no reply traced after it"
        assert directory, f"{proc} answered before its directory was synced"
        assert log, f"{proc} answered before the database's log was synced"
    assert served.alive()
    assert os.path.isdir(served.areas["a"])


@pytest.mark.inproc
def test_concurrent_changes_share_their_syncs(tmp_path: Path) -> None:
    """Sixteen creates at once in one directory wait for a couple of syncs, not sixteen, and
    none is answered before a sync that started after its own change."""
    inproc = make_dispatcher(tmp_path, ("a",))
    tree = inproc.server.tree
    assert tree is not None
    root = tree.area_root(tree.area_by_name["a"].id)
    group = tree._sync_group
    synced_after: dict[bytes, int] = {}

    async def create(name: bytes) -> None:
        await tree.create(root, name, 0o644, Owner(0, 0), exclusive=True)
        synced_after[name] = group.rounds

    async def body() -> None:
        before = group.rounds
        async with trio.open_nursery() as nursery:
            for i in range(16):
                nursery.start_soon(create, f"f{i}".encode())
        assert 1 <= group.rounds - before <= 3, group.rounds - before
        assert all(rounds > before for rounds in synced_after.values())

    try:
        trio.run(body)
    finally:
        inproc.close()
    assert sorted(os.listdir(tmp_path / "areas" / "a")) == sorted(f"f{i}" for i in range(16))
