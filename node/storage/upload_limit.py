"""A node-wide cap on how fast we upload blocks to other peers.

Contributors run nodes on home links; serving a 500 MB base model to every
peer that asks must not eat their whole uplink.  One :class:`UploadLimiter`
is shared by every ``/mosaic/blocks/1`` stream, so the cap holds however many
peers fetch at once.  It is a token bucket written as a "virtual finish time":
each send books ``nbytes / rate`` seconds after the previous booking and
sleeps until its booking is less than one burst ahead of now.
"""

from __future__ import annotations

import trio

DEFAULT_BURST = 1024 * 1024


class UploadLimiter:
    def __init__(self, bytes_per_second: float | None, *, burst: int = DEFAULT_BURST) -> None:
        if bytes_per_second is not None and bytes_per_second <= 0:
            raise ValueError("an upload limit must be positive (or None for no limit)")
        self.rate = bytes_per_second
        self.burst = burst
        self._booked_until = 0.0

    async def acquire(self, nbytes: int) -> None:
        """Wait until ``nbytes`` more may go out without exceeding the rate."""
        if self.rate is None:
            return
        now = trio.current_time()
        self._booked_until = max(self._booked_until, now) + nbytes / self.rate
        delay = self._booked_until - self.burst / self.rate - now
        if delay > 0:
            await trio.sleep(delay)
