"""The engine conformance suite: both engines (torch, llama.cpp) answer the same way through the seam.

Every test here drives a worker made by :func:`node.expert.serve.engine.make_worker` through
:class:`~node.expert.serve.local.LocalExpert` (the trio side the infer service uses), on the real
SmolLM2-135M GGUF: the torch engine dequantized to fp32, the llama.cpp engine on the Q4_1
blocks as they are.  Same weights, different arithmetic (llama.cpp quantizes activations
to 8 bits for its dot products), so cross-engine checks compare within a tolerance.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager

import pytest
import trio

from node.expert.errors import Busy
from node.expert.serve.engine import make_worker
from node.expert.serve.local import LocalExpert
from protocol import (
    ChatMessage,
    GenerateRequest,
    GenerateResult,
    NextTokenRequest,
    Queued,
    SamplingParams,
    ScoreRequest,
    SessionAppend,
    SessionClose,
    SessionClosed,
    SessionOpen,
    TokenChunk,
)

PROMPTS = [
    "What is the capital of France?",
    "Name three colors.",
    "Explain gravity in one sentence.",
    "Write a haiku about the sea.",
]
TOKENS = 12
# Cross-engine tolerance on log-probabilities: llama.cpp runs Q4_1 x Q8 dot products, the torch
# engine fp32 on the dequantized weights (measured: mean |diff| ~0.02-0.05 on SmolLM2).
LOGPROB_TOLERANCE = 0.25


def chat(text: str, rid: str, *, tokens: int = TOKENS, adapter: str | None = None, stream: bool = True,
         progress: bool = False, **sampling) -> GenerateRequest:
    return GenerateRequest(request_id=rid, messages=(ChatMessage(role="user", content=text),), adapter=adapter,
                           sampling=SamplingParams(max_new_tokens=tokens, **sampling), stream=stream,
                           progress=progress, timeout_s=300.0)


@pytest.fixture(params=["torch", "llama.cpp"])
def engine_expert(request: pytest.FixtureRequest):
    return request.getfixturevalue("torch_expert" if request.param == "torch" else "llama_expert")


@asynccontextmanager
async def serving(expert, **options) -> AsyncIterator[LocalExpert]:
    options.setdefault("threads", 2)
    worker = make_worker(expert, **options)
    worker.start()
    try:
        yield LocalExpert(worker)
    finally:
        await trio.to_thread.run_sync(worker.stop)


async def generate(local: LocalExpert, request: GenerateRequest) -> tuple[list[TokenChunk], GenerateResult]:
    chunks: list[TokenChunk] = []
    async with aclosing(local.generate(request)) as events:
        async for message in events:
            if isinstance(message, TokenChunk):
                chunks.append(message)
            elif isinstance(message, GenerateResult):
                return chunks, message
    raise AssertionError("no result")


async def generate_all(local: LocalExpert, requests: list[GenerateRequest]) -> dict[str, GenerateResult]:
    results: dict[str, GenerateResult] = {}

    async def one(request: GenerateRequest) -> None:
        results[request.request_id] = (await generate(local, request))[1]

    async with trio.open_nursery() as nursery:
        for request in requests:
            nursery.start_soon(one, request)
    return results


# --------------------------------------------------------------------------- each engine on its own


async def test_concurrent_streams_equal_each_alone(engine_expert):
    """Continuous batching: greedy answers in a batch are the answers each prompt gets alone.

    Up to numerical ties: llama.cpp's attention sums a sequence's KV cells in an order that
    depends on where they sit in the shared cache, so a near-tie may fall the other way in a
    batch.  Where a batched answer differs, every token of both answers must then be the model's
    greedy choice within ``TIE_NATS`` (replayed through a session: the exact token ids).
    """
    with trio.fail_after(240):
        async with serving(engine_expert, max_batch=4) as local:
            alone = {p: await generate(local, chat(p, f"a{i}")) for i, p in enumerate(PROMPTS)}
            together = await generate_all_chunks(local, [chat(p, f"b{i}") for i, p in enumerate(PROMPTS)])
            assert local.worker.steps > 0
            differing = [(i, p) for i, p in enumerate(PROMPTS) if together[f"b{i}"][1].text != alone[p][1].text]
            for i, p in differing:
                for chunks in (alone[p][0], together[f"b{i}"][0]):
                    await assert_greedy_up_to_ties(local, p, [t for c in chunks for t in c.token_ids])
    if engine_expert is not None and getattr(engine_expert, "engine", "torch") == "torch":
        assert not differing  # the torch engine's batch is exact (tests/unit/test_expert_worker.py)
    # llama.cpp: any number may differ (3 of 4 did once under load); each differing token was checked above.
    assert all(r.finish_reason in ("stop", "length") and r.usage.completion_tokens > 0
               for _, r in together.values())


# Measured: a prompt prefilled in one llama_decode with three others moved SmolLM2's top two ("L" -1.85,
# "The" -2.09 alone) far enough to swap them (0.24 nats).  The cause: llama.cpp's CPU matmul runs the
# rows of a ubatch in groups of 4 or 8 with other kernels than the rows left over, and a row's logits
# move by ~0.5 with the kernel (the same sequence state decoded as 1, 2 or 3 rows: identical logits; as
# 4 or 8 rows: 0.49-0.51 apart; a prompt prefilled in one decode or in two whose sizes are not multiples
# of 4: ~0.5 apart).  So a batched token may trail the best by this much.
TIE_NATS = 0.3


async def assert_greedy_up_to_ties(local: LocalExpert, text: str, tokens: list[int],
                                   adapter: str | None = None) -> None:
    """Each of ``tokens`` is within TIE_NATS of the best next token after the prompt and those before it."""
    from node.expert.serve.session_store import SessionOp
    from protocol import SessionNext

    key = f"check/{len(tokens)}-{hash(text) & 0xffff}"
    sid = key.rpartition("/")[2]
    step = await local.call(SessionOp("open", key, SessionOpen(session_id=sid, messages=(
        ChatMessage(role="user", content=text),), top_k=5, adapter=adapter), adapter), SessionNext)
    for token in tokens:
        chosen = dict(zip(step.token_ids, step.logprobs, strict=True)).get(token)
        assert chosen is not None and chosen >= step.logprobs[0] - TIE_NATS, (text, token, step)
        step = await local.call(SessionOp("append", key, SessionAppend(session_id=sid, token_ids=(token,), top_k=5)),
                                SessionNext)
    await local.call(SessionOp("close", key, SessionClose(session_id=sid)), SessionClosed)


async def generate_all_chunks(local: LocalExpert, requests: list[GenerateRequest]
                              ) -> dict[str, tuple[list[TokenChunk], GenerateResult]]:
    results: dict[str, tuple[list[TokenChunk], GenerateResult]] = {}

    async def one(request: GenerateRequest) -> None:
        results[request.request_id] = await generate(local, request)

    async with trio.open_nursery() as nursery:
        for request in requests:
            nursery.start_soon(one, request)
    return results


async def test_stream_chunks_add_up_and_usage(engine_expert):
    with trio.fail_after(60):
        async with serving(engine_expert) as local:
            chunks, result = await generate(local, chat(PROMPTS[0], "s", tokens=16, stream=True))
    assert len(chunks) > 1 and "".join(c.text for c in chunks) == result.text
    assert result.usage.prompt_tokens > 5 and 0 < result.usage.first_token_seconds <= result.usage.seconds


async def test_cancel_ends_the_stream_and_frees_the_row(engine_expert):
    with trio.fail_after(60):
        async with serving(engine_expert, max_batch=2) as local:
            request = chat("Count from one to one hundred.", "c", tokens=400, stream=True)
            async with local.open(request) as (job, messages):
                while not isinstance(await messages.receive(), TokenChunk):
                    pass
                job.cancel()
                final = None
                while final is None:
                    message = await messages.receive()
                    if isinstance(message, GenerateResult):
                        final = message
            assert final.finish_reason == "cancelled" and final.usage.completion_tokens < 400
            while local.worker.active:
                await trio.sleep(0.02)
            # The freed row serves the next request normally.
            _, after = await generate(local, chat(PROMPTS[1], "next"))
    assert after.finish_reason in ("stop", "length")


async def test_seeded_sampling_repeats_and_greedy_ignores_seed(engine_expert):
    with trio.fail_after(90):
        async with serving(engine_expert) as local:
            sampled = [(await generate(local, chat(PROMPTS[3], f"t{i}", tokens=16, temperature=1.0, top_p=0.95,
                                                   seed=7)))[1].text for i in range(2)]
            other = (await generate(local, chat(PROMPTS[3], "u", tokens=16, temperature=1.0, top_p=0.95,
                                                 seed=8)))[1].text
    assert sampled[0] == sampled[1] and sampled[0]
    assert other != sampled[0]


async def test_queued_reports_while_waiting_for_a_row(engine_expert):
    with trio.fail_after(90):
        async with serving(engine_expert, max_batch=1, queue_size=2) as local:
            # Long enough to hold the only row while the others queue, even on a fast engine.
            first = chat("Write a long story about a dragon and a knight.", "long", tokens=400, stream=True)
            second = chat(PROMPTS[1], "waiting", progress=True)
            seen: list[Queued] = []

            async def second_one() -> None:
                async with aclosing(local.generate(second)) as events:
                    async for message in events:
                        if isinstance(message, Queued):
                            seen.append(message)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(generate, local, first)
                await trio.sleep(0.3)
                nursery.start_soon(second_one)
                await trio.sleep(0.3)
                # A third waits too; a fourth finds the queue (2) full: busy at once.
                nursery.start_soon(generate, local, chat(PROMPTS[2], "third"))
                await trio.sleep(0.2)
                with pytest.raises(Busy):
                    async with local.open(chat(PROMPTS[0], "fourth")):
                        pass
                # The worker reports the queue between steps: under load one step (the long prompt's
                # prefill) can take seconds, so wait for the report rather than a fixed time.
                with trio.move_on_after(30):
                    while not seen:
                        await trio.sleep(0.05)
                nursery.cancel_scope.cancel()  # the long answer is not needed
    assert seen and seen[0].position >= 1 and not seen[0].started


async def test_score_agrees_with_next_token(engine_expert):
    """The logprob score gives a continuation's first token is the one next_token gives it."""
    prompt = "The capital of France is"
    with trio.fail_after(60):
        async with serving(engine_expert) as local:
            top = await local.next_token(NextTokenRequest(request_id="n", prompt=prompt, top_k=5))
            scored = await local.score(ScoreRequest(request_id="s", prompt=prompt, continuation=top.tokens[0]))
    assert scored.token_ids[0] == top.token_ids[0]
    assert scored.logprobs[0] == pytest.approx(top.logprobs[0], abs=1e-3)
    assert list(top.logprobs) == sorted(top.logprobs, reverse=True)


