"""Per-request token choice: greedy, or temperature + top-p with the request's own RNG.

Each request owns a ``torch.Generator`` seeded from its ``seed``, so a seeded
request draws the same tokens whatever else shares its batch.  Greedy rows are
picked with one batched ``argmax``; only sampled rows pay for softmax/sort.

Every wire-valid :class:`SamplingParams` must give a token, never an exception:
a crash here fails the request on every expert it is routed to and counts
against each of them.  So tiny temperatures are greedy (``SamplingParams.greedy``),
the top token always survives top-p filtering (a ``top_p`` of 1e-300 becomes 0.0
in float32 and used to drop every token), and non-finite logits fall back to
the best finite one.
"""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from protocol import SamplingParams

if TYPE_CHECKING:
    import torch


class TokenSampler:
    """Chooses the next token for one request from its row of logits."""

    def __init__(self, params: SamplingParams, device: str) -> None:
        import torch

        self.greedy = params.greedy
        self.temperature = params.temperature
        self.top_p = params.top_p
        self.generator: torch.Generator | None = None
        if not self.greedy:
            seed = params.seed if params.seed is not None else secrets.randbits(63)
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(seed)

    def sample(self, logits: torch.Tensor) -> int:
        """Draw from one row of logits (shape ``[vocab]``) with temperature and nucleus filtering."""
        import torch

        row = torch.nan_to_num(logits.float(), nan=float("-inf"), posinf=torch.finfo(torch.float32).max)
        probs = torch.softmax(row / self.temperature, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            cumulative = torch.cumsum(sorted_probs, dim=-1)
            # Drop tokens once the mass *before* them already reaches top_p; the top token always stays.
            drop = (cumulative - sorted_probs) >= self.top_p
            drop[0] = False
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            if _drawable(sorted_probs):
                choice = torch.multinomial(sorted_probs, 1, generator=self.generator)
                return int(order[choice].item())
        elif _drawable(probs):
            return int(torch.multinomial(probs, 1, generator=self.generator).item())
        return int(row.argmax().item())  # no usable distribution (all -inf / NaN): the best finite token


def _drawable(probs: torch.Tensor) -> bool:
    """torch.multinomial needs finite, non-negative weights with a positive sum."""
    import torch

    total = probs.sum()
    return bool(torch.isfinite(total)) and float(total) > 0.0


def choose_tokens(logits: torch.Tensor, samplers: list[TokenSampler]) -> list[int]:
    """Next token for every row of ``logits`` (``[batch, vocab]``), one sampler per row."""
    greedy = logits.argmax(dim=-1).tolist()
    return [g if s.greedy else s.sample(logits[i]) for i, (g, s) in enumerate(zip(greedy, samplers, strict=True))]
