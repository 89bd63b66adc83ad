"""`scripts/bench [--quick] [--out DIR]`: the command line of the benchmark.

Installs what it needs from Debian (nfs-ganesha, nfs-ganesha-vfs, rpcbind, libnfs-utils) when
missing, then, as root, re-runs itself in a private network and mount namespace (its own
loopback, port 111 and /run), so the portmapper ganesha needs and ganesha's registrations
never touch the host's, and nothing else on the host talks to the servers under test. Writes
results.md, results.png and results.json into the output directory (default docs/bench).
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from tests.support.bench import report
from tests.support.bench.run import REPO, Settings, run_bench

DEBIAN_PACKAGES = ("nfs-ganesha", "nfs-ganesha-vfs", "rpcbind", "libnfs-utils")
IN_NAMESPACE = "REALIZE_BENCH_IN_NAMESPACE"
DEFAULT_OUT = REPO / "docs" / "bench"


class BenchUsageError(Exception):
    """Something the bench needs is missing; printed without a traceback."""


def log(message: str) -> None:
    print(f"bench: {message}", flush=True)


def _installed(package: str) -> bool:
    if shutil.which("dpkg-query") is None:
        return False
    out = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
    )
    return out.returncode == 0 and "install ok installed" in out.stdout


def ensure_packages() -> None:
    """apt-get install what is missing (through sudo unless root); a clear error otherwise."""
    missing = [p for p in DEBIAN_PACKAGES if not _installed(p)]
    if not missing:
        return
    apt = shutil.which("apt-get")
    if apt is None:
        raise BenchUsageError(f"missing {' '.join(missing)} and no apt-get to install them")
    prefix = [] if os.geteuid() == 0 else ["sudo"]
    if prefix and shutil.which("sudo") is None:
        raise BenchUsageError(f"missing {' '.join(missing)}: install them as root")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    install = [*prefix, apt, "install", "-y", "-q", "--no-install-recommends", *missing]
    log(f"installing {' '.join(missing)}")
    if subprocess.run(install, env=env).returncode != 0:
        subprocess.run([*prefix, apt, "update", "-q"], env=env)
        if subprocess.run(install, env=env).returncode != 0:
            raise BenchUsageError(
                f"could not install {' '.join(missing)} with apt-get; install them by hand"
            )
    still = [p for p in missing if not _installed(p)]
    if still:
        raise BenchUsageError(f"{' '.join(still)} still missing after apt-get install")


def ensure_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise BenchUsageError(
            "matplotlib is missing: pip install -e '.[test]' (or pip install matplotlib)"
        ) from None


def _tool(name: str) -> str:
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    if path is None:
        raise BenchUsageError(f"{name} is missing")
    return path


def enter_namespace() -> None:
    """Re-run this command in new network and mount namespaces, then set them up."""
    if os.environ.get(IN_NAMESPACE) != "1":
        unshare = _tool("unshare")
        env = dict(os.environ, **{IN_NAMESPACE: "1"})
        command = [unshare, "--net", "--mount", "--propagation", "private", "--"]
        os.execve(unshare, [*command, sys.executable, *sys.argv], env)
    ip = _tool("ip")
    subprocess.run([ip, "link", "set", "lo", "up"], check=True)
    # glibc's getaddrinfo(AI_ADDRCONFIG) ignores 127.0.0.1 itself: with no other IPv4 address
    # it cannot resolve "127.0.0.1", and ganesha refuses its Bind_addr.
    subprocess.run([ip, "addr", "add", "127.0.0.2/32", "dev", "lo"], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "realize-bench-run", "/run"], check=True)
    Path("/run/rpcbind").mkdir()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Realize against nfs-ganesha on loopback: same data, same clients.",
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="tiny sizes, one round, 1 s per rate: checks the harness (about a minute)",
    )  # fmt: skip
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help=f"output directory (default {DEFAULT_OUT})"
    )
    parser.add_argument("--workdir", type=Path, help="where the data goes (default: $TMPDIR)")
    parser.add_argument("--rounds", type=int, help="rounds (default 3, or 1 with --quick)")
    parser.add_argument(
        "--no-namespace", action="store_true",
        help="use the host's loopback and portmapper (default as root: private namespaces)",
    )  # fmt: skip
    parser.add_argument(
        "--update-readme", action="store_true",
        help="put the table and chart into README.md between the bench markers",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    try:
        if os.environ.get(IN_NAMESPACE) != "1":
            ensure_packages()
            ensure_matplotlib()
            for tool in ("nfs-cp", "ganesha.nfsd", "rpcbind"):
                _tool(tool)
        in_namespace = False
        if not args.no_namespace and os.geteuid() == 0:
            enter_namespace()
            in_namespace = True
    except BenchUsageError as e:
        print(f"scripts/bench: {e}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as e:
        print(f"scripts/bench: setting up the namespace failed: {e}", file=sys.stderr)
        return 2

    settings = Settings.quick_run() if args.quick else Settings.full()
    if args.rounds:
        settings.rounds = args.rounds
    out = args.out.resolve()
    results = run_bench(settings, log, args.workdir, in_namespace)
    shown = ["scripts/bench"] + (["--quick"] if args.quick else [])
    if args.rounds:
        shown += ["--rounds", str(args.rounds)]
    if out != DEFAULT_OUT.resolve():
        shown += ["--out", str(args.out)]
    command = shlex.join(shown)
    report.write(results, out, command)
    text = (out / "results.md").read_text()
    print()
    print(text)
    if args.update_readme:
        image = os.path.relpath(out / "results.png", REPO)
        if report.update_readme(REPO / "README.md", text, image):
            log("README.md updated")
        else:
            log(f"README.md has no {report.README_START} … {report.README_END} section")
    log(f"wrote {out}/results.md, results.png, results.json in "
        f"{time.monotonic() - started:.0f} s")  # fmt: skip
    if results["errors"]:
        for error in results["errors"]:
            print(f"scripts/bench: {error}", file=sys.stderr)
        return 1
    return 0
