"""Reputation from evidence: spot checks, claimed vs observed scores, consensus; decaying demotion.

An expert that answers promptly but wrongly (issue 12, "lying experts": one
that always picks a wrong option) is invisible to latency and failure
bookkeeping.  Three kinds of evidence catch it, each kept as decaying counts per
peer (:data:`HALF_LIFE_S`, so a peer that stops lying comes back):

* **Spot checks**: at a low rate (:data:`SPOT_CHECK_RATE` of queries; higher
  for a peer on probation, :data:`PROBATION_RATE`) the coordinator asks an
  expert that contributed a dev item of the shared task files
  (``../shared/data/tasks``) or, where those are absent, one of the known-answer
  items the package ships (known_answers.py), scored by :mod:`node.evaluation`,
  the evaluation's scorer, whose answer it knows.  Demoted when its accuracy is implausibly low
  next to what the other checked experts achieve (one-sided binomial under
  :data:`DEMOTE_P`), so a small honest model is compared with its peers, not
  with perfection.
* **Claimed vs observed**: a record's self-evaluation (``evals``: task, accuracy)
  is a claim.  Spot checks ask items of a task the expert claims, and it is
  demoted when doing as badly as observed is implausible at its own claim (less
  :data:`CLAIM_MARGIN`): a liar that over-claims to be routed first is caught
  after a few checks.
* **Consensus** (consensus.py): every fan-out query tells whether each member
  agreed with a clear majority of the others.  Demoted when its agreement rate is
  implausibly below :data:`AGREEMENT_RATIO` of its peers' rate, after at least
  :data:`MIN_AGREEMENT_OBSERVATIONS` observations.  The ratio is the slack that
  keeps an honest expert that is sometimes right against the majority routable.

Demoted experts rank after every other one, like banned ones, and fan-outs leave
them out while enough other experts remain (pool.py); a demoted peer is restored
once its evidence is no longer below :data:`RESTORE_P` (hysteresis, so a peer at
the edge does not flap).  ``snapshot`` (``/status``) says why, and every demotion
and restoration is logged (``expert_demoted`` / ``expert_restored``).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import aclosing
from dataclasses import dataclass

import trio

from node.evaluation import TaskItem, build_prompt, find_tasks_dir, load_task_dir, score
from node.logs import event, get_logger
from protocol import ChatMessage, EvalScore, GenerateRequest, GenerateResult, SamplingParams, Trace

from . import consensus
from .known_answers import known_answer_items

log = get_logger("coordinator.reputation")

# Fraction of answered queries after which a contributing expert is spot-checked.
SPOT_CHECK_RATE = 0.05
# Known-answer items asked per spot check.
ITEMS_PER_CHECK = 2
# Seconds after which a piece of evidence counts half (a reformed peer comes back).
HALF_LIFE_S = 3600.0
# Demote when doing this badly by chance is less likely than this (one-sided binomial); a demoted
# peer is restored only once it is no longer below RESTORE_P (hysteresis: no flapping at the edge).
DEMOTE_P = 0.01
RESTORE_P = 0.05
# Floor of the baseline accuracy a peer is compared with (chance on four options).
MIN_BASELINE = 0.25
# Claims are compared with what spot checks observe less this margin (other items than the claim's).
CLAIM_MARGIN = 0.1
# Consensus: compared with this fraction of the peers' agreement rate, after this many observations.
AGREEMENT_RATIO = 0.7
MIN_AGREEMENT_OBSERVATIONS = 8
# Probation (issue 22): a peer with fewer than PROBATION_ITEMS checked answers that contributed to a
# query answered by several peers (where its answer can be the final one) is checked at PROBATION_RATE
# instead of SPOT_CHECK_RATE, so a new liar meets enough known answers to be demoted within a few dozen
# such queries; once the evidence is in, the normal rate applies (the decay brings probation back).
PROBATION_RATE = 0.25
PROBATION_ITEMS = 12
# z of the one-sided lower confidence bound that ranks members for a vote's tie-break (95 %).
TRUST_Z = 1.645
# Tokens an expert may spend on one spot-check answer, and seconds it may take.
CHECK_TOKENS = 24
CHECK_TIMEOUT = 60.0
# Task files whose dev items serve as known-answer checks (multiple choice: cheap to score).
CHECK_TASKS = ("arc_challenge", "mmlu_redux", "truthfulqa")


@dataclass
class _Tally:
    """Decaying hits out of total."""

    hits: float = 0.0
    total: float = 0.0
    at: float = 0.0


class Reputation:
    """Decaying evidence per peer (spot checks by task, claims, consensus) and the demotion rules."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, half_life_s: float = HALF_LIFE_S) -> None:
        self._clock = clock
        self._half_life = half_life_s
        self._checks: dict[str, dict[str, _Tally]] = {}  # peer -> task -> right of checked
        self._agreement: dict[str, _Tally] = {}  # peer -> agreed of observed clear majorities
        self._claims: dict[str, dict[str, float]] = {}  # peer -> task -> claimed dev accuracy
        self._why: dict[str, str] = {}  # peers demoted at the last look, and why (logs transitions)

    def _decayed(self, tally: _Tally) -> _Tally:
        now = self._clock()
        factor = 0.5 ** (max(0.0, now - tally.at) / self._half_life)
        tally.hits, tally.total, tally.at = tally.hits * factor, tally.total * factor, now
        return tally

    # ------------------------------------------------------------------ evidence in

    def record(self, peer_id: str, correct: bool, task: str = "") -> None:
        """One spot-check verdict."""
        tally = self._decayed(self._checks.setdefault(peer_id, {}).setdefault(task, _Tally(at=self._clock())))
        tally.total += 1.0
        tally.hits += 1.0 if correct else 0.0

    def note_claims(self, peer_id: str, evals: Iterable[EvalScore]) -> None:
        """The dev accuracies ``peer_id``'s signed record claims for its base model (the best per task)."""
        claims: dict[str, float] = {}
        for e in evals:
            if e.split == "dev" and e.adapter is None:
                claims[e.task] = max(e.accuracy, claims.get(e.task, 0.0))
        self._claims[peer_id] = claims

    def claims(self, peer_id: str) -> dict[str, float]:
        return dict(self._claims.get(peer_id, {}))

    def observe(self, trace: Trace) -> list[tuple[str, bool]]:
        """Consensus evidence from one answered query (nothing unless it fanned out to 3+ peers)."""
        seen = consensus.observations(consensus.member_answers(trace))
        for peer_id, agreed in seen:
            tally = self._decayed(self._agreement.setdefault(peer_id, _Tally(at=self._clock())))
            tally.total += 1.0
            tally.hits += 1.0 if agreed else 0.0
        return seen

    # ------------------------------------------------------------------ evidence out

    def observed(self, peer_id: str, task: str | None = None) -> tuple[float, float]:
        """(right answers, answers checked) by spot checks, decayed; ``task`` narrows to one task."""
        tallies = self._checks.get(peer_id, {})
        right = total = 0.0
        for name, tally in list(tallies.items()):
            if task is None or name == task:
                t = self._decayed(tally)
                right, total = right + t.hits, total + t.total
        return right, total

    def checked_tasks(self) -> set[str]:
        """Every task some peer was spot-checked on (for generalist competence, competence.py)."""
        return {task for tasks in list(self._checks.values()) for task in tasks}

    def agreement(self, peer_id: str) -> tuple[float, float]:
        """(agreed, observed) clear majorities of the other members, decayed."""
        tally = self._agreement.get(peer_id)
        if tally is None:
            return 0.0, 0.0
        t = self._decayed(tally)
        return t.hits, t.total

    def baseline(self, exclude: str) -> float:
        """Pooled spot-check accuracy of the other checked peers (at least :data:`MIN_BASELINE`)."""
        right, total = _pooled(self.observed(p) for p in list(self._checks) if p != exclude)
        return max(MIN_BASELINE, right / total) if total else MIN_BASELINE

    def agreement_baseline(self, exclude: str) -> float | None:
        """Pooled agreement rate of the other observed peers (None: nobody else observed)."""
        agreed, total = _pooled(self.agreement(p) for p in list(self._agreement) if p != exclude)
        return agreed / total if total else None

    def why_demoted(self, peer_id: str, p: float = DEMOTE_P) -> str | None:
        """Why ``peer_id``'s evidence is below ``p`` now (None: it is not)."""
        right, total = self.observed(peer_id)
        if total >= 1 and _implausible(right, total, peers_right := self.baseline(peer_id), p):
            return f"spot checks: {right:.0f}/{total:.0f} right vs peers' {peers_right:.0%}"
        for task, claimed in sorted(self._claims.get(peer_id, {}).items()):
            right, total = self.observed(peer_id, task)
            if total >= 1 and _implausible(right, total, max(0.0, claimed - CLAIM_MARGIN), p):
                return f"claimed {claimed:.0%} on {task}, spot checks saw {right:.0f}/{total:.0f} right"
        agreed, total = self.agreement(peer_id)
        peers = self.agreement_baseline(peer_id)
        if total >= MIN_AGREEMENT_OBSERVATIONS and peers is not None and \
                _implausible(agreed, total, AGREEMENT_RATIO * peers, p):
            return f"agreed with {agreed:.0f}/{total:.0f} clear majorities vs peers' {peers:.0%}"
        return None

    def trust(self, peer_id: str) -> float:
        """How much the evidence says ``peer_id`` answers right: the lower confidence bound (Wilson,
        :data:`TRUST_Z`) of its right spot checks and agreements with clear majorities.

        What breaks a vote's tie (strategies/vote.py): never rank, load or speed, which are
        claims or favour a liar that answers at once.  A peer without evidence has 0, as keys are
        free: a fresh identity does not outrank one with a record of right answers.
        """
        right, checked = self.observed(peer_id)
        agreed, observed = self.agreement(peer_id)
        return wilson_lower(right + agreed, checked + observed, TRUST_Z)

    def checked(self, peer_id: str) -> float:
        """Known-answer items ``peer_id`` answered in spot checks (decayed)."""
        return self.observed(peer_id)[1]

    def demoted(self, peer_id: str) -> bool:
        if peer_id not in self._checks and peer_id not in self._agreement:
            return False
        why = self.why_demoted(peer_id, RESTORE_P if peer_id in self._why else DEMOTE_P)
        if (why is None) != (peer_id not in self._why):  # a change: log it once
            event(log, "expert_demoted" if why else "expert_restored", peer=peer_id, why=why or "")
            if why is None:
                self._why.pop(peer_id, None)
        if why is not None:
            self._why[peer_id] = why
        return why is not None

    def snapshot(self, peer_id: str) -> dict[str, float | bool | str | None]:
        right, total = self.observed(peer_id)
        agreed, observed = self.agreement(peer_id)
        return {"checked": round(total, 2), "right": round(right, 2), "agreed": round(agreed, 2),
                "agreement_observed": round(observed, 2), "demoted": self.demoted(peer_id),
                "demoted_why": self._why.get(peer_id)}


