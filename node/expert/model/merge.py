"""Weight-level collaboration: merge several peers' LoRA adapters of one base into one adapter.

Mechanics are peft's ``add_weighted_adapter`` (``linear``, ``ties``, ``dare_ties``,
``dare_linear``); this module adds what a network needs around it:

* **same base or nothing** -- adapters whose cards name different bases (CID, else sha256)
  are refused with :class:`MergeError` before any weights load; a hand-made adapter
  without a card is checked by peft's shape match instead;
* **weights** given, from a query's relevance to each adapter's card (bag-of-words cosine,
  softmax), or searched LoraHub-style (gradient-free, :func:`search_weights`) on a few
  dev examples by their target loss;
* **content addressing** -- the merged adapter is written with a card recording its
  inputs, method and weights, cached under ``<data_dir>/merged/<key>`` where ``key``
  hashes exactly those, and publishable like any adapter (its CID goes in the record).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .adapter_card import CardError, base_identity, read_card, save_adapter
from .loader import ModelLoadError

METHODS = ("linear", "ties", "dare_ties", "dare_linear")
# The largest LoRA rank an adapter fetched for a query may have (issue 22): with the base's shape it
# bounds what an adapter can weigh (adapter_size_limit), checked before anything beyond the DAG's root.
MAX_ADAPTER_RANK = 64
# Beside the weights: adapter_config.json, the card, a README, a tokenizer copy.
ADAPTER_FILES_SLACK = 32 * 1024 * 1024


class MergeError(ModelLoadError):
    """The adapters cannot be merged (different bases, bad weights, unknown method)."""


@dataclass(frozen=True)
class MergeInput:
    path: Path
    ref: str  # CID when fetched by CID, else the sha256 of adapter_model.safetensors
    card: dict[str, Any] | None


def adapter_size_limit(model: Any, max_rank: int = MAX_ADAPTER_RANK) -> int:
    """The most a LoRA adapter of ``model`` (rank at most ``max_rank``) can weigh, in bytes.

    A rank-r LoRA of a linear layer (in, out) adds r * (in + out) weights, of an embedding
    (num, dim) r * (num + dim); every such layer of the base may be a target, stored as fp32
    at most.  What an adapter of this base cannot exceed, whatever its DAG declares.
    """
    import torch

    sides = 0
    for name, module in model.named_modules():
        if "lora_" in name:  # a loaded adapter's own layers are not base layers
            continue
        if isinstance(module, torch.nn.Linear):
            sides += module.in_features + module.out_features
        elif isinstance(module, torch.nn.Embedding):
            sides += module.num_embeddings + module.embedding_dim
    return max_rank * sides * 4 + ADAPTER_FILES_SLACK


def gguf_adapter_size_limit(path: Path, max_rank: int = MAX_ADAPTER_RANK) -> int:
    """:func:`adapter_size_limit` of a GGUF base, from its tensor shapes (nothing is loaded).

    Every 2-D weight is a linear layer or the embedding; a GGUF with a tied output head has no
    ``output.weight``, while torch counts that head as a Linear of its own: it is counted here
    too, so both engines bound an adapter of the same base alike.
    """
    from gguf import GGUFReader

    sides = 0
    names = set()
    embedding = 0
    for tensor in GGUFReader(path).tensors:
        shape = [int(n) for n in tensor.shape]
        names.add(tensor.name)
        if len(shape) == 2:
            sides += shape[0] + shape[1]
            if tensor.name == "token_embd.weight":
                embedding = shape[0] + shape[1]
    if "output.weight" not in names:
        sides += embedding
    return max_rank * sides * 4 + ADAPTER_FILES_SLACK


def expert_adapter_size_limit(expert: Any, max_rank: int = MAX_ADAPTER_RANK) -> int:
    """:func:`adapter_size_limit` of a loaded expert of either engine (llama.cpp: its GGUF's shapes)."""
    if getattr(expert, "engine", "torch") == "llama.cpp":
        return gguf_adapter_size_limit(Path(expert.path), max_rank)
    return adapter_size_limit(expert.model, max_rank)


def describe_inputs(paths: Sequence[Path], refs: Sequence[str | None]) -> list[MergeInput]:
    """Read each adapter's card and reference (a missing CID falls back to the weights' sha256)."""
    from .model_cache import sha256_file

    inputs = []
    for path, ref in zip(paths, refs, strict=True):
        path = Path(path)
        if not (path / "adapter_model.safetensors").is_file():
            raise MergeError(f"{path} is not a safetensors LoRA adapter directory")
        inputs.append(MergeInput(path, ref or sha256_file(path / "adapter_model.safetensors"), read_card(path)))
    return inputs


def check_same_base(inputs: Sequence[MergeInput], base_id: str | None = None) -> str | None:
    """The shared base identity; :class:`MergeError` naming the odd one out when they differ."""
    if len(inputs) < 2:
        raise MergeError("merging needs at least two adapters")
    seen: dict[str, str] = {}
    for item in inputs:
        ident = base_identity(item.card)
        if ident is not None:
            seen.setdefault(ident, item.ref)
    if base_id is not None:
        seen.setdefault(base_id, "the base model")
    if len(seen) > 1:
        parts = [f"{ref} is for base {ident}" for ident, ref in seen.items()]
        raise MergeError("adapters of different base models cannot be merged: " + "; ".join(parts))
    return next(iter(seen), None)


def check_weights(weights: Sequence[float], count: int) -> tuple[float, ...]:
    if len(weights) != count:
        raise MergeError(f"{len(weights)} weights for {count} adapters")
    if any(not math.isfinite(w) for w in weights) or not any(w != 0 for w in weights):
        raise MergeError("weights must be finite and not all zero")
    return tuple(float(w) for w in weights)


def cache_key(inputs: Sequence[MergeInput], weights: Sequence[float], method: str, density: float) -> str:
    spec = {"inputs": [i.ref for i in inputs], "weights": [round(w, 6) for w in weights], "method": method,
            "density": round(density, 6)}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:24]


