"""Fixtures for the tests: servers in-process and real server processes on temporary areas,
and a small NFSv3 and MOUNT client built on `nfsd.rpc.client` for test bodies, which run under
trio.

The tests come in three tiers, each a pytest marker (`-m inproc`, `-m wire`, `-m slow`):

- `inproc`, the fast tier: protocol code, the NFS procedures over a tree in a temporary
  directory and the RPC transport over in-memory streams (tests/support/inproc.py); no server
  process, no sockets. `scripts/test --quick` runs it, also with REALIZE_FORCE_FALLBACKS=1.
- `wire`: tests that start server processes and talk to them over sockets. A test with no
  tier marker is in this tier.
- `slow`: the kernel-client guest under qemu (also marked `kernel`), the SIGKILL rounds and
  the benchmark smoke tests.

Fixtures:

- `server`: one server process per test module, exporting areas `a` and `b` (plus "/").
- `make_server`: a factory for server processes of one test (options, restarts, stops).
- `inproc_server`: the same programs and areas in-process, one per test module.
- `served`: a test taking it runs twice, once per tier: on `inproc_server` and on `server`.
- `Served.run(body)` (and `InProcessServed.run`): runs `async def body(nfs)` under trio with a
  root AUTH_SYS connection; `run(body, connect=False)` runs `async def body()` as it is.

Every server process's log is checked for tracebacks when the server is stopped.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio

from nfsd.rpc.client import RpcClient, open_client
from tests.support.inproc import InProcessServer, make_dispatcher, server_umask
from tests.support.server import ServerProcess, start_server
from xdr.codec import Arm
from xdr.mount import MOUNT_PROGRAM, MOUNT_V3, MOUNTPROC3, dirpath, mountres3, mountstat3
from xdr.nfs3 import (
    NFS_PROGRAM,
    NFS_V3,
    NFSPROC3,
    PROCEDURES,
    CREATE3args,
    GETATTR3args,
    LOOKUP3args,
    MKDIR3args,
    READ3args,
    READDIR3args,
    REMOVE3args,
    WRITE3args,
    createmode3,
    diropargs3,
    entry3,
    fattr3,
    nfs_fh3,
    nfsstat3,
    sattr3,
    stable_how,
)
from xdr.rpc import auth_flavor
from xdr.rpc_fast import Credential

# pytest imports this file as `conftest`; the test modules import their helpers from
# `tests.conftest`. One module under both names, so its classes are the same for both.
sys.modules.setdefault("tests.conftest", sys.modules[__name__])

TIERS = ("inproc", "wire", "slow")
# Fixtures that start server processes: no test of the in-process tier may use them.
_PROCESS_FIXTURES = {"server", "make_server"}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--long", action="store_true", default=False,
        help="also run the tests marked long (the hour-long randomized household run)",
    )  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test without a tier marker is a wire test; an in-process test starts no server; a
    test marked `long` is left out unless --long is given."""
    if not config.getoption("--long"):
        kept = [item for item in items if item.get_closest_marker("long") is None]
        if len(kept) != len(items):
            config.hook.pytest_deselected(items=[i for i in items if i not in kept])
            items[:] = kept
    for item in items:
        tiers = [tier for tier in TIERS if item.get_closest_marker(tier) is not None]
        if not tiers:
            item.add_marker(pytest.mark.wire)
        elif len(tiers) > 1:
            raise pytest.UsageError(f"{item.nodeid} is in more than one tier: {tiers}")
        if "inproc" in tiers and _PROCESS_FIXTURES & set(getattr(item, "fixturenames", ())):
            raise pytest.UsageError(f"{item.nodeid} is marked inproc but starts a server process")


def _refuse_in_inproc(what: str) -> Callable[..., Any]:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"an inproc test {what}: it belongs to the wire tier")

    return refuse


@pytest.fixture(autouse=True)
def _inproc_tier_stays_in_process(request: pytest.FixtureRequest) -> Iterator[None]:
    """An inproc test that starts a process or binds or connects a socket fails."""
    if request.node.get_closest_marker("inproc") is None:
        yield
        return
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(subprocess.Popen, "_execute_child", _refuse_in_inproc("starts a process"))
        patch.setattr(socket.socket, "bind", _refuse_in_inproc("binds a socket"))
        patch.setattr(socket.socket, "connect", _refuse_in_inproc("connects a socket"))
        yield


HOST = "127.0.0.1"
ROOT = Credential(auth_flavor.AUTH_SYS, 0, 0, [], b"test")
OK = nfsstat3.NFS3_OK
ZERO_VERF = b"\0" * 8
TEST_TIMEOUT = 90.0


def user(uid: int, gid: int | None = None) -> Credential:
    """An AUTH_SYS credential of an unprivileged user."""
    return Credential(auth_flavor.AUTH_SYS, uid, uid if gid is None else gid, [], b"test")


