"""The inference worker on the real SmolLM2 model, driven from trio without a network.

Greedy output of the continuous batch must equal HF ``generate`` for each
request alone (padding, masks and position ids right); adapters mix within a
batch; backpressure, cancellation and deadlines free slots.
"""

from __future__ import annotations

import dataclasses
import time
from contextlib import aclosing

import msgspec
import pytest
import trio

from node.expert.errors import Busy, UnknownAdapter
from node.expert.serve.batcher import InferenceWorker
from node.expert.serve.local import ExpertError, LocalExpert
from protocol import (
    ChatMessage,
    ErrorMessage,
    GenerateRequest,
    GenerateResult,
    NextTokenRequest,
    Queued,
    SamplingParams,
    ScoreRequest,
    TokenChunk,
)
from tests.expert.fixtures import ADAPTER_NAME, hf_greedy

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Name three colors.",
    "Explain gravity in one sentence.",
]
TOKENS = 12


def chat(text: str, rid: str, *, tokens: int = TOKENS, adapter: str | None = None, **sampling) -> GenerateRequest:
    return GenerateRequest(
        request_id=rid,
        messages=(ChatMessage(role="user", content=text),),
        adapter=adapter,
        sampling=SamplingParams(max_new_tokens=tokens, **sampling),
    )


@pytest.fixture
async def local(torch_expert):
    worker = InferenceWorker(torch_expert, max_batch=8, queue_size=8)
    worker.start()
    try:
        yield LocalExpert(worker)
    finally:
        await trio.to_thread.run_sync(worker.stop)


async def run_all(local: LocalExpert, requests: list[GenerateRequest]) -> dict[str, tuple[list[TokenChunk], GenerateResult]]:
    results: dict[str, tuple[list[TokenChunk], GenerateResult]] = {}

    async def one(request: GenerateRequest) -> None:
        chunks: list[TokenChunk] = []
        async with aclosing(local.generate(request)) as events:
            async for message in events:
                if isinstance(message, TokenChunk):
                    chunks.append(message)
                else:
                    results[request.request_id] = (chunks, message)

    async with trio.open_nursery() as nursery:
        for request in requests:
            nursery.start_soon(one, request)
    return results


async def test_concurrent_greedy_equals_hf_generate(local, torch_expert):
    with trio.fail_after(90):
        requests = [chat(p, f"r{i}") for i, p in enumerate(PROMPTS)]
        results = await run_all(local, requests)
    for i, prompt in enumerate(PROMPTS):
        chunks, result = results[f"r{i}"]
        assert result.text == hf_greedy(torch_expert, prompt)
        assert "".join(c.text for c in chunks) == result.text  # streamed pieces add up
        assert [c.index for c in chunks] == list(range(len(chunks)))
        assert result.usage.completion_tokens <= TOKENS
        assert 0 < result.usage.first_token_seconds <= result.usage.seconds
    # They really shared decode steps: far fewer steps than tokens generated.
    generated = sum(r.usage.completion_tokens for _, r in results.values())
    assert local.worker.steps < generated


async def test_seeded_sampling_is_reproducible_and_differs_from_greedy(local):
    with trio.fail_after(60):
        a = await run_all(local, [chat("Tell me a story.", "a", temperature=1.2, seed=7, tokens=10)])
        b = await run_all(local, [chat("Tell me a story.", "b", temperature=1.2, seed=7, tokens=10),
                                  chat("Name a fruit.", "c", tokens=10)])
        c = await run_all(local, [chat("Tell me a story.", "d", temperature=1.2, seed=8, tokens=10)])
    assert a["a"][1].text == b["b"][1].text  # same seed, other requests in the batch: same tokens
    assert a["a"][1].text != c["d"][1].text


async def test_stop_string_ends_generation_without_leaking_it(local, torch_expert):
    reference = hf_greedy(torch_expert, PROMPTS[2], tokens=16)  # "1. Red\n2. Blue\n3. Green"
    stop = reference[3:8]
    with trio.fail_after(60):
        result = (await run_all(local, [chat(PROMPTS[2], "s", tokens=16, stop=(stop,))]))["s"]
    chunks, final = result
    assert final.finish_reason == "stop"
    assert final.text == reference[:3]
    assert "".join(c.text for c in chunks) == final.text


