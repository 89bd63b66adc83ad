"""The Unreal keeps what the Real had: a user's file moved into the cache (`mark unreal`) and
back (`mark real`) keeps its owner, group and mode, shown by GETATTR while it is Unreal; and
no round trip, old index entry or imported source makes a setuid or setgid file for anyone
but its owner (an attacker's setuid file never comes back root's).

Also: the batch that makes a file's content Unreal is synced before the only Real copy goes."""

from __future__ import annotations

import os
import pwd
import stat
import struct
import subprocess
from pathlib import Path

import pytest
import trio

from nfsd.store.db import Batch, Store
from nfsd.store.index import AreaIndex, Entry, Kind, Layer
from nfsd.vfs.unreal import unreal_attr
from tests.conftest import Nfs, run_on
from tests.support.inproc import make_dispatcher
from tests.support.server import start_server
from tests.support.source import make_source, run_realize

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")

NOBODY = pwd.getpwnam("nobody")
USER_UID, USER_GID = NOBODY.pw_uid, NOBODY.pw_gid
SETID = stat.S_ISUID | stat.S_ISGID

# Run by the system's Python as the unprivileged user, in the directory it was started in
# (its own): make a setuid and setgid program of its own, as any user may, from stdin.
_MAKE_SETID = """
import os, sys
with open("tool", "wb") as f:
    f.write(sys.stdin.buffer.read())
os.chmod("tool", 0o6755)
"""


def ok(state: Path, *args: str) -> str:
    done = run_realize(state, *args)
    assert done.returncode == 0, f"realize {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def as_user_in(directory: Path) -> None:
    """Become the unprivileged user, working in `directory` (entered while still root: the
    test's temporary directories are root's alone, but the user may write this one)."""
    os.chdir(directory)
    os.setgroups([])
    os.setgid(USER_GID)
    os.setuid(USER_UID)


async def unreal_attributes(nfs: Nfs, *names: bytes) -> tuple[int, int, int, int]:
    """(uid, gid, mode, size) of `area/names...` as a client sees them."""
    fh = await nfs.mount(b"/area")
    for name in names:
        fh = await nfs.lookup(fh, name)
    attr = await nfs.getattr(fh)
    return attr.uid, attr.gid, attr.mode, attr.size


@root_only
def test_a_users_setuid_file_comes_back_as_theirs_never_roots(tmp_path: Path) -> None:
    area, state = tmp_path / "area", tmp_path / "state"
    home = area / "home"
    home.mkdir(parents=True)
    os.chown(home, USER_UID, USER_GID)
    content = os.urandom(200_000)
    subprocess.run(
        ["/usr/bin/python3", "-c", _MAKE_SETID],
        input=content,
        check=True,
        preexec_fn=lambda: as_user_in(home),
    )
    tool = home / "tool"
    st = tool.lstat()
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (USER_UID, USER_GID, 0o6755)

    server = start_server({"area": area}, state, extra=["--rest", "0.2"])
    try:
        ok(state, "mark", "unreal", "area/home/tool")
        assert not tool.exists()
        # While Unreal, a client sees the owner, group and mode the Real file had.
        seen = run_on(server.nfs_port, lambda nfs: unreal_attributes(nfs, b"home", b"tool"))
        assert seen == (USER_UID, USER_GID, 0o6755, len(content)), seen

        ok(state, "mark", "real", "area/home/tool")
        st = tool.lstat()
        assert tool.read_bytes() == content
        assert (st.st_uid, st.st_gid) == (USER_UID, USER_GID), "realized as someone else's"
        assert stat.S_IMODE(st.st_mode) == 0o6755
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()


def _claim_setuid_root(source: Path) -> None:
    """Rewrite the source's index as an attacker who could write it would: `tool` says it is
    root's and setuid (in today's format), `old-tool` setuid and setgid in the format from
    before owners were kept."""
    store = Store(source / "db")
    try:
        entries = store.family("entries")
        batch = store.batch()
        for key, raw in list(entries.items()):
            entry = Entry.unpack(raw)
            if key.endswith(b"\0tool"):
                entry.mode, entry.uid, entry.gid = 0o4755, 0, 0
                batch.put("entries", key, entry.pack())
            elif key.endswith(b"\0old-tool"):
                batch.put("entries", key, old_format(entry, 0o6755))
        batch.commit()
    finally:
        store.close()


def old_format(entry: Entry, mode: int) -> bytes:
    """`entry` packed as the index packed entries before it kept owners."""
    header = struct.pack(
        ">BBIQqB", entry.kind, entry.layer, mode, entry.size, entry.mtime_ns, len(entry.blob)
    )
    return header + entry.blob + entry.target


