"""Token-level fusion, the pure part: who can be fused, merging distributions, picking the token.

Experts can be fused token by token only if they number tokens the same way:
the capability record's ``tokenizer`` field is a hash of the vocabulary
(``vocab-sha256:...``, node/expert/model/loader.py), and only experts with equal
hashes are combined.  Each step every expert returns its top-k next-token
log-probabilities; the fused distribution is their weighted average in
probability space (a token outside an expert's top-k counts as probability 0
for that expert -- the top-k carry almost all the mass for k = 20 on a 135M
model), and the next token is its argmax (greedy) or a draw at a temperature.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar


class NoSharedTokenizer(Exception):
    """Fewer than two experts share a tokenizer: token-level fusion is impossible."""


class _OnPeer(Protocol):
    @property
    def peer_id(self) -> str: ...


R = TypeVar("R", bound=_OnPeer)


@dataclass(frozen=True, slots=True)
class Distribution:
    """One expert's top-k next-token log-probabilities."""

    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...]


def fusable_group(records: Iterable[R], k: int = 2, *, tokenizer_of: Callable[[R], str] | None = None) -> list[R]:
    """Up to ``k`` experts on distinct peers that share a tokenizer, best first.

    ``records`` come ranked (best first); ``tokenizer_of`` reads an item's
    tokenizer id (default: its ``tokenizer`` attribute).  Among the tokenizers held by at least
    two distinct peers, the one whose group holds the best-ranked expert wins.
    Raises :class:`NoSharedTokenizer` (saying which tokenizers were seen) when
    no two experts on different peers share one.
    """
    if k < 2:
        raise ValueError("fusion needs at least two experts")
    groups: dict[str, list[R]] = {}
    seen: list[str] = []
    for record in records:
        tokenizer = tokenizer_of(record) if tokenizer_of else getattr(record, "tokenizer", "")
        if not tokenizer:
            continue
        group = groups.setdefault(tokenizer, [])
        if tokenizer not in seen:
            seen.append(tokenizer)
        if all(r.peer_id != record.peer_id for r in group):
            group.append(record)
    for tokenizer in seen:  # in order of each tokenizer's best-ranked expert
        if len(groups[tokenizer]) >= 2:
            return groups[tokenizer][:k]
    found = ", ".join(f"{t} x{len(groups[t])}" for t in seen) or "none announced"
    raise NoSharedTokenizer(
        f"token-level fusion needs two experts on different peers with the same tokenizer; seen: {found}"
    )


def merge(distributions: Sequence[Distribution], weights: Sequence[float] | None = None) -> dict[int, float]:
    """Weighted average of the experts' top-k probabilities, by token id.

    Weights are normalized to sum to 1 over the given experts; a token absent
    from an expert's top-k contributes 0 for that expert.
    """
    if not distributions:
        raise ValueError("nothing to merge")
    if weights is None:
        weights = [1.0] * len(distributions)
    if len(weights) != len(distributions) or any(w < 0 or not math.isfinite(w) for w in weights):
        raise ValueError("one finite non-negative weight per distribution")
    total = sum(weights)
    if total <= 0:
        raise ValueError("weights sum to zero")
    merged: dict[int, float] = {}
    for dist, weight in zip(distributions, weights, strict=True):
        if len(dist.token_ids) != len(dist.logprobs):
            raise ValueError("one log-probability per token id")
        share = weight / total
        for token, logprob in zip(dist.token_ids, dist.logprobs, strict=True):
            merged[token] = merged.get(token, 0.0) + share * math.exp(logprob)
    return merged


def choose(merged: dict[int, float], *, temperature: float = 0.0, rng: random.Random | None = None) -> int:
    """The next token: the most probable (ties: lowest id, so runs repeat), or a draw at ``temperature``.

    Sampling renormalizes ``p ** (1 / temperature)`` over the merged tokens.
    """
    if not merged:
        raise ValueError("empty distribution")
    if temperature <= 0.0:
        return min(merged, key=lambda t: (-merged[t], t))
    tokens = sorted(merged)
    logits = [math.log(max(merged[t], 1e-300)) / temperature for t in tokens]
    top = max(logits)
    scaled = [math.exp(x - top) for x in logits]
    return (rng or random.Random()).choices(tokens, weights=scaled, k=1)[0]