# --------------------------------------------------------------------------- weights


def bag_similarity(query: str, document: str) -> float:
    """Bag-of-words cosine of two texts (words of 3+ letters): relevance without an embedding model."""

    def bag(text: str) -> dict[str, int]:
        words: dict[str, int] = {}
        for w in re.findall(r"[a-z0-9]+", text.lower()):
            if len(w) > 2:
                words[w] = words.get(w, 0) + 1
        return words

    q, d = bag(query), bag(document)
    dot = sum(v * d.get(k, 0) for k, v in q.items())
    norm = math.sqrt(sum(v * v for v in q.values())) * math.sqrt(sum(v * v for v in d.values()))
    return dot / norm if norm else 0.0


def softmax_weights(similarities: Sequence[float], *, temperature: float = 0.1) -> tuple[float, ...]:
    """Merge weights from relevance scores: a softmax, sharp enough that the relevant adapter leads."""
    top = max(similarities)
    exps = [math.exp((s - top) / temperature) for s in similarities]
    return tuple(round(e / sum(exps), 6) for e in exps)


def relevance_weights(query: str, inputs: Sequence[MergeInput], *, temperature: float = 0.1) -> tuple[float, ...]:
    """Softmax of the bag-of-words cosine between ``query`` and each card's name, description and tags."""
    sims = []
    for item in inputs:
        card = item.card or {}
        sims.append(bag_similarity(query, " ".join([card.get("name", ""), card.get("description", ""),
                                                    " ".join(card.get("tags", []))])))
    return softmax_weights(sims, temperature=temperature)


def find_searched(merged_root: Path, refs: Sequence[str], method: str) -> tuple[float, ...] | None:
    """Weights an earlier ``node merge --search`` found for exactly these inputs and method, if cached.

    A weight search costs dozens of merges and loss evaluations (minutes on a CPU), far
    too slow for a query; the ``merge`` strategy reuses the command's result instead.
    """
    if not merged_root.is_dir():
        return None
    for card_path in sorted(merged_root.glob("*/mosaic-card.json")):
        try:
            card = read_card(card_path.parent) or {}
        except CardError:
            continue
        merge = card.get("merge") or {}
        if (merge.get("weights_from") == "search" and merge.get("method") == method
                and list(merge.get("inputs", [])) == list(refs)):
            try:
                return check_weights([float(w) for w in merge.get("weights", [])], len(refs))
            except (TypeError, ValueError, MergeError):
                continue
    return None


