"""Bases: the old content of a file kept a while, so that a new version arriving from a peer
is built from it and only what changed is fetched (nfsd/store/cuts.py, nfsd/vfs/unreal.py).

When a peer's version replaces a file's content here, the exchange says which blob the new
version replaces (`note(new, old)`), and which blob its history entry names as its base (the
content its author edited, `note` too, first). Each is a candidate; the first found is used:

- in the blob cache, when all of it is there (an Unreal file read or kept before), or
- in `bases/` of the state directory: a Real file the new version drops is hard-linked there
  under its blob id before it is unlinked from its area (`keep_file`; a link across
  filesystems fails, and then there is no base).

A kept file costs the disk its old blocks, so at most `FILES_MAX` are kept, each for at most
`KEEP_SECONDS`, and the directory is emptied at every start (what it maps from is kept in
memory only). `done(new)` ends the use of a base. Nothing read from a base is trusted: what is
built from it is checked against the new version's chunk hashes and id.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections import OrderedDict
from collections.abc import Iterator
from functools import partial
from pathlib import Path

from nfsd.store.blobs import BlobError, BlobStore
from nfsd.store.cuts import Read

log = logging.getLogger("realize.bases")

BASES_DIR = "bases"
NOTED_MAX = 256  # new blobs whose base is remembered
FILES_MAX = 8
KEEP_SECONDS = 600.0


class Bases:
    def __init__(self, state_dir: Path, blobs: BlobStore) -> None:
        self.blobs = blobs
        self.dir = Path(state_dir) / BASES_DIR
        shutil.rmtree(self.dir, ignore_errors=True)  # what named them is gone with the last run
        self.dir.mkdir(mode=0o700, exist_ok=True)
        self.noted: OrderedDict[bytes, list[bytes]] = OrderedDict()  # new -> candidates
        self.files: OrderedDict[bytes, float] = OrderedDict()  # kept base -> when
        self.clock = time.monotonic

    def note(self, new: bytes, old: bytes) -> None:
        """Content `old` may be a base of `new`: a peer's version with content `new` replaced
        it here, or names it as its base. Candidates are tried in the order noted."""
        if not new or not old or new == old:
            return
        candidates = self.noted.setdefault(new, [])
        if old not in candidates:
            candidates.append(old)
        self.noted.move_to_end(new)
        while len(self.noted) > NOTED_MAX:
            self.noted.popitem(last=False)

    def keep_file(self, dir_fd: int, name: bytes, blob: bytes) -> None:
        """Before the Real file `name` (content `blob`) is unlinked: keep its content here."""
        self._expire()
        if not blob or blob in self.files:
            return
        bases_fd = os.open(self.dir, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.link(name, blob.hex(), src_dir_fd=dir_fd, dst_dir_fd=bases_fd,
                    follow_symlinks=False)  # fmt: skip
        except OSError as e:  # another filesystem, or no room: no base, the whole is fetched
            log.debug("no base kept for %s: %s", blob.hex()[:16], e)
            return
        finally:
            os.close(bases_fd)
        self.files[blob] = self.clock()
        while len(self.files) > FILES_MAX:
            self._drop_file(next(iter(self.files)))

    def _drop_file(self, blob: bytes) -> None:
        self.files.pop(blob, None)
        with contextlib.suppress(FileNotFoundError):
            (self.dir / blob.hex()).unlink()

    def _expire(self) -> None:
        now = self.clock()
        for blob, when in list(self.files.items()):
            if now - when > KEEP_SECONDS:
                self._drop_file(blob)

    def base_of(self, new: bytes) -> bytes | None:
        """The first of `new`'s bases whose content is here to read (`reader`)."""
        candidates = self.noted.get(new)
        if not candidates:
            return None
        self._expire()
        for old in candidates:
            if old in self.files or self._cached_whole(old):
                return old
        return None

    def _cached_whole(self, blob: bytes) -> bool:
        try:
            manifest = self.blobs.manifest(blob)
            return manifest is not None and not manifest.bad and not self.blobs.missing(blob)
        except BlobError:
            return False

    @contextlib.contextmanager
    def reader(self, blob: bytes) -> Iterator[tuple[int, Read]]:
        """(size, read(offset, length)) of a base's content, while the context lasts."""
        if blob in self.files:
            fd = os.open(self.dir / blob.hex(), os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            try:
                yield os.fstat(fd).st_size, lambda offset, length: os.pread(fd, length, offset)
            finally:
                os.close(fd)
            return
        manifest = self.blobs.manifest(blob)
        if manifest is None:
            raise BlobError(f"no base {blob.hex()[:16]}")
        yield manifest.size, partial(self.blobs.read, blob)

    def done(self, new: bytes) -> None:
        """The new version is built (or will not be from its base): forget the base, and drop
        its kept file unless another new version still names it."""
        candidates = self.noted.pop(new, [])
        still = {old for others in self.noted.values() for old in others}
        for old in candidates:
            if old in self.files and old not in still:
                self._drop_file(old)
