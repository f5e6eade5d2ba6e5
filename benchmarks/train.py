"""LoRA training speed and memory per catalog base: steps/s and peak RSS, measured in one run.

Each model trains in its own child process (so peak RSS is that model's alone) with the
same settings `python -m node train` uses: LoRA r=8 on q/k/v/o, AdamW, batch 4, examples
of a fixed token length, the real :class:`node.training.loop.Trainer` (checkpointing off).
Prints one line per model and the ratios to the first model.

    python benchmarks/train.py                                  # smollm2-135m and qwen2.5-0.5b
    python benchmarks/train.py --models smollm2-135m gemma3-270m --steps 10 --length 128
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def child(model: str, steps: int, warmup: int, length: int, batch: int, threads: int) -> dict[str, object]:
    import resource

    import torch

    torch.set_num_threads(threads)
    from node.config import default_cache_dir
    from node.training.contribute import load_base
    from node.training.data import Example
    from node.training.loop import Trainer, TrainSettings

    started = time.monotonic()
    base, tokenizer, source = load_base(model, default_cache_dir())
    load_s = time.monotonic() - started
    # Prompts of ~`length` tokens with a short target: the shape of task-file training rows.
    words = ["the", "quick", "brown", "fox", "jumps", "over", "the", "lazy", "dog", "while", "counting", "apples", "and", "pears"]
    examples = tuple(Example((("user", " ".join(words[(i + j) % len(words)] for j in range(length))),), f"answer {i}")
                     for i in range(16))
    settings = TrainSettings(steps=warmup + steps, batch_size=batch, max_length=length, warmup_steps=1,
                             checkpoint_every=10**9)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(base, tokenizer, settings, examples, Path(tmp) / "ckpt", data_sha256="bench")
        trainer.save_checkpoint = lambda: None  # measure the steps, not the disk
        marks: list[float] = []
        trainer.run(lambda step, loss: marks.append(time.monotonic()))
    timed = marks[warmup:]
    per_step = (timed[-1] - marks[warmup - 1]) / len(timed) if warmup else (timed[-1] - started) / len(timed)
    tokens = sum(len(r[0]) for r in trainer.rows) / len(trainer.rows) * batch
    trainable = sum(p.numel() for p in trainer.params.values())
    return {"model": model, "model_id": source.model_id, "load_s": round(load_s, 1),
            "s_per_step": round(per_step, 3), "steps_per_s": round(1 / per_step, 3),
            "tokens_per_s": round(tokens / per_step, 1), "trainable_params": trainable,
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
            "final_loss": trainer.state.losses[-1]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["smollm2-135m", "qwen2.5-0.5b"])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--length", type=int, default=128, help="tokens per example")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = child(args.child, args.steps, args.warmup, args.length, args.batch, args.threads)
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1"}
    results = []
    for model in args.models:
        out = subprocess.run([sys.executable, __file__, "--child", model, "--steps", str(args.steps),
                              "--warmup", str(args.warmup), "--length", str(args.length), "--batch", str(args.batch),
                              "--threads", str(args.threads)], env=env, capture_output=True, text=True, check=False)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            print(f"{model}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        results.append(json.loads(line[7:]))
    print(f"LoRA r=8 q/k/v/o, batch {args.batch} x {args.length} tokens, {args.threads} torch thread(s), "
          f"{args.steps} timed steps after {args.warmup}; load average {os.getloadavg()[0]:.1f}")
    print(f"{'model':<16} {'s/step':>7} {'steps/s':>8} {'tok/s':>7} {'peak RSS':>9} {'load s':>7} {'LoRA params':>12}")
    for r in results:
        print(f"{r['model']:<16} {r['s_per_step']:>7} {r['steps_per_s']:>8} {r['tokens_per_s']:>7} "
              f"{r['peak_rss_gb']:>7} GB {r['load_s']:>7} {r['trainable_params']:>12,}")
    if len(results) > 1:
        first = results[0]
        for r in results[1:]:
            print(f"{r['model']} / {first['model']}: {r['s_per_step'] / first['s_per_step']:.2f}x time per step, "
                  f"{r['peak_rss_gb'] / first['peak_rss_gb']:.2f}x peak RSS")
    print(json.dumps(results))
    return 0 if len(results) == len(args.models) else 1


if __name__ == "__main__":
    sys.exit(main())
