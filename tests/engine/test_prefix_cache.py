"""Prompt prefixes shared across generations on the llama.cpp engine (llamacpp/prefix_cache.py).

A new generation copies the KV cells of the longest prompt prefix prefilled before (the chat
template's header at least) instead of running it again.  The answers must not change: greedy
generations that copied a prefix, batched together, give what each prompt gets alone on a worker
that keeps no prefix at all.

Up to near-ties, as for any batch on this engine (test_conformance.py): llama.cpp's CPU matmul
runs the rows of a ubatch in groups of 4 or 8 with other kernels than a lone row, and a row's
logits move by ~0.5 with the kernel (measured on SmolLM2 Q4_1: the same sequence decoded as
1, 2 or 3 rows gives identical logits, as 4 or 8 rows 0.49-0.51 apart).  So the test asks for
the same text, or else every token of both answers within TIE_NATS of the model's best.
"""

from __future__ import annotations

import pytest
import trio

from node.expert.serve.llamacpp.prefix_cache import PrefixCache
from tests.engine.test_conformance import assert_greedy_up_to_ties, chat, generate, generate_all_chunks, serving
from tests.expert.fixtures import ADAPTER_NAME

PROMPTS = [
    "What is the capital of France?",
    "Name three colors.",
    "Write a haiku about the sea.",
]
TOKENS = 8


async def test_concurrent_greedy_with_a_shared_prefix_equals_each_alone(llama_expert):
    with trio.fail_after(240):
        async with serving(llama_expert, max_batch=4, prefix_entries=0) as local:
            alone = {p: await generate(local, chat(p, f"a{i}", tokens=TOKENS)) for i, p in enumerate(PROMPTS)}
            assert local.worker.prefixes.hits == 0
        async with serving(llama_expert, max_batch=4) as local:
            await generate(local, chat("Hello!", "warm", tokens=2))  # leaves the chat header in the cache
            cache = local.worker.prefixes
            requests = [chat(p, f"b{i}", tokens=TOKENS) for i, p in enumerate(PROMPTS)]
            together = await generate_all_chunks(local, requests)
            # Each copied at least SmolLM2's 24-token header (system prompt and the user turn's opening).
            assert cache.hits == len(PROMPTS) and cache.shared_tokens >= 24 * len(PROMPTS)
            # The same prompts again: all but their last token come from the cache.
            again = await generate_all_chunks(local, [chat(p, f"c{i}", tokens=TOKENS) for i, p in enumerate(PROMPTS)])
            assert cache.hits == 2 * len(PROMPTS)
            assert cache.shared_tokens >= 24 * len(PROMPTS) + sum(r.usage.prompt_tokens - 1 for _, r in alone.values())
            for i, p in enumerate(PROMPTS):
                for answer in (together[f"b{i}"], again[f"c{i}"]):
                    assert answer[1].usage.prompt_tokens == alone[p][1].usage.prompt_tokens
                    if answer[1].text != alone[p][1].text:
                        for chunks in (alone[p][0], answer[0]):
                            await assert_greedy_up_to_ties(local, p, [t for c in chunks for t in c.token_ids])
    assert all(r.usage.completion_tokens > 0 for _, r in alone.values())


async def test_a_prefix_is_shared_under_the_same_adapter_only(llama_adapter_expert):
    with trio.fail_after(240):
        async with serving(llama_adapter_expert, max_batch=2, prefix_entries=0) as local:
            tuned_alone = (await generate(local, chat(PROMPTS[0], "t0", tokens=TOKENS, adapter=ADAPTER_NAME)))[1]
        async with serving(llama_adapter_expert, max_batch=2) as local:
            await generate(local, chat(PROMPTS[0], "base", tokens=TOKENS))
            tuned = (await generate(local, chat(PROMPTS[0], "t1", tokens=TOKENS, adapter=ADAPTER_NAME)))[1]
            assert local.worker.prefixes.hits == 0  # the base model's cells are not the adapter's
            await generate(local, chat(PROMPTS[0], "t2", tokens=2, adapter=ADAPTER_NAME))
            assert local.worker.prefixes.hits == 1
    assert tuned.text == tuned_alone.text  # the same computation: a base prefix would have changed it


# --------------------------------------------------------------------------- the bookkeeping alone


class FakeContext:
    def __init__(self) -> None:
        self.cells: dict[int, int] = {}  # seq -> cells held

    def copy(self, source: int, target: int, length: int) -> None:
        assert self.cells.get(source, 0) >= length and not self.cells.get(target)
        self.cells[target] = length

    def forget(self, seq: int) -> None:
        self.cells.pop(seq, None)


class FakeWorker:
    def __init__(self, kv_tokens: int) -> None:
        self.context = FakeContext()
        self.kv_tokens = kv_tokens
        self.kv_used = 0


@pytest.fixture
def fake() -> tuple[FakeWorker, PrefixCache]:
    worker = FakeWorker(kv_tokens=100)
    return worker, PrefixCache(worker, [10, 11])


def test_share_copies_the_longest_common_prefix_and_runs_the_last_token(fake):
    worker, cache = fake
    worker.context.cells[0] = 8
    cache.store(None, [1, 2, 3, 4, 5, 6, 7, 8], 0)
    assert worker.kv_used == 8 and len(cache) == 1
    worker.context.cells.pop(1, None)
    assert cache.share(None, [1, 2, 3, 4, 5, 9, 9], 1) == 5
    worker.context.forget(1)
    assert cache.share(None, [1, 2, 3, 4, 5, 6, 7, 8], 1) == 7  # the last token must run for its logits
    worker.context.forget(1)
    assert cache.share("tuned", [1, 2, 3, 4, 5, 6, 7, 8], 1) == 0  # another adapter's cells differ
    assert cache.share(None, [1, 2, 3, 9], 1) == 0  # too short to be worth a copy
    assert cache.hits == 2 and cache.shared_tokens == 12


def test_entries_are_replaced_least_recently_used_and_give_room_back(fake):
    worker, cache = fake
    for seq, prompt in enumerate(([1] * 30, [2] * 30, [3] * 30)):
        worker.context.cells[seq] = 30
        cache.store(None, prompt, seq)
    assert len(cache) == 2 and worker.kv_used == 60  # two sequences: the oldest entry went
    assert cache.share(None, [1] * 30, 5) == 0
    worker.context.cells[4] = 40
    cache.store(None, [3] * 40, 4)  # extends an entry: replaces it
    assert len(cache) == 2 and worker.kv_used == 70
    assert cache.make_room(50)  # evicts the least recently used ([2] * 30)
    assert worker.kv_used == 40 and cache.share(None, [3] * 41, 6) == 40
    worker.kv_used += 80  # generations and sessions hold the rest: room cannot be made
    assert not cache.make_room(100) and len(cache) == 0 and worker.kv_used == 80
    cache.store(None, [7] * 30, 6)  # no room left: not kept
    assert len(cache) == 0 and worker.kv_used == 80
