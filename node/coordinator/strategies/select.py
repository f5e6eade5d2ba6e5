"""``select`` (SLM-MUX): each of k experts gives n answers, the first greedy and the rest sampled; an
expert's confidence is the share of its majority answer (its greedy answer when all differ); the most
confident expert's majority answer wins (ties: verified accuracy, rank)."""

from __future__ import annotations

from typing import Any

from protocol import QueryRequest

from .. import aggregate
from ..calls import Ask, Reply
from ..decoding import DETERMINISTIC
from ..pool import Pool
from ..quorum import fan_out
from .base import Answer, Param, fan_out_params
from .vote import KINDS

PARAMS = {
    **fan_out_params(3),
    "samples": Param(int, 3, 1, 8, help="samples per expert"),
    "temperature": Param(float, 0.7, 0.0, 2.0, help="sampling temperature of the samples"),
    "kind": Param(str, "auto", choices=KINDS, help="answer shape to extract"),
}


async def run(pool: Pool, query: QueryRequest, params: dict[str, Any]) -> Answer:
    k, n = params["k"], params["samples"]
    routes = pool.pick(k)
    base = Ask.of(query)
    # Each expert's first sample is greedy, the rest sampled: a small expert sampled at 0.7 often writes
    # nonsense ("L'Alma, la Lumiere, la France" for France's capital, SmolLM2), so when its samples all
    # differ its majority is its greedy answer (the vote's tie goes to the earliest ballot).
    calls = [(route, Ask(messages=base.messages, prompt=base.prompt,
                         temperature=DETERMINISTIC if j == 0 else params["temperature"], seed=1000 + j))
             for route in routes for j in range(n)]
    total = len(calls)
    k_min = params["k_min"] or (total - 1 if total >= 3 else total)
    replies = await fan_out(pool, [c[0] for c in calls], [c[1] for c in calls], role="sampler",
                            k_min=k_min, grace_s=params["grace_s"])
    shape = None if params["kind"] == "auto" else params["kind"]
    by_expert: dict[tuple[str, str | None], list[tuple[Reply, str]]] = {}
    for reply in replies:
        key = aggregate.extract(reply.text, shape)
        by_expert.setdefault((reply.route.peer_id, reply.route.adapter), []).append((reply, key))
    best: tuple[float, float, float] | None = None
    chosen: Reply | None = None
    summary = []
    for rank_index, ((_peer, _adapter), samples) in enumerate(by_expert.items()):
        majority, share = aggregate.confidence([key for _, key in samples])
        for reply, key in samples:
            pool.end_step(reply.step, answer=key, score=round(share, 3))
        dev = samples[0][0].route.candidate.dev_score
        order = (share, dev if dev is not None else 0.0, -rank_index)
        summary.append(f"{samples[0][0].route.candidate.record.name}: {majority!r} {share:.2f}")
        if best is None or order > best:
            best = order
            chosen = next(reply for reply, key in samples if key == majority)
    assert chosen is not None  # fan_out returned at least one reply
    why = f"most confident expert {chosen.route.candidate.record.name} ({'; '.join(summary)})"
    return Answer(chosen.text, why, (chosen.step,), chosen.finish_reason)
