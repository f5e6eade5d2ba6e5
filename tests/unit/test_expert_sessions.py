"""Generation sessions without a network: the pure session table, then sessions on the real worker.

A session step feeds one token to a cached context; greedy stepping must give
exactly HF ``generate``'s text, and every step's distribution must match a
from-scratch forward over the whole context.
"""

from __future__ import annotations

import pytest
import trio

import protocol as p
from node.expert.errors import RequestRejected
from node.expert.serve.batcher import InferenceWorker
from node.expert.serve.local import LocalExpert
from node.expert.serve.notary import Notary
from node.expert.serve.session_store import UnknownSession
from node.expert.serve.sessions import (
    DuplicateSession,
    SessionHost,
    SessionTable,
    TooManySessions,
)
from protocol.receipts import (
    DistributionChain,
    prompt_digest,
    session_input_digest,
    verify_receipt,
)
from tests.expert.fixtures import ADAPTER_NAME, hf_greedy

QUESTION = "What is the capital of France?"
ME = p.Identity.from_seed(b"\x07" * 32)


def opening(sid: str, *, adapter: str | None = None, idle: float = 60.0, top_k: int = 5) -> p.SessionOpen:
    return p.SessionOpen(session_id=sid, messages=(p.ChatMessage(role="user", content=QUESTION),),
                         adapter=adapter, top_k=top_k, idle_timeout_s=idle)


# --------------------------------------------------------------------------- the table (pure)


def test_table_bounds_sessions_per_peer_and_in_total():
    table = SessionTable(max_total=3, max_per_peer=2, max_idle_s=60)
    table.reserve("a", opening("1"), 0.0)
    table.reserve("a", opening("2"), 0.0)
    with pytest.raises(TooManySessions) as caught:
        table.reserve("a", opening("3"), 0.0)
    assert caught.value.code == "busy" and "per peer" in str(caught.value)
    table.reserve("b", opening("1"), 0.0)  # same id, other peer: a different session
    with pytest.raises(TooManySessions):
        table.reserve("c", opening("1"), 0.0)
    with pytest.raises(DuplicateSession):
        table.reserve("b", opening("1"), 0.0)
    table.end(table.use("a", "1", 1.0), "closed")
    table.reserve("c", opening("1"), 1.0)  # room again
    assert len(table) == 3


def test_table_says_why_a_session_is_unknown():
    table = SessionTable(max_total=4, max_per_peer=4, max_idle_s=10)
    entry = table.reserve("a", opening("s", idle=100), 0.0)
    assert entry.idle_s == 10  # the expert caps the client's ask
    with pytest.raises(UnknownSession, match="never opened"):
        table.use("b", "s", 1.0)  # another peer cannot touch it
    table.end(entry, "closed")
    with pytest.raises(UnknownSession, match="was closed") as caught:
        table.use("a", "s", 1.0)
    assert caught.value.code == "not_found"


def test_table_expires_idle_sessions_but_not_busy_ones():
    table = SessionTable(max_total=4, max_per_peer=4, max_idle_s=10)
    idle = table.reserve("a", opening("idle", idle=1.0), 0.0)
    busy = table.reserve("a", opening("busy", idle=1.0), 0.0)
    busy.in_flight = 1
    fresh = table.reserve("a", opening("fresh", idle=5.0), 0.0)
    assert table.expired(0.5) == []
    assert table.expired(2.0) == [idle]
    assert table.use("a", "busy", 2.0) is busy and table.use("a", "fresh", 2.0) is fresh
    with pytest.raises(UnknownSession, match="expired after 1 s idle"):
        table.use("a", "idle", 2.0)


# --------------------------------------------------------------------------- on the real worker


@pytest.fixture
async def host(torch_adapter_expert):
    worker = InferenceWorker(torch_adapter_expert, max_batch=4, queue_size=8, session_max_tokens=256)
    worker.start()
    local = LocalExpert(worker)
    notary = Notary(ME, torch_adapter_expert.content_id, {ADAPTER_NAME: "bafyadapter"}, torch_adapter_expert.adapters)
    sessions = SessionHost(local, SessionTable(max_total=4, max_per_peer=2, max_idle_s=0.5), notary)
    try:
        yield sessions
    finally:
        await trio.to_thread.run_sync(worker.stop)