def _b(name: bytes | str) -> bytes:
    return name if isinstance(name, bytes) else name.encode()


class NfsStatusError(AssertionError):
    """An NFS call answered another status than NFS3_OK."""


class Nfs:
    """NFSv3 and MOUNT calls over one connection, with conveniences for the common ones."""

    def __init__(self, rpc: RpcClient) -> None:
        self.rpc = rpc

    async def mount(self, path: bytes | str = b"/a", *, cred: Credential | None = None) -> nfs_fh3:
        res = await self.mnt(path, cred=cred)
        assert res.tag == mountstat3.MNT3_OK, f"MNT {path!r}: {mountstat3(res.tag).name}"
        return nfs_fh3(res.value.fhandle)

    async def mnt(self, path: bytes | str, *, cred: Credential | None = None) -> Arm:
        return await self.rpc.call(
            MOUNT_PROGRAM, MOUNT_V3, MOUNTPROC3.MNT, dirpath, _b(path), mountres3, cred=cred
        )

    async def call(self, proc: NFSPROC3, args: Any, *, cred: Credential | None = None) -> Arm:
        """One NFSv3 call; the decoded result union."""
        _, args_type, res_type = PROCEDURES[proc]
        return await self.rpc.call(NFS_PROGRAM, NFS_V3, proc, args_type, args, res_type, cred=cred)

    async def ok(self, proc: NFSPROC3, args: Any, *, cred: Credential | None = None) -> Any:
        """The resok of a call that must succeed."""
        res = await self.call(proc, args, cred=cred)
        if res.tag != OK:
            raise NfsStatusError(f"{NFSPROC3(proc).name}: {nfsstat3(res.tag).name}")
        return res.value

    async def status(
        self, proc: NFSPROC3, args: Any, *, cred: Credential | None = None
    ) -> nfsstat3:
        return nfsstat3((await self.call(proc, args, cred=cred)).tag)

    # ---- conveniences ----

    async def getattr(self, fh: nfs_fh3) -> fattr3:
        return (await self.ok(NFSPROC3.GETATTR, GETATTR3args(fh))).obj_attributes

    async def lookup(self, d: nfs_fh3, name: bytes | str) -> nfs_fh3:
        return (await self.ok(NFSPROC3.LOOKUP, LOOKUP3args(diropargs3(d, _b(name))))).object

    async def create(
        self,
        d: nfs_fh3,
        name: bytes | str,
        mode: int = 0o644,
        *,
        how: createmode3 = createmode3.GUARDED,
        cred: Credential | None = None,
    ) -> nfs_fh3:
        args = CREATE3args(diropargs3(d, _b(name)), Arm(how, sattr3(mode=mode)))
        res = await self.ok(NFSPROC3.CREATE, args, cred=cred)
        assert res.obj is not None, "CREATE answered no handle"
        return res.obj

    async def mkdir(self, d: nfs_fh3, name: bytes | str, mode: int = 0o755) -> nfs_fh3:
        res = await self.ok(NFSPROC3.MKDIR, MKDIR3args(diropargs3(d, _b(name)), sattr3(mode=mode)))
        assert res.obj is not None, "MKDIR answered no handle"
        return res.obj

    async def write(
        self,
        fh: nfs_fh3,
        data: bytes,
        offset: int = 0,
        stable: stable_how = stable_how.FILE_SYNC,
    ) -> Any:
        return await self.ok(NFSPROC3.WRITE, WRITE3args(fh, offset, len(data), stable, data))

    async def read(self, fh: nfs_fh3, offset: int = 0, count: int = 1 << 20) -> Any:
        return await self.ok(NFSPROC3.READ, READ3args(fh, offset, count))

    async def remove(self, d: nfs_fh3, name: bytes | str) -> None:
        await self.ok(NFSPROC3.REMOVE, REMOVE3args(diropargs3(d, _b(name))))

    async def readdir_all(self, d: nfs_fh3, count: int = 8192) -> list[entry3]:
        """Every entry of a directory, paging with READDIR."""
        entries: list[entry3] = []
        cookie, verf = 0, ZERO_VERF
        for _ in range(100_000):
            res = await self.ok(NFSPROC3.READDIR, READDIR3args(d, cookie, verf, count))
            entries += res.reply.entries
            if res.reply.eof:
                return entries
            cookie, verf = res.reply.entries[-1].cookie, res.cookieverf
        raise AssertionError("READDIR never reached eof")

    async def names(self, d: nfs_fh3) -> set[bytes]:
        return {e.name for e in await self.readdir_all(d)} - {b".", b".."}

    async def scratch(self, area: bytes | str = b"/a") -> tuple[nfs_fh3, nfs_fh3, str]:
        """A new empty directory in an area: (area root, directory, its name)."""
        root = await self.mount(area)
        name = "t-" + uuid.uuid4().hex[:12]
        return root, await self.mkdir(root, name), name


