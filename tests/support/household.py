"""Three peers of a household, each a real `realize` server process in a network namespace of
its own, for the multi-peer suite (tests/test_household_netns.py; HOUSEHOLD.md "Tests that
catch these").

`household(tmp)` makes, with pyroute2, a bridge in this namespace and per peer a namespace
joined to it by a veth pair (the bridge side named `rzv<tag><peer>`), each with its own state
directory, area `docs`, address and peer port (fixed, in a namespace of its own, so a
restarted peer is found where it was; the NFS port is any free one). This side has an address
on the bridge too, so a test can dial a peer as a stranger would. Peers a and b listen and
dial each other; c is deaf (added without --address on a and b) and dials both. Everything
made is removed on the way out, servers stopped (killed if they do not stop), whatever the
test did.

`Household` then offers what the scenarios need:

- `cut(name)` / `restore(name)`: `link set down` / `up` on the peer's veth at the bridge: its
  packets vanish, no RST, both ends' sockets live on (a half-open link until a heartbeat
  notices). `throttled(name)`: what reaches the peer limited to a rate, for a while.
- `sync(name)`, `converge()`: `realize sync` on each peer in rounds until a round applies
  nothing, every file is hashed and every view is equal (polled with a deadline).
- `view(name)`: sorted (path, kind, size, blob id) of the peer's index, read beside the
  running server (the store opened read-only).
- `nfs(name, ops)`: NFS calls in the peer's namespace (the client is the project's own, run
  there as `python -m tests.support.household`): read every file by checksum, write, remove,
  rename; `read_all(name)` is the checksum of every file that peer serves.
- `start`, `stop`, `kill` (SIGKILL), `restart` a peer on its state directory and ports.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(REPO))
AREA = "docs"
REST = 0.2  # seconds a changed file rests before it is hashed and published
NAMES = ("a", "b", "c")
DEAF = "c"
_NETWORK = "10.214"  # a /24 of it per household; tests/support/netns.py uses 10.213
HOST_OCTET = 254  # this namespace's address on the bridge
_SYNC_LINE = re.compile(r"(\d+) applied, (\d+) merged, (\d+) conflicts")

View = list[tuple[str, str, int, str]]  # (path, kind, size, blob id or symlink target)


def household_unavailable() -> str | None:
    """Why the household cannot be made here (None when it can)."""
    if os.geteuid() != 0:
        return "making network namespaces needs root"
    try:
        import pyroute2  # noqa: F401
    except ImportError:
        return "pyroute2 is not installed (pip install pyroute2)"
    return None


def wait_for(what: str, condition: Callable[[], Any], timeout: float = 30) -> Any:
    """Poll `condition` until it is true (its value), failing after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.1)


def realize_in_process(state: Path, *args: str) -> subprocess.CompletedProcess:
    """`realize` as this process runs it (tests/test_peer_link.py `realize`): the control
    socket is a path, reachable from every namespace."""
    from tests.test_peer_link import realize

    return realize(state, *args)


def ok(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stdout}{result.stderr}"
    return result.stdout


