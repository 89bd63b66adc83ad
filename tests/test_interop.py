"""Interoperability with Debian's own NFS tools, run against a real server process.

- libnfs (`nfs-ls`, `nfs-cat`, `nfs-cp`): a C NFSv3 client. It splits a URL's path into the
  export to MNT (everything up to the last "/") and the file, and on a mount of "/" it reads the
  EXPORT list and crosses into the nested per-area exports itself. So `nfs://host/area/file`
  mounts "/area", `nfs://host/area/dir/file` mounts the subdirectory "/area/dir", and only the
  listing of `nfs://host/` goes through the root export.
- `rpcinfo` (rpcbind) and `showmount` (nfs-common) ask the portmapper on port 111. Each of those
  tests runs in a private network and mount namespace (its own loopback and port 111, its own
  /run for rpcbind's socket), in both situations a server meets: port 111 free, so the server
  serves the portmapper itself (`--portmap on`), or a system rpcbind there, which the server
  registers with (`--portmap auto`). The host's own port 111 and rpcbind are never touched.

These tools are installed by scripts/test; a missing one is a failure, not a skip.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.server import ServerProcess, start_server

HOST = "127.0.0.1"
TOOLS = {
    "nfs-ls": "libnfs-utils",
    "nfs-cat": "libnfs-utils",
    "nfs-cp": "libnfs-utils",
    "rpcinfo": "rpcbind",
    "rpcbind": "rpcbind",
    "showmount": "nfs-common",
    "unshare": "util-linux",
    "nsenter": "util-linux",
    "ip": "iproute2",
}
BIG_SIZE = 20 * 1024 * 1024
NFS, MOUNT, PORTMAP = 100003, 100005, 100000

# Names a listing must return exactly: non-ASCII in several scripts, spaces, punctuation.
ODD_NAMES = [
    "héllo wörld.txt",
    "日本語のファイル.txt",
    "emoji 🎉 party",
    "naïve café",
    "Straße",
    "quote's & semi;colon",
    "x" * 200,
]
MANY = 300


def tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        pytest.fail(f"{name} is missing: install Debian's {TOOLS[name]} (scripts/test does)")
    return path


def run(args: list[str], *, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
    args = [tool(args[0]), *args[1:]] if args[0] in TOOLS else args
    proc = subprocess.run(args, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        pytest.fail(
            f"{' '.join(args)} exited {proc.returncode}\n"
            f"stdout: {proc.stdout.decode(errors='replace')}\n"
            f"stderr: {proc.stderr.decode(errors='replace')}"
        )
    return proc


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_random(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        left = size
        while left:
            chunk = os.urandom(min(left, 1 << 20))
            f.write(chunk)
            digest.update(chunk)
            left -= len(chunk)
    return digest.hexdigest()


# ---- libnfs against a server on the host's loopback ----


@dataclass
class Libnfs:
    server: ServerProcess
    areas: dict[str, Path]

    def url(self, path: str) -> str:
        port, mount = self.server.nfs_port, self.server.mount_port
        return f"nfs://{HOST}{path}?version=3&nfsport={port}&mountport={mount}"

    def ls(self, path: str, *flags: str) -> dict[str, tuple[str, int]]:
        """nfs-ls of a directory URL: name -> (mode string, size)."""
        out = run(["nfs-ls", *flags, self.url(path)]).stdout.decode()
        entries = {}
        for line in out.splitlines():
            # "drwxr-xr-x  2     0     0         4096 name with spaces"
            mode, _nlink, _uid, _gid, size, name = line.split(None, 5)
            assert name not in entries, f"{name!r} listed twice by nfs-ls {path}"
            entries[name] = (mode, int(size))
        return entries


def _stop(server: ServerProcess) -> None:
    alive = server.process.poll() is None
    server.stop()
    log = server.log()
    assert alive, f"the server died during the tests:\n{log}"
    assert "Traceback" not in log, f"the server logged a traceback:\n{log}"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Libnfs]:
    for name in ("nfs-ls", "nfs-cat", "nfs-cp"):
        tool(name)
    base = tmp_path_factory.mktemp("interop")
    areas = {"data": base / "data", "many": base / "many", "bücher": base / "bücher"}
    for path in areas.values():
        path.mkdir()
    (areas["data"] / "hello.txt").write_text("hello, realize\n")
    (areas["data"] / "sub").mkdir()
    (areas["data"] / "sub" / "deeper").mkdir()
    (areas["data"] / "sub" / "nested ☃.bin").write_bytes(os.urandom(100_000))
    (areas["data"] / "escape").symlink_to("/etc")  # a mount path must not follow it
    (areas["bücher"] / "Der Zauberberg.txt").write_text("Thomas Mann\n")
    for i in range(MANY):
        (areas["many"] / f"entry-{i:04d}-{'y' * 40}").write_bytes(b"z" * i)
    for name in ODD_NAMES:
        (areas["many"] / name).write_text(name)
    (areas["many"] / "a directory").mkdir()
    server = start_server(areas, base / "state")
    yield Libnfs(server, areas)
    _stop(server)


@pytest.fixture(scope="module")
def read_only(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Libnfs]:
    base = tmp_path_factory.mktemp("interop-ro")
    area = base / "ro"
    (area / "sub").mkdir(parents=True)
    (area / "keep.txt").write_text("read me\n")
    server = start_server({"ro": area}, base / "state", extra=["--read-only"])
    yield Libnfs(server, {"ro": area})
    _stop(server)


@pytest.fixture(scope="module")
def big_file(served: Libnfs) -> tuple[Path, str]:
    """A 20 MiB random file in area `data` (big.bin) and its sha256."""
    path = served.areas["data"] / "big.bin"
    return path, write_random(path, BIG_SIZE)


def test_ls_root_export_lists_the_areas(served: Libnfs) -> None:
    entries = served.ls("/")
    assert set(entries) == {"data", "many", "bücher"}
    assert all(mode.startswith("d") for mode, _ in entries.values())


def test_ls_recursive_through_root_export_crosses_into_areas(served: Libnfs) -> None:
    entries = served.ls("/", "-R")
    for path in ("data/hello.txt", "data/sub/nested ☃.bin", "bücher/Der Zauberberg.txt"):
        assert path in entries, f"{path} missing from nfs-ls -R of the root export"
    assert entries["data/hello.txt"] == ("-rw-r--r--", len("hello, realize\n"))
    assert entries["data/sub/nested ☃.bin"][1] == 100_000
    assert entries["data/sub/deeper"][0].startswith("d")
    names = {p.split("/", 1)[1] for p in entries if p.startswith("many/")}
    assert len(names) == MANY + len(ODD_NAMES) + 1


def test_ls_named_export_many_entries_exact_names(served: Libnfs) -> None:
    entries = served.ls("/many/")
    expected = {f"entry-{i:04d}-{'y' * 40}" for i in range(MANY)} | set(ODD_NAMES)
    expected.add("a directory")
    missing, extra = sorted(expected - set(entries)), sorted(set(entries) - expected)
    assert not missing and not extra, f"missing {missing[:5]}, extra {extra[:5]}"
    for i in (0, 1, 137, MANY - 1):
        assert entries[f"entry-{i:04d}-{'y' * 40}"] == ("-rw-r--r--", i)
    assert entries["a directory"][0].startswith("d")
    assert entries["日本語のファイル.txt"][1] == len("日本語のファイル.txt".encode())


def test_ls_non_ascii_export_and_subdirectory_mount(served: Libnfs) -> None:
    assert set(served.ls("/bücher/")) == {"Der Zauberberg.txt"}
    # libnfs mounts the URL's whole path: "/data/sub" is a directory below export "/data".
    assert set(served.ls("/data/sub/")) == {"nested ☃.bin", "deeper"}
    assert set(served.ls("/data/sub/deeper/")) == set()


def test_mount_of_missing_or_non_directory_path_fails(served: Libnfs) -> None:
    for path, status in (
        ("/nosuch/", "MNT3ERR_NOENT"),
        ("/data/nosuch/", "MNT3ERR_NOENT"),
        ("/data/hello.txt/", "MNT3ERR_NOTDIR"),
        ("/data/../", "MNT3ERR_ACCES"),
        ("/data/escape/", "MNT3ERR_NOTDIR"),
    ):
        proc = run(["nfs-ls", served.url(path)], check=False)
        assert proc.returncode != 0, f"nfs-ls {path} succeeded"
        assert status in proc.stderr.decode(), proc.stderr.decode()


def test_cat_files(served: Libnfs) -> None:
    assert run(["nfs-cat", served.url("/data/hello.txt")]).stdout == b"hello, realize\n"
    nested = (served.areas["data"] / "sub" / "nested ☃.bin").read_bytes()
    assert run(["nfs-cat", served.url("/data/sub/nested ☃.bin")]).stdout == nested
    assert run(["nfs-cat", served.url("/bücher/Der Zauberberg.txt")]).stdout == b"Thomas Mann\n"
    proc = run(["nfs-cat", served.url("/data/no-such-file")], check=False)
    assert proc.returncode != 0 and proc.stdout == b""


@pytest.mark.parametrize("directory", ["/data", "/data/sub"], ids=["export", "subdirectory"])
def test_cp_20mib_both_directions(
    served: Libnfs, big_file: tuple[Path, str], tmp_path: Path, directory: str
) -> None:
    source, digest = big_file
    rel = directory.removeprefix("/data").lstrip("/")
    on_server = served.areas["data"] / rel
    if rel:
        shutil.copyfile(source, on_server / "big.bin")
    # server -> local
    local = tmp_path / "read.bin"
    run(["nfs-cp", served.url(f"{directory}/big.bin"), str(local)])
    assert local.stat().st_size == BIG_SIZE
    assert sha256(local) == digest, "nfs-cp read returned other bytes"
    # local -> server, a fresh random file
    upload = tmp_path / "upload.bin"
    up_digest = write_random(upload, BIG_SIZE + 12345)  # not a multiple of any block size
    run(["nfs-cp", str(upload), served.url(f"{directory}/uploaded ✓.bin")])
    landed = on_server / "uploaded ✓.bin"
    assert landed.stat().st_size == BIG_SIZE + 12345
    assert sha256(landed) == up_digest, "nfs-cp write stored other bytes"
    # and read back over NFS
    back = tmp_path / "back.bin"
    run(["nfs-cp", served.url(f"{directory}/uploaded ✓.bin"), str(back)])
    assert sha256(back) == up_digest
    landed.unlink()


def test_cp_into_read_only_export_fails_and_leaves_nothing(
    read_only: Libnfs, tmp_path: Path
) -> None:
    area = read_only.areas["ro"]
    before = sorted(p.relative_to(area) for p in area.rglob("*"))
    # Reading works: the URLs are right, only writing is refused.
    assert run(["nfs-cat", read_only.url("/ro/keep.txt")]).stdout == b"read me\n"
    upload = tmp_path / "upload.bin"
    write_random(upload, 1 << 20)
    for target in ("/ro/new.bin", "/ro/sub/new.bin", "/ro/keep.txt"):
        proc = run(["nfs-cp", str(upload), read_only.url(target)], check=False)
        assert proc.returncode != 0, f"nfs-cp into read-only {target} succeeded"
    assert sorted(p.relative_to(area) for p in area.rglob("*")) == before
    assert (area / "keep.txt").read_text() == "read me\n"


# ---- rpcinfo and showmount, in a private network and mount namespace ----

_HOLDER = """
import os, signal, subprocess
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
subprocess.run(["mount", "-t", "tmpfs", "realize-test-run", "/run"], check=True)
os.mkdir("/run/rpcbind")
print("ready", flush=True)
signal.pause()
"""


class Namespace:
    """A network namespace with loopback up, and a mount namespace with its own /run."""

    def __init__(self, workdir: Path) -> None:
        for name in ("unshare", "nsenter", "ip"):
            tool(name)
        self.holder = subprocess.Popen(
            [tool("unshare"), "--net", "--mount", "--propagation", "private", "--",
             sys.executable, "-c", _HOLDER],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        assert self.holder.stdout is not None
        if self.holder.stdout.readline().strip() != b"ready":
            self.holder.kill()
            pytest.fail(f"cannot make a namespace (needs root): {self.holder.stderr.read()!r}")
        self.prefix = [tool("nsenter"), "-t", str(self.holder.pid), "-n", "-m", "--"]
        # A python that runs inside the namespaces, for start_server (nsenter execs: same pid).
        self.python = workdir / "ns-python"
        self.python.write_text(f'#!/bin/sh\nexec {" ".join(self.prefix)} {sys.executable} "$@"\n')
        self.python.chmod(0o755)
        self.processes: list[subprocess.Popen] = []

    def run(self, args: list[str], *, check: bool = True) -> subprocess.CompletedProcess:
        return run([*self.prefix, tool(args[0]), *args[1:]], check=check, timeout=30)

    def start_server(self, areas: dict[str, Path], state: Path, **kw) -> ServerProcess:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(sys, "executable", str(self.python))
            return start_server(areas, state, **kw)

    def start_rpcbind(self) -> None:
        proc = subprocess.Popen(
            [*self.prefix, tool("rpcbind"), "-f", "-w"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.processes.append(proc)
        for _ in range(100):
            if self.run(["rpcinfo", "-p", HOST], check=False).returncode == 0:
                return
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        pytest.fail("rpcbind did not start in the namespace")

    def close(self) -> None:
        for proc in self.processes:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.holder.send_signal(signal.SIGTERM)
        self.holder.wait(10)


@dataclass
class PortmapSetup:
    ns: Namespace
    server: ServerProcess
    rpcbind: bool  # True: a system rpcbind holds 111; False: the server serves it


@pytest.fixture(params=["server-serves-111", "system-rpcbind-on-111"], scope="module")
def portmap_setup(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PortmapSetup]:
    for name in ("rpcinfo", "showmount", "rpcbind"):
        tool(name)
    base = tmp_path_factory.mktemp("portmap")
    areas = {"data": base / "data", "photos": base / "photos"}
    for path in areas.values():
        path.mkdir()
    ns = Namespace(base)
    server = None
    try:
        rpcbind = request.param == "system-rpcbind-on-111"
        if rpcbind:
            ns.start_rpcbind()
            # A stale registration, as a crashed earlier server leaves: it must be replaced.
            ns.run([sys.executable, "-c", _STALE])
            server = ns.start_server(areas, base / "state", portmap="auto", mount_port=20048)
        else:
            server = ns.start_server(areas, base / "state", portmap="on")
        yield PortmapSetup(ns, server, rpcbind)
        _stop(server)
        if rpcbind:
            left = {e for e in _rpcinfo_p(ns) if e[0] in (NFS, MOUNT)}
            assert not left, f"the server left registrations in rpcbind: {sorted(left)}"
    finally:
        if server is not None:
            server.stop()
        ns.close()


_STALE = f"""
import sys, trio
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from nfsd.sysrpcbind import Wanted, register
assert trio.run(register, [Wanted({NFS}, 3, "tcp", "127.0.0.1", 1)])
"""


def _rpcinfo_p(ns: Namespace) -> set[tuple[int, int, str, int]]:
    out = ns.run(["rpcinfo", "-p", HOST]).stdout.decode()
    lines = out.splitlines()
    assert lines[0].split() == ["program", "vers", "proto", "port", "service"], out
    entries = set()
    for line in lines[1:]:
        prog, vers, proto, port = line.split()[:4]
        entries.add((int(prog), int(vers), proto, int(port)))
    return entries


def test_rpcinfo_p_lists_nfs_and_mount(portmap_setup: PortmapSetup) -> None:
    nfs_port, mount_port = portmap_setup.server.nfs_port, portmap_setup.server.mount_port
    if portmap_setup.rpcbind:
        assert mount_port == 20048 != nfs_port
    entries = _rpcinfo_p(portmap_setup.ns)
    expected = {(NFS, 3, proto, nfs_port) for proto in ("tcp", "udp")} | {
        (MOUNT, vers, proto, mount_port) for vers in (1, 3) for proto in ("tcp", "udp")
    }
    ours = {e for e in entries if e[0] in (NFS, MOUNT)}
    assert ours == expected, f"rpcinfo -p: {sorted(entries)}"
    assert {(PORTMAP, 2, "tcp", 111), (PORTMAP, 2, "udp", 111)} <= entries


def test_rpcinfo_null_pings(portmap_setup: PortmapSetup) -> None:
    ns, server = portmap_setup.ns, portmap_setup.server
    for prog, vers in ((NFS, 3), (MOUNT, 1), (MOUNT, 3)):
        for transport in ("-t", "-u"):
            out = ns.run(["rpcinfo", transport, HOST, str(prog), str(vers)]).stdout.decode()
            assert f"program {prog} version {vers} ready and waiting" in out
    out = ns.run(["rpcinfo", "-n", str(server.mount_port), "-t", HOST, str(MOUNT), "3"])
    assert f"program {MOUNT} version 3 ready and waiting" in out.stdout.decode()
    out = ns.run(["rpcinfo", "-n", str(server.nfs_port), "-u", HOST, str(NFS), "3"])
    assert f"program {NFS} version 3 ready and waiting" in out.stdout.decode()


@pytest.mark.parametrize(("prog", "vers", "low", "high"), [(NFS, 4, 3, 3), (MOUNT, 2, 1, 3)])
def test_rpcinfo_reports_version_mismatch(
    portmap_setup: PortmapSetup, prog: int, vers: int, low: int, high: int
) -> None:
    for transport in ("-t", "-u"):
        proc = portmap_setup.ns.run(["rpcinfo", transport, HOST, str(prog), str(vers)], check=False)
        text = (proc.stdout + proc.stderr).decode()
        assert proc.returncode != 0, text
        assert re.search(
            rf"version mismatch; low version = {low}, high version = {high}", text, re.I
        ), text
        assert f"program {prog} version {vers} is not available" in text


def test_rpcinfo_unknown_program_is_not_registered(portmap_setup: PortmapSetup) -> None:
    proc = portmap_setup.ns.run(["rpcinfo", "-t", HOST, "100021", "4"], check=False)
    assert proc.returncode != 0
    assert "not registered" in (proc.stdout + proc.stderr).decode().lower()


def test_showmount_lists_exports(portmap_setup: PortmapSetup) -> None:
    out = portmap_setup.ns.run(["showmount", "-e", HOST]).stdout.decode()
    lines = out.splitlines()
    assert lines[0] == f"Export list for {HOST}:", out
    exports = {line.split()[0]: line.split()[1:] for line in lines[1:]}
    assert exports == {"/": ["*"], "/data": ["*"], "/photos": ["*"]}, out
