"""The Linux kernel's NFS client and the Unreal layer, in one qemu boot: Real and Unreal files
listed together, a 64 MiB Unreal file read by checksum while its chunks arrive from an attached
source, read again from the cache after the server restarted without the source, written to
(which realizes it), renamed and deleted, Real files too, with the changes in the history;
and a Real file marked `unreal` (its content moved into the cache) then `real` again while
the client keeps reading it by the same handle.

The same boot mounts a second server, peer b of a household of two real server processes
paired over TLS on 127.0.0.1 (as in tests/test_household.py): files written on peer a only,
synced to b as Unreal entries with nothing cached, are read on b by checksum, their bytes
fetched from a by blob id; after a is stopped, what was read still reads (from b's cache) and
a file never read fails with an I/O error in bounded time instead of hanging the mount."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import time
from collections.abc import Callable
from pathlib import Path

import blake3
import pytest

from tests.support.qemu_guest import HOST_ADDR, mount_options, run_guest, unavailable_reason
from tests.support.server import ServerProcess, start_server
from tests.test_household import area_dir, indexed
from tests.test_household import start as start_peer
from tests.test_peer_link import (  # noqa: F401 (household is a fixture)
    household,
    ok,
    realize_process,
    token_of,
    wait_for,
)
from tests.test_peer_link import realize as peer_realize
from tests.test_unreal import realize

pytestmark = [pytest.mark.slow, pytest.mark.kernel]
SIZE = 64 * 1024 * 1024
RESTART = "HOST-ACTION: restart-without-source"
STOP_PEER = "HOST-ACTION: stop-peer-a"
# Written on peer a only: read through b while a runs (one chunk's worth, which needs no chunk
# list, and several chunks), and one read only once a is gone.
PEER_READ = {"small.bin": 200 * 1024, "large.bin": 5 * 1024 * 1024 + 4321}
NEVER_READ = ("never.bin", 150_000)
NO_PEER_PORT = ["--peer-port", "0"]  # servers without peers: not the fixed default port
UNCACHED_READ_LIMIT = 40  # seconds the read of never.bin may take to fail, once a is gone


def peer_guest(digests: dict[str, str]) -> str:
    """The guest's part on /mnt/p, b's export; `digests`: sha256 of PEER_READ's files."""
    never = NEVER_READ[0]
    lines = [
        "mkdir -p /mnt/p",
        'nfsmount {peer_source} /mnt/p {peer_options} || { echo "FAIL peer-mount"; exit 1; }',
        "ls /mnt/p > /tmp/peer-ls",
    ]
    for name, size in [*PEER_READ.items(), NEVER_READ]:
        lines.append(
            f"check peer-listed-{name} 'grep -qx {name} /tmp/peer-ls"
            f' && [ "$(stat -c %s /mnt/p/{name})" = {size} ]\''
        )

    def reads(what: str) -> list[str]:
        return [
            f"check peer-{what}-{name} '[ \"$(digest /mnt/p/{name})\" = {digest} ]'"
            for name, digest in digests.items()
        ]

    lines += reads("read")
    lines += [
        "echo {stop_peer}",
        "read -r answer",
        'check peer-a-stopped \'[ "$answer" = "HOST-DONE: ok" ]\'',
        "echo 3 > /proc/sys/vm/drop_caches",
    ]
    lines += reads("cached")
    lines += [
        "began=$(date +%s)",
        f"timeout -s KILL {UNCACHED_READ_LIMIT} cat /mnt/p/{never} > /dev/null 2> /tmp/never-err",
        "never_rc=$?",
        "took=$(($(date +%s) - began))",
        f'echo "info {never}: rc=$never_rc after $took s: $(cat /tmp/never-err)"',
        "check peer-never-io-error"
        " '[ $never_rc = 1 ] && grep -qi \"input/output error\" /tmp/never-err'",
        f"check peer-never-bounded '[ $took -lt {UNCACHED_READ_LIMIT} ]'",
        "umount /mnt/p",
    ]
    return "\n".join(lines)


def peer_checks() -> int:
    """How many `ok` lines peer_guest's part prints when all is well."""
    return (len(PEER_READ) + 1) + 2 * len(PEER_READ) + 1 + 2