def run_on(
    port: int,
    body: Callable[..., Awaitable[Any]],
    *,
    connect: bool = True,
    cred: Credential | None = ROOT,
    timeout: float = TEST_TIMEOUT,
) -> Any:
    """Run `async def body(nfs)` under trio with a connection to the server on `port`
    (`async def body()` with connect=False), failing after `timeout` seconds."""
    return _run_body(lambda: open_client(HOST, port, cred), body, connect, timeout)


def _run_body(
    open_rpc: Callable[[], Any],
    body: Callable[..., Awaitable[Any]],
    connect: bool,
    timeout: float,
) -> Any:
    finished = False

    async def main() -> Any:
        nonlocal finished
        with trio.fail_after(timeout):
            if not connect:
                result = await body()
            else:
                async with open_rpc() as rpc:
                    result = await body(Nfs(rpc))
        finished = True
        return result

    result = trio.run(main)
    # A failure swallowed on the way out (a cancel scope absorbing it) must not pass.
    assert finished, "the test body did not run to its end"
    return result


@dataclass
class Served:
    """A running server process and what it serves."""

    process: ServerProcess
    areas: dict[str, Path]
    state_dir: Path
    extra: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.process.nfs_port

    @asynccontextmanager
    async def connect(self, cred: Credential | None = ROOT) -> AsyncIterator[Nfs]:
        async with open_client(HOST, self.port, cred) as rpc:
            yield Nfs(rpc)

    def run(
        self,
        body: Callable[..., Awaitable[Any]],
        *,
        connect: bool = True,
        cred: Credential | None = ROOT,
        timeout: float = TEST_TIMEOUT,
    ) -> Any:
        """Run an async test body under trio, given a connected `Nfs` unless connect=False."""
        return run_on(self.port, body, connect=connect, cred=cred, timeout=timeout)

    def alive(self) -> bool:
        return self.process.process.poll() is None

    def log(self) -> str:
        return self.process.log()

    def stop(self) -> int:
        code = self.process.stop()
        assert "Traceback" not in self.log(), f"server log has a traceback:\n{self.log()}"
        return code

    def start(self) -> None:
        self.process = start_server(self.areas, self.state_dir, extra=self.extra)

    def restart(self) -> None:
        """Stop and start again on the same state directory (a new port)."""
        self.stop()
        self.start()


def _serve(base: Path, extra: list[str] | None, area_names: tuple[str, ...]) -> Served:
    areas = {}
    for name in area_names:
        areas[name] = base / "areas" / name
        areas[name].mkdir(parents=True)
    state_dir = base / "state"
    process = start_server(areas, state_dir, extra=extra)
    return Served(process, areas, state_dir, list(extra or []))


@dataclass
class InProcessServed:
    """The programs of a server and its areas in-process: what `Served` offers a test body,
    over in-memory connections to the real transport instead of sockets."""

    inproc: InProcessServer

    @property
    def areas(self) -> dict[str, Path]:
        return self.inproc.areas

    @property
    def state_dir(self) -> Path:
        return self.inproc.state_dir

    @asynccontextmanager
    async def connect(self, cred: Credential | None = ROOT) -> AsyncIterator[Nfs]:
        async with self.inproc.connect(cred) as rpc:
            yield Nfs(rpc)

    def run(
        self,
        body: Callable[..., Awaitable[Any]],
        *,
        connect: bool = True,
        cred: Credential | None = ROOT,
        timeout: float = TEST_TIMEOUT,
    ) -> Any:
        """Run an async test body under trio, given a connected `Nfs` unless connect=False."""
        with server_umask():
            return _run_body(lambda: self.inproc.connect(cred), body, connect, timeout)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server for the whole test module, exporting areas `a` and `b`."""
    served = _serve(tmp_path_factory.mktemp("srv"), None, ("a", "b"))
    yield served
    assert served.alive(), f"the server died:\n{served.log()}"
    served.stop()


@pytest.fixture(scope="module")
def inproc_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcessServed]:
    """One in-process server for the whole test module, with areas `a` and `b`."""
    inproc = make_dispatcher(tmp_path_factory.mktemp("inproc"), ("a", "b"))
    yield InProcessServed(inproc)
    inproc.close()


@pytest.fixture(
    scope="module",
    params=[
        pytest.param("inproc_server", id="inproc", marks=pytest.mark.inproc),
        pytest.param("server", id="wire", marks=pytest.mark.wire),
    ],
)
def served(request: pytest.FixtureRequest) -> Served | InProcessServed:
    """The module's server in each tier in turn: a test taking it runs once per tier."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """Start servers for one test: make_server(extra=[...], areas=("a", "b"))."""
    started: list[Served] = []

    def make(extra: list[str] | None = None, areas: tuple[str, ...] = ("a", "b")) -> Served:
        served = _serve(tmp_path / f"srv{len(started)}", extra, areas)
        started.append(served)
        return served

    yield make
    for served in started:
        served.stop()
