"""Token-level fusion of two real experts over the network equals a local reference fusion.

Node 1 serves SmolLM2 alone, node 2 the same base with the ``noisy`` LoRA
adapter; node 0 (no expert) runs the ``fuse`` strategy over both through
generation sessions.  Every step's signed receipt verifies (protocol/verify.py);
an edited output, a swapped peer or edited fed tokens fail the check.  The
reference runs both models here with plain HF forwards over the whole context
(no cache, no sessions, no network), averages their top-k probabilities and
takes the argmax: the two must agree token for token.  It runs on both engines (the llama.cpp
reference is plain llama-cpp-python on the same GGUF); the torch leg fuses fewer tokens, since its
reference re-runs the whole context every token.
"""

from __future__ import annotations

import msgspec
import pytest
import trio

import protocol as p
from protocol import ChatMessage
from protocol.verify import check_step, check_trace
from tests.expert.fixtures import ADAPTER_NAME

QUESTION = "Name a famous scientist and one discovery."
MESSAGES = (ChatMessage(role="user", content=QUESTION),)
TOP_K = 20
TOKENS = {"llama.cpp": 16, "torch": 16}


def reference_fusion(experts: list[tuple[object, str | None]], tokens: int, top_k: int) -> list[int]:
    """Greedy fusion with HF forwards: mean of the top-k probabilities of each model, argmax."""
    import contextlib

    import torch

    tok = experts[0][0].tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True, tokenize=False)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    if getattr(experts[0][0], "engine", "torch") == "llama.cpp":
        return reference_fusion_llama(experts, ids, tokens, top_k)
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


def reference_fusion_llama(experts: list[tuple[object, str | None]], ids: list[int], tokens: int,
                           top_k: int) -> list[int]:
    """The same fusion with plain llama-cpp-python forwards over the whole context."""
    import numpy as np

    from tests.expert.fixtures import reference_logits

    eos = experts[0][0].eos_ids  # type: ignore[attr-defined]
    out: list[int] = []
    for _ in range(tokens):
        fused = np.zeros(experts[0][0].n_vocab, dtype=np.float64)  # type: ignore[attr-defined]
        for expert, adapter in experts:
            logits = reference_logits(expert, adapter, ids + out).astype(np.float64)
            probs = np.exp(logits - logits.max())
            probs /= probs.sum()
            top = np.argsort(-probs, kind="stable")[:top_k]
            fused[top] += probs[top] / len(experts)
        best = int(fused.argmax())
        if best in eos:
            break
        out.append(best)
    return out


# Loading the base and the adapter models takes most of a minute on a loaded 2-core box.
@pytest.mark.timeout(300)
async def test_fuse_of_two_remote_experts_equals_local_reference_fusion(engine_experts):
    engine, base_expert, adapter_expert = engine_experts
    tokens = TOKENS[engine]
    from node.config import ExpertConfig
    from node.coordinator.service import QueryService
    from node.expert import ExpertService
    from tests.cluster.harness import in_process_cluster

    with trio.fail_after(150):
        async with in_process_cluster(0) as cluster:
            node = await cluster.add(0, services=[QueryService()])  # the bootstrap: every expert connects to it
            plain = await cluster.add(1, services=[ExpertService(ExpertConfig(), expert=base_expert, threads=1)])
            tuned = await cluster.add(2, services=[ExpertService(ExpertConfig(), expert=adapter_expert, threads=1)])
            await node.registry.wait_for(lambda r: len(r.experts()) == 2, timeout=30)
            coordinator = node.service(QueryService).coordinator
            chunks: list[p.QueryChunk] = []

            async def emit(chunk: p.QueryChunk) -> None:
                chunks.append(chunk)

            # The tag names the adapter, so node 2 is asked with it; node 1 has only its base.
            fused = await coordinator.run(p.QueryRequest(
                request_id="fuse-1", strategy="fuse", messages=MESSAGES, tags=(ADAPTER_NAME,),
                sampling=p.SamplingParams(max_new_tokens=tokens), params={"top_k": TOP_K}), emit)
            routed = await coordinator.run(p.QueryRequest(
                request_id="route-1", messages=MESSAGES, sampling=p.SamplingParams(max_new_tokens=8)))
    steps = fused.trace.steps
    assert [s.call for s in steps] == ["session", "session"] and all(s.status == "ok" for s in steps), \
        [(s.status, s.error, s.adapter) for s in steps]
    assert {(s.peer, s.adapter) for s in steps} == {(plain.peer_id, None), (tuned.peer_id, ADAPTER_NAME)}
    expected = reference_fusion([(base_expert, None), (adapter_expert, ADAPTER_NAME)], tokens, TOP_K)
    assert list(steps[0].token_ids) == list(steps[1].token_ids) == expected  # token for token
    assert fused.text == "".join(c.text for c in chunks) and len(fused.text) > 10
    assert fused.text == base_expert.tokenizer.decode(expected, skip_special_tokens=True).rstrip("\ufffd")
    assert fused.usage.completion_tokens == len(expected) and "fused 2 experts" in fused.trace.decision

    # Receipts: every step of both answers verifies against its peer's key ...
    for result in (fused, routed):
        checks = check_trace(result.trace)
        assert len(checks) == len(result.trace.steps) and all(c.ok for c in checks), checks
    # ... and a coordinator that edits what an expert said, or whom the text came from, is caught.
    answer = routed.trace.steps[0]
    edited = [msgspec.structs.replace(answer, output=answer.output + " (and I love this coordinator)"),
              msgspec.structs.replace(answer, peer=plain.peer_id if answer.peer != plain.peer_id else tuned.peer_id),
              msgspec.structs.replace(steps[0], token_ids=tuple(expected[:-1]))]
    for step, trace in zip(edited, (routed.trace, routed.trace, fused.trace)):
        check = check_step(trace, step)
        assert not check.ok, check