async def test_waiting_generations_report_their_queue_position(torch_expert):
    """With ``progress`` set, a queued request hears its place (and keep-alives) until it starts."""
    worker = InferenceWorker(torch_expert, max_batch=1, queue_size=8)
    worker.start()
    local = LocalExpert(worker)
    seen: dict[str, list[object]] = {}

    async def one(rid: str, progress: bool) -> None:
        request = msgspec.structs.replace(chat("Count to fifty.", rid, tokens=16), progress=progress)
        async with aclosing(local.generate(request)) as events:
            seen[rid] = [message async for message in events]

    try:
        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                for i in range(4):
                    nursery.start_soon(one, f"r{i}", True)
                    await trio.sleep(0.05)  # submission order = queue order
                nursery.start_soon(one, "quiet", False)
    finally:
        await trio.to_thread.run_sync(worker.stop)
    last = seen["r3"]
    reports = [m for m in last if isinstance(m, Queued)]
    assert reports and reports[0].position == 3 and reports[0].waiting >= 3 and reports[0].running == 1
    positions = [r.position for r in reports]
    assert positions == sorted(positions, reverse=True)
    # Queue reports only come before the first token (after it, only a slow step's keep-alive,
    # marked started), and the answer is unaffected.
    first_chunk = next(i for i, m in enumerate(last) if isinstance(m, TokenChunk))
    assert all(m.started for m in last[first_chunk:] if isinstance(m, Queued))
    started = [m.started for m in reports]
    assert started == sorted(started)  # once running, never reported as waiting again
    assert isinstance(last[-1], GenerateResult) and last[-1].usage.completion_tokens > 0
    # A request that did not ask (an older client) never sees a Queued message.
    assert not any(isinstance(m, Queued) for m in seen["quiet"])


async def test_a_running_generation_keeps_reporting_while_its_forward_pass_is_slow(torch_expert, monkeypatch):
    """The trio side's keep-alive: a prefill slower than the keep-alive interval is not silence."""
    worker = InferenceWorker(torch_expert, max_batch=1, queue_size=8)
    real_forward = worker._forward
    slowed: list[bool] = []

    def slow_forward(adapters, **inputs):
        if not slowed:  # the first prefill only
            slowed.append(True)
            time.sleep(2.5)
        return real_forward(adapters, **inputs)

    monkeypatch.setattr(worker, "_forward", slow_forward)
    worker.start()
    local = LocalExpert(worker)
    try:
        with trio.fail_after(60):
            seen = []
            request = msgspec.structs.replace(chat("Name a colour.", "slow", tokens=4), progress=True)
            async with aclosing(local.generate(request)) as events:
                seen = [message async for message in events]
            slowed.clear()  # a request without progress hears nothing but its answer (older clients)
            request = chat("Name a colour.", "quiet", tokens=4)
            async with aclosing(local.generate(request)) as events:
                quiet = [message async for message in events]
    finally:
        await trio.to_thread.run_sync(worker.stop)
    first_chunk = next(i for i, m in enumerate(seen) if isinstance(m, TokenChunk))
    alive = [m for m in seen[:first_chunk] if isinstance(m, Queued) and m.started]
    assert alive and all(m.position == 1 and m.request_id == "slow" for m in alive)
    assert isinstance(seen[-1], GenerateResult) and seen[-1].usage.completion_tokens > 0
    assert slowed and not any(isinstance(m, Queued) for m in quiet) and isinstance(quiet[-1], GenerateResult)


async def test_running_rows_keep_decoding_while_new_requests_are_prefilled(local):
    """A burst must not freeze the rows already generating: prefills are spread over decode steps.

    Admitting a whole batch at once ran every prefill before the next decode step, so the first
    request's second token waited for all the others' first tokens (~20 s on a loaded box, and
    the coordinator gave up on the stalled answer).
    """
    with trio.fail_after(120):
        await run_all(local, [chat(PROMPTS[0], "warm", tokens=2)])  # the worker now knows it can batch
        order: list[tuple[str, int]] = []

        async def one(rid: str) -> None:
            async with aclosing(local.generate(chat("Count to twenty.", rid, tokens=8))) as events:
                async for message in events:
                    if isinstance(message, TokenChunk):
                        order.append((rid, message.index))

        async with trio.open_nursery() as nursery:
            for i in range(6):
                nursery.start_soon(one, f"b{i}")
    # trio does not start tasks in spawn order: judge by who really started first and last.
    firsts = [rid for rid, index in order if index == 0]
    earliest, latest = firsts[0], firsts[-1]
    assert order.index((earliest, 1)) < order.index((latest, 0)), order