GUEST = r"""
fails=0
check() { if eval "$2"; then echo "ok $1"; else echo "FAIL $1"; fails=$((fails + 1)); fi; }
digest() { sha256sum < "$1" | cut -d' ' -f1; }
{peer_checks}
mkdir -p /mnt/u
nfsmount {source} /mnt/u {options} || { echo "FAIL mount"; exit 1; }
ls /mnt/u > /tmp/ls
check listed-together 'grep -qx big.bin /tmp/ls && grep -qx local.txt /tmp/ls \
    && grep -qx docs /tmp/ls'
check unreal-size '[ "$(stat -c %s /mnt/u/big.bin)" = {size} ]'
ino=$(stat -c %i /mnt/u/big.bin); mtime=$(stat -c %Y /mnt/u/big.bin)
check read-while-fetching '[ "$(digest /mnt/u/big.bin)" = {digest} ]'
check attributes-unchanged '[ "$(stat -c %i:%Y:%s /mnt/u/big.bin)" = "$ino:$mtime:{size}" ]'
echo "{restart}"
read -r answer
echo 3 > /proc/sys/vm/drop_caches
check read-from-cache '[ "$(digest /mnt/u/big.bin)" = {digest} ]'
printf 'CHANGED' | dd of=/mnt/u/big.bin bs=1 seek=10 conv=notrunc 2>/dev/null
sync; echo 3 > /proc/sys/vm/drop_caches
check write-realizes '[ "$(digest /mnt/u/big.bin)" = {changed} ]'
check same-file-after '[ "$(stat -c %i /mnt/u/big.bin)" = "$ino" ]'
photo=$(digest /mnt/u/photo.bin); photo_ino=$(stat -c %i /mnt/u/photo.bin)
echo "HOST-ACTION: mark unreal area/photo.bin"
read -r answer
echo 3 > /proc/sys/vm/drop_caches
check unrealized-reads-same '[ "$answer" = "HOST-DONE: ok" ] \
    && [ "$(digest /mnt/u/photo.bin)" = "$photo" ]'
check unrealized-same-file '[ "$(stat -c %i /mnt/u/photo.bin)" = "$photo_ino" ]'
echo "HOST-ACTION: mark real area/photo.bin"
read -r answer
echo 3 > /proc/sys/vm/drop_caches
check realized-again '[ "$answer" = "HOST-DONE: ok" ] \
    && [ "$(digest /mnt/u/photo.bin)" = "$photo" ]'
mv /mnt/u/local.txt /mnt/u/docs/renamed.txt
check rename-real '[ "$(cat /mnt/u/docs/renamed.txt)" = real ] && [ ! -e /mnt/u/local.txt ]'
rm /mnt/u/docs/renamed.txt
check delete-real '[ ! -e /mnt/u/docs/renamed.txt ]'
mv /mnt/u/docs/note.txt /mnt/u/moved.txt
check rename-unreal '[ -e /mnt/u/moved.txt ] && [ ! -e /mnt/u/docs/note.txt ]'
rm /mnt/u/moved.txt
check delete-unreal '! ls /mnt/u | grep -qx moved.txt'
umount /mnt/u
exit $fails
"""


def cached(state: Path, name: str) -> str:
    """The CACHED cell of docs/`name` in `realize ls docs` on a peer (e.g. ``0%``)."""
    for line in ok(peer_realize(state, "ls", "docs")).splitlines()[1:]:
        cells = line.split()
        if cells[-1] == name:
            assert cells[:2] == ["unreal", "-"], line
            return cells[2]
    raise AssertionError(f"{name} not listed on {state}")


def pair_peers(make_peer: Callable[[str], Path]) -> tuple[Path, Path, dict[str, bytes]]:
    """Peers a and b paired over TLS (b dials a), the peer files written on a and synced to b,
    where they are Unreal with nothing cached: the state directories and the contents."""
    a, b = make_peer("a"), make_peer("b")
    port_a = start_peer(a)
    ok(realize_process(a, "peer", "add", "b", token_of(b)))
    ok(realize_process(b, "peer", "add", "a", token_of(a), "--address", f"127.0.0.1:{port_a}"))
    start_peer(b)
    contents = {name: os.urandom(size) for name, size in [*PEER_READ.items(), NEVER_READ]}
    for name, content in contents.items():
        (area_dir(a) / name).write_bytes(content)
    for name, content in contents.items():
        said = f"blob {blake3.blake3(content).hexdigest()[:16]}"
        wait_for(f"a hashed {name}", lambda said=said: said in history(a))
    ok(peer_realize(b, "sync"))  # a's notices of its new entries may have been quicker

    def arrived() -> bool:
        entries = [indexed(b, name.encode()) for name in contents]
        return all(entry is not None for entry in entries)

    wait_for("a's files show on b", arrived)
    for name, content in contents.items():
        entry = indexed(b, name.encode())
        assert entry is not None and entry.blob == blake3.blake3(content).digest(), name
        assert cached(b, name) == "0%"
        assert not (area_dir(b) / name).exists()
    return a, b, contents


def history(state: Path) -> str:
    return ok(peer_realize(state, "history", "docs"))


