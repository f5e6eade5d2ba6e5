"""``merge``: weight-level collaboration: peers' LoRA adapters of one base, merged into one, answer.

The candidates are the adapters the signed records advertise with a CID (fetchable),
on this node's own base: the merged adapter is served by the coordinator's expert,
so a coordinator without one, or with another base, says so.  ``adapters`` names
them (CIDs, ``expert/adapter`` or adapter names), else the ``k`` most relevant to
the question are taken (earlier merges, ``merged-*``, are not inputs unless named).
Weights: ``relevance`` (MiniLM similarity of the question to each adapter's
description, bag-of-words without MiniLM; a softmax), ``uniform``, numbers, or
``search``: a LoraHub weight search on dev items costs minutes, so it is the
``node merge --search`` command's job; the strategy reuses its cached result.

The node (coordinator/merging.py, behind :class:`MergePort`) fetches the inputs by
CID through its block store, merges them (peft TIES / DARE / linear), caches the
result by content, publishes it and loads it into its expert; the strategy then asks
that expert with the merged adapter.  The trace's ``merge`` step records the inputs,
method, weights, the merged CID and whether the cache was hit.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from protocol import ProtocolError, QueryRequest
from protocol.cid import parse_cid

from .. import prompts
from ..calls import Ask, QueryFailed, StepFailed
from ..merge_port import MERGED_PREFIX, METHODS, MergeRequest
from ..pool import Pool
from ..routing import Candidate, Route
from .base import Answer, Param

PARAMS = {
    "adapters": Param(str, "", help="comma-separated adapter CIDs or expert/adapter names (empty: the k most "
                                    "relevant adapters of this node's base)"),
    "k": Param(int, 2, 2, 8, help="adapters merged when none are named"),
    "method": Param(str, "ties", choices=METHODS, help="peft combination"),
    "density": Param(float, 0.5, 0.05, 1.0, help="ties/dare: fraction of each adapter's weights kept"),
    "weights": Param(str, "relevance", help="relevance | uniform | search (a cached `node merge --search`) | "
                                            "comma-separated numbers, one per adapter"),
}
RELEVANCE_TEMPERATURE = 0.1


@dataclass(frozen=True, slots=True)
class Offer:
    """An adapter some expert advertises: where it is, what it is for, its CID."""

    cid: str
    adapter: str = ""
    expert: str = ""
    peer_id: str = ""
    base: str = ""  # the record's base_model_cid ("" for a CID no record advertises)
    description: str = ""

    def label(self) -> str:
        return f"{self.expert}/{self.adapter}" if self.expert else self.cid

    def document(self) -> str:
        return f"{self.adapter.replace('-', ' ')}: {self.description}" if self.description else self.adapter


async def run(pool: Pool, query: QueryRequest, params: dict[str, Any]) -> Answer:
    port = pool.merges
    if port is None:
        raise QueryFailed("unavailable", "this node cannot merge adapters (it runs no expert and storage)")
    local_base = port.local_base()
    if local_base is None:
        raise QueryFailed("unavailable", "merge answers on the coordinator's own expert, and this node serves "
                                         "none: ask a node that serves the adapters' base model")
    offers = advertised(pool)
    named = [r.strip() for r in params["adapters"].split(",") if r.strip()]
    chosen = (pick_named(offers, named) if named else
              [o for o in offers if o.base == local_base and not o.adapter.startswith(MERGED_PREFIX)])
    check_bases(chosen, local_base, named=bool(named))
    if named and params["weights"].strip() != "relevance":
        sims = [0.0] * len(chosen)  # nothing to rank or weigh: no embedding (MiniLM's first load is seconds)
    else:
        sims = await port.similarities(prompts.question(query), [o.document() for o in chosen])
    if not named:  # the k most relevant; equal relevance keeps the records' order
        order = sorted(range(len(chosen)), key=lambda i: -sims[i])[: params["k"]]
        chosen, sims = [chosen[i] for i in sorted(order)], [sims[i] for i in sorted(order)]
    refs = tuple(o.cid for o in chosen)
    weights, how = await choose_weights(port, params, refs, sims)
    request = MergeRequest(refs=refs, weights=weights, method=params["method"], density=params["density"],
                           providers=tuple(sorted({o.peer_id for o in chosen if o.peer_id})), weights_from=how)
    local = own_expert(pool)
    spec = {"inputs": [o.label() for o in chosen], "cids": list(refs), "method": params["method"],
            "density": params["density"], "weights": list(weights), "weights_from": how}
    step = pool.begin_step(Route(local, None, 0.0), role="merger", call="merge",
                           input_text=json.dumps(spec, sort_keys=True))
    try:
        merged = await port.prepare(request)
    except QueryFailed as exc:
        pool.end_step(step, status="failed", error=f"{exc.code}: {exc.message}")
        raise
    spec.update(merged_cid=merged.cid, cache="hit" if merged.cached else "miss", loaded=merged.loaded)
    pool.end_step(step, status="ok", adapter=merged.name, adapter_cid=merged.cid, seconds=merged.seconds,
                  output=json.dumps(spec, sort_keys=True))
    route = Route(own_expert(pool), merged.name, 0.0)  # its record now lists the merged adapter
    try:
        reply = await pool.generate([route], Ask.of(query), role="answer", stream=True)
    except StepFailed as exc:
        raise QueryFailed(exc.code, f"the merged expert failed: {exc.message}") from None
    pool.end_step(reply.step, adapter_cid=merged.cid)
    shown = ", ".join(f"{o.label()}={w:g}" for o, w in zip(chosen, weights, strict=True))
    decision = (f"merged {len(chosen)} adapters ({params['method']}; {shown}; weights from {how}) into "
                f"{merged.name} {merged.cid} (cache {'hit' if merged.cached else 'miss'}) on this node's expert")
    return Answer(reply.text, decision, (reply.step,), reply.finish_reason)


def own_expert(pool: Pool) -> Candidate:
    local = next((c for c in pool.candidates() if c.local), None)
    if local is None:
        raise QueryFailed("unavailable", "this node's own expert is not in its registry yet")
    return local


def advertised(pool: Pool) -> list[Offer]:
    """Every adapter a usable expert advertises with a CID (a sha256 fallback is not fetchable), once each."""
    seen: dict[str, Offer] = {}
    for candidate in sorted(pool.candidates(), key=lambda c: (c.banned, not c.verified)):
        if candidate.banned:
            continue
        record = candidate.record
        for info in record.adapters:
            if info.cid and info.cid not in seen and _is_cid(info.cid):
                seen[info.cid] = Offer(info.cid, info.name, record.name, record.peer_id,
                                       record.base_model_cid or "", info.description)
    return list(seen.values())


def pick_named(offers: list[Offer], named: list[str]) -> list[Offer]:
    """The offers ``named`` designates (CID, ``expert/adapter`` or adapter name); a bare CID no record
    advertises is allowed (its base is then checked from its card when merging)."""
    chosen: list[Offer] = []
    for ref in named:
        match = next((o for o in offers if ref in (o.cid, f"{o.expert}/{o.adapter}", o.adapter)), None)
        if match is None and _is_cid(ref):
            match = Offer(ref)
        if match is None:
            raise QueryFailed("bad_request", f"no known expert advertises an adapter {ref!r} (name a CID, "
                                             "expert/adapter or an adapter name from /v1/models)")
        if match.cid not in {o.cid for o in chosen}:
            chosen.append(match)
    return chosen


def check_bases(chosen: list[Offer], local_base: str, *, named: bool) -> None:
    """One base for all, and it is this node's; otherwise a clear error naming the bases."""
    bases: dict[str, Offer] = {}
    for offer in chosen:
        if offer.base:
            bases.setdefault(offer.base, offer)
    if len(bases) > 1:
        parts = "; ".join(f"{o.label()} is for base {base}" for base, o in bases.items())
        raise QueryFailed("bad_request", f"adapters of different base models cannot be merged: {parts}")
    if bases and local_base not in bases:
        [base] = bases
        raise QueryFailed("unavailable", f"the adapters are for base {base}, but this node's expert serves base "
                                         f"{local_base}: ask a node that serves that base")
    if len(chosen) < 2:
        where = "named" if named else f"advertised with a CID for this node's base {local_base}"
        raise QueryFailed("bad_request" if named else "unavailable",
                          f"merging needs at least two distinct adapters; {len(chosen)} {where}")


