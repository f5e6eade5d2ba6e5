"""How long a coordinator waits on an expert that says it is alive but sends no token (issue 22).

A ``Queued`` report proves the expert is alive, not that our request moves:
a tarpit that answers every request with keep-alives every 0.9 s and never a
token held ``route`` and ``moa`` until the query's whole deadline, because
each report restarted the token budget (calls.alive_but_waiting).  So a
report restarts nothing by itself.  Only *progress* does: the first report, a
lower queue position, the request starting (``started``), a token.  Two
bounds, from the expert's own queue reports and the rate this coordinator
measured (health.rate: how long a generation, and a token, take there, from
the expert's first message to its result):

* without progress, at most :func:`patience_s` seconds: ``SLACK`` x one
  generation's measured time (this expert's, else the median of its peers';
  with nothing measured, half the query's remaining time), never under
  ``MIN_PATIENCE_S``;
* in all, before the first token, at most the patience once per request
  ahead of ours in the first report (``position``) plus one: a queue that
  moves still moves at the measured rate.

Past either bound the step fails with ``timeout`` (a health failure: a ban
that backs off and a ranking penalty), and the pool fails over.  Only where
failing over helps (Pool.generate): not on the node's own expert, whose full
queue is real, nor on the last expert of a failover list (a fan-out's members
are each other's failover, so they are always bounded).  Pure: the clock is
passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol import Queued

# Seconds of one generation multiplied by this: an honest expert's slower moments fit.
SLACK = 4.0
# Never give up on a queue sooner than this (a fast expert's measured step can be 0.1 s).
MIN_PATIENCE_S = 4.0
# The total-wait bound counts at most this many requests ahead (a claimed position is a claim).
MAX_POSITIONS = 16


def patience_s(rate: tuple[float, float] | None, max_tokens: int, unmeasured_s: float) -> float:
    """Seconds to wait without progress.

    ``rate``: (seconds per generation, seconds per token) measured on the expert, else on
    its peers.  A slot frees when a generation ends, and one ahead of ours may be as long
    as ours (``max_tokens``): SLACK x the longer of the two estimates.  Nothing measured
    at all: ``unmeasured_s`` (the pool passes half the query's remaining time, so a tarpit
    still leaves time to fail over).
    """
    if rate is None:
        return unmeasured_s
    step_s, token_s = rate
    return max(MIN_PATIENCE_S, SLACK * max(step_s, token_s * max_tokens))


@dataclass
class QueueWait:
    """One step's wait: the time of the last progress and the bound on the total wait."""

    patience: float
    began: float
    last_progress: float = field(init=False)
    position: int | None = None
    started: bool = False
    total_limit: float | None = None  # set by the first report (its position)
    tokens: bool = False
    keepalives: int = 0
    heard: float | None = None  # when the expert's first message came (the dial is not its rate)

    def __post_init__(self) -> None:
        self.last_progress = self.began

    def report(self, message: Queued, now: float) -> None:
        """A ``Queued`` report: progress only if it is the first, a lower position or the start."""
        self.keepalives += 1
        first = self.position is None
        if first:
            ahead = min(max(0, message.position - 1), MAX_POSITIONS)
            self.total_limit = self.patience * (ahead + 1)
        if first or message.position < (self.position or 0) or (message.started and not self.started):
            self.last_progress = now
        self.position = message.position if first else min(message.position, self.position or message.position)
        self.started = self.started or message.started

    def progress(self, now: float) -> None:
        """A token (or the result) arrived."""
        self.tokens = True
        self.last_progress = now

    def gives_up_at(self) -> float:
        """When this wait ends unless progress comes first."""
        at = self.last_progress + self.patience
        if not self.tokens and self.total_limit is not None:
            at = min(at, self.began + self.total_limit)
        return at

    def why(self, now: float) -> str:
        if not self.tokens and self.total_limit is not None and now >= self.began + self.total_limit:
            return (f"queued {now - self.began:.1f} s without a token ({self.keepalives} keep-alives), over the "
                    f"{self.total_limit:.1f} s its queue position allows at its measured rate")
        return (f"no progress for {now - self.last_progress:.1f} s ({self.keepalives} keep-alives, "
                f"patience {self.patience:.1f} s from the measured rate)")
