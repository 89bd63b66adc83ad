"""Assembles and runs one server: store, tree, exports, the NFS, MOUNT and portmapper programs,
and their TCP and UDP listeners.

NFS and MOUNT share one port by default. Port 111 is served (portmapper only) when the
process may bind it; otherwise the programs are registered with a portmapper already running
there, if any. Runtime facts (pid, ports) go to `server.json` in the state directory.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import secrets
import signal
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import trio

from nfsd import statedir, sysrpcbind
from nfsd.control import ControlService, open_control_listener
from nfsd.exports import ROOT_EXPORT_ID, Export, ExportOptions, Exports
from nfsd.mount import MountService
from nfsd.nfs3.common import Nfs3State
from nfsd.nfs3.program import nfs_program
from nfsd.peer import identity as peer_identity
from nfsd.peer.exchange import DELETE_GRACE, Exchange
from nfsd.peer.fetch import ChunkServer, OwnFiles
from nfsd.peer.roster import DEFAULT_PEER_PORT, RosterError
from nfsd.peer.service import PeerService
from nfsd.peer.source import PeerSource
from nfsd.portmap import Portmapper, Registration
from nfsd.rpc.dispatch import Dispatcher
from nfsd.rpc.transport import Limits, RpcServer, open_udp_socket
from nfsd.store.blobs import BlobStore
from nfsd.store.db import Store
from nfsd.store.limits import CacheLimits
from nfsd.store.source import StateDirSource
from nfsd.sysrpcbind import Wanted
from nfsd.vfs.arrivals import Arrivals
from nfsd.vfs.bases import Bases
from nfsd.vfs.handles import HandleCodec
from nfsd.vfs.journal import DEFAULT_REST
from nfsd.vfs.merged import MergedTree
from nfsd.vfs.releases import Releases
from nfsd.vfs.unreal import UnrealLayer
from nfsd.vfs.watch import Watcher
from xdr.control import CONTROL_SOCKET
from xdr.mount import MOUNT_PROGRAM, MOUNT_V1, MOUNT_V3
from xdr.nfs3 import NFS_PROGRAM, NFS_V3
from xdr.portmap import PMAP_PORT, PMAP_PROG

log = logging.getLogger("realize.server")

DEFAULT_PORT = 2049
DEFAULT_UNPRIVILEGED_PORT = 20490
RUNTIME_FILE = "server.json"  # in the state directory, while a server runs
RETRY_PAUSE = 5.0  # seconds before a failed background job runs again


def default_port() -> int:
    """NFS's own port as root; one an ordinary user may bind otherwise."""
    return DEFAULT_PORT if os.geteuid() == 0 else DEFAULT_UNPRIVILEGED_PORT


@dataclass
class ServerConfig:
    state_dir: Path
    areas: dict[str, str]
    bind: str = "127.0.0.1"
    port: int | None = None  # None: 2049 as root, else 20490; 0: any free port
    mount_port: int | None = None  # None: the NFS port
    portmap: str = "auto"  # "auto": serve 111 if allowed, "on": must, "off": never
    options: ExportOptions = field(default_factory=ExportOptions)
    rest: float = DEFAULT_REST  # seconds a changed file rests before it is hashed
    # None: DEFAULT_PEER_PORT, or no peer listener when another process holds it; 0: any port
    peer_port: int | None = None
    peer_bind: str | None = None  # None: `bind`
    sources: list[str] = field(default_factory=list)  # state directories attached read-only
    cache_limits: CacheLimits = field(default_factory=CacheLimits)
    max_connections: int = Limits.max_connections  # a host may hold an eighth (rpc/slots.py)
    peer_forget: float | None = None  # seconds a silent peer holds back trimming (None: 30 d)
    peer_rate: int | None = None  # bytes/s per peer for background transfers (None: no limit)
    sync_every: float | None = None  # seconds between exchanges with every peer (None: never)


@dataclass
class Running:
    """What a started server tells its caller."""

    nfs_port: int
    mount_port: int
    portmap_port: int | None
    exports: list[str]


def _meta_value(store: Store, key: bytes, make: bytes) -> bytes:
    meta = store.family("meta")
    value = meta.get(key)
    if value is None:
        meta[key] = make
        value = make
    return value


