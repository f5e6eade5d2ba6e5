"""Expert serving throughput: the continuous-batching worker vs sequential HF ``generate``.

Same model, same 8 chat prompts, greedy decoding, in one run:

* baseline: ``model.generate`` on each prompt in turn (first-token time via a streamer);
* the inference worker with 1, 4 and 8 concurrent clients (a closed loop: each
  client sends its next prompt when the previous answer is complete).

Greedy output is identical in every mode (checked), so every mode generates the
same tokens and the tokens/s ratios are pure time ratios.  Target on CPU:
8 concurrent >= 4x sequential tokens/s.

    .venv/bin/python benchmarks/serving.py [--tokens 64] [--threads N] [--data-dir DIR]

Mind shared machines: other processes on the cores distort every number;
torch threads default to the cores this process may use.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = [
    "Write a short story about a robot who learns to paint.",
    "Explain how a bicycle works, step by step.",
    "Describe the water cycle in detail.",
    "Write a letter to a friend about your summer holiday.",
    "List ten tips for learning a new language and explain each.",
    "Explain the difference between weather and climate.",
    "Describe a day in the life of a medieval blacksmith.",
    "Write a poem about the city at night.",
]


def chat_ids(tokenizer, text: str):
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=False)
    return tokenizer(prompt, return_tensors="pt", add_special_tokens=False)


def sequential_hf(expert, tokens: int) -> dict:
    """Baseline: HF generate, one prompt after another."""
    import torch
    from transformers.generation.streamers import BaseStreamer

    class FirstToken(BaseStreamer):
        def __init__(self) -> None:
            self.calls = 0
            self.first_at: float | None = None

        def put(self, value) -> None:  # first call: the prompt; second: the first new token
            self.calls += 1
            if self.calls == 2:
                self.first_at = time.perf_counter()

        def end(self) -> None:
            pass

    texts, first, generated = [], [], 0
    started = time.perf_counter()
    with torch.inference_mode():
        for text in PROMPTS:
            enc = chat_ids(expert.tokenizer, text)
            streamer = FirstToken()
            t0 = time.perf_counter()
            out = expert.model.generate(**enc, max_new_tokens=tokens, do_sample=False, streamer=streamer)
            new = out[0, enc["input_ids"].shape[1] :].tolist()
            eos = expert.tokenizer.eos_token_id
            generated += sum(1 for t in new if t != eos)
            texts.append(expert.tokenizer.decode(new, skip_special_tokens=True))
            first.append((streamer.first_at or time.perf_counter()) - t0)
    elapsed = time.perf_counter() - started
    return {"texts": texts, "tokens": generated, "seconds": elapsed, "first": first}


def batched(expert, tokens: int, concurrency: int, max_batch: int, threads: int) -> dict:
    """The inference worker, ``concurrency`` clients in a closed loop over the same prompts."""
    import trio

    from node.expert.serve.batcher import InferenceWorker
    from node.expert.serve.local import LocalExpert
    from protocol import ChatMessage, GenerateRequest, GenerateResult, SamplingParams

    worker = InferenceWorker(expert, max_batch=max_batch, queue_size=64, threads=threads)
    worker.start()
    local = LocalExpert(worker)
    texts: dict[int, str] = {}
    first: list[float] = []
    generated = 0

    async def client(queue: list[int]) -> None:
        nonlocal generated
        while queue:
            i = queue.pop(0)
            request = GenerateRequest(
                request_id=f"p{i}",
                messages=(ChatMessage(role="user", content=PROMPTS[i]),),
                sampling=SamplingParams(max_new_tokens=tokens),
            )
            async for message in local.generate(request):
                if isinstance(message, GenerateResult):
                    texts[i] = message.text
                    generated += message.usage.completion_tokens
                    first.append(message.usage.first_token_seconds or 0.0)

    async def main() -> float:
        queue = list(range(len(PROMPTS)))
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(client, queue)
        return time.perf_counter() - started

    try:
        elapsed = trio.run(main)
    finally:
        worker.stop()
    return {"texts": [texts[i] for i in range(len(PROMPTS))], "tokens": generated, "seconds": elapsed,
            "first": first, "steps": worker.steps}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=64, help="max_new_tokens per request")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: on a shared 2-core box, 2 threads made a batch-8 "
                             "decode step 5x slower than 1 thread under load, measured)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; each mode keeps its best")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--data-dir", default=None, help="model cache root (default: the per-user cache, $MOSAIC_CACHE_DIR)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    import torch

    from node.expert.model.loader import load_expert

    torch.set_num_threads(args.threads)
    # Default: the per-user model cache ($MOSAIC_CACHE_DIR or the platform cache dir).
    cache = args.data_dir or os.environ.get("MOSAIC_TEST_DATA_DIR")
    t0 = time.perf_counter()
    expert = load_expert(None, cache_dir=cache, device=args.device)
    print(f"model {expert.model_id} on {expert.device} ({expert.dtype}), torch threads {args.threads}, "
          f"loaded in {time.perf_counter() - t0:.1f} s; {len(PROMPTS)} prompts, max_new_tokens {args.tokens}")

    batched(expert, 4, 2, args.max_batch, args.threads)  # warm-up (allocator, kernels)
    modes = {"sequential HF generate": lambda: sequential_hf(expert, args.tokens)}
    for concurrency in (1, 4, 8):
        modes[f"worker, {concurrency} concurrent"] = (
            lambda c=concurrency: batched(expert, args.tokens, c, args.max_batch, args.threads)
        )
    # Interleave the modes over several rounds and keep each mode's fastest round: load from
    # other processes on a shared machine then hits every mode alike instead of one of them.
    best: dict[str, dict] = {}
    for round_no in range(args.rounds):
        for name, run in modes.items():
            result = run()
            print(f"  round {round_no + 1}: {name:<26} {result['seconds']:7.2f} s  load {os.getloadavg()[0]:.2f}",
                  flush=True)
            if name not in best or result["seconds"] < best[name]["seconds"]:
                best[name] = result
    rows = list(best.items())
    base = best["sequential HF generate"]
    base_rate = base["tokens"] / base["seconds"]
    print(f"\n{'mode':<26}{'tokens':>7}{'seconds':>9}{'tok/s':>8}{'x seq':>7}{'first-token s (mean / max)':>30}")
    for name, r in rows:
        rate = r["tokens"] / r["seconds"]
        ft = f"{statistics.mean(r['first']):.3f} / {max(r['first']):.3f}"
        print(f"{name:<26}{r['tokens']:>7}{r['seconds']:>9.2f}{rate:>8.1f}{rate / base_rate:>7.2f}{ft:>30}")
    same = all(r["texts"] == base["texts"] for _, r in rows[1:])
    print(f"\ngreedy outputs identical to sequential HF generate in every mode: {same}")
    eight = rows[-1][1]
    ratio = (eight["tokens"] / eight["seconds"]) / base_rate
    print(f"8 concurrent vs sequential: {ratio:.2f}x (target >= 4x) -> {'PASS' if ratio >= 4 else 'BELOW TARGET'}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
