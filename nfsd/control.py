"""The control program: what `realize` asks of a running server over the state directory's
Unix socket (xdr/control.py) — marks and their jobs, `ls`, import, sources, fsck, the
household's roster and links (nfsd/peer/service.py), and what `realize status` and
`realize conflicts` show: each peer's link, each area's sync state read from the history
exchange (nfsd/peer/exchange.py), and the conflicts its path states resolve to
(nfsd/peer/conflicts.py `resolve`).

Handlers turn the tree's and the store's answers into the protocol's results; every failure a
user can cause becomes a status and a sentence, never a dropped call.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import trio

from nfsd.peer.conflicts import Resolution, resolve
from nfsd.peer.exchange import Exchange
from nfsd.peer.roster import RosterError
from nfsd.peer.service import PeerService
from nfsd.peer.versions import Kind as VersionKind
from nfsd.peer.versions import Version
from nfsd.rpc.client import RpcError
from nfsd.rpc.dispatch import CallContext, Procedure, Program
from nfsd.store.blobs import BlobStore
from nfsd.store.check import check_store
from nfsd.store.index import Kind, Mark
from nfsd.store.source import REFUSALS_SHOWN, StateDirSource, import_area, is_state_dir
from nfsd.vfs.marks import Job, JobState, Marks, PathError, PathView
from nfsd.vfs.merged import MergedTree
from xdr.control import (
    CONFLICTS_PAGE,
    CONFLICTS_SCAN,
    CONTROL_PROGRAM,
    CONTROL_SOCKET,
    CONTROL_V1,
    CONTROLPROC,
    LS_PAGE,
    MAX_AREAS,
    MAX_COPIES,
    MAX_PEERS,
    PROCEDURES,
    areastatus,
    areasync,
    conflictentry,
    conflictsargs,
    conflictsres,
    conflictversion,
    ctlres,
    ctlstat,
    fsckres,
    importargs,
    importres,
    jobres,
    jobstate,
    lsargs,
    lsentry,
    lsres,
    markargs,
    markres,
    peerlink,
    peersres,
    peerstate,
    statusres,
)
from xdr.control import kind as ctlkind
from xdr.control import layer as ctllayer
from xdr.control import mark as ctlmark
from xdr.nfs3 import nfsstat3

log = logging.getLogger("realize.control")

_STATUS = {
    nfsstat3.NFS3ERR_NOENT: ctlstat.NOENT,
    nfsstat3.NFS3ERR_INVAL: ctlstat.INVAL,
    nfsstat3.NFS3ERR_NOSPC: ctlstat.NOSPC,
    nfsstat3.NFS3ERR_JUKEBOX: ctlstat.BUSY,
}
_JOB_STATE = {
    JobState.WAITING: jobstate.RUNNING,
    JobState.RUNNING: jobstate.RUNNING,
    JobState.DONE: jobstate.DONE,
    JobState.FAILED: jobstate.FAILED,
}


STATUS_SCAN = 200_000  # path states of one area STATUS looks at for its conflict count
_VERSION_KIND = {
    VersionKind.FILE: ctlkind.FILE,
    VersionKind.DIRECTORY: ctlkind.DIR,
    VersionKind.SYMLINK: ctlkind.SYMLINK,
    VersionKind.DELETED: ctlkind.OTHER,
}


def _text(message: str) -> bytes:
    return message.encode()[:4000]


async def _open_source(source_dir: Path) -> StateDirSource | ctlres:
    """The state directory opened as a source, or why it cannot be."""
    if not is_state_dir(source_dir):
        return ctlres(ctlstat.INVAL, _text(f"{source_dir} is not a Realize state directory"))
    try:
        return await trio.to_thread.run_sync(StateDirSource, source_dir)
    except Exception as e:  # rocksdict reports open failures as plain Exception
        return ctlres(ctlstat.IO, _text(f"cannot open {source_dir}: {e}"))


@contextlib.contextmanager
def socket_address(state_dir: Path) -> Iterator[str]:
    """The address of the control socket, usable while the block runs. A Unix socket path
    is limited to 107 bytes; a longer one is reached through the directory's descriptor."""
    path = str(state_dir / CONTROL_SOCKET)
    if len(os.fsencode(path)) < 100:
        yield path
        return
    fd = os.open(state_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}/{CONTROL_SOCKET}"
    finally:
        os.close(fd)


