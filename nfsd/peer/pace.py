"""Pacing of background transfers: the chunks fetched to realize or keep a file (a mark job,
or a file arriving under a `real` or `keep` mark, nfsd/vfs/arrivals.py) take at most `rate`
bytes per second from each peer (`--peer-rate`). Chunks an NFS client waits for are never
paced: the Unreal layer says which fetches may be (`paced`, asked again while one waits), so a
reader that comes to wait for a chunk a background fetch is pacing has it sent at once.

A token bucket per peer: a fetch takes its bytes out of the peer's bucket, which refills at
`rate` and holds at most `BURST_SECONDS` of it (at least one chunk), so a transfer that was
idle does not burst far past the rate.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

BURST_SECONDS = 0.5
_LOOK_AGAIN = 0.05  # seconds between looks at whether a paced fetch is still paced


class Pace:
    def __init__(self, rate: int | None, chunk: int) -> None:
        """`rate`: bytes per second per peer (None or 0: no limit); `chunk`: the largest
        fetch, which the bucket always has room for."""
        self.rate = rate or 0
        self.burst = max(chunk, int(self.rate * BURST_SECONDS))
        self._tokens: dict[str, float] = {}
        self._filled: dict[str, float] = {}

    def _fill(self, peer: str) -> float:
        now = trio.current_time()
        tokens = self._tokens.get(peer, float(self.burst))
        tokens = min(self.burst, tokens + (now - self._filled.get(peer, now)) * self.rate)
        self._filled[peer] = now
        self._tokens[peer] = tokens
        return tokens

    async def take(self, peer: str, nbytes: int, paced: Callable[[], bool]) -> None:
        """Wait until `peer`'s bucket holds `nbytes`, and take them; at once when there is
        no limit, or as soon as `paced()` turns False (a reader is waiting now)."""
        if not self.rate:
            return
        while paced():
            tokens = self._fill(peer)
            if tokens >= nbytes:
                self._tokens[peer] = tokens - nbytes
                return
            await trio.sleep(min(_LOOK_AGAIN, (nbytes - tokens) / self.rate))
