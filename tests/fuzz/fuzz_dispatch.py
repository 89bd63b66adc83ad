"""Coverage-guided fuzzing (atheris, libFuzzer) of a client's bytes: record marking, RPC
header decoding, dispatch, argument decoding and the NFS, MOUNT and portmap procedures over a
real tree in a temporary directory (tests/fuzz/harness.py).

    scripts/fuzz [-runs=N] [libFuzzer options]    # the usual way: see scripts/fuzz

or by hand, from the repository's root:

    PYTHONPATH=. .venv/bin/python tests/fuzz/fuzz_dispatch.py WORKDIR tests/fuzz/corpus \
        -runs=1000000 -timeout=10 -rss_limit_mb=2048

A crash is an exception escaping the dispatcher, a traceback or error the server logs, a call
record left without a reply, a call taking longer than 2 s, or this process's memory growing
past `REALIZE_FUZZ_RSS_MB` (1536 MiB by default); libFuzzer then writes the input as
crash-*. The tree is built anew every `REALIZE_FUZZ_REBUILD` inputs (20000), so what inputs
create (files, directories) does not pile up. Only the server's own modules (nfsd, xdr) are
instrumented for coverage.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import atheris

# The harness imports the whole server (nfsd, xdr): those modules are instrumented, the
# harness and the libraries are not.
with atheris.instrument_imports(include=["nfsd", "xdr"]):
    from tests.fuzz.harness import Crash, DispatchTarget, rss_bytes

RSS_LIMIT = int(os.environ.get("REALIZE_FUZZ_RSS_MB", "1536")) * 1024 * 1024
REBUILD_EVERY = int(os.environ.get("REALIZE_FUZZ_REBUILD", "20000"))
# Inputs larger than this are cut: a record bigger than a few calls finds nothing more.
MAX_INPUT = 64 * 1024

_workdir = tempfile.TemporaryDirectory(prefix="realize-fuzz-")
_target: DispatchTarget | None = None


def _setup() -> DispatchTarget:
    os.umask(0)  # as the server runs: client modes are applied as sent
    return DispatchTarget(Path(_workdir.name) / "target")


def test_one_input(data: bytes) -> None:
    global _target
    if _target is None:
        _target = _setup()
    target = _target
    if target.inputs and target.inputs % REBUILD_EVERY == 0:
        target.rebuild()
    target.check_input(data[:MAX_INPUT])
    if target.inputs % 1000 == 0 and rss_bytes() > RSS_LIMIT:
        raise Crash(f"memory: {rss_bytes() // 2**20} MiB resident after {target.inputs} inputs")


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    try:
        atheris.Fuzz()
    finally:
        if _target is not None:
            _target.close()


if __name__ == "__main__":
    main()
