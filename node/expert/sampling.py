"""Per-request token choice: greedy, or temperature + top-p with the request's own RNG.

Each request owns a ``torch.Generator`` seeded from its ``seed``, so a seeded
request draws the same tokens whatever else shares its batch.  Greedy rows are
picked with one batched ``argmax``; only sampled rows pay for softmax/sort.
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

        self.greedy = params.temperature == 0.0
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

        scaled = logits.float() / self.temperature
        probs = torch.softmax(scaled, dim=-1)
        if self.top_p < 1.0:
            sorted_probs, order = torch.sort(probs, descending=True)
            cumulative = torch.cumsum(sorted_probs, dim=-1)
            # Drop tokens once the mass *before* them already reaches top_p (the top token always stays).
            drop = (cumulative - sorted_probs) >= self.top_p
            sorted_probs = sorted_probs.masked_fill(drop, 0.0)
            choice = torch.multinomial(sorted_probs, 1, generator=self.generator)
            return int(order[choice].item())
        return int(torch.multinomial(probs, 1, generator=self.generator).item())


def choose_tokens(logits: torch.Tensor, samplers: list[TokenSampler]) -> list[int]:
    """Next token for every row of ``logits`` (``[batch, vocab]``), one sampler per row."""
    greedy = logits.argmax(dim=-1).tolist()
    return [g if s.greedy else s.sample(logits[i]) for i, (g, s) in enumerate(zip(greedy, samplers))]