async def test_session_steps_reuse_the_cache_exactly(engine_expert):
    """A session fed tokens step by step gives the distribution a fresh call on the whole text gives."""
    prompt, continuation = "The capital of France is", " Paris. It is"
    tokenizer = engine_expert.tokenizer
    fed = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    whole = tokenizer(prompt + continuation)["input_ids"]
    assert whole[-len(fed):] == fed  # the split is a token boundary
    from node.expert.serve.session_store import SessionOp

    with trio.fail_after(60):
        async with serving(engine_expert) as local:
            from protocol import SessionNext

            opened = await local.call(SessionOp("open", "me/s1", SessionOpen(session_id="s1", prompt=prompt)),
                                      SessionNext)
            step = await local.call(SessionOp("append", "me/s1", SessionAppend(session_id="s1", token_ids=fed[:1])),
                                    SessionNext)
            step = await local.call(SessionOp("append", "me/s1", SessionAppend(session_id="s1", token_ids=fed[1:])),
                                    SessionNext)
            fresh = await local.next_token(NextTokenRequest(request_id="f", prompt=prompt + continuation, top_k=20))
            plain = await local.next_token(NextTokenRequest(request_id="p", prompt=prompt, top_k=20))
    assert opened.position == len(whole) - len(fed) and step.position == len(whole)
    assert step.token_ids[:3] == fresh.token_ids[:3]
    assert step.logprobs[0] == pytest.approx(fresh.logprobs[0], abs=0.02)
    assert opened.token_ids[:3] == plain.token_ids[:3]


