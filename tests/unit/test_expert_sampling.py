"""Token choice must be numerically safe for any wire-valid SamplingParams (issue 11, item 16).

Temperatures and top_p values near zero (1e-300, the smallest float) used to
turn logits into inf/NaN or drop every token, so ``torch.multinomial`` raised
on every expert and each expert was marked as failing.
"""

from __future__ import annotations

import pytest
import torch

from node.expert.serve.sampling import TokenSampler, choose_tokens
from protocol import SamplingParams


def logits(rows: int = 3, vocab: int = 500, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, vocab, generator=generator) * 12.0


@pytest.mark.parametrize("temperature, top_p", [
    (1e-300, 1.0), (5e-324, 1.0), (1e-300, 1e-300), (1.0, 1e-300), (1.0, 5e-324), (1e-6, 0.5), (5.0, 1e-300),
])
def test_extreme_sampling_params_choose_the_top_token_or_a_valid_one(temperature, top_p):
    params = SamplingParams(temperature=temperature, top_p=top_p, seed=1)
    rows = logits()
    tokens = choose_tokens(rows, [TokenSampler(params, "cpu") for _ in range(rows.shape[0])])
    assert len(tokens) == rows.shape[0] and all(0 <= t < rows.shape[1] for t in tokens)
    if temperature < 1e-5 or top_p < 1e-30:
        # Either limit is greedy decoding: exactly the argmax of each row.
        assert tokens == rows.argmax(dim=-1).tolist()


def test_non_finite_logits_fall_back_to_the_best_finite_token():
    row = torch.full((10,), float("-inf"))
    row[3], row[7] = 2.0, float("nan")
    sampler = TokenSampler(SamplingParams(temperature=0.7, top_p=0.9, seed=3), "cpu")
    assert sampler.sample(row) == 3


def test_ordinary_sampling_is_still_seeded_and_varied():
    row = torch.randn(50, generator=torch.Generator().manual_seed(5))  # a flat-ish distribution

    def draw(seed: int, top_p: float = 1.0) -> int:
        return TokenSampler(SamplingParams(temperature=1.0, top_p=top_p, seed=seed), "cpu").sample(row)

    assert draw(7) == draw(7) and draw(8, 0.9) == draw(8, 0.9)
    assert len({draw(s) for s in range(40)}) > 5 and len({draw(s, 0.9) for s in range(40)}) > 5
