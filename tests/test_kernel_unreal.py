"""The Linux kernel's NFS client and the Unreal layer, in one qemu boot: Real and Unreal files
listed together, a 64 MiB Unreal file read by checksum while its chunks arrive from an attached
source, read again from the cache after the server restarted without the source, written to
(which realizes it), renamed and deleted, Real files too, with the changes in the history;
and a Real file marked `unreal` (its content moved into the cache) then `real` again while
the client keeps reading it by the same handle."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import time

import pytest

from tests.support.qemu_guest import HOST_ADDR, mount_options, run_guest, unavailable_reason
from tests.support.server import ServerProcess, start_server
from tests.test_unreal import realize

pytestmark = [pytest.mark.slow, pytest.mark.kernel]
SIZE = 64 * 1024 * 1024
RESTART = "HOST-ACTION: restart-without-source"

GUEST = r"""
fails=0
check() { if eval "$2"; then echo "ok $1"; else echo "FAIL $1"; fails=$((fails + 1)); fi; }
digest() { sha256sum < "$1" | cut -d' ' -f1; }
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


def test_kernel_client_reads_and_changes_unreal_files(tmp_path):
    reason = unavailable_reason()
    if reason:
        pytest.fail(f"the kernel-client guest cannot run here: {reason} (run scripts/test)")
    source_area, source = tmp_path / "source-area", tmp_path / "source-state"
    (source_area / "docs").mkdir(parents=True)
    big = os.urandom(SIZE)
    (source_area / "big.bin").write_bytes(big)
    (source_area / "docs" / "note.txt").write_text("a note\n")
    server = start_server({"area": source_area}, source, extra=["--rest", "0.1"])
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

    servers: list[ServerProcess] = [start_server({"area": area}, state, sources=[source])]
    port = servers[0].nfs_port

    def on_line(line: str) -> str | None:
        if line.startswith("HOST-ACTION: mark "):
            _, mark, path = line.split(": ", 1)[1].split()
            on_disk = area / path.split("/", 1)[1]
            realize(state, "mark", mark, path)
            # The host checks what the guest cannot see: where the content now lives.
            ok = on_disk.exists() == (mark == "real")
            return "HOST-DONE: ok\n" if ok else "HOST-DONE: wrong\n"
        if line.strip() != RESTART:
            return None
        servers[-1].stop()
        servers.append(start_server({"area": area}, state, port=port))  # no source now
        return "HOST-DONE: ok\n"

    changed = big[:10] + b"CHANGED" + big[17:]
    script = GUEST
    for key, value in {
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
    logs = "\n".join(s.log() for s in servers)
    assert result.rc == 0, result.output[-3000:] + "\n--- server ---\n" + logs[-3000:]
    assert sum(line.startswith("ok ") for line in result.output.splitlines()) == 14
    assert "Traceback" not in logs
    assert (area / "big.bin").read_bytes() == changed
    history = realize(state, "history", "area")
    assert "rename   docs/note.txt -> moved.txt" in history
    assert "delete   moved.txt" in history
    assert "rename   local.txt -> docs/renamed.txt" in history
    assert "delete   docs/renamed.txt" in history