def _pooled(pairs: Iterable[tuple[float, float]]) -> tuple[float, float]:
    hits = total = 0.0
    for h, t in pairs:
        hits, total = hits + h, total + t
    return hits, total


def _implausible(hits: float, total: float, expected: float, p: float) -> bool:
    """Is ``hits`` of ``total`` (decayed counts, rounded) implausibly low (under ``p``) at rate ``expected``?"""
    n, k = round(total), round(hits)  # a millisecond of decay must not turn 3 answers into 2
    return n > 0 and binomial_cdf(k, n, expected) < p


def wilson_lower(hits: float, total: float, z: float) -> float:
    """Lower bound of the Wilson score interval of ``hits`` of ``total`` (0 without evidence)."""
    if total <= 0 or hits <= 0:  # (no right answer: 0 exactly, not a rounding error's 1e-17)
        return 0.0
    return wilson_bounds(hits, total, z)[0]


def wilson_bounds(hits: float, total: float, z: float) -> tuple[float, float]:
    """The Wilson score interval of ``hits`` of ``total`` (``total`` > 0), clipped to [0, 1]:
    unlike the normal approximation it is sound for small ``total`` and rates near 0 or 1."""
    p = min(1.0, hits / total)
    denominator = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denominator
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def binomial_cdf(k: int, n: int, p: float) -> float:
    """P(X <= k) for X ~ Binomial(n, p), in log space (a busy hour's thousands of consensus
    observations would overflow ``math.comb`` times a float)."""
    if k >= n or p <= 0.0:
        return 1.0
    if k < 0:
        return 0.0
    if p >= 1.0:
        return 0.0
    log_p, log_q, head = math.log(p), math.log1p(-p), math.lgamma(n + 1)
    return min(1.0, sum(math.exp(head - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q)
                        for i in range(k + 1)))


