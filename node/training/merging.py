"""A merge job: local adapter dirs in, one merged adapter dir out (cached by content).

Weights come from the caller, from a query (relevance to each adapter's card) or from a
search on a few examples (:func:`node.expert.model.merge.search_weights` minimising their mean
target loss).  The base model is the one the adapters' cards name (a catalog key), else
``model``.  Blocking: run it in a thread from async code.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..expert.model.adapter_card import read_card
from ..expert.model.catalog import default_key
from ..expert.model.merge import (
    AdapterMerger,
    MergeError,
    cache_key,
    check_same_base,
    check_weights,
    describe_inputs,
    merged_card,
    relevance_weights,
    search_weights,
)
from .contribute import load_base
from .data import Example
from .heldout import target_loss


@dataclass(frozen=True)
class MergeResult:
    path: Path
    card: dict[str, Any]
    cached: bool


def merge_adapters(paths: Sequence[Path], refs: Sequence[str | None], *, data_dir: Path, name: str = "merged",
                   method: str = "ties", density: float = 0.5, weights: Sequence[float] | None = None,
                   query: str | None = None, search: Sequence[Example] = (), budget: int = 12,
                   model: str | None = None, out_dir: Path | None = None, max_length: int = 256,
                   cache_dir: Path | None = None) -> MergeResult:
    """Merge the adapters at ``paths`` (``refs``: their CIDs, None for local dirs) into one.

    ``data_dir/merged/<key>`` caches results; ``cache_dir`` is the model cache.
    """
    inputs = describe_inputs([Path(p) for p in paths], refs)
    check_same_base(inputs)
    base_model = model or next(((i.card or {}).get("base", {}).get("model") for i in inputs if i.card), None)
    if weights is not None:
        how = "given"
        chosen = check_weights(weights, len(inputs))
    elif query:
        how = f"query relevance: {query[:200]}"
        chosen = relevance_weights(query, inputs)
    elif search:
        how = "search"
        chosen = None
    else:
        how = "uniform"
        chosen = tuple([1.0 / len(inputs)] * len(inputs))
    if chosen is not None:  # a known spec: reuse a cached merge without loading anything
        target = out_dir or data_dir / "merged" / cache_key(inputs, chosen, method, density)
        cached = read_card(target) if (target / "adapter_model.safetensors").is_file() else None
        if cached is not None:
            return MergeResult(target, cached, True)
    from ..config import default_cache_dir

    base, tokenizer, source = load_base(base_model, cache_dir or default_cache_dir())
    base_ident = source.cid or source.sha256
    check_same_base(inputs, base_ident)
    merger = AdapterMerger(base, inputs)
    extra: dict[str, Any] = {}
    if chosen is None:
        started = time.monotonic()

        def objective(candidate: tuple[float, ...]) -> float:
            merger.merge(candidate, method, density)
            return target_loss(merger.model, tokenizer, tuple(search), max_length)

        chosen, loss = search_weights(objective, len(inputs), budget=budget)
        uniform = objective(tuple([1.0 / len(inputs)] * len(inputs)))
        extra = {"search_examples": len(search), "search_loss": round(loss, 4), "uniform_loss": round(uniform, 4),
                 "search_budget": budget, "search_seconds": round(time.monotonic() - started, 1)}
    target = out_dir or data_dir / "merged" / cache_key(inputs, chosen, method, density)
    merger.merge(chosen, method, density)
    base_info = {"model": base_model or default_key(), "model_id": source.model_id, "sha256": source.sha256,
                 "cid": source.cid}
    card = merged_card(name, inputs, chosen, method, density, how, base_info, extra)
    merger.save(target, card, model_id=source.model_id)
    return MergeResult(target, card, False)


__all__ = ["MergeError", "MergeResult", "merge_adapters"]
