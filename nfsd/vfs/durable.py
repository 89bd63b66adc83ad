"""Group commit for the durability of namespace changes: what a change's reply waits for.

A CREATE, REMOVE or RENAME is answered once the directories it changed, and then the
database's log (the fileid table's and the history's batches), are on the disk, as knfsd's
commit_metadata makes them. One fsync per change would cost each of sixteen concurrent
creates in one directory its own journal commit; instead, changes that arrive while a sync
runs wait for the next one, which syncs each of their directories once and the log once. A
change's own writes are all made before it asks, so the sync that starts after it asked
covers them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

import trio

from nfsd.store.db import Store
from nfsd.threads import run_blocking
from nfsd.vfs.errors import FsError
from nfsd.vfs.osapi import open_listable


def _sync(dir_fds: list[int], store: Store) -> None:
    """Directories (held by O_PATH descriptors), then the database's log, on the disk."""
    for held in dir_fds:
        fd = open_listable(held)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    store.batch().commit(sync=True)  # an empty batch: syncs every write before it


class _Round:
    """One sync: the directories it covers, and how it ended."""

    __slots__ = ("dirs", "done", "error")

    def __init__(self) -> None:
        self.dirs: set[int] = set()
        self.done = trio.Event()
        self.error: OSError | None = None


class GroupSync:
    """Syncs for the changes of one tree, grouped (see the module docstring)."""

    def __init__(self, store: Store, hold_dir: Callable[[int], int]) -> None:
        """`hold_dir(fid)`: a descriptor of that directory for the caller to close (FsError
        when it is gone: nothing of it is left to sync)."""
        self._store = store
        self._hold_dir = hold_dir
        self._next = _Round()  # the round that changes asking now wait for
        self._running: _Round | None = None
        self.rounds = 0  # syncs made: what the grouping saves is changes minus rounds

    async def sync(self, dir_fids: tuple[int, ...]) -> None:
        """Return once the directories `dir_fids` and the log are on the disk; the OSError
        of the sync that covered them, if it failed. While a round runs, the next one
        gathers; when it ends, one of the next round's changes runs that round."""
        wanted = self._next
        wanted.dirs.update(dir_fids)
        while not wanted.done.is_set():
            if self._running is None:
                await self._one_round()  # every round before `wanted` is done: it is this one
            else:
                await self._running.done.wait()
        if wanted.error is not None:
            raise wanted.error

    async def _one_round(self) -> None:
        current, self._next = self._next, _Round()
        self._running = current
        held: list[int] = []
        try:
            for fid in current.dirs:
                with contextlib.suppress(FsError):
                    held.append(self._hold_dir(fid))
            await run_blocking(_sync, held, self._store)
        except OSError as e:
            current.error = e
        finally:
            for fd in held:
                os.close(fd)
            self.rounds += 1
            self._running = None
            current.done.set()
