"""Spot-check a peer's self-reported score: re-ask a few of the claimed items, compare.

The claim (an :class:`~protocol.EvalScore` in the peer's signed record) names its items by
digest; the checker rebuilds them from its own copy of the task file and refuses to judge
if the digests differ (different file, different items).  It then asks ``n`` of those
items, drawn at random, with the same greedy request the self-evaluation sent, and
reports the observed accuracy next to the claimed one with a two-sided binomial p-value:
how surprising ``k`` correct out of ``n`` would be if the claim were true.  What to do
about a low p-value (distrust, down-weight, ban) is the trust policy's job, not this.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from protocol import CapabilityRecord, EvalScore

from ..serve.self_eval import ask_and_score, items_digest, load_items

if TYPE_CHECKING:
    from libp2p.abc import IHost


class SpotCheckError(ValueError):
    """The claim cannot be checked (no such claim, different items)."""


@dataclass(frozen=True)
class SpotCheck:
    task: str
    adapter: str | None
    claimed: float
    claimed_n: int
    asked: int
    correct: int
    p_value: float  # two-sided binomial, under "true accuracy = claimed"
    keys: tuple[str, ...]

    @property
    def observed(self) -> float:
        return self.correct / self.asked if self.asked else 0.0


def find_claim(record: CapabilityRecord, task: str, adapter: str | None) -> EvalScore:
    for claim in record.evals:
        if claim.task == task and claim.adapter == adapter:
            return claim
    have = ", ".join(f"{c.task}/{c.adapter or 'base'}" for c in record.evals) or "none"
    raise SpotCheckError(f"peer {record.peer_id[-8:]} claims no score for {task}/{adapter or 'base'} (claims: {have})")


def binomial_p_value(k: int, n: int, p: float) -> float:
    """Two-sided: the probability of an outcome no more likely than ``k`` successes of ``n``."""
    if n == 0:
        return 1.0
    pmf = [math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(n + 1)]
    observed = pmf[k]
    return min(1.0, sum(q for q in pmf if q <= observed * (1 + 1e-9)))


async def spot_check(host: IHost, record: CapabilityRecord, task: str, *, n: int = 5, adapter: str | None = None,
                     tasks_dir: str | Path | None = None, seed: int | None = None) -> SpotCheck:
    """Ask the peer ``n`` of the items behind its claim for ``task`` and compare."""
    import trio

    from . import client

    claim = find_claim(record, task, adapter)
    _, items = await trio.to_thread.run_sync(load_items, task, claim.split, claim.n, tasks_dir)
    if items_digest(items) != claim.items_sha256:
        raise SpotCheckError(f"{task}/{claim.split}: our first {claim.n} items hash differently from the claim's; "
                             "the task files differ, so the claim cannot be checked here")
    chosen = random.Random(seed).sample(list(items), min(n, len(items)))
    correct = 0
    ask = partial(client.generate, host, record.peer_id)
    for index, item in enumerate(chosen):
        correct += await ask_and_score(ask, item, request_id=f"spot-{index}", adapter=claim.adapter,
                                       max_new_tokens=claim.max_new_tokens)
    return SpotCheck(task=claim.task, adapter=claim.adapter, claimed=claim.accuracy, claimed_n=claim.n,
                     asked=len(chosen), correct=correct,
                     p_value=binomial_p_value(correct, len(chosen), claim.accuracy),
                     keys=tuple(i.key for i in chosen))


def to_dict(check: SpotCheck) -> dict[str, Any]:
    return {"task": check.task, "adapter": check.adapter, "claimed": check.claimed, "claimed_n": check.claimed_n,
            "asked": check.asked, "correct": check.correct, "observed": round(check.observed, 4),
            "p_value": round(check.p_value, 4), "items": list(check.keys)}