def search_weights(
    objective: Callable[[tuple[float, ...]], float],
    count: int,
    *,
    budget: int = 16,
    seed: int = 0,
    sigma: float = 0.3,
    low: float = 0.0,
    high: float = 1.5,
) -> tuple[tuple[float, ...], float]:
    """Gradient-free minimisation of ``objective`` over adapter weights (LoraHub's idea).

    A small (1+λ) evolution strategy with step-size adaptation: start at uniform weights,
    sample λ=4 Gaussian neighbours per round, keep the best, widen sigma after a success
    and narrow it otherwise.  ``budget`` objective calls in all; returns the best
    ``(weights, value)``.  LoraHub used CMA-ES via nevergrad; for 2-8 weights and a
    budget of a few dozen this is as good and needs no dependency.
    """
    rng = random.Random(seed)
    best = tuple([1.0 / count] * count)
    best_value = objective(best)
    calls = 1
    while calls < budget:
        improved = False
        for _ in range(min(4, budget - calls)):
            candidate = tuple(min(high, max(low, w + rng.gauss(0.0, sigma))) for w in best)
            if not any(abs(w) > 1e-6 for w in candidate):
                continue
            value = objective(candidate)
            calls += 1
            if value < best_value:
                best, best_value, improved = candidate, value, True
        sigma = min(1.0, sigma * 1.5) if improved else max(0.02, sigma * 0.6)
    return tuple(round(w, 6) for w in best), best_value


# --------------------------------------------------------------------------- the merge


class AdapterMerger:
    """One base with the input adapters loaded; merges (repeatedly, for a weight search) and saves."""

    def __init__(self, base_model: Any, inputs: Sequence[MergeInput]) -> None:
        from peft import PeftModel

        self.inputs = list(inputs)
        self.names = [f"in{i}" for i in range(len(inputs))]
        try:
            model = PeftModel.from_pretrained(base_model, str(inputs[0].path), adapter_name=self.names[0])
            for name, item in zip(self.names[1:], inputs[1:], strict=True):
                model.load_adapter(str(item.path), adapter_name=name)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise MergeError(f"the adapters do not fit this base model: {exc}") from None
        self.model = model
        self.model.eval()

    def merge(self, weights: Sequence[float], method: str, density: float = 0.5, name: str = "merged") -> Any:
        """(Re)build adapter ``name`` from the inputs and make it active; returns the peft model."""
        if method not in METHODS:
            raise MergeError(f"unknown merge method {method!r}; one of {', '.join(METHODS)}")
        weights = check_weights(weights, len(self.names))
        if name in self.model.peft_config:
            self.model.delete_adapter(name)
        kwargs: dict[str, Any] = {}
        if method != "linear":
            kwargs["density"] = density
        try:
            self.model.add_weighted_adapter(self.names, list(weights), name, combination_type=method, **kwargs)
        except (ValueError, RuntimeError) as exc:
            raise MergeError(f"peft refused the {method} merge: {exc}") from None
        self.model.set_adapter(name)
        return self.model

    def save(self, out_dir: Path, card: dict[str, Any], *, model_id: str, name: str = "merged") -> None:
        save_adapter(self.model, out_dir, card, model_id=model_id, adapter_name=name)


def merged_card(name: str, inputs: Sequence[MergeInput], weights: Sequence[float], method: str, density: float,
                how: str, base: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    tags: list[str] = []
    for item in inputs:
        for tag in (item.card or {}).get("tags", []):
            if tag not in tags:
                tags.append(tag)
    descriptions = [(i.card or {}).get("description", "") for i in inputs]
    return {
        "name": name,
        "kind": "lora-merge",
        "description": "merge of: " + "; ".join(d for d in descriptions if d)
        if any(descriptions)
        else "merged adapter",
        "tags": tags[:32],
        "base": base,
        "merge": {
            "inputs": [i.ref for i in inputs],
            "weights": list(weights),
            "method": method,
            "density": density,
            "weights_from": how,
            **(extra or {}),
        },
    }