# --------------------------------------------------------------------------- the engines against each other


async def test_engines_answer_greedy_prompts_alike(torch_expert, llama_expert):
    """Along the torch engine's greedy answers, both engines give each token nearly the same logprob.

    Exact greedy equality is too strong across engines: Q4_1 x Q8 arithmetic moves logprobs by a few
    hundredths of a nat, which flips SmolLM2's near ties ("L" -1.85 vs "The" -2.09 on the capital of
    France): measured, 2 of these 4 answers start alike.  Teacher-forced, the whole paths agree.
    """
    answers: dict[str, dict[str, GenerateResult]] = {}
    for name, expert in (("torch", torch_expert), ("llama.cpp", llama_expert)):
        with trio.fail_after(120):
            async with serving(expert) as local:  # one at a time: no batch-order noise
                answers[name] = {f"g{i}": (await generate(local, chat(p, f"g{i}")))[1] for i, p in enumerate(PROMPTS)}
    scores: dict[str, list[tuple[float, ...]]] = {}
    for name, expert in (("torch", torch_expert), ("llama.cpp", llama_expert)):
        async with serving(expert) as local:
            scores[name] = [(await local.score(ScoreRequest(
                request_id=f"s{i}", messages=(ChatMessage(role="user", content=p),),
                continuation=answers["torch"][f"g{i}"].text))).logprobs for i, p in enumerate(PROMPTS)]
    diffs = [abs(a - b) for ours, theirs in zip(scores["torch"], scores["llama.cpp"], strict=True)
             for a, b in zip(ours, theirs, strict=True)]
    assert sum(diffs) / len(diffs) < 0.1 and max(diffs) < 1.0, diffs
    same_start = sum(answers["torch"][k].text[:16] == answers["llama.cpp"][k].text[:16] for k in answers["torch"])
    assert same_start >= len(PROMPTS) // 2, {k: {i: r.text for i, r in v.items()} for k, v in answers.items()}