async def choose_weights(port: Any, params: dict[str, Any], refs: tuple[str, ...],
                         sims: list[float]) -> tuple[tuple[float, ...], str]:
    """``(weights, how they were chosen)`` from the ``weights`` param."""
    mode = params["weights"].strip()
    if mode == "relevance":
        return softmax(sims), "relevance"
    if mode == "uniform":
        return tuple(round(1.0 / len(refs), 6) for _ in refs), "uniform"
    if mode == "search":
        found = await port.searched_weights(refs, params["method"])
        if found is None:
            raise QueryFailed("bad_request", "weights=search is a command-only mode (a search on dev items costs "
                              "minutes): run `python -m node merge " + " ".join(refs) + " --search FILE --method "
                              f"{params['method']}` on this node first; its result is then reused here")
        return tuple(found), "search (cached node merge --search)"
    try:
        given = tuple(float(w) for w in mode.split(","))
    except ValueError:
        raise QueryFailed("bad_request", f"param 'weights' must be relevance, uniform, search or numbers; "
                                         f"got {mode!r}") from None
    if len(given) != len(refs) or not any(given) or any(w != w or abs(w) > 100 for w in given):
        raise QueryFailed("bad_request", f"param 'weights': {len(given)} finite weights (not all zero) for "
                                         f"{len(refs)} adapters")
    return given, "given"


def softmax(sims: list[float]) -> tuple[float, ...]:
    import math

    top = max(sims)
    exps = [math.exp((s - top) / RELEVANCE_TEMPERATURE) for s in sims]
    return tuple(round(e / sum(exps), 6) for e in exps)


def _is_cid(text: str) -> bool:
    try:
        parse_cid(text)
    except (ProtocolError, ValueError):
        return False
    return True
