"""Token choice on numpy logits: the torch engine's semantics (sampling.py) without torch.

Greedy rows take the argmax (the first of equal maxima, as torch does).  Sampled rows use
temperature then nucleus (top-p) filtering with a ``numpy.random.Generator`` seeded from the
request's ``seed``, so a seeded request draws the same tokens whatever shares its batch.  The
same guarantees as sampling.py hold: every wire-valid :class:`SamplingParams` gives a token
(tiny temperatures are greedy, the top token always survives top-p, non-finite logits fall back
to the best finite token).  The draws are not the torch engine's draws (different generators);
greedy decoding is identical.
"""

from __future__ import annotations

import secrets

import numpy as np

from protocol import SamplingParams


def log_softmax(logits: np.ndarray) -> np.ndarray:
    row = logits.astype(np.float64)
    shifted = row - np.max(row)
    return (shifted - np.log(np.sum(np.exp(shifted)))).astype(np.float32)


class NumpySampler:
    def __init__(self, params: SamplingParams) -> None:
        self.greedy = params.greedy
        self.temperature = params.temperature
        self.top_p = params.top_p
        self.rng: np.random.Generator | None = None
        if not self.greedy:
            seed = params.seed if params.seed is not None else secrets.randbits(63)
            self.rng = np.random.default_rng(seed)

    def choose(self, logits: np.ndarray) -> int:
        if self.greedy:
            return int(np.argmax(logits))
        return self.sample(logits)

    def sample(self, logits: np.ndarray) -> int:
        assert self.rng is not None
        row = np.nan_to_num(logits.astype(np.float64), nan=-np.inf, posinf=float(np.finfo(np.float32).max))
        finite = np.isfinite(row)
        if not finite.any():
            return int(np.argmax(logits))
        scaled = row / self.temperature
        scaled = scaled - np.max(scaled[finite])
        probs = np.where(finite, np.exp(scaled), 0.0)
        total = probs.sum()
        if not np.isfinite(total) or total <= 0.0:
            return int(np.argmax(np.where(finite, row, -np.inf)))
        probs /= total
        if self.top_p < 1.0:
            order = np.argsort(-probs, kind="stable")
            sorted_probs = probs[order]
            before = np.cumsum(sorted_probs) - sorted_probs
            # Drop tokens once the mass *before* them already reaches top_p; the top token always stays.
            keep = before < self.top_p
            keep[0] = True
            kept = sorted_probs[keep]
            choice = self.rng.choice(len(kept), p=kept / kept.sum())
            return int(order[choice])
        return int(self.rng.choice(len(probs), p=probs))


def top_k(logprobs: np.ndarray, k: int) -> tuple[list[int], list[float]]:
    """The ``k`` most likely ids and their log-probabilities, best first (ties: lower id first)."""
    k = min(k, logprobs.shape[-1])
    part = np.argpartition(-logprobs, k - 1)[:k]
    order = part[np.lexsort((part, -logprobs[part]))]
    return [int(i) for i in order], [float(logprobs[i]) for i in order]
