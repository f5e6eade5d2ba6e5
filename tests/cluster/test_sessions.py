"""Generation sessions over ``/mosaic/infer/1`` between two real nodes on loopback.

Node 0 serves SmolLM2 (+ a LoRA adapter); node 1 opens sessions on it through
``node.expert.remote.session_client``.  Greedy stepping over the network equals HF
``generate``; the receipt at close verifies against node 0's peer id; bad
session requests get typed errors and the expert keeps serving.
"""

from __future__ import annotations

from contextlib import aclosing, asynccontextmanager

import msgspec
import pytest
import trio

from node.expert.remote import client
from node.expert.remote.session_client import open_session
from node.expert.serve.local import ExpertError
from node.net.streams import open_stream
from protocol import (
    INFER_PROTOCOL,
    BadSignature,
    ChatMessage,
    ErrorMessage,
    GenerateRequest,
    GenerateResult,
    SamplingParams,
    SessionAppend,
    SessionOpen,
    SignedReceipt,
)
from protocol.receipts import (
    DistributionChain,
    prompt_digest,
    session_input_digest,
    text_digest,
    verify_receipt,
)
from tests.cluster.harness import in_process_cluster
from tests.expert.fixtures import ADAPTER_NAME, hf_greedy

QUESTION = "What is the capital of France?"
MESSAGES = (ChatMessage(role="user", content=QUESTION),)


@asynccontextmanager
async def expert_pair(expert, **config):
    """Node 0 serves ``expert`` with one torch thread (two threads crawl on a loaded 2-core box); node 1 asks."""
    from node.config import ExpertConfig
    from node.expert import ExpertService

    service = ExpertService(ExpertConfig(**config), expert=expert, threads=1)
    async with in_process_cluster(0) as cluster:
        server = await cluster.add(0, services=[service])
        yield service, server, await cluster.add(1)


def opening(sid: str, *, adapter: str | None = None, idle: float = 60.0) -> SessionOpen:
    return SessionOpen(session_id=sid, messages=MESSAGES, adapter=adapter, top_k=4, idle_timeout_s=idle)


# Loading the base and the adapter models takes most of a minute on a loaded 2-core box.
@pytest.mark.timeout(300)
async def test_greedy_session_over_the_network_matches_hf_and_its_receipt_verifies(adapter_expert):
    with trio.fail_after(120):
        async with expert_pair(adapter_expert) as (service, server, peer):
            chain = DistributionChain()
            fed: list[int] = []
            text = ""
            async with open_session(peer.host, server.peer_id, opening("s1", adapter=ADAPTER_NAME)) as session:
                step = session.first
                eos = step.eos_token_ids
                chain.update(step.token_ids, step.logprobs)
                while step.token_ids[0] not in eos and len(fed) < 12:
                    fed.append(step.token_ids[0])
                    step = await session.append([fed[-1]])
                    chain.update(step.token_ids, step.logprobs)
                    text += step.text
                closed = await session.close()
            # A plain generation carries a receipt too.
            request = GenerateRequest(request_id="g1", messages=MESSAGES, sampling=SamplingParams(max_new_tokens=8))
            async with aclosing(client.generate(peer.host, server.peer_id, request)) as events:
                result = [m async for m in events if isinstance(m, GenerateResult)][0]
    assert text == hf_greedy(adapter_expert, QUESTION, adapter=ADAPTER_NAME)
    receipt = verify_receipt(closed.receipt, peer_id=server.peer_id, request_id="s1",
                             input_digest=session_input_digest(prompt_digest(None, MESSAGES), fed),
                             output_digest=chain.digest())
    assert receipt.kind == "session" and receipt.tokens == len(fed) and receipt.adapter == ADAPTER_NAME
    assert receipt.model_cid == adapter_expert.content_id and receipt.adapter_cid
    generated = verify_receipt(result.receipt, peer_id=server.peer_id, request_id="g1",
                               input_digest=prompt_digest(None, MESSAGES), output_digest=text_digest(result.text))
    assert generated.kind == "generate" and generated.tokens == result.usage.completion_tokens
    # Tampering: a coordinator that edits the text, or forges the receipt, is caught.
    with pytest.raises(Exception, match="output_digest"):
        verify_receipt(result.receipt, peer_id=server.peer_id, output_digest=text_digest(result.text + "!"))
    forged = msgspec.msgpack.decode(result.receipt.payload)
    forged["output_digest"] = text_digest("something else")
    with pytest.raises(BadSignature):
        verify_receipt(SignedReceipt(payload=msgspec.msgpack.encode(forged), signature=result.receipt.signature),
                       peer_id=server.peer_id)


async def raw_exchange(host, peer_id: str, message) -> ErrorMessage:
    stream = await open_stream(host, peer_id, INFER_PROTOCOL)
    try:
        await stream.send(message)
        return await stream.receive()
    finally:
        await stream.aclose()


@pytest.mark.timeout(300)
async def test_bad_session_requests_get_typed_errors_and_the_expert_keeps_serving(base_expert):
    with trio.fail_after(120):
        async with expert_pair(base_expert, max_sessions_per_peer=2) as (service, server, peer):
            host, expert = peer.host, server.peer_id
            reply = await raw_exchange(host, expert, SessionAppend(session_id="ghost", token_ids=(1,)))
            assert isinstance(reply, ErrorMessage) and reply.code == "not_found" and "never opened" in reply.message

            async with open_session(host, expert, opening("a")) as a:
                await a.close()
                with pytest.raises(ExpertError) as caught:
                    await a.append([a.first.token_ids[0]])
                assert caught.value.code == "not_found" and "closed" in caught.value.message

            async with open_session(host, expert, opening("b")) as b, open_session(host, expert, opening("c")):
                with pytest.raises(ExpertError) as caught:
                    async with open_session(host, expert, opening("d")):
                        pass
                assert caught.value.code == "busy"
                # A step on one session still works while another is refused.
                assert (await b.append([b.first.token_ids[0]])).position == b.first.position + 1

            async with open_session(host, expert, opening("idle", idle=0.3)) as idle:
                with trio.fail_after(10):
                    while len(service.sessions.table):  # the reaper runs once a second
                        await trio.sleep(0.1)
                with pytest.raises(ExpertError) as caught:
                    await idle.append([idle.first.token_ids[0]])
                assert caught.value.code == "not_found" and "expired" in caught.value.message

            request = GenerateRequest(request_id="after", messages=MESSAGES, sampling=SamplingParams(max_new_tokens=6))
            async with aclosing(client.generate(host, expert, request)) as events:
                result = [m async for m in events if isinstance(m, GenerateResult)][0]
    assert result.text == hf_greedy(base_expert, QUESTION, tokens=6)