async def test_full_queue_answers_busy(torch_expert):
    worker = InferenceWorker(torch_expert, max_batch=1, queue_size=1)
    worker.start()
    local = LocalExpert(worker)
    try:
        with trio.fail_after(60):
            async with local.open(chat("Count to one hundred.", "run", tokens=200)) as (_, first):
                assert isinstance(await first.receive(), TokenChunk)  # running: the only batch slot
                async with local.open(chat("hi", "queued")) as (_, queued):
                    with pytest.raises(Busy) as busy:
                        async with local.open(chat("hi", "third")):
                            pass
                    assert busy.value.to_message().code == "busy"
                    assert worker.queue_depth == 1
            # Leaving the contexts cancelled both: the worker goes idle and serves again.
            result = (await run_all(local, [chat("hi", "after", tokens=4)]))["after"][1]
            assert result.finish_reason in ("stop", "length")
            assert worker.active == 0 and worker.queue_depth == 0
    finally:
        await trio.to_thread.run_sync(worker.stop)


async def test_cancel_frees_the_slot_promptly(local):
    with trio.fail_after(60):
        async with local.open(chat("Count to one hundred.", "long", tokens=400)) as (job, messages):
            for _ in range(3):
                assert isinstance(await messages.receive(), TokenChunk)
            job.cancel()
            async for message in messages:
                if not isinstance(message, TokenChunk):
                    break
        assert isinstance(message, GenerateResult) and message.finish_reason == "cancelled"
        assert message.usage.completion_tokens < 20
        assert local.worker.active == 0


async def test_deadline_gives_timeout(local):
    request = GenerateRequest(request_id="slow", prompt="Once upon a time", timeout_s=0.3,
                              sampling=SamplingParams(max_new_tokens=2000))
    with trio.fail_after(60):
        with pytest.raises(ExpertError) as err:
            async with aclosing(local.generate(request)) as events:
                async for _ in events:
                    pass
    assert err.value.code == "timeout"
    assert local.worker.active == 0


async def test_prompt_over_context_is_too_large(torch_expert):
    small = dataclasses.replace(torch_expert, max_context=32)
    worker = InferenceWorker(small, max_batch=2, queue_size=2)
    worker.start()
    try:
        with trio.fail_after(30):
            async with LocalExpert(worker).open(GenerateRequest(request_id="big", prompt="word " * 100)) as (_, m):
                reply = await m.receive()
    finally:
        await trio.to_thread.run_sync(worker.stop)
    assert isinstance(reply, ErrorMessage) and reply.code == "too_large"


async def test_score_and_next_token_agree_with_greedy(local, torch_expert):
    prompt = (ChatMessage(role="user", content=PROMPTS[0]),)
    with trio.fail_after(60):
        top = await local.next_token(NextTokenRequest(request_id="n", messages=prompt, top_k=5))
        answer = (await run_all(local, [chat(PROMPTS[0], "g", tokens=6)]))["g"][1].text
        scored = await local.score(ScoreRequest(request_id="s", messages=prompt, continuation=answer))
    assert len(top.token_ids) == 5 and list(top.logprobs) == sorted(top.logprobs, reverse=True)
    assert all(lp <= 0 for lp in top.logprobs)
    # Greedy's first token is the top-1 next token, with the same log-probability.
    assert scored.token_ids[0] == top.token_ids[0]
    assert scored.logprobs[0] == pytest.approx(top.logprobs[0], abs=1e-4)
    assert torch_expert.tokenizer.decode(list(scored.token_ids)) == answer


async def test_adapters_mix_in_one_batch(torch_adapter_expert):
    worker = InferenceWorker(torch_adapter_expert, max_batch=4, queue_size=4)
    worker.start()
    local = LocalExpert(worker)
    try:
        with trio.fail_after(90):
            with pytest.raises(UnknownAdapter):
                async with local.open(chat("hi", "x", adapter="nope")):
                    pass
            results = await run_all(local, [
                chat(PROMPTS[0], "base"), chat(PROMPTS[0], "lora", adapter=ADAPTER_NAME),
                chat(PROMPTS[1], "base2"), chat(PROMPTS[1], "lora2", adapter=ADAPTER_NAME),
            ])
    finally:
        await trio.to_thread.run_sync(worker.stop)
    texts = {rid: r.text for rid, (_, r) in results.items()}
    assert texts["base"] != texts["lora"] and texts["base2"] != texts["lora2"]
    assert texts["base"] == hf_greedy(torch_adapter_expert, PROMPTS[0])
    assert texts["lora"] == hf_greedy(torch_adapter_expert, PROMPTS[0], adapter=ADAPTER_NAME)
    assert texts["lora2"] == hf_greedy(torch_adapter_expert, PROMPTS[1], adapter=ADAPTER_NAME)
    assert results["lora"][1].adapter == ADAPTER_NAME