def _write_verifier(store: Store) -> bytes:
    """A new value at every start, so clients resend writes they had not seen committed."""
    meta = store.family("meta")
    raw = meta.get(b"boot-count")
    count = struct.unpack(">I", raw)[0] + 1 if raw else 1
    meta[b"boot-count"] = struct.pack(">I", count)
    store.flush()
    return struct.pack(">I", count) + secrets.token_bytes(4)


class _Trouble:
    """The failures of one recurring background job, logged once per kind (errno) until the
    job succeeds again: a full disk must not fill the log, nor go unsaid."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.kinds: set[str] = set()

    def failed(self, error: Exception) -> None:
        while isinstance(error, ExceptionGroup):  # a job's own nursery reports it so
            error = error.exceptions[0]
        kind = errno.errorcode.get(getattr(error, "errno", None) or 0, type(error).__name__)
        if kind in self.kinds:
            return
        self.kinds.add(kind)
        if isinstance(error, OSError):  # the disk's doing (full, gone): no bug to trace
            log.warning("%s failed, trying again later: %s", self.what, error)
        else:
            log.error("%s failed, trying again later", self.what, exc_info=error)

    def succeeded(self) -> None:
        if self.kinds:
            log.info("%s works again", self.what)
            self.kinds.clear()


async def _listen(bind: str, port: int) -> tuple[list[trio.SocketListener], trio.socket.SocketType]:
    """TCP listeners and a UDP socket on one port number (any free one for port 0)."""
    for _ in range(20):
        listeners = await trio.open_tcp_listeners(port, host=bind)
        actual = listeners[0].socket.getsockname()[1]
        try:
            udp = await open_udp_socket(bind, actual)
        except OSError as e:
            for listener in listeners:
                await listener.aclose()
            if port == 0 and e.errno == errno.EADDRINUSE:
                continue  # the free TCP port is taken for UDP: pick another
            raise
        return listeners, udp
    raise OSError(errno.EADDRINUSE, "no port free for both TCP and UDP")


class Server:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.state_dir = Path(config.state_dir)
        self.store: Store | None = None
        self.tree: MergedTree | None = None
        self.dispatcher: Dispatcher | None = None
        self.rpc: RpcServer | None = None
        self.peers: PeerService | None = None
        self.arrivals: Arrivals | None = None
        self.releases: Releases | None = None
        self.portmapper = Portmapper()
        self._runtime_trouble = _Trouble(f"writing {RUNTIME_FILE}")
        self._usage_trouble = _Trouble("measuring the cache's disk")

    def _build(self) -> None:
        # The state holds the handle key: nobody else may read it or change the way to it.
        self.state_dir = statedir.prepare(self.state_dir)  # the path judged, symlinks resolved
        self.store = Store(statedir.prepare_db(self.state_dir))
        secret = _meta_value(self.store, b"handle-secret", secrets.token_bytes(32))
        store_uuid = self.store.family("meta")[b"store-uuid"]
        self.blobs = BlobStore(self.store, self.config.cache_limits)
        sources = []
        for path in self.config.sources:
            try:
                sources.append(StateDirSource(path))
            except Exception as e:  # rocksdict reports open failures as plain Exception
                log.warning("source %s is not usable now: %s", path, e)
        self.tree = MergedTree(
            self.store,
            self.config.areas,
            hidden={str(self.state_dir)},
            unreal=UnrealLayer(self.blobs, sources),
            rest=self.config.rest,
        )
        self.control = ControlService(self.tree, self.blobs)
        self._build_peers()
        exports = Exports()
        exports.add(Export(ROOT_EXPORT_ID, "/", None, self.config.options))
        for area in self.tree.areas.values():
            exports.add(Export(area.id, "/" + area.name, area.id, self.config.options))
        self.exports = exports
        fsid = int.from_bytes(store_uuid[:8], "big")
        state = Nfs3State(
            self.tree, HandleCodec(secret), exports, fsid, _write_verifier(self.store)
        )
        self.nfs_state = state
        mount = MountService(state, exports)
        self.dispatcher = Dispatcher(
            [nfs_program(state), mount.program(), self.portmapper.program()]
        )
        # A host that no export allows is closed at accept, before it takes a connection slot.
        self.rpc = RpcServer(
            self.dispatcher,
            Limits(max_connections=self.config.max_connections),
            allowed=lambda host: any(e.options.allows(host) for e in exports),
        )

    def _build_peers(self) -> None:
        """This peer's key pair (made on the first start) and the household links' service."""
        identity, made = peer_identity.load_or_create(self.state_dir)
        if made:
            log.info("made this peer's key pair: peer id %s", identity.peer_id)
        config = self.config
        tree = self.tree
        assert tree is not None and self.store is not None
        # The journal's own History: it caches the next sequence, a second object would reuse it.
        # With the tree: a peer's version of a path held Real here changes it on the disk.
        forget = {} if config.peer_forget is None else {"silent_after": config.peer_forget}
        exchange = Exchange(
            self.store, tree.journal.history, identity.peer_id, tree=tree,
            delete_grace=DELETE_GRACE, **forget,
        )  # fmt: skip
        exchange.recover()  # disk changes a crash interrupted, before the journal scans
        chunks = ChunkServer(tree, self.blobs)
        try:
            self.peers = PeerService(
                self.state_dir,
                identity,
                config.peer_bind or config.bind,
                DEFAULT_PEER_PORT if config.peer_port is None else config.peer_port,
                port_required=config.peer_port is not None,
                chunks=chunks,  # FETCH: content by blob id
                exchange=exchange,
                areas=lambda: [area.name for area in tree.areas.values()],
                on_synced=tree.index_changed,
                sync_every=config.sync_every,
            )
        except RosterError as e:
            raise statedir.StateDirError(str(e)) from None
        self.control.peers = self.peers
        self.arrivals = Arrivals(self.control.marks)
        exchange.arrived = self.arrivals.arrived
        self.releases = Releases(self.control.marks)
        tree.journal.on_content = self.releases.content
        assert tree.unreal is not None
        tree.unreal.bases = Bases(self.state_dir, self.blobs)  # new versions built from old
        exchange.replaced = tree.unreal.bases.note
        assert tree.unreal is not None
        # Missing chunks from a Real file here of the same content where one was found
        # before, else by FETCH (background transfers paced to --peer-rate), else from one
        # found by a scan of the index (a copy whose version only this peer holds); that
        # scan first while no peer is connected, as the FETCHes would wait for a link.
        links = self.peers.links
        scan = OwnFiles(chunks, walk=True)
        tree.unreal.sources += [
            OwnFiles(chunks, walk=False),
            scan.only_while(lambda: not links.live),
            PeerSource(self.peers, self.blobs, config.peer_rate),
            scan,
        ]

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        os.umask(0)  # the client already applied its umask to the modes it sends
        self._build()
        assert self.rpc is not None and self.dispatcher is not None
        config = self.config
        port = config.port
        if port is None:
            port = default_port()
        try:
            async with trio.open_nursery() as nursery:
                nfs_listeners, nfs_udp = await _listen(config.bind, port)
                nfs_port = nfs_listeners[0].socket.getsockname()[1]
                mount_port = nfs_port
                sockets = [(nfs_listeners, nfs_udp, self.rpc)]
                if config.mount_port is not None and config.mount_port != nfs_port:
                    listeners, udp = await _listen(config.bind, config.mount_port)
                    mount_port = listeners[0].socket.getsockname()[1]
                    sockets.append((listeners, udp, self.rpc))
                portmap_port = await self._portmap(sockets)
                self._register(nfs_port, mount_port, portmap_port)
                for listeners, udp, rpc in sockets:
                    for listener in listeners:
                        await nursery.start(rpc.serve_tcp, listener)
                    await nursery.start(rpc.serve_udp, udp)
                registered = False
                if portmap_port is None and config.portmap == "auto":
                    registered = await self._register_with_system_rpcbind(nfs_port, mount_port)
                running = Running(
                    nfs_port, mount_port, portmap_port, [e.path for e in self.exports]
                )
                control = await open_control_listener(self.state_dir)
                self.control.serve_in(nursery)
                await nursery.start(
                    RpcServer(Dispatcher([self.control.program()])).serve_tcp, control
                )
                assert self.peers is not None
                await nursery.start(self.peers.run)
                self._write_runtime(running)
                nursery.start_soon(self._status_loop, running)
                nursery.start_soon(self._journal)
                assert self.tree.unreal is not None
                self.tree.unreal.serve_in(nursery)
                nursery.start_soon(_keep_going, _Trouble("bringing arrivals to their marks"),
                                   self.arrivals.run)  # fmt: skip
                nursery.start_soon(self._retry_arrivals_on_links)
                nursery.start_soon(_keep_going, _Trouble("moving files held elsewhere into the "
                                   "cache"), self.releases.run)  # fmt: skip
                task_status.started(running)
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for signum in signals:
                        log.info("stopping on %s", signal.Signals(signum).name)
                        break
                if registered:
                    await sysrpcbind.unregister(self._system_registrations(nfs_port, mount_port))
                self.stamp_before_stopping()  # nothing awaited after it: no change comes later
                nursery.cancel_scope.cancel()
        finally:
            self.close()

    def stamp_before_stopping(self) -> None:
        """Stamp what was published and waits (a delete in its grace, a start's leftovers the
        announcer had no time to look at): with the server stopped nobody would, and
        `realize import` would leave those paths alone. An editor's unlink and re-create
        that a stop cuts in two is published as two changes."""
        exchange = self.peers.exchange if self.peers is not None else None
        if exchange is None or self.tree is None:
            return
        for area in self.tree.areas:
            try:
                exchange.stamp_pending(area, everything=True)
            except Exception as e:  # stopping goes on: the next start stamps them
                log.warning("cannot stamp the changes of area %d before stopping: %s", area, e)

    async def _retry_arrivals_on_links(self) -> None:
        """A link that comes up may bring the content an arrival waited for."""
        assert self.peers is not None and self.arrivals is not None
        while True:
            await self.peers.links.changed.wait()
            if self.peers.links.live:
                self.arrivals.retry_now()

    async def _portmap(self, sockets: list) -> int | None:
        """Serve the portmapper on 111 when allowed; returns 111 or None."""
        if self.config.portmap == "off":
            return None
        try:
            listeners, udp = await _listen(self.config.bind, PMAP_PORT)
        except OSError as e:
            if self.config.portmap == "on":
                raise
            log.info("not serving port 111 (%s)", e.strerror)
            return None
        portmap_only = RpcServer(
            Dispatcher(
                [self.portmapper.program()], self.dispatcher.drc if self.dispatcher else None
            )
        )
        sockets.append((listeners, udp, portmap_only))
        return PMAP_PORT

    def _register(self, nfs_port: int, mount_port: int, portmap_port: int | None) -> None:
        host = self.config.bind
        for netid in ("tcp", "udp"):
            self.portmapper.register(Registration(NFS_PROGRAM, NFS_V3, netid, host, nfs_port))
            for vers in (MOUNT_V1, MOUNT_V3):
                self.portmapper.register(Registration(MOUNT_PROGRAM, vers, netid, host, mount_port))
            ports = [nfs_port] if portmap_port is None else [portmap_port]
            for vers in (2, 3, 4):
                self.portmapper.register(Registration(PMAP_PROG, vers, netid, host, ports[0]))

    def _system_registrations(self, nfs_port: int, mount_port: int) -> list[Wanted]:
        host = self.config.bind
        suffix = "6" if ":" in host else ""
        wanted = [(NFS_PROGRAM, NFS_V3, nfs_port)] + [
            (MOUNT_PROGRAM, v, mount_port) for v in (MOUNT_V1, MOUNT_V3)
        ]
        return [
            Wanted(prog, vers, netid + suffix, host, port)
            for prog, vers, port in wanted
            for netid in ("tcp", "udp")
        ]

    async def _register_with_system_rpcbind(self, nfs_port: int, mount_port: int) -> bool:
        """Tell a portmapper already on port 111 where we are (best effort)."""
        if not await sysrpcbind.register(self._system_registrations(nfs_port, mount_port)):
            log.info("clients must be given the ports (no portmapper registration)")
            return False
        return True

    def _write_runtime(self, running: Running) -> None:
        """Best effort: on a full disk the old file stays, and the next tick tries again."""
        info = {
            "pid": os.getpid(),
            "bind": self.config.bind,
            "nfs_port": running.nfs_port,
            "mount_port": running.mount_port,
            "portmap_port": running.portmap_port,
            "exports": running.exports,
            "areas": {a.name: os.fsdecode(a.path) for a in self.tree.areas.values()}
            if self.tree
            else {},
            "connections": self.rpc.connections if self.rpc else 0,
            "cache": self._cache_usage(),
            "calls": self.dispatcher.calls if self.dispatcher else 0,
            "peer_port": self.peers.port if self.peers else None,
            "peer_id": self.peers.identity.peer_id if self.peers else None,
        }
        try:
            text = json.dumps(info, indent=1)
            statedir.write_private(self.state_dir / RUNTIME_FILE, text.encode())
        except OSError as e:
            self._runtime_trouble.failed(e)
        else:
            self._runtime_trouble.succeeded()

    async def _journal(self) -> None:
        """Catch up with what changed in the areas while we were away, then keep hashing
        files that rest after changes and reconciling what changes outside NFS. Neither job
        ends the server when it fails (a full disk under the store, say): each is logged
        and runs again after a pause."""
        assert self.tree is not None
        journal, hidden = self.tree.journal, self.tree.hidden
        areas = list(self.tree.areas.values())
        watcher = Watcher(journal, hidden)
        await watcher.open()  # before the scans: a change made after its scan has an event
        caught_up = trio.Event()

        async def follow_changes() -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watcher.run)
                # At every start, after a failure too: what changed while nobody looked.
                for area in areas:
                    await journal.scan(area.id, hidden)
                caught_up.set()
                watching.succeeded()

        async def hash_rested() -> None:
            await caught_up.wait()
            await journal.run()

        watching = _Trouble("reconciling the areas with the disk")
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_keep_going, watching, follow_changes)
                nursery.start_soon(_keep_going, _Trouble("hashing changed files"), hash_rested)
        finally:
            watcher.close()

    def _cache_usage(self) -> dict | None:
        if getattr(self, "blobs", None) is None:
            return None
        try:
            usage = self.blobs.usage()
        except OSError as e:  # statvfs of the store's disk
            self._usage_trouble.failed(e)
            return None
        self._usage_trouble.succeeded()
        return {
            "cached": usage.cached,
            "pinned": usage.pinned,
            "limit": usage.limit,
            "disk_free": usage.disk_free,
            "reserve": usage.reserve,
            "areas": {
                name: {"cached": a.cached, "pinned": a.pinned, "cap": a.limit}
                for name, a in usage.areas.items()
            },
        }

    async def _status_loop(self, running: Running) -> None:
        while True:
            await trio.sleep(2)
            self._write_runtime(running)

    def close(self) -> None:
        tree, self.tree = self.tree, None
        store, self.store = self.store, None
        blobs = getattr(self, "blobs", None)
        if blobs is not None:
            blobs.quiesce()  # a flush of filled chunks under way ends before the store closes
        for part in (tree, store):
            try:
                if part is not None:
                    part.close()
            except Exception as e:  # rocksdict: a memtable it cannot flush on a full disk
                log.error("closing the %s failed: %s", type(part).__name__, e)
        (self.state_dir / RUNTIME_FILE).unlink(missing_ok=True)
        (self.state_dir / CONTROL_SOCKET).unlink(missing_ok=True)


async def _keep_going(trouble: _Trouble, job: Callable[[], Awaitable[None]]) -> None:
    """Run a background job of the server for as long as it runs: when it fails, log it
    (once per kind) and start it again after a pause."""
    while True:
        try:
            await job()
            return
        except Exception as e:
            trouble.failed(e)
        await trio.sleep(RETRY_PAUSE)


def mount_commands(
    host: str,
    exports: list[str],
    nfs_port: int,
    mount_port: int,
    portmap: bool,
    secure: bool = True,
) -> dict[str, list[str]]:
    """The exact commands that mount each export, per client OS. `secure`: the server wants
    a reserved source port (Linux and Windows send from one; macOS needs `resvport`)."""
    standard = nfs_port == DEFAULT_PORT and mount_port == DEFAULT_PORT and portmap
    ports = "" if standard else f",port={nfs_port},mountport={mount_port}"
    resvport = ",resvport" if secure else ""
    commands: dict[str, list[str]] = {"linux": [], "macos": [], "windows": []}
    for export in exports:
        name = export.strip("/") or "realize"
        commands["linux"].append(
            f"sudo mkdir -p /mnt/{name} && sudo mount -t nfs -o "
            f"vers=3,proto=tcp,mountproto=tcp,nolock{ports} {host}:{export} /mnt/{name}"
        )
        commands["macos"].append(
            f"mkdir -p ~/{name} && sudo mount_nfs -o vers=3,tcp,locallocks{resvport}{ports} "
            f"{host}:{export} ~/{name}"
        )
        if export != "/":
            if standard:
                commands["windows"].append(f"mount.exe -o anon,nolock \\\\{host}\\{name} Z:")
            else:
                commands["windows"].append(
                    f"(Windows needs port 2049 and a portmapper on 111: run the server as "
                    f"root for \\\\{host}\\{name})"
                )
    return commands