def test_kernel_client_reads_and_changes_unreal_files(tmp_path, household):  # noqa: F811
    reason = unavailable_reason()
    if reason:
        pytest.fail(f"the kernel-client guest cannot run here: {reason} (run scripts/test)")
    peer_a, peer_b, peer_contents = pair_peers(household)
    peer_b_port = json.loads((peer_b / "server.json").read_text())["nfs_port"]
    source_area, source = tmp_path / "source-area", tmp_path / "source-state"
    (source_area / "docs").mkdir(parents=True)
    big = os.urandom(SIZE)
    (source_area / "big.bin").write_bytes(big)
    (source_area / "docs" / "note.txt").write_text("a note\n")
    server = start_server({"area": source_area}, source, extra=["--rest", "0.1", *NO_PEER_PORT])
    try:
        deadline = time.monotonic() + 60
        while realize(source, "history", "area").count("create") < 2:
            assert time.monotonic() < deadline, "the source never hashed its files"
            time.sleep(0.3)
    finally:
        server.stop()

    area, state = tmp_path / "area", tmp_path / "state"
    area.mkdir()
    (area / "local.txt").write_text("real\n")
    (area / "photo.bin").write_bytes(os.urandom(3 * 1024 * 1024))
    state.mkdir()
    (state / "config.json").write_text(json.dumps({"areas": {"area": str(area)}}))
    realize(state, "import", "area", str(source))

    servers: list[ServerProcess] = [
        start_server({"area": area}, state, sources=[source], extra=NO_PEER_PORT)
    ]
    port = servers[0].nfs_port

    def on_line(line: str) -> str | None:
        if line.startswith("HOST-ACTION: mark "):
            _, mark, path = line.split(": ", 1)[1].split()
            on_disk = area / path.split("/", 1)[1]
            realize(state, "mark", mark, path)
            # The host checks what the guest cannot see: where the content now lives.
            placed = on_disk.exists() == (mark == "real")
            return "HOST-DONE: ok\n" if placed else "HOST-DONE: wrong\n"
        if line.strip() == STOP_PEER:
            ok(peer_realize(peer_a, "stop"))
            return "HOST-DONE: ok\n"
        if line.strip() != RESTART:
            return None
        servers[-1].stop()
        # no source now
        servers.append(start_server({"area": area}, state, port=port, extra=NO_PEER_PORT))
        return "HOST-DONE: ok\n"

    changed = big[:10] + b"CHANGED" + big[17:]
    digests = {name: hashlib.sha256(peer_contents[name]).hexdigest() for name in PEER_READ}
    script = GUEST.replace("{peer_checks}", peer_guest(digests))
    for key, value in {
        "peer_source": shlex.quote(f"{HOST_ADDR}:/docs"),
        "peer_options": shlex.quote(mount_options(peer_b_port, peer_b_port)),
        "stop_peer": STOP_PEER,
        "source": shlex.quote(f"{HOST_ADDR}:/area"),
        "options": shlex.quote(mount_options(port, port)),
        "size": str(SIZE),
        "digest": hashlib.sha256(big).hexdigest(),
        "changed": hashlib.sha256(changed).hexdigest(),
        "restart": RESTART,
    }.items():
        script = script.replace("{" + key + "}", value)
    try:
        result = run_guest(script, timeout=600, on_line=on_line)
    finally:
        for server in servers:
            server.stop()
    print(
        "\n".join(x for x in result.output.splitlines() if x.startswith(("ok ", "FAIL", "info ")))
    )
    logs = "\n".join(s.log() for s in servers)
    peer_logs = "\n".join(
        (state / "server.log").read_text(errors="replace")
        for state in (peer_a, peer_b)
        if (state / "server.log").exists()
    )
    assert result.rc == 0, (
        result.output[-4000:] + "\n--- server ---\n" + logs[-3000:]
        + "\n--- peers ---\n" + peer_logs[-3000:]
    )  # fmt: skip
    assert sum(line.startswith("ok ") for line in result.output.splitlines()) == 14 + peer_checks()
    assert "Traceback" not in logs + peer_logs
    # On b the read files are cached, not realized; the one never read has nothing cached.
    assert [cached(peer_b, name) for name in PEER_READ] == ["100%"] * len(PEER_READ)
    assert cached(peer_b, NEVER_READ[0]) == "0%"
    assert not any((area_dir(peer_b) / name).exists() for name in peer_contents)
    assert (area / "big.bin").read_bytes() == changed
    history = realize(state, "history", "area")
    assert "rename   docs/note.txt -> moved.txt" in history
    assert "delete   moved.txt" in history
    assert "rename   local.txt -> docs/renamed.txt" in history
    assert "delete   docs/renamed.txt" in history
