"""How the llama.cpp worker orders prefill: first come, first served, in small steps (llamacpp/worker.py).

Prefill is compute-bound on a CPU, so one big step for every waiting prompt only makes each of
them wait for all the others; in steps of PREFILL_TOKENS_PER_STEP each request gets its first
token once its own prompt is in, and a prompt alone still runs in one decode.
"""

from __future__ import annotations

import trio

from node.expert.serve.llamacpp.worker import PREFILL_TOKENS_PER_STEP
from tests.engine.test_conformance import chat, generate, generate_all, serving

PROMPTS = [  # ~20 tokens each after the chat header
    "What is the capital of France, and which river flows through it on its way to the sea?",
    "Name three colors of the rainbow and say which of them has the longest wavelength.",
    "Write a haiku about the sea at night, with the moon and a small boat in it.",
    "Explain gravity in one sentence that a child of six years could understand well.",
]


async def test_waiting_prompts_get_their_first_tokens_step_by_step(llama_expert):
    with trio.fail_after(120):
        async with serving(llama_expert, max_batch=4) as local:
            await generate(local, chat("Hello!", "warm", tokens=1))  # the chat header is then cached
            context = local.worker.context
            before = context.decodes
            alone = (await generate(local, chat("Tell me a joke about cats and dogs, please.", "solo", tokens=1)))[1]
            assert context.decodes - before == 1  # a lone prompt: one decode, however long
            assert alone.usage.prompt_tokens - 24 > 0
            results = await generate_all(local, [chat(p, f"r{i}", tokens=2) for i, p in enumerate(PROMPTS)])
    firsts = [results[f"r{i}"].usage.first_token_seconds for i in range(len(PROMPTS))]
    new_tokens = sum(r.usage.prompt_tokens - 24 for r in results.values())  # the header came from the cache
    assert new_tokens > 2 * PREFILL_TOKENS_PER_STEP  # so the prompts needed three steps or more
    # Admitted together, prefilled in three steps or more: the first answer starts a step or more before
    # the last (one step of 32 tokens is >= 40 ms of SmolLM2 on two cores; in one big step for all of
    # them, the first tokens would be microseconds apart).
    assert all(f is not None for f in firsts)
    assert max(firsts) - min(firsts) > 0.02