async def test_engines_score_and_next_token_within_tolerance(torch_expert, llama_expert):
    prompt, continuation = "Question: What is 2 + 2?\nAnswer:", " The answer is 4."
    results = {}
    for name, expert in (("torch", torch_expert), ("llama.cpp", llama_expert)):
        async with serving(expert) as local:
            results[name] = (
                await local.score(ScoreRequest(request_id="s", prompt=prompt, continuation=continuation)),
                await local.next_token(NextTokenRequest(request_id="n", prompt=prompt, top_k=5)),
            )
    (score_t, next_t), (score_l, next_l) = results["torch"], results["llama.cpp"]
    assert score_t.token_ids == score_l.token_ids
    diffs = [abs(a - b) for a, b in zip(score_t.logprobs, score_l.logprobs, strict=True)]
    assert max(diffs) < LOGPROB_TOLERANCE, diffs
    assert next_t.token_ids[0] == next_l.token_ids[0]
    assert abs(next_t.logprobs[0] - next_l.logprobs[0]) < LOGPROB_TOLERANCE


def test_llama_tokenizer_agrees_with_the_hf_tokenizer(llama_expert):
    """Prompts are tokenized by the HF tokenizer; llama.cpp's own tokenizer gives the same ids."""
    import llama_cpp

    from node.expert.serve.prompts import PromptBuilder

    builder = PromptBuilder(llama_expert.tokenizer)
    vocab = llama_cpp.llama_model_get_vocab(llama_expert.model)
    for i, text in enumerate([*PROMPTS, "Ünïcödé, emoji 🎉 and\ttabs\n\nnew lines", "x = [1, 2, 3]  # code"]):
        request = chat(text, f"t{i}")
        rendered = builder.text(request).encode()
        out = (llama_cpp.llama_token * (len(rendered) + 8))()
        n = llama_cpp.llama_tokenize(vocab, rendered, len(rendered), out, len(out), False, True)
        assert list(out[:n]) == builder.token_ids(request), text
