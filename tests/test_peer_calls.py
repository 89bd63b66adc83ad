"""Calls both ways on one peer link, with real server processes over real TLS: a deaf peer
(one the other side has no address for, so it only dials) is called over the link it
dialled, as it calls the peer it dialled."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from tests.test_peer_link import (  # noqa: F401 (household is a fixture)
    connected,
    household,
    ok,
    realize,
    realize_process,
    start,
    token_of,
    wait_for,
)

pytestmark = pytest.mark.wire


def test_a_deaf_peer_serves_the_peer_it_dialled(household: Callable[[str], Path]) -> None:  # noqa: F811
    a, deaf = household("a"), household("deaf")
    port_a = start(a)
    ok(realize_process(a, "peer", "add", "deaf", token_of(deaf)))  # no address: never dialled
    ok(realize_process(deaf, "peer", "add", "a", token_of(a), "--address", f"127.0.0.1:{port_a}"))
    start(deaf)
    wait_for("a sees the deaf peer dialled in", lambda: connected(a, "deaf") == "yes (dialled in)")
    wait_for("the deaf peer sees its link", lambda: connected(deaf, "a") == "yes (dialled)")

    # a cannot dial the deaf peer: its answer can only come over the link the deaf peer made.
    answer = ok(realize(a, "peer", "ping", "deaf"))
    assert "deaf answered in" in answer
    assert "a answered in" in ok(realize(deaf, "peer", "ping", "a"))
    assert connected(a, "deaf") == "yes (dialled in)"

    # With the deaf peer stopped there is no link to call over.
    ok(realize(deaf, "stop"))
    wait_for("a sees the link end", lambda: connected(a, "deaf") == "no", timeout=45)
    refused = realize(a, "peer", "ping", "deaf")
    assert refused.returncode != 0 and "not connected" in refused.stderr + refused.stdout
