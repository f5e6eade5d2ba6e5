"""Reputation from evidence: spot checks with known-answer items, decaying demotion of liars.

An expert that answers promptly but wrongly (issue 12, "lying experts": one
that always picks a wrong option) is invisible to latency and failure
bookkeeping.  So at a low rate (:data:`SPOT_CHECK_RATE` of queries) the
coordinator also asks the expert that answered a dev item of the shared task
files (``../shared/data/tasks``, scored by :mod:`node.evaluation`, the same
scorer as the evaluation) whose answer it knows, and keeps decaying counts of
right and wrong answers per peer.

An expert is *demoted* when its observed accuracy is implausibly low next to
what the other checked experts achieve on the same kind of items: the
one-sided binomial probability of doing that badly by chance falls under
:data:`DEMOTE_P`.  A weak honest model is compared with its peers, not with
perfection, so it is not demoted for being small.  Demoted experts rank after
every other one (as banned ones do) and the evidence decays with
:data:`HALF_LIFE_S`, so a peer that stops lying comes back.

Not done here: comparing an expert's *claimed* self-evaluation score with the
observed one (records carry no claim yet; docs/security.md).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass

import trio

from node.evaluation import TaskItem, build_prompt, find_tasks_dir, load_task_dir, score
from node.logs import event, get_logger
from protocol import ChatMessage, GenerateRequest, GenerateResult, SamplingParams

log = get_logger("coordinator.reputation")

# Fraction of answered queries after which the answering expert is spot-checked.
SPOT_CHECK_RATE = 0.05
# Known-answer items asked per spot check.
ITEMS_PER_CHECK = 2
# Seconds after which a piece of evidence counts half (a reformed peer comes back).
HALF_LIFE_S = 3600.0
# Demote when doing this badly by chance is less likely than this (one-sided binomial).
DEMOTE_P = 0.01
# Floor of the baseline accuracy a peer is compared with (chance on four options).
MIN_BASELINE = 0.25
# Tokens an expert may spend on one spot-check answer, and seconds it may take.
CHECK_TOKENS = 24
CHECK_TIMEOUT = 60.0
# Task files whose dev items serve as known-answer checks (multiple choice: cheap to score).
CHECK_TASKS = ("arc_challenge", "mmlu_redux", "truthfulqa")


@dataclass
class _Evidence:
    correct: float = 0.0
    total: float = 0.0
    at: float = 0.0


class Reputation:
    """Decaying right/wrong counts per peer and the demotion rule."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, half_life_s: float = HALF_LIFE_S) -> None:
        self._clock = clock
        self._half_life = half_life_s
        self._peers: dict[str, _Evidence] = {}

    def _current(self, peer_id: str) -> _Evidence:
        now = self._clock()
        evidence = self._peers.setdefault(peer_id, _Evidence(at=now))
        factor = 0.5 ** (max(0.0, now - evidence.at) / self._half_life)
        evidence.correct, evidence.total, evidence.at = evidence.correct * factor, evidence.total * factor, now
        return evidence

    def record(self, peer_id: str, correct: bool) -> None:
        evidence = self._current(peer_id)
        evidence.total += 1.0
        evidence.correct += 1.0 if correct else 0.0

    def observed(self, peer_id: str) -> tuple[float, float]:
        """(right answers, answers checked), decayed."""
        evidence = self._current(peer_id)
        return evidence.correct, evidence.total

    def baseline(self, exclude: str) -> float:
        """Pooled accuracy of the other checked peers (at least :data:`MIN_BASELINE`)."""
        right = total = 0.0
        for peer_id in list(self._peers):
            if peer_id != exclude:
                c, t = self.observed(peer_id)
                right, total = right + c, total + t
        return max(MIN_BASELINE, right / total) if total else MIN_BASELINE

    def demoted(self, peer_id: str) -> bool:
        if peer_id not in self._peers:
            return False
        correct, total = self.observed(peer_id)
        n, k = int(total + 1e-9), int(correct + 0.5)
        return n > 0 and binomial_cdf(k, n, self.baseline(peer_id)) < DEMOTE_P

    def snapshot(self, peer_id: str) -> dict[str, float | bool]:
        correct, total = self.observed(peer_id)
        return {"checked": round(total, 2), "right": round(correct, 2), "demoted": self.demoted(peer_id)}


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p)."""
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(min(k, n) + 1))


def load_check_items(limit_per_task: int = 100) -> list[TaskItem]:
    """Dev items of :data:`CHECK_TASKS` from ``../shared/data/tasks`` ([] where the files are absent)."""
    folder = find_tasks_dir()
    if folder is None:
        return []
    try:
        sets = load_task_dir(folder, list(CHECK_TASKS))
    except Exception as exc:  # noqa: BLE001 - no task files, no spot checks; never a failed query
        event(log, "spot_checks_disabled", reason=f"{type(exc).__name__}: {exc}"[:200])
        return []
    return [item for task in sets for item in task.items("dev", limit_per_task)]


class SpotChecker:
    """Decides when to spot-check and runs one check through the coordinator's transport."""

    def __init__(self, reputation: Reputation, items: Sequence[TaskItem] | None = None, *,
                 rate: float = SPOT_CHECK_RATE, items_per_check: int = ITEMS_PER_CHECK,
                 rng: random.Random | None = None) -> None:
        self.reputation = reputation
        self._items = list(items) if items is not None else None  # None: loaded on first use
        self.rate = rate
        self.items_per_check = items_per_check
        self._rng = rng or random.Random()
        self.checks = 0

    def due(self) -> bool:
        return self.rate > 0 and self._rng.random() < self.rate

    def pick(self, peers: Sequence[str]) -> str:
        return self._rng.choice(list(peers))

    async def check(self, transport: object, peer_id: str) -> None:
        """Ask ``peer_id`` known-answer items and record each verdict (a failed call records nothing:
        failures are the health bookkeeping's business)."""
        if self._items is None:
            self._items = await trio.to_thread.run_sync(load_check_items)
        if not self._items:
            return
        self.checks += 1
        for item in self._rng.sample(self._items, min(self.items_per_check, len(self._items))):
            request = GenerateRequest(request_id=f"spot-{self.checks}-{self._rng.randrange(1 << 30)}",
                                      messages=(ChatMessage(role="user", content=build_prompt(item)),),
                                      sampling=SamplingParams(max_new_tokens=CHECK_TOKENS, temperature=0.0),
                                      timeout_s=CHECK_TIMEOUT, stream=True)
            reply = None
            with trio.move_on_after(CHECK_TIMEOUT):
                try:
                    async with aclosing(transport.generate(peer_id, request)) as events:  # type: ignore[attr-defined]
                        async for message in events:
                            if isinstance(message, GenerateResult):
                                reply = message.text
                except Exception as exc:  # noqa: BLE001 - a failed check is no evidence either way
                    event(log, "spot_check_failed", peer=peer_id, error=f"{type(exc).__name__}: {exc}"[:160])
            if reply is None:
                continue
            verdict = score(item, reply)
            self.reputation.record(peer_id, verdict.correct)
            event(log, "spot_check", peer=peer_id, task=item.task, correct=verdict.correct,
                  demoted=self.reputation.demoted(peer_id))