@root_only
def test_an_imported_setuid_root_claim_is_realized_as_the_area_owners_plain_file(
    tmp_path: Path,
) -> None:
    tool, old_tool = os.urandom(70_000), os.urandom(5_000)
    source = make_source(tmp_path, {"tool": tool, "old-tool": old_tool})
    for name in ("tool", "old-tool"):  # root's setuid programs on the source's disk
        os.chmod(tmp_path / "source-area" / name, 0o6755)
    _claim_setuid_root(source)
    area, state = tmp_path / "area", tmp_path / "state"
    area.mkdir()
    os.chown(area, USER_UID, USER_GID)  # the area is the user's

    server = start_server({"area": area}, state, sources=[source])
    try:
        assert "2 files" in ok(state, "import", "area", str(source))

        async def look(nfs: Nfs) -> list[tuple[int, int, int, int]]:
            return [await unreal_attributes(nfs, name) for name in (b"tool", b"old-tool")]

        seen = run_on(server.nfs_port, look)
        assert seen == [
            (USER_UID, USER_GID, 0o755, len(tool)),
            (USER_UID, USER_GID, 0o755, len(old_tool)),
        ], seen
        ok(state, "mark", "real", "area")
        for name, content in (("tool", tool), ("old-tool", old_tool)):
            st = (area / name).lstat()
            assert (area / name).read_bytes() == content
            assert (st.st_uid, st.st_gid) == (USER_UID, USER_GID), name
            assert stat.S_IMODE(st.st_mode) == 0o755, f"{name}: {oct(st.st_mode)}"
    finally:
        server.stop()
    assert "Traceback" not in server.log(), server.log()


@pytest.mark.inproc
def test_an_index_entry_from_before_owners_were_kept_still_loads(tmp_path: Path) -> None:
    store = Store(tmp_path / "db")
    index = AreaIndex(store)
    blob = bytes(range(32))
    old = Entry(Kind.FILE, Layer.UNREAL, 0, 12, 1_700_000_000 * 10**9, blob)
    batch = store.batch()
    batch.put("entries", struct.pack(">I", 1) + b"\0old", old_format(old, 0o6755))
    owned = Entry(Kind.FILE, Layer.UNREAL, 0o4750, 34, 5, blob, uid=USER_UID, gid=4321)
    index.put(batch, 1, b"new", owned)
    link = Entry(Kind.SYMLINK, Layer.UNREAL, 0o777, 0, 6, b"", b"a/target", 7, 8)
    index.put(batch, 1, b"link", link)
    batch.commit()
    store.close()

    store = Store(tmp_path / "db")
    index = AreaIndex(store)
    loaded = index.get(1, b"old")
    assert loaded is not None
    assert (loaded.kind, loaded.layer, loaded.mode, loaded.size) == (
        Kind.FILE,
        Layer.UNREAL,
        0o6755,
        12,
    )
    assert (loaded.blob, loaded.target, loaded.uid, loaded.gid) == (blob, b"", None, None)
    assert index.get(1, b"new") == owned
    assert index.get(1, b"link") == link
    # The owner unknown, the area root's stands in, and without setuid or setgid.
    attr = unreal_attr(loaded, 99, 1000, 1001)
    assert (attr.uid, attr.gid, attr.mode) == (1000, 1001, 0o755)
    attr = unreal_attr(owned, 99, 1000, 1001)
    assert (attr.uid, attr.gid, attr.mode) == (USER_UID, 4321, 0o4750)
    store.close()


@pytest.mark.inproc
def test_the_unreal_entry_is_synced_before_the_only_real_copy_is_removed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "areas" / "a").mkdir(parents=True)
    content = os.urandom(100_000)
    (tmp_path / "areas" / "a" / "only.bin").write_bytes(content)
    inproc = make_dispatcher(tmp_path, ("a",))
    tree = inproc.server.tree
    assert tree is not None
    area = tree.area_by_name["a"].id
    commits: list[bool] = []
    synced_at_unlink: list[bool] = []
    commit, unlink = Batch.commit, os.unlink

    def recording_commit(self: Batch, **options: bool) -> None:
        commit(self, **options)
        commits.append(options.get("sync", False))

    def watched_unlink(path, *args, **kwargs) -> None:
        if path == b"only.bin":
            entry = tree.index.get(area, b"only.bin")
            assert entry is not None and entry.layer == Layer.UNREAL
            synced_at_unlink.append(commits[-1])
        unlink(path, *args, **kwargs)

    monkeypatch.setattr(Batch, "commit", recording_commit)
    monkeypatch.setattr(os, "unlink", watched_unlink)
    try:
        moved = trio.run(tree.unrealize, tree.fid_of_path(area, b"only.bin"), None)
    finally:
        monkeypatch.undo()
        inproc.close()
    assert moved == len(content)
    assert synced_at_unlink == [True], "the Unreal entry was not synced before the unlink"