def load_check_items(limit_per_task: int = 100) -> list[TaskItem]:
    """Dev items of :data:`CHECK_TASKS` from ``../shared/data/tasks``; where those files are absent
    (an installed node), the known-answer items the package ships (known_answers.py)."""
    folder = find_tasks_dir()
    if folder is None:
        return known_answer_items()
    try:
        sets = load_task_dir(folder, list(CHECK_TASKS))
    except Exception as exc:  # noqa: BLE001 - unreadable task files: the built-in items, never a failed query
        event(log, "spot_check_tasks_unreadable", reason=f"{type(exc).__name__}: {exc}"[:200])
        return known_answer_items()
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

    def on_probation(self, peers: Sequence[str]) -> list[str]:
        """Of a query's contributors, those on probation: too few checked answers, in a query that
        several peers answered (:data:`PROBATION_ITEMS`); none while checks are off."""
        if self.rate <= 0 or len(set(peers)) < 2:
            return []
        return [p for p in peers if round(self.reputation.checked(p)) < PROBATION_ITEMS]

    def due(self, peers: Sequence[str] = ()) -> bool:
        """Check after this query?  At :data:`PROBATION_RATE` when a contributor is on probation."""
        rate = PROBATION_RATE if self.on_probation(peers) else self.rate
        return self.rate > 0 and self._rng.random() < max(rate, self.rate)

    def pick(self, peers: Sequence[str]) -> str:
        """A contributor to check: the least checked one on probation if any (each earns its evidence in
        turn); else, half the time, the one agreeing least with its fan-outs' majorities (consensus
        points the expensive ground-truth evidence at suspects)."""
        probation = self.on_probation(peers)
        if probation:
            return min(probation, key=lambda p: (round(self.reputation.checked(p), 3), self._rng.random()))
        peers = list(peers)
        if len(peers) > 1 and self._rng.random() < 0.5:
            def agreement(peer_id: str) -> float:
                agreed, observed = self.reputation.agreement(peer_id)
                return agreed / observed if observed >= 1 else 1.0
            return min(peers, key=agreement)
        return self._rng.choice(peers)

    def choose(self, peer_id: str) -> list[TaskItem]:
        """Items for one check: the first from a task ``peer_id`` claims a score on (claimed vs
        observed), the rest from any check task (compared with the peers)."""
        items = self._items or []
        claimed = [item for item in items if item.task in self.reputation.claims(peer_id)]
        chosen = [self._rng.choice(claimed)] if claimed else []
        rest = [item for item in items if item not in chosen]
        return chosen + self._rng.sample(rest, min(self.items_per_check - len(chosen), len(rest)))

    async def check(self, transport: object, peer_id: str, claims: Iterable[EvalScore] = ()) -> None:
        """Ask ``peer_id`` known-answer items and record each verdict (a failed call records nothing:
        failures are the health bookkeeping's business).  ``claims``: its record's self-evaluation."""
        if self._items is None:
            self._items = await trio.to_thread.run_sync(load_check_items)
        if not self._items:
            return
        self.checks += 1
        self.reputation.note_claims(peer_id, claims)
        for item in self.choose(peer_id):
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
            self.reputation.record(peer_id, verdict.correct, item.task)
            event(log, "spot_check", peer=peer_id, task=item.task, correct=verdict.correct,
                  demoted=self.reputation.demoted(peer_id))