def reference_top(expert, ids: list[int], adapter: str | None, k: int) -> tuple[list[int], list[float]]:
    """Top-k log-probabilities from one forward over the whole context, no cache."""
    import contextlib

    import torch

    model = expert.model
    if adapter is None:
        ctx = model.disable_adapter()
    else:
        model.set_adapter(adapter)
        ctx = contextlib.nullcontext()
    with torch.inference_mode(), ctx:
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    top = torch.topk(torch.log_softmax(logits, -1), k)
    return top.indices.tolist(), top.values.tolist()


@pytest.mark.parametrize("adapter", [None, ADAPTER_NAME])
# Loading the base and the adapter models takes most of a minute on a loaded 2-core box.
@pytest.mark.timeout(300)
async def test_greedy_session_equals_hf_generate_and_signs_what_it_saw(host, torch_adapter_expert, adapter):
    tok = torch_adapter_expert.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True, tokenize=False)
    prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
    with trio.fail_after(60):
        step = await host.open("me", opening("g", adapter=adapter))
        chain = DistributionChain()
        chain.update(step.token_ids, step.logprobs)
        assert step.position == len(prompt_ids) and step.eos_token_ids and step.idle_timeout_s == 0.5
        eos = step.eos_token_ids  # only the reply to open carries them
        fed: list[int] = []
        text = ""
        for _ in range(12):
            ids, logprobs = reference_top(torch_adapter_expert, list(prompt_ids) + fed, adapter, 5)
            assert list(step.token_ids) == ids
            assert step.logprobs == pytest.approx(logprobs, abs=1e-4)
            token = step.token_ids[0]
            if token in eos:
                break
            fed.append(token)
            step = await host.append("me", p.SessionAppend(session_id="g", token_ids=(token,), top_k=5))
            chain.update(step.token_ids, step.logprobs)
            text += step.text
        closed = await host.close("me", p.SessionClose(session_id="g"))
    assert text == hf_greedy(torch_adapter_expert, QUESTION, adapter=adapter) and len(text) > 10
    assert closed.usage.completion_tokens == len(fed) and closed.usage.prompt_tokens == len(prompt_ids)
    receipt = verify_receipt(
        closed.receipt, peer_id=ME.peer_id, request_id="g",
        input_digest=session_input_digest(prompt_digest(None, opening("g").messages), fed),
        output_digest=chain.digest(),
    )
    assert receipt.kind == "session" and receipt.tokens == len(fed) and receipt.adapter == adapter
    assert receipt.adapter_cid == ("bafyadapter" if adapter else None)
    assert len(host.local.worker._session_store()) == 0  # closing freed the cache


async def test_bad_session_requests_get_typed_errors_and_the_worker_keeps_serving(host):
    with trio.fail_after(60):
        await host.open("me", opening("a"))
        reply = await host.handle("me", p.SessionAppend(session_id="nope", token_ids=(1,)))
        assert reply.code == "not_found" and "never opened" in reply.message
        reply = await host.handle("me", p.SessionAppend(session_id="a", token_ids=(10**9,)))
        assert reply.code == "bad_request" and "vocabulary" in reply.message
        reply = await host.handle("me", p.SessionAppend(session_id="a", token_ids=(5,) * 256))
        assert reply.code == "too_large"  # 256 tokens would pass session_max_tokens
        await host.open("me", opening("b"))
        reply = await host.handle("me", opening("c"))
        assert reply.code == "busy"  # two per peer
        reply = await host.handle("other", opening("a", adapter="missing"))
        assert reply.code == "not_found" and "adapter" in reply.message
        await host.close("me", p.SessionClose(session_id="a"))
        reply = await host.handle("me", p.SessionAppend(session_id="a", token_ids=(1,)))
        assert reply.code == "not_found" and "closed" in reply.message
        # Idle expiry (0.5 s here) frees the worker's cache without any client message.
        async with trio.open_nursery() as nursery:
            nursery.start_soon(host.reap_forever)
            while len(host.table):
                await trio.sleep(0.05)
            while len(host.local.worker._session_store()):
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
        reply = await host.handle("me", p.SessionAppend(session_id="b", token_ids=(1,)))
        assert reply.code == "not_found" and "expired" in reply.message
        again = await host.open("me", opening("b"))
        assert again.position > 0


def test_unknown_session_is_a_request_rejection():
    assert issubclass(UnknownSession, RequestRejected)