@dataclass
class Peer:
    name: str
    root: Path  # holds state/ and docs/
    namespace: str
    address: str
    peer_port: int
    veth: str  # the bridge's end of the peer's veth pair
    nfs_port: int = 0

    @property
    def state(self) -> Path:
        return self.root / "state"

    @property
    def area(self) -> Path:
        return self.root / AREA

    def log(self) -> str:
        try:
            return (self.state / "server.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def pid(self) -> int | None:
        from nfsd.cli.daemon import server_pid

        return server_pid(self.state)

    def token(self) -> str:
        out = ok(realize_in_process(self.state, "id"))
        line = next(line for line in out.splitlines() if "realize peer add NAME" in line)
        found = re.search(r"rz1\.\S+", line)
        assert found is not None, out
        return found.group(0)


@dataclass
class Household:
    peers: dict[str, Peer]
    host_address: str
    _ipr: Any = field(repr=False, default=None)
    # Path prefixes of scenarios that failed: what they left may differ between peers, and
    # must not fail the scenarios after them.
    quarantined: set[str] = field(default_factory=set)
    first_links: float = 0.0  # seconds from the servers' start until every link was up
    options: dict[str, list[str]] = field(default_factory=dict)  # a peer's own server flags

    def __getitem__(self, name: str) -> Peer:
        return self.peers[name]

    # ---- processes ----

    def start(self, *names: str) -> None:
        """`realize start` of each named peer in its namespace (at once, they are slow)."""
        starting = {}
        for name in names:
            peer = self.peers[name]
            command = ["ip", "netns", "exec", peer.namespace, sys.executable, "-m", "nfsd.cli"]
            command += ["--state-dir", str(peer.state), "start", "--port", "0"]
            command += ["--portmap", "off", "--rest", str(REST)]
            command += ["--peer-port", str(peer.peer_port), "--peer-bind", peer.address]
            command += self.options.get(name, [])
            starting[name] = subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                cwd=REPO,
                env=ENV,
            )
        for name, process in starting.items():
            said, _ = process.communicate(timeout=90)
            assert process.returncode == 0, f"{name} did not start: {said}"
            runtime = json.loads((self.peers[name].state / "server.json").read_text())
            self.peers[name].nfs_port = runtime["nfs_port"]

    def stop(self, name: str) -> None:
        ok(realize_in_process(self.peers[name].state, "stop"))

    def kill(self, name: str) -> None:
        """SIGKILL the peer's server, and wait until it is gone."""
        peer = self.peers[name]
        pid = peer.pid()
        assert pid is not None, f"{name} is not running"
        os.kill(pid, signal.SIGKILL)
        wait_for(f"{name} killed", lambda: peer.pid() is None, timeout=10)

    def restart(self, name: str) -> None:
        self.stop(name)
        self.start(name)

    # ---- links ----

    def _veth(self, name: str) -> int:
        return self._ipr.link_lookup(ifname=self.peers[name].veth)[0]

    def cut(self, name: str) -> None:
        """The peer's link goes down: its packets are dropped, nobody is told (no RST)."""
        self._ipr.link("set", index=self._veth(name), state="down")

    def restore(self, name: str) -> None:
        self._ipr.link("set", index=self._veth(name), state="up")

    @contextmanager
    def throttled(self, name: str, rate: str = "40mbit") -> Iterator[None]:
        """What reaches the peer over its link limited to `rate` (a token bucket on the
        bridge's end of its veth), so a transfer lasts long enough to be cut in the middle."""
        index = self._veth(name)
        self._ipr.tc("add", "tbf", index=index, handle="1:", rate=rate, burst=64 << 10,
                     latency="500ms")  # fmt: skip
        try:
            yield
        finally:
            self._ipr.tc("del", index=index, handle="1:", root=True)

    def connected(self, name: str, other: str) -> bool:
        """Whether `name`'s server has a live link to `other` (`realize peer list`)."""
        from tests.test_peer_link import connected

        return connected(self.peers[name].state, other).startswith("yes")

    def all_connected(self) -> bool:
        """Every link the roster allows is up: a-b, and c to each of a and b."""
        pairs = [(x, y) for x in self.peers for y in self.peers if x != y]
        return all(self.connected(x, y) for x, y in pairs if self._linked(x, y))

    def _linked(self, x: str, y: str) -> bool:
        from nfsd.peer import roster

        peers = roster.load(self.peers[x].state).peers
        theirs = roster.load(self.peers[y].state).peers
        if y not in peers or x not in theirs:
            return False
        return peers[y].address is not None or theirs[x].address is not None

    # ---- the index ----

    def view(self, name: str) -> View:
        """Sorted (path, kind, size, blob id) of every entry of the peer's area index."""
        return self._index_rows(name)[0]

    def _kept_files(self, real: dict[str, str]) -> dict[str, str]:
        """The files of `_index_rows` held Real, but quarantined ones: the peer's disk must
        hold the same once the peer is quiet."""
        return {p: b for p, b in real.items() if not p.startswith(self._out)}

    @property
    def _out(self) -> tuple[str, ...]:
        return tuple(self.quarantined)

    def _index_rows(self, name: str) -> tuple[View, dict[str, str]]:
        from nfsd.store.areas import AreaTable
        from nfsd.store.db import Store
        from nfsd.store.index import AreaIndex, Kind, Layer

        store = Store(self.peers[name].state / "db", read_only=True)
        try:
            record = AreaTable(store).get(AREA)
            assert record is not None
            rows = []
            real = {}
            for path, entry in AreaIndex(store).walk(record.id):
                if entry.kind == Kind.FILE and entry.layer == Layer.REAL:
                    real[os.fsdecode(path)] = entry.blob.hex()
                shown = os.fsdecode(path)
                if entry.kind == Kind.FILE:
                    rows.append((shown, "file", entry.size, entry.blob.hex()))
                elif entry.kind == Kind.DIR:
                    rows.append((shown, "dir", 0, ""))
                else:
                    rows.append((shown, "symlink", 0, os.fsdecode(entry.target)))
            return sorted(rows), real
        finally:
            store.close()

    def files(self, name: str) -> dict[str, str]:
        """path → blob id of every file in the peer's view."""
        return {path: blob for path, kind, _size, blob in self.view(name) if kind == "file"}

    def hashed(self, name: str, path: str) -> str | None:
        """The blob id of `path` in the peer's index once it is hashed."""
        return self.files(name).get(path) or None

    # ---- syncing ----

    def sync(self, name: str) -> int:
        """`realize sync` on the peer; how many entries it applied, merged or conflicted."""
        said = ok(realize_in_process(self.peers[name].state, "sync"))
        return sum(sum(map(int, m.groups())) for m in _SYNC_LINE.finditer(said))

    def converge(self, timeout: float = 60) -> View:
        """Sync every peer in rounds until a round changes nothing, every file is hashed,
        each peer's index holds Real exactly the files on its disk (what its watcher has
        not told yet included), and all views are equal (leaving out the paths under
        `quarantined` prefixes); that view."""
        deadline = time.monotonic() + timeout
        while True:
            changed = sum(self.sync(name) for name in self.peers)
            rows = {name: self._index_rows(name) for name in self.peers}  # one read each
            views = {name: self.kept(view) for name, (view, _real) in rows.items()}
            first = views[NAMES[0]]
            hashed = all(blob for _p, kind, _s, blob in first if kind == "file") and all(
                self.on_disk(name) == self._kept_files(real) for name, (_v, real) in rows.items()
            )
            if not changed and hashed and all(v == first for v in views.values()):
                return first
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the peers did not converge in {timeout} s; rows not on every peer "
                    f"(path, kind, size, blob: the peers showing it):\n{differences(views)}"
                )
            time.sleep(0.1)

    def on_disk(self, name: str) -> dict[str, str]:
        """Area path → BLAKE3 hex of each regular file on the peer's disk (but quarantined
        ones): a file written there last is in the view as what it holds only once it has
        rested and is hashed."""
        import blake3

        area = self.peers[name].area
        found = {}
        for directory, _dirs, names in os.walk(area):
            for leaf in names:
                full = os.path.join(directory, leaf)
                path = os.path.relpath(full, area)
                if path.startswith(self._out) or os.path.islink(full):
                    continue
                with suppress(OSError), open(full, "rb") as file:  # gone: the next round sees
                    found[path] = blake3.blake3(file.read()).hexdigest()
        return found

    def kept(self, view: View) -> View:
        return [row for row in view if not row[0].startswith(self._out)]

    # ---- NFS, from inside a peer's namespace ----

    def nfs(self, name: str, ops: list[dict[str, Any]], timeout: float = 120) -> list[Any]:
        """Run NFS operations on the peer's server from its namespace; what each answered
        (a checksum for a read, NFS3_OK or the error's name for the others)."""
        return self.nfs_each({name: ops}, timeout)[name]

    def nfs_each(
        self, plans: dict[str, list[dict[str, Any]]], timeout: float = 120
    ) -> dict[str, list[Any]]:
        """`nfs` on several peers at once, each in its namespace."""
        running = {}
        for name, ops in plans.items():
            peer = self.peers[name]
            inside = ["ip", "netns", "exec", peer.namespace, sys.executable, "-m", __name__]
            running[name] = subprocess.Popen(
                [*inside, str(peer.nfs_port), json.dumps(ops)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=REPO,
                env=ENV,
            )
        answers = {}
        try:
            for name, process in running.items():
                out, err = process.communicate(timeout=timeout)
                assert process.returncode == 0, f"the NFS client on {name} failed:\n{err}"
                answers[name] = json.loads(out)
        finally:
            for process in running.values():
                if process.poll() is None:
                    process.kill()
                    process.wait()
        return answers

    def read_all(self, name: str) -> dict[str, str]:
        """path → BLAKE3 hex of every regular file the peer serves, read through NFS (an
        error's name instead of a checksum where a read failed)."""
        return self.nfs(name, [{"op": "read_all"}])[0]

    def assert_converged(self) -> View:
        """Converge, then every peer reads every file through NFS with the view's blob id
        as its checksum."""
        view = self.converge()
        expected = {path: blob for path, kind, _s, blob in view if kind == "file"}
        read = self.nfs_each({name: [{"op": "read_all"}] for name in self.peers})
        failed = []  # every peer's, so a failure says whether one peer or all read wrong
        for name, (found,) in read.items():
            kept = {p: b for p, b in found.items() if not p.startswith(tuple(self.quarantined))}
            wrong = {p: (b, expected.get(p)) for p, b in kept.items() if expected.get(p) != b}
            wrong |= {p: (None, b) for p, b in expected.items() if p not in kept}
            if wrong:
                failed.append(f"{name} read something else through NFS: {wrong}")
        assert not failed, "; ".join(failed)
        return view


def differences(views: dict[str, View]) -> str:
    """The rows not every view has, each with the peers that show it."""
    rows = sorted(set().union(*map(set, views.values())))
    lines = []
    for row in rows:
        where = [name for name, view in views.items() if row in view]
        if len(where) != len(views):
            lines.append(f"  {row}: {' '.join(where)}")
    return "\n".join(lines)


# ---- making it ----


@contextmanager
def household(base: Path) -> Iterator[Household]:
    """Three initialised, paired, running peers in namespaces of their own; all removed on
    the way out."""
    from pyroute2 import IPRoute, NetNS, netns

    tag = uuid.uuid4().hex[:6]
    subnet = f"{_NETWORK}.{random.randrange(1, 255)}"
    bridge = f"rzb{tag}"
    made_ns: list[str] = []
    made_links: list[str] = []
    peers: dict[str, Peer] = {}
    ipr = IPRoute()
    home: Household | None = None
    try:
        ipr.link("add", ifname=bridge, kind="bridge")
        made_links.append(bridge)
        bridge_index = ipr.link_lookup(ifname=bridge)[0]
        ipr.addr("add", index=bridge_index, address=f"{subnet}.{HOST_OCTET}", prefixlen=24)
        ipr.link("set", index=bridge_index, state="up")
        for number, name in enumerate(NAMES, start=1):
            namespace, veth, inner = f"rz{tag}{name}", f"rzv{tag}{name}", f"rzi{tag}{name}"
            netns.create(namespace)
            made_ns.append(namespace)
            ipr.link("add", ifname=veth, kind="veth", peer=inner)
            made_links.append(veth)
            ipr.link("set", index=ipr.link_lookup(ifname=veth)[0], master=bridge_index)
            ipr.link("set", index=ipr.link_lookup(ifname=inner)[0], net_ns_fd=namespace)
            address = f"{subnet}.{number}"
            with NetNS(namespace) as inside:
                inner_index = inside.link_lookup(ifname=inner)[0]
                inside.addr("add", index=inner_index, address=address, prefixlen=24)
                inside.link("set", index=inner_index, state="up")
                inside.link("set", index=inside.link_lookup(ifname="lo")[0], state="up")
            ipr.link("set", index=ipr.link_lookup(ifname=veth)[0], state="up")
            root = base / name
            (root / AREA).mkdir(parents=True)
            peers[name] = Peer(name, root, namespace, address, 20490 + number, veth)
        home = Household(peers, f"{subnet}.{HOST_OCTET}", ipr)
        for peer in peers.values():
            ok(realize_in_process(peer.state, "init"))
            ok(realize_in_process(peer.state, "area", "add", AREA, str(peer.area)))
        pair(home)
        home.start(*NAMES)
        yield home
    finally:
        for peer in peers.values():
            _stop_quietly(peer)
        for link in reversed(made_links):
            with suppress(Exception):
                ipr.link("del", index=ipr.link_lookup(ifname=link)[0])
        for namespace in made_ns:
            with suppress(Exception):
                netns.remove(namespace)
        ipr.close()


def pair(home: Household) -> None:
    """a and b know each other by address; both know c without one (deaf); c dials both."""
    tokens = {name: peer.token() for name, peer in home.peers.items()}
    for name, peer in home.peers.items():
        for other, known in home.peers.items():
            if other == name:
                continue
            args = ["peer", "add", other, tokens[other]]
            if other != DEAF:
                args += ["--address", f"{known.address}:{known.peer_port}"]
            ok(realize_in_process(peer.state, *args))


def _stop_quietly(peer: Peer) -> None:
    pid = peer.pid()
    if pid is None:
        return
    with suppress(Exception):
        realize_in_process(peer.state, "stop")
    if peer.pid() is not None:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# ---- the NFS client, run inside a namespace ----
# Lean on purpose (no tests.conftest, no pytest): it starts once per call of `nfs`.


JUKEBOX_PATIENCE = 60.0  # seconds a read answered JUKEBOX is asked again


class _Failed(Exception):
    """An NFS call answered another status than NFS3_OK: its name."""


async def _client(port: int, ops: list[dict[str, Any]]) -> list[Any]:
    import blake3
    import trio

    from nfsd.rpc.client import open_client
    from xdr.codec import Arm
    from xdr.mount import MOUNT_PROGRAM, MOUNT_V3, MOUNTPROC3, dirpath, mountres3
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
        RENAME3args,
        SETATTR3args,
        WRITE3args,
        createmode3,
        diropargs3,
        ftype3,
        nfs_fh3,
        nfsstat3,
        sattr3,
        stable_how,
    )
    from xdr.rpc import auth_flavor
    from xdr.rpc_fast import Credential

    root_cred = Credential(auth_flavor.AUTH_SYS, 0, 0, [], b"household")
    async with open_client("127.0.0.1", port, root_cred) as rpc:

        async def call(proc: NFSPROC3, args: Any) -> Any:
            _, args_type, res_type = PROCEDURES[proc]
            res = await rpc.call(NFS_PROGRAM, NFS_V3, proc, args_type, args, res_type)
            if res.tag != nfsstat3.NFS3_OK:
                raise _Failed(nfsstat3(res.tag).name)
            return res.value

        mounted = await rpc.call(
            MOUNT_PROGRAM, MOUNT_V3, MOUNTPROC3.MNT, dirpath, f"/{AREA}".encode(), mountres3
        )
        assert mounted.tag == 0, f"MNT /{AREA}: {mounted.tag}"
        root = nfs_fh3(mounted.value.fhandle)

        async def lookup(directory: Any, name: str | bytes) -> Any:
            raw = name if isinstance(name, bytes) else os.fsencode(name)
            return (await call(NFSPROC3.LOOKUP, LOOKUP3args(diropargs3(directory, raw)))).object

        async def walk_to(path: str, create_dirs: bool = False) -> tuple[Any, str]:
            parent = root
            parts = path.split("/")
            for part in parts[:-1]:
                try:
                    parent = await lookup(parent, part)
                except _Failed:
                    if not create_dirs:
                        raise
                    made = await call(
                        NFSPROC3.MKDIR,
                        MKDIR3args(diropargs3(parent, os.fsencode(part)), sattr3(mode=0o755)),
                    )
                    parent = made.obj
            return parent, parts[-1]

        async def read(fh: Any) -> str:
            digest = blake3.blake3()
            offset = 0
            while True:
                res = await read_patiently(fh, offset)
                digest.update(res.data)
                offset += len(res.data)
                if res.eof or not res.data:
                    return digest.hexdigest()

        async def read_patiently(fh: Any, offset: int) -> Any:
            """READ as a kernel client does it: JUKEBOX (not yet, the server is fetching) is
            asked again, up to JUKEBOX_PATIENCE seconds."""
            deadline = trio.current_time() + JUKEBOX_PATIENCE
            while True:
                try:
                    return await call(NFSPROC3.READ, READ3args(fh, offset, 1 << 20))
                except _Failed as e:
                    if str(e) != "NFS3ERR_JUKEBOX" or trio.current_time() > deadline:
                        raise
                await trio.sleep(0.2)

        async def listing(fh: Any) -> list[bytes]:
            names: list[bytes] = []
            cookie, verf = 0, bytes(8)
            while True:
                res = await call(NFSPROC3.READDIR, READDIR3args(fh, cookie, verf, 8192))
                names += [e.name for e in res.reply.entries]
                if res.reply.eof or not res.reply.entries:
                    return [n for n in names if n not in (b".", b"..")]
                cookie, verf = res.reply.entries[-1].cookie, res.cookieverf

        async def read_tree(fh: Any, prefix: str, into: dict[str, str]) -> None:
            for raw in sorted(await listing(fh)):
                name = prefix + os.fsdecode(raw)
                child = await lookup(fh, raw)
                kind = (await call(NFSPROC3.GETATTR, GETATTR3args(child))).obj_attributes.type
                if kind == ftype3.NF3DIR:
                    await read_tree(child, name + "/", into)
                elif kind == ftype3.NF3REG:
                    try:
                        into[name] = await read(child)
                    except _Failed as e:
                        into[name] = str(e)

        async def one(op: dict[str, Any]) -> Any:
            if op["op"] == "sleep":  # a pause between two calls, as a slow program makes
                await trio.sleep(op["seconds"])
                return "NFS3_OK"
            if op["op"] == "read_all":
                found: dict[str, str] = {}
                await read_tree(root, "", found)
                return found
            parent, name = await walk_to(op["path"], create_dirs=op["op"] == "write")
            where = diropargs3(parent, os.fsencode(name))
            if op["op"] == "read":
                return await read(await lookup(parent, name))
            if op["op"] == "write":  # the whole content, made or replaced
                data = bytes.fromhex(op["data"])
                try:
                    fh = await lookup(parent, name)
                    await call(NFSPROC3.SETATTR, SETATTR3args(fh, sattr3(size=0), None))
                except _Failed:
                    how = Arm(createmode3.GUARDED, sattr3(mode=0o644))
                    fh = (await call(NFSPROC3.CREATE, CREATE3args(where, how))).obj
                for start in range(0, len(data), 1 << 20):
                    piece = data[start : start + (1 << 20)]
                    args = WRITE3args(fh, start, len(piece), stable_how.FILE_SYNC, piece)
                    await call(NFSPROC3.WRITE, args)
                return "NFS3_OK"
            if op["op"] == "remove":
                await call(NFSPROC3.REMOVE, REMOVE3args(where))
                return "NFS3_OK"
            if op["op"] == "rename":
                new_dir, new = await walk_to(op["to"])
                to = diropargs3(new_dir, os.fsencode(new))
                await call(NFSPROC3.RENAME, RENAME3args(where, to))
                return "NFS3_OK"
            raise ValueError(f"unknown op {op['op']!r}")

        answers: list[Any] = []
        for op in ops:
            try:
                answers.append(await one(op))
            except _Failed as e:
                answers.append(str(e))
        return answers


def _client_main(argv: list[str]) -> None:
    import trio

    port, ops = int(argv[0]), json.loads(argv[1])

    async def main() -> list[Any]:
        with trio.fail_after(100):
            return await _client(port, ops)

    print(json.dumps(trio.run(main)))


if __name__ == "__main__":
    _client_main(sys.argv[1:])
