"""Token-level fusion on loopback: fused tokens/s with k = 2 experts vs one expert's tokens/s, and bytes per token.

Three nodes in one process: a coordinator (no model), expert A (SmolLM2-135M), expert B (the same base
with a LoRA adapter made here, random weights).  In one run, alternating so that machine load hits both:

* single: ``route`` pinned to expert A, N tokens streamed through the coordinator (the pool's generate);
* fused:  ``fuse`` over A and B/adapter (greedy, top-k 20), N tokens: per token, one SessionAppend to each
  expert in parallel and one SessionNext back from each.

Reported: median tokens/s of each and their ratio (target fused / single >= 0.5), and the bytes the
session exchange puts on the wire per fused token: msgpack frames as sent (counted at FramedStream.send),
plus the transport's framing per frame (yamux header 12 B + Noise length 2 B and tag 16 B), next to what
the same run would send without sessions (a NextTokenRequest with the whole prompt + text so far per
expert per token, computed from the run's own text).

    .venv/bin/python benchmarks/fusion.py [--tokens 48] [--rounds 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPT = "Write a long story about a robot who learns to paint, with many details."
TRANSPORT_BYTES_PER_FRAME = 12 + 2 + 16  # yamux data frame header + Noise length prefix + Poly1305 tag
SESSION_TYPES = ("SessionOpen", "SessionAppend", "SessionNext", "SessionClose", "SessionClosed")


def make_adapter(cache: str, out: Path) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from node.expert.model.loader import resolve_source

    base = AutoModelForCausalLM.from_pretrained(resolve_source(None, Path(cache)).directory,
                                                use_safetensors=True, local_files_only=True)
    torch.manual_seed(1234)
    config = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj", "o_proj"], init_lora_weights=False)
    get_peft_model(base, config).save_pretrained(out, safe_serialization=True)
    return out


def count_frames() -> Counter[str]:
    """Bytes of every frame sent, by message type (all nodes are in this process: both directions)."""
    import protocol
    from node.net import streams

    sent: Counter[str] = Counter()
    original = streams.FramedStream.send

    async def send(self, message):  # noqa: ANN001 - mirrors FramedStream.send
        name = type(message).__name__
        sent[name] += len(protocol.encode_frame(protocol.encode(message), self.max_frame))
        sent[name + "#"] += 1
        await original(self, message)

    streams.FramedStream.send = send  # type: ignore[method-assign]
    return sent


def without_sessions_bytes(messages, text: str, tokens: int, k: int) -> float:
    """Bytes per token if each step re-sent the prompt and the text so far (NextTokenRequest) to k experts."""
    import protocol as p

    total = 0
    for i in range(tokens):
        so_far = text[: len(text) * i // max(1, tokens)]
        request = p.NextTokenRequest(request_id="q" * 24, top_k=20, messages=messages + (
            p.ChatMessage(role="assistant", content=so_far),))
        reply = p.NextTokenResult(request_id="q" * 24, token_ids=tuple(range(20)), logprobs=(-1.2345678,) * 20)
        total += len(p.encode_frame(p.encode(request), p.MAX_MESSAGE_SIZE))
        total += len(p.encode_frame(p.encode(reply), p.MAX_MESSAGE_SIZE))
        total += 2 * TRANSPORT_BYTES_PER_FRAME
    return k * total / max(1, tokens)


async def main(args: argparse.Namespace) -> None:

    import protocol as p
    from node.config import ExpertConfig
    from node.coordinator.calls import QueryFailed
    from node.coordinator.service import QueryService
    from node.expert.model.loader import load_expert
    from node.expert.serve.service import ExpertService
    from tests.cluster.harness import in_process_cluster

    cache = args.cache_dir or tempfile.mkdtemp(prefix="mosaic-bench-")
    base = load_expert(None, cache_dir=cache, device="cpu")
    adapter = make_adapter(cache, Path(tempfile.mkdtemp()) / "tuned")
    tuned = load_expert(None, {"tuned": str(adapter)}, cache_dir=cache, device="cpu")
    sent = count_frames()
    messages = (p.ChatMessage(role="user", content=PROMPT),)
    sampling = p.SamplingParams(max_new_tokens=args.tokens)
    async with in_process_cluster() as cluster:
        node = await cluster.add(0, services=[QueryService()])
        a = await cluster.add(1, services=[ExpertService(ExpertConfig(), expert=base, threads=args.threads)])
        await cluster.add(2, services=[ExpertService(ExpertConfig(), expert=tuned, threads=args.threads)])
        await node.registry.wait_for(lambda r: len(r.experts()) == 2, timeout=60)
        coordinator = node.service(QueryService).coordinator
        single_rates, fused_rates, per_token, fused_text, fused_tokens, failures = [], [], [], "", 0, 0
        for round_ in range(args.rounds + 1):  # round 0 warms both paths up and is not counted
            started = time.perf_counter()
            single = await coordinator.run(p.QueryRequest(request_id=f"s{round_}", messages=messages,
                                                          model=a.peer_id, sampling=sampling))
            single_s = time.perf_counter() - started
            sent.clear()
            started = time.perf_counter()
            try:
                fused = await coordinator.run(p.QueryRequest(request_id=f"f{round_}", strategy="fuse",
                                                             messages=messages, tags=("tuned",), sampling=sampling))
            except QueryFailed as exc:  # reported, not hidden: a loaded box can blow the per-token budget
                print(f"round {round_}: fused query failed: {exc.code}: {exc.message}", flush=True)
                failures += 1
                continue
            fused_s = time.perf_counter() - started
            n = fused.usage.completion_tokens
            steps = sent["SessionAppend"] + sent["SessionNext"]
            frames = sent["SessionAppend#"] + sent["SessionNext#"]
            if round_ == 0:
                continue
            single_rates.append(single.usage.completion_tokens / single_s)
            fused_rates.append(n / fused_s)
            per_token.append(((steps + frames * TRANSPORT_BYTES_PER_FRAME) / max(1, n), steps / max(1, n),
                              sum(sent[t] for t in ("SessionOpen", "SessionClose", "SessionClosed"))))
            fused_text, fused_tokens = fused.text, n
            print(f"round {round_}: single {single.usage.completion_tokens} tok in {single_s:.2f} s, "
                  f"fused {n} tok in {fused_s:.2f} s ({fused.trace.decision[:60]}...)", flush=True)
        cluster.nursery.cancel_scope.cancel()
    if not fused_rates:
        print(f"\nno fused round completed ({failures} failed)")
        return
    single_rate, fused_rate = statistics.median(single_rates), statistics.median(fused_rates)
    wire, app, fixed = (statistics.median(x[i] for x in per_token) for i in range(3))
    print(f"\nsingle expert (route, pinned): {single_rate:.1f} tokens/s (median of {len(single_rates)}; "
          f"{failures} fused rounds failed)")
    print(f"fused, k=2 (fuse, greedy, top-20): {fused_rate:.1f} tokens/s")
    print(f"ratio fused / single: {fused_rate / single_rate:.2f}  (target >= 0.5)")
    print(f"bytes per fused token, both experts, both directions: {app:.0f} B of msgpack frames, "
          f"{wire:.0f} B with yamux+Noise framing; plus {fixed:.0f} B once per answer (open/close, receipts)")
    print(f"without sessions (prompt + text re-sent per token, computed for this run's {fused_tokens} tokens): "
          f"{without_sessions_bytes(messages, fused_text, fused_tokens, 2):.0f} B per token")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per expert worker")
    parser.add_argument("--cache-dir", default=os.environ.get("MOSAIC_CACHE_DIR"))
    import trio

    trio.run(main, parser.parse_args())
