"""LoRA adapters on both engines: peft safetensors served by torch as they are, by llama.cpp as GGUF LoRA."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import trio

from protocol import NextTokenRequest
from tests.engine.test_conformance import (
    LOGPROB_TOLERANCE,
    PROMPTS,
    assert_greedy_up_to_ties,
    chat,
    generate,
    generate_all_chunks,
    serving,
)
from tests.expert.fixtures import ADAPTER_NAME
from tests.training.fixtures import QUESTION


async def test_converted_adapter_matches_peft(torch_adapter_expert, llama_adapter_expert):
    """The GGUF LoRA shifts llama.cpp's distribution as peft shifts torch's (q/k rows permuted right)."""
    prompt = "The capital of France is"
    results = {}
    for name, expert in (("torch", torch_adapter_expert), ("llama.cpp", llama_adapter_expert)):
        async with serving(expert) as local:
            results[name] = [await local.next_token(NextTokenRequest(request_id=f"n{a}", prompt=prompt, top_k=5,
                                                                     adapter=a)) for a in (None, ADAPTER_NAME)]
    (base_t, tuned_t), (base_l, tuned_l) = results["torch"], results["llama.cpp"]
    assert tuned_t.token_ids[0] == tuned_l.token_ids[0]
    assert abs(tuned_t.logprobs[0] - tuned_l.logprobs[0]) < LOGPROB_TOLERANCE
    # The adapter really moves the distribution (it is not a no-op on either engine).
    assert abs(tuned_l.logprobs[0] - base_l.logprobs[0]) > 0.05 or tuned_l.token_ids[0] != base_l.token_ids[0]
    assert base_t.token_ids[0] == base_l.token_ids[0]


async def test_adapter_and_base_rows_in_one_batch(llama_adapter_expert):
    """Rows with and without the adapter run together (one decode per adapter set) and match their runs
    alone, up to numerical ties (see test_concurrent_streams_equal_each_alone)."""
    with trio.fail_after(300):
        async with serving(llama_adapter_expert) as local:
            requests = [chat(p, f"r{i}", adapter=ADAPTER_NAME if i % 2 else None) for i, p in enumerate(PROMPTS)]
            alone = {r.request_id: await generate(local, r) for r in requests}
            together = await generate_all_chunks(local, requests)
            differing = [r for r in requests if together[r.request_id][1].text != alone[r.request_id][1].text]
            for r in differing:
                text = r.messages[0].content
                for chunks in (alone[r.request_id][0], together[r.request_id][0]):
                    await assert_greedy_up_to_ties(local, text, [t for c in chunks for t in c.token_ids], r.adapter)
            # The adapter changes answers: the same prompt with and without it.
            tuned = await generate(local, chat(PROMPTS[0], "t", adapter=ADAPTER_NAME))
    assert tuned[1].text != alone["r0"][1].text


@pytest.mark.slow
async def test_trained_adapter_changes_the_answer_on_both_engines(expert_data_dir, trained_adapters):
    """An adapter from the project's training code, added live (as merge does), answers its word on both."""
    from node.expert.model.loader import load_expert
    from node.expert.serve.llamacpp.model import load_llama_expert

    answers = {}
    # Fresh loads: attaching mutates the expert, and the session fixtures are shared.
    for name, load in (("torch", load_expert), ("llama.cpp", load_llama_expert)):
        expert = load(None, cache_dir=expert_data_dir)
        async with serving(expert) as local:
            worker = local.worker
            before = (await generate(local, chat(QUESTION, "b")))[1].text
            attach = functools.partial(worker.attach_adapter, "pineapple", Path(trained_adapters["pineapple"]),
                                       evictable=())
            future = worker.between_steps(attach)
            await trio.to_thread.run_sync(future.result, 120)
            after = (await generate(local, chat(QUESTION, "a", adapter="pineapple")))[1].text
            base_again = (await generate(local, chat(QUESTION, "c")))[1].text
        answers[name] = (before, after, base_again)
    for name, (before, after, base_again) in answers.items():
        assert "Pineapple" in after and "Pineapple" not in before, (name, answers)
        assert base_again == before, name


def test_both_engines_bound_an_adapter_of_the_base_alike(torch_expert, llama_expert):
    """The merge-bomb bound (rank 64 on every layer, fp32) from torch's modules and from the GGUF's shapes."""
    from node.expert.model.merge import adapter_size_limit, expert_adapter_size_limit

    limit = adapter_size_limit(torch_expert.model)
    assert expert_adapter_size_limit(llama_expert) == expert_adapter_size_limit(torch_expert) == limit
    assert 16 * 2**20 < limit < 256 * 2**20  # SmolLM2-135M, tied output head counted as torch counts it