async def open_control_listener(state_dir: Path) -> trio.SocketListener:
    """Listen on the state directory's control socket (owner only)."""
    (state_dir / CONTROL_SOCKET).unlink(missing_ok=True)  # left by a killed server
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    with socket_address(state_dir) as address:
        await sock.bind(address)
    os.chmod(state_dir / CONTROL_SOCKET, 0o600)
    sock.listen(16)
    return trio.SocketListener(sock)


class ControlService:
    def __init__(self, tree: MergedTree, blobs: BlobStore) -> None:
        self.tree = tree
        self.blobs = blobs
        self.marks = Marks(tree)
        self.nursery: trio.Nursery | None = None  # see `serve_in`
        self.peers: PeerService | None = None  # the server sets it; None without links
        self._exchange_reader: Exchange | None = None

    def serve_in(self, nursery: trio.Nursery) -> None:
        """Mark jobs run in `nursery` from now on, outliving the calls that started them."""
        self.nursery = nursery

    async def null(self, ctx: CallContext, args: Any) -> None:
        return None

    async def mark(self, ctx: CallContext, args: markargs) -> markres:
        try:
            area, rel = self.marks.resolve(args.path)
        except PathError as e:
            return markres(_STATUS.get(e.status, ctlstat.INVAL), _text(str(e)), 0)
        if self.nursery is None or self.tree.unreal is None:
            return markres(ctlstat.IO, b"the server is not ready for jobs", 0)
        job = self.marks.set(area, rel, Mark(int(args.mark)))
        self.nursery.start_soon(self.marks.run, job)
        return markres(ctlstat.OK, b"", job.id)

    def _row(self, view: PathView) -> lsentry:
        return lsentry(
            view.name,
            ctlkind(int(view.kind)),
            ctllayer.NONE if view.layer is None else ctllayer(int(view.layer)),
            ctlmark(int(view.own_mark)),
            ctlmark(int(view.mark)),
            view.mark_from,
            view.size,
            view.cached,
            view.pinned,
        )

    async def ls(self, ctx: CallContext, args: lsargs) -> lsres:
        try:
            area, rel = self.marks.resolve(args.path)
        except PathError as e:
            return lsres(_STATUS.get(e.status, ctlstat.INVAL), _text(str(e)), [], [], False)
        top = self.marks.view(area, rel)
        rows: list[PathView] = []
        more = False
        if top.kind == Kind.DIR:
            rows, more = self.marks.listing(area, rel, args.after, LS_PAGE)
        return lsres(ctlstat.OK, b"", [self._row(top)], [self._row(r) for r in rows], more)

    async def job(self, ctx: CallContext, job_id: int) -> jobres:
        job: Job | None = self.marks.jobs.get(job_id)
        if job is None:
            return jobres(ctlstat.NOENT, b"no such job", jobstate.FAILED, 0, 0, 0, 0, [])
        return jobres(
            ctlstat.OK,
            b"",
            _JOB_STATE[job.state],
            job.files_done,
            job.files_total,
            job.bytes_done,
            max(job.bytes_total, job.bytes_done),
            [_text(e) for e in job.errors[:100]],
        )

    async def import_(self, ctx: CallContext, args: importargs) -> importres:
        def failed(status: ctlstat, message: str) -> importres:
            return importres(status, _text(message), 0, 0, 0, 0, 0, 0, [])

        name = os.fsdecode(args.area)
        area = self.tree.area_by_name.get(name)
        if area is None:
            return failed(ctlstat.NOENT, f"no area named {name} here")
        source_dir = Path(os.fsdecode(args.source))
        source = await _open_source(source_dir)
        if isinstance(source, ctlres):
            return failed(source.status, source.message.decode())
        exchange = self.peers.exchange if self.peers is not None else None
        waiting: list[bytes] = []

        def place(put: Callable[[], bool], path: bytes) -> bool:
            if exchange is not None:  # a delete of the path waiting its grace goes first
                exchange.stamp_before_entry(area.id, path)
            elif self.exchange.waits_to_stamp(area.id, path):
                # No server to stamp it now: stamped at its start, after this entry, the
                # delete would take the entry away. Left for an import beside the server.
                waiting.append(path)
                return False
            return put()

        try:
            # Read and hashed in a thread; each entry written on the event loop, where the
            # NFS calls that could take its name meanwhile run.
            report = await trio.to_thread.run_sync(
                import_area, self.tree.store, self.blobs, area.id, area.path, source, name,
                lambda put, path: trio.from_thread.run_sync(place, put, path),
            )  # fmt: skip
        except KeyError as e:
            return failed(ctlstat.NOENT, str(e.args[0]))
        finally:
            source.close()
        self.tree.index_changed()  # directory listings now include the new entries
        log.info("imported %d files into %s from %s", report.files, name, source_dir)
        report.skipped -= len(waiting)  # refused for now, and said why
        report.refused += len(waiting)
        for path in waiting[: max(0, REFUSALS_SHOWN - len(report.refusals))]:
            report.refusals.append(
                f"{os.fsdecode(path)}: a change of it waits for the server to publish it; "
                "import again while the server runs"
            )
        return importres(
            ctlstat.OK,
            b"",
            report.files,
            report.directories,
            report.symlinks,
            report.bytes,
            report.skipped,
            report.refused,
            [_text(refusal) for refusal in report.refusals],
        )

    async def fsck(self, ctx: CallContext, repair: bool) -> fsckres:
        lines, ok = await trio.to_thread.run_sync(check_store, self.tree.store, self.blobs, repair)
        return fsckres(ctlstat.OK, [_text(line) for line in lines[:10000]], ok)

    async def source(self, ctx: CallContext, path: bytes) -> ctlres:
        """Attach another state directory as a source, from now on."""
        unreal = self.tree.unreal
        source_dir = Path(os.fsdecode(path))
        if unreal is None:
            return ctlres(ctlstat.IO, b"no blob cache attached")
        if any(s.name == str(source_dir) for s in unreal.sources):
            return ctlres(ctlstat.OK, b"already attached")
        source = await _open_source(source_dir)
        if isinstance(source, ctlres):
            return source
        unreal.sources.append(source)
        return ctlres(ctlstat.OK, b"attached")

    async def roster(self, ctx: CallContext, args: None) -> ctlres:
        """Re-read peers.json: a removed peer's link is closed now."""
        if self.peers is None:
            return ctlres(ctlstat.OK, b"")  # read at the next start
        try:
            closed = self.peers.reload()
        except RosterError as e:
            return ctlres(ctlstat.INVAL, _text(str(e)))
        if closed:
            return ctlres(ctlstat.OK, _text("closed the link of " + ", ".join(closed)))
        return ctlres(ctlstat.OK, b"")

    async def peers_status(self, ctx: CallContext, args: None) -> peersres:
        if self.peers is None:
            return peersres(ctlstat.IO, b"this server has no peer links", [])
        states = [
            peerstate(s.name.encode(), s.connected, s.outgoing, int(s.since), int(s.last_contact))
            for s in self.peers.status()[:MAX_PEERS]
        ]
        return peersres(ctlstat.OK, b"", states)

    async def ping(self, ctx: CallContext, name: bytes) -> ctlres:
        """Call NULL on a connected peer over its link, whichever side dialled it."""
        if self.peers is None:
            return ctlres(ctlstat.IO, b"this server has no peer links")
        peer = name.decode(errors="replace")
        try:
            seconds = await self.peers.ping(peer)
        except LookupError as e:
            return ctlres(ctlstat.NOENT, _text(str(e.args[0])))
        except (trio.TooSlowError, ConnectionError, RpcError) as e:
            return ctlres(ctlstat.IO, _text(f"peer {peer} did not answer: {e or 'timed out'}"))
        return ctlres(ctlstat.OK, _text(f"peer {peer} answered in {seconds * 1000:.1f} ms"))

    async def sync(self, ctx: CallContext, area: bytes) -> ctlres:
        """Dial every peer and pull the histories of the shared areas (or of one) now;
        answers when it is done, a line per peer and area."""
        if self.peers is None:
            return ctlres(ctlstat.IO, b"this server has no peer links")
        only = area.decode(errors="replace") or None
        if only is not None and only not in self.tree.area_by_name:
            return ctlres(ctlstat.NOENT, _text(f"no area named {only} here"))
        lines = await self.peers.sync(only)
        if not lines:
            return ctlres(ctlstat.OK, b"no peers to sync with")
        return ctlres(ctlstat.OK, _text("\n".join(lines)))

    # ---- status and conflicts ----

    @property
    def exchange(self) -> Exchange:
        """The peer service's history exchange; without one, an Exchange that only reads
        what an earlier run recorded (its methods used here never write)."""
        if self.peers is not None and self.peers.exchange is not None:
            return self.peers.exchange
        if self._exchange_reader is None:
            self._exchange_reader = Exchange(self.tree.store, self.tree.journal.history, "")
        return self._exchange_reader

    async def status(self, ctx: CallContext, args: None) -> statusres:
        """Each peer's link, and per area: our log's stamped mark, what each peer sharing it
        acknowledged of it and we applied of its log, and how many paths are conflicted."""
        peers = self.peers
        links: list[peerlink] = []
        shares: dict[str, list[tuple[str, str]]] = {}  # area -> (peer name, peer id)
        if peers is not None:
            for s in peers.status()[:MAX_PEERS]:
                links.append(
                    peerlink(
                        s.name.encode(),
                        s.peer_id.encode(),
                        s.connected,
                        s.outgoing,
                        int(s.since),
                        int(s.last_contact),
                        s.bytes_in,
                        s.bytes_out,
                    )
                )
                for area in peers.shared_areas(s.name):
                    shares.setdefault(area, []).append((s.name, s.peer_id))
        names = sorted(self.tree.area_by_name)[:MAX_AREAS]
        if peers is not None and peers.exchange is not None:
            # What was published counts as the log, as it does once it is served: stamped
            # here, on the event loop like every other call into the exchange.
            for name in names:
                peers.exchange.stamp_pending(self.tree.area_by_name[name].id)
        areas = await trio.to_thread.run_sync(self._areas_status, names, shares)
        me = peers.identity.peer_id.encode() if peers is not None else b""
        return statusres(ctlstat.OK, b"", peers is not None, me, links, areas)

    def _areas_status(
        self, names: list[str], shares: dict[str, list[tuple[str, str]]]
    ) -> list[areastatus]:
        exchange = self.exchange
        found = []
        for name in names:
            area = self.tree.area_by_name[name].id
            conflicts = scanned = 0
            for path, state in exchange.states(area):
                if scanned >= STATUS_SCAN:
                    break
                scanned += 1
                if len(state.versions) > 1 and resolve(path, state).conflicted:
                    conflicts += 1
            else:
                scanned = -1  # every state was looked at
            rows = []
            for peer_name, peer_id in shares.get(name, [])[:MAX_PEERS]:
                acked = exchange.acked(area, peer_id)
                seen = exchange.seen(area, peer_id)
                rows.append(
                    areasync(
                        peer_name.encode(),
                        acked[0] if acked else 0,
                        int(acked[1]) if acked else 0,
                        int(exchange.heard(area, peer_id) or 0),
                        seen.last_seen,
                        seen.catching_up,
                        len(exchange.errors(area, peer_id)),
                    )
                )
            found.append(
                areastatus(name.encode(), exchange.stamped(area), conflicts, scanned < 0, rows)
            )
        return found

    async def conflicts(self, ctx: CallContext, args: conflictsargs) -> conflictsres:
        """A page of the conflicts of one area (or of all, in name order), from the cursor
        the previous page ended at; each call looks at a bounded number of path states."""
        names = sorted(self.tree.area_by_name)
        if args.area:
            only = args.area.decode(errors="replace")
            if only not in self.tree.area_by_name:
                return conflictsres(
                    ctlstat.NOENT, _text(f"no area named {only} here"), [], False, b"", b""
                )
            names = [only]
        after_area = args.after_area.decode(errors="replace")
        names = [n for n in names if n >= after_area]
        return await trio.to_thread.run_sync(self._conflicts_page, names, after_area, args)

    def _conflicts_page(
        self, names: list[str], after_area: str, args: conflictsargs
    ) -> conflictsres:
        exchange = self.exchange
        authors = self._authors()
        found: list[conflictentry] = []
        scanned = 0
        for name in names:
            area = self.tree.area_by_name[name].id
            after = bytes(args.after_path) if name == after_area else b""
            for path, state in exchange.states(area, after):
                if scanned >= CONFLICTS_SCAN or len(found) >= CONFLICTS_PAGE:
                    return conflictsres(ctlstat.OK, b"", found, True, name.encode(), after)
                scanned += 1
                after = path
                if len(state.versions) < 2:
                    continue  # one version is never a conflict
                resolution = resolve(path, state)
                if resolution.conflicted:
                    found.append(self._conflict_entry(name, resolution, authors))
        return conflictsres(ctlstat.OK, b"", found, False, b"", b"")

    def _authors(self) -> dict[str, tuple[str, bool]]:
        """Peer id -> (roster name, whether it is this peer)."""
        if self.peers is None:
            return {}
        names = {p.peer_id: (n, False) for n, p in self.peers.roster.peers.items()}
        names[self.peers.identity.peer_id] = ("", True)
        return names

    @staticmethod
    def _conflict_entry(
        area: str, resolution: Resolution, authors: dict[str, tuple[str, bool]]
    ) -> conflictentry:
        def described(name: bytes, v: Version) -> conflictversion:
            author_name, mine = authors.get(v.author, ("", False))
            return conflictversion(
                name,
                v.author.encode()[:64],
                author_name.encode()[:64],
                mine,
                _VERSION_KIND[v.kind],
                v.size,
                v.mtime_ns,
                v.content,
            )

        assert resolution.shown is not None  # a path with copies shows a winner
        copies = resolution.copies
        return conflictentry(
            area.encode(),
            resolution.path,
            described(resolution.path, resolution.shown),
            [described(c.name, c.version) for c in copies[:MAX_COPIES]],
            max(0, len(copies) - MAX_COPIES),
        )

    def program(self) -> Program:
        handlers = {
            CONTROLPROC.NULL: self.null,
            CONTROLPROC.MARK: self.mark,
            CONTROLPROC.LS: self.ls,
            CONTROLPROC.JOB: self.job,
            CONTROLPROC.IMPORT: self.import_,
            CONTROLPROC.FSCK: self.fsck,
            CONTROLPROC.SOURCE: self.source,
            CONTROLPROC.ROSTER: self.roster,
            CONTROLPROC.PEERS: self.peers_status,
            CONTROLPROC.PING: self.ping,
            CONTROLPROC.SYNC: self.sync,
            CONTROLPROC.STATUS: self.status,
            CONTROLPROC.CONFLICTS: self.conflicts,
        }
        quick = {CONTROLPROC.NULL, CONTROLPROC.JOB, CONTROLPROC.PEERS}
        return Program(
            CONTROL_PROGRAM,
            "CONTROL",
            {
                CONTROL_V1: {
                    number: Procedure(
                        name,
                        args,
                        res,
                        handlers[number],
                        idempotent=number != CONTROLPROC.MARK,
                        inline=number in quick,
                    )
                    for number, (name, args, res) in PROCEDURES.items()
                }
            },
        )
