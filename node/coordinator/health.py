"""What this coordinator has seen of each expert, forgetting it over time.

Penalties must decay, or one bad moment exiles an expert for good: an expert
measured slow once ranks lower, is never asked again, so its slowness is never
re-measured (issue 11 item 10).  Here every observation fades with a
half-life, and a ban after failures backs off exponentially but always ends,
after which the expert is re-probed like any other (petals bans peers the same
way: ``client/routing/sequence_manager.py``, ban timeout doubled per failure).

Pure: the clock is passed in, so tests step time instead of sleeping.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

# How fast old news fades: after one half-life a latency excess or a failure counts half.
HALF_LIFE_S = 60.0
# Ban after a failure: BAN_BASE_S, doubled per consecutive failure, at most BAN_MAX_S.
BAN_BASE_S = 2.0
BAN_MAX_S = 120.0
_ALPHA = 0.3  # weight of a new latency sample in the moving average


@dataclass(slots=True)
class _Peer:
    latency_s: float | None = None  # moving average of time to first token
    latency_at: float = 0.0
    failures: float = 0.0  # decaying count
    failures_at: float = 0.0
    consecutive: int = 0  # failures since the last success (sets the ban length)
    banned_until: float = 0.0
    step_s: float | None = None  # moving averages of a generation's seconds, and per token (the measured rate)
    token_s: float | None = None


class Health:
    """Decaying latency and failure observations plus backed-off bans, per peer id."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, half_life_s: float = HALF_LIFE_S) -> None:
        self._clock = clock
        self._half_life = half_life_s
        self._peers: dict[str, _Peer] = {}

    def _decay(self, since: float) -> float:
        return 0.5 ** (max(0.0, self._clock() - since) / self._half_life)

    def success(self, peer_id: str, first_token_s: float) -> None:
        """A step of ``peer_id`` produced its first token after ``first_token_s`` seconds."""
        peer = self._peers.setdefault(peer_id, _Peer())
        now = self._clock()
        old = self.latency(peer_id)
        peer.latency_s = first_token_s if old is None else old + _ALPHA * (first_token_s - old)
        peer.latency_at = now
        peer.consecutive = 0
        peer.banned_until = 0.0

    def failure(self, peer_id: str) -> None:
        """A step of ``peer_id`` failed (error, timeout, dropped stream): penalise and ban for a while."""
        peer = self._peers.setdefault(peer_id, _Peer())
        now = self._clock()
        peer.failures = min(self.failures(peer_id) + 1.0, 10.0)
        peer.failures_at = now
        peer.consecutive += 1
        peer.banned_until = now + min(BAN_MAX_S, BAN_BASE_S * 2 ** (peer.consecutive - 1))

    def finished(self, peer_id: str, seconds: float, tokens: int) -> None:
        """A generation of ``peer_id`` took ``seconds`` for ``tokens`` tokens: its measured rate (patience.py)."""
        peer = self._peers.setdefault(peer_id, _Peer())
        per_token = seconds / max(1, tokens)
        peer.step_s = seconds if peer.step_s is None else peer.step_s + _ALPHA * (seconds - peer.step_s)
        peer.token_s = per_token if peer.token_s is None else peer.token_s + _ALPHA * (per_token - peer.token_s)

    def rate(self, peer_id: str) -> tuple[float, float] | None:
        """(seconds per generation, seconds per token) measured on ``peer_id`` (None: never measured)."""
        peer = self._peers.get(peer_id)
        if peer is None or peer.step_s is None or peer.token_s is None:
            return None
        return peer.step_s, peer.token_s

    def typical_rate(self) -> tuple[float, float] | None:
        """The median measured rate over every peer (None: nobody measured yet)."""
        rates = [r for r in (self.rate(p) for p in list(self._peers)) if r is not None]
        if not rates:
            return None
        steps, tokens = sorted(r[0] for r in rates), sorted(r[1] for r in rates)
        return steps[len(steps) // 2], tokens[len(tokens) // 2]

    def latency(self, peer_id: str) -> float | None:
        """Observed time to first token; decays toward 0 with age, so a slow expert gets re-probed."""
        peer = self._peers.get(peer_id)
        if peer is None or peer.latency_s is None:
            return None
        return peer.latency_s * self._decay(peer.latency_at)

    def raw_latency(self, peer_id: str) -> float | None:
        """The last moving average, not decayed: what bounds the wait for this expert's first token."""
        peer = self._peers.get(peer_id)
        return None if peer is None else peer.latency_s

    def failures(self, peer_id: str) -> float:
        peer = self._peers.get(peer_id)
        if peer is None:
            return 0.0
        value = peer.failures * self._decay(peer.failures_at)
        return value if value >= 0.05 else 0.0

    def banned(self, peer_id: str) -> bool:
        peer = self._peers.get(peer_id)
        return peer is not None and self._clock() < peer.banned_until

    def snapshot(self, peer_id: str) -> dict[str, float | bool | None]:
        """For ``GET /status``: what routing currently holds against this peer."""
        latency = self.latency(peer_id)
        return {"latency_s": None if latency is None else round(latency, 3),
                "recent_failures": round(self.failures(peer_id), 2), "banned": self.banned(peer_id)}


def finite(seconds: float) -> float:
    """A duration safe for the wire (non-negative, finite)."""
    return seconds if math.isfinite(seconds) and seconds >= 0 else 0.0
