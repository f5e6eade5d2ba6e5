"""Token-level fusion of two real experts over the network equals a local reference fusion.

Node 1 serves SmolLM2 alone, node 2 the same base with the ``noisy`` LoRA
adapter; node 0 (no expert) fuses them through generation sessions.  The
reference runs both models here with plain HF forwards over the whole context
(no cache, no sessions, no network), averages their top-k probabilities and
takes the argmax: the two must agree token for token.
"""

from __future__ import annotations

from functools import partial

import pytest
import trio

from node.coordinator.fuse_run import Member, fuse_tokens
from node.expert.session_client import open_session
from protocol import ChatMessage
from protocol.receipts import prompt_digest, session_input_digest, verify_receipt
from tests.expert.fixtures import ADAPTER_NAME

QUESTION = "Name a famous scientist and one discovery."
MESSAGES = (ChatMessage(role="user", content=QUESTION),)
TOP_K = 20
TOKENS = 16


def reference_fusion(experts: list[tuple[object, str | None]], tokens: int, top_k: int) -> list[int]:
    """Greedy fusion with HF forwards: mean of the top-k probabilities of each model, argmax."""
    import contextlib

    import torch

    tok = experts[0][0].tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    eos = {tok.eos_token_id, *([experts[0][0].model.generation_config.eos_token_id] if isinstance(
        experts[0][0].model.generation_config.eos_token_id, int) else [])}
    out: list[int] = []
    for _ in range(tokens):
        fused = torch.zeros(experts[0][0].model.get_input_embeddings().weight.shape[0], dtype=torch.float64)
        for expert, adapter in experts:
            model = expert.model
            if not expert.has_adapters:
                ctx = contextlib.nullcontext()
            elif adapter is None:
                ctx = model.disable_adapter()
            else:
                model.set_adapter(adapter)
                ctx = contextlib.nullcontext()
            with torch.inference_mode(), ctx:
                logits = model(input_ids=torch.tensor([ids + out])).logits[0, -1].float()
            top = torch.topk(torch.softmax(logits, -1), top_k)
            fused.index_add_(0, top.indices, top.values.double() / len(experts))
        best = int(fused.argmax())
        if best in eos:
            break
        out.append(best)
    return out


# Loading the base and the adapter models takes most of a minute on a loaded 2-core box.
@pytest.mark.timeout(300)
async def test_fuse_of_two_remote_experts_equals_local_reference_fusion(base_expert, adapter_expert):
    from node.config import ExpertConfig
    from node.expert import ExpertService
    from tests.cluster.harness import in_process_cluster

    with trio.fail_after(120):
        async with in_process_cluster(0) as cluster:
            coordinator = await cluster.add(0)  # the bootstrap node: every expert connects to it
            plain = await cluster.add(1, services=[ExpertService(ExpertConfig(), expert=base_expert, threads=1)])
            tuned = await cluster.add(2, services=[ExpertService(ExpertConfig(), expert=adapter_expert, threads=1)])
            # Fuse whom the registry knows (as the strategy does): both experts' records, with their tokenizer.
            await coordinator.registry.wait_for(
                lambda r: all(r.get(n.peer_id) is not None and r.get(n.peer_id).tokenizer for n in (plain, tuned)))
            members = [Member(plain.peer_id), Member(tuned.peer_id, adapter=ADAPTER_NAME)]
            pieces: list[str] = []
            outcome = await fuse_tokens(partial(open_session, coordinator.host), members, session_id="fuse-1",
                                        messages=MESSAGES, max_new_tokens=TOKENS, top_k=TOP_K,
                                        on_text=pieces.append)
    assert all(m.failed is None and m.receipt is not None for m in outcome.members), outcome.members
    expected = reference_fusion([(base_expert, None), (adapter_expert, ADAPTER_NAME)], TOKENS, TOP_K)
    assert outcome.token_ids == expected
    assert outcome.text == "".join(pieces) and len(outcome.text) > 10
    assert outcome.text == base_expert.tokenizer.decode(expected, skip_special_tokens=True).rstrip("\ufffd")
    for member in outcome.members:
        receipt = verify_receipt(member.receipt, peer_id=member.peer_id, request_id="fuse-1",
                                 input_digest=session_input_digest(prompt_digest(None, MESSAGES), expected))
        assert receipt.kind == "session" and receipt.adapter == member.adapter and receipt.tokens == len(expected)
