"""Expert serving speed: each engine against plain llama-cpp-python on the same GGUF and threads.

For each catalog model (SmolLM2-135M, Qwen2.5-Coder-0.5B, Qwen2.5-Coder-1.5B; the installed ones),
greedy decoding of ``--tokens`` tokens after a short chat prompt, all in one run:

* reference: ``llama_cpp.Llama`` (the high-level API a user would pick), one stream;
* the engine in-process (its worker through LocalExpert, no network), one stream;
* a real node (``python -m node start --engine E``, its own process) through the OpenAI HTTP
  API: one stream, and 8 concurrent streams (aggregate tokens/s, first-token times);
* the node's RSS (peak) while serving, and its first start: from launch to the model listed by
  ``/v1/models``, on a fresh model cache right after ``node models pull`` (which joins and checks
  the catalog parts; its own time is printed too).

Targets (issue 17): HTTP one stream >= 0.8x the reference, in-process >= 0.9x; 8 concurrent
aggregate >= 2.5x the reference's one stream; first token at 8 concurrent <= 2x one alone;
node RSS <= 600 MiB serving SmolLM2, <= 2 GiB serving the 1.5B; first start <= 10 s.

    .venv/bin/python benchmarks/serving.py [--models smollm2-135m,qwen2.5-0.5b,qwen2.5-1.5b]
        [--engines llama.cpp,torch] [--torch-models smollm2-135m] [--tokens 128] [--threads 2]

The torch engine runs only on ``--torch-models`` (default SmolLM2: it dequantizes to fp32, ~7 GB
for the 1.5B).  Rates are completion tokens over wall time per request (prefill included) for
every mode alike.  Every request's prompt is one no engine has seen whole before (``fresh``):
only the chat template's header is common, as between different users.  Each mode runs
``--rounds`` times interleaved and keeps its best round: other processes on a shared machine then
slow every mode alike.  The load average is printed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
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


_asked = itertools.count(1)


def fresh(i: int) -> str:
    """Prompt ``i`` (of PROMPTS), made unlike every prompt asked before in this run.

    Each engine keeps what its prompts share with earlier ones (our prefix cache; the reference's
    ``Llama.generate`` reuses its previous prompt's common prefix): a numbered request shares the
    chat template's header with the others, as distinct users' questions do, but never a whole
    prompt, which a benchmark repeating its prompts round after round would otherwise measure.
    """
    return f"Request {next(_asked)}. {PROMPTS[i % len(PROMPTS)]}"


def load() -> float:
    return os.getloadavg()[0]


# --------------------------------------------------------------------------- the reference


class Reference:
    """Plain llama-cpp-python: ``Llama.generate`` greedy, one stream, the prompt as our tokenizer renders it."""

    def __init__(self, gguf: Path, threads: int) -> None:
        from llama_cpp import Llama

        from node.expert.serve.llamacpp.tokenizer import GgufTokenizer

        self.llm = Llama(model_path=str(gguf), n_threads=threads, n_threads_batch=threads, n_ctx=2048,
                         n_batch=512, verbose=False)
        # The engines' prompt ids (tests/engine/test_gguf_tokenizer.py), over the reference's own model.
        self.tokenizer = GgufTokenizer(self.llm.model)
        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(self.llm.model)
        self.eos = {t for t in range(self.llm.n_vocab()) if llama_cpp.llama_vocab_is_eog(vocab, t)}

    def one(self, text: str, tokens: int) -> dict:
        ids = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                 tokenize=True)
        ids = list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        started = time.perf_counter()
        first = None
        generated = 0
        for token in self.llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0, reset=True):
            if first is None:
                first = time.perf_counter() - started
            if token in self.eos:
                break
            generated += 1
            if generated >= tokens:
                break
        return {"tokens": generated, "seconds": time.perf_counter() - started, "first": first or 0.0}


# --------------------------------------------------------------------------- the engine in-process


def in_process(expert, engine: str, threads: int, tokens: int, concurrency: int) -> dict:
    """``concurrency`` requests at once on the engine's worker (LocalExpert, no network)."""
    import trio

    from node.expert.serve.engine import make_worker
    from node.expert.serve.local import LocalExpert
    from protocol import ChatMessage, GenerateRequest, GenerateResult, SamplingParams

    worker = make_worker(expert, max_batch=8, queue_size=64, threads=threads)
    worker.start()
    local = LocalExpert(worker)
    results: list[GenerateResult] = []

    async def one(i: int) -> None:
        request = GenerateRequest(request_id=f"p{i}", messages=(ChatMessage(role="user", content=fresh(i)),),
                                  sampling=SamplingParams(max_new_tokens=tokens), timeout_s=900.0)
        async for message in local.generate(request):
            if isinstance(message, GenerateResult):
                results.append(message)

    async def main() -> float:
        # The worker builds its context (KV cache, compute graph) on its thread: not part of serving.
        # A chat request like the others: a serving worker holds the chat template's header already.
        warm = GenerateRequest(request_id="warm", messages=(ChatMessage(role="user", content=fresh(0)),),
                               sampling=SamplingParams(max_new_tokens=1))
        async for _ in local.generate(warm):
            pass
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for i in range(concurrency):
                nursery.start_soon(one, i)
        return time.perf_counter() - started

    try:
        elapsed = trio.run(main)
    finally:
        worker.stop()
    return {"tokens": sum(r.usage.completion_tokens for r in results), "seconds": elapsed,
            "first": [r.usage.first_token_seconds or 0.0 for r in results]}


# --------------------------------------------------------------------------- a node over HTTP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class NodeProcess:
    """``python -m node start`` serving one model with one engine; the first start is timed."""

    def __init__(self, model: str, engine: str, threads: int, cache: Path, work: Path) -> None:
        self.port = free_port()
        self.log = (work / f"node-{model}-{engine}.log").open("w")
        env = dict(os.environ, MOSAIC_CACHE_DIR=str(cache), PYTHONUNBUFFERED="1")
        args = [sys.executable, "-m", "node", "start", "--data-dir", str(work / f"data-{model}-{engine}"),
                "--listen", "/ip4/127.0.0.1/tcp/0", "--http", f"127.0.0.1:{self.port}", "--model", model,
                "--engine", engine, "--threads", str(threads), "--name", "bench", "--max-batch", "8"]
        started = time.perf_counter()
        self.process = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=self.log)
        self.model_id = self._wait_ready(timeout=900)
        self.start_seconds = time.perf_counter() - started

    def _wait_ready(self, timeout: float) -> str:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the node exited ({self.process.returncode}); see {self.log.name}")
            try:
                models = httpx.get(f"http://127.0.0.1:{self.port}/v1/models", timeout=2).json()["data"]
                ids = [m["id"] for m in models if not m["id"].startswith("mosaic")]
                if ids:
                    return ids[0]
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError("the node did not list its model in time")

    def rss_mib(self) -> tuple[float, float]:
        """(current, peak) resident set of the node process, MiB."""
        fields = {}
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            fields[key] = value.strip()
        return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()

    def run(self, tokens: int, concurrency: int) -> dict:
        """``concurrency`` streamed chat completions at once; aggregate rate and first-token times."""
        import httpx
        import trio

        firsts: list[float] = []
        counted = 0

        async def one(client: httpx.AsyncClient, i: int) -> None:
            nonlocal counted
            body = {"model": self.model_id, "messages": [{"role": "user", "content": fresh(i)}],
                    "max_tokens": tokens, "temperature": 0, "stream": True,
                    "stream_options": {"include_usage": True}}
            started = time.perf_counter()
            first = None
            async with client.stream("POST", f"http://127.0.0.1:{self.port}/v1/chat/completions",
                                     json=body, timeout=600) as response:
                response.raise_for_status()
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    event = json.loads(line[6:])
                    choices = event.get("choices") or []
                    if first is None and choices and (choices[0].get("delta") or {}).get("content"):
                        first = time.perf_counter() - started
                    if event.get("usage"):
                        counted += event["usage"]["completion_tokens"]
            firsts.append(first or 0.0)

        async def main() -> float:
            async with httpx.AsyncClient() as client:
                started = time.perf_counter()
                async with trio.open_nursery() as nursery:
                    for i in range(concurrency):
                        nursery.start_soon(one, client, i)
                return time.perf_counter() - started

        elapsed = trio.run(main)
        return {"tokens": counted, "seconds": elapsed, "first": firsts}


# --------------------------------------------------------------------------- the table


def rate(result: dict) -> float:
    return result["tokens"] / result["seconds"] if result["seconds"] else 0.0


def best(results: list[dict]) -> dict:
    return max(results, key=rate)


def bench_model(key: str, engine: str, args, work: Path, reference_cache: dict) -> dict:
    from node.expert.model import catalog

    entry = catalog.lookup(key)
    assert entry is not None
    cache = work / f"cache-{key}-{engine}"  # empty: `models pull` joins and checks the parts
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "node", "models", "pull", key, "--cache-dir", str(cache)], cwd=ROOT,
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pull_seconds = time.perf_counter() - started
    print(f"\n== {key} on {engine}: `models pull` (packages installed) {pull_seconds:.1f} s; first start, "
          f"load {load():.2f}", flush=True)
    node = NodeProcess(key, engine, args.threads, cache, work)
    print(f"   ready in {node.start_seconds:.1f} s", flush=True)
    try:
        gguf, _, _ = catalog.ensure_gguf(entry, cache)
        if engine == "llama.cpp":
            from node.expert.serve.llamacpp.model import load_llama_expert

            expert = load_llama_expert(key, cache_dir=cache)
        else:
            from node.expert.model.loader import load_expert

            expert = load_expert(key, cache_dir=cache, device="cpu")
        if key not in reference_cache:
            reference_cache.clear()  # one reference model in memory at a time
            reference_cache[key] = Reference(gguf, args.threads)
        reference: Reference = reference_cache[key]
        reference.one(fresh(0), 8)  # warm-up
        in_process(expert, engine, args.threads, 8, 1)
        node.run(8, 1)
        modes: dict[str, list[dict]] = {"ref": [], "inproc1": [], "http1": [], "http8": [], "inproc8": []}
        loads = []
        for round_no in range(args.rounds):
            loads.append(load())
            modes["ref"].append(reference.one(fresh(round_no), args.tokens))
            modes["inproc1"].append(in_process(expert, engine, args.threads, args.tokens, 1))
            modes["http1"].append(node.run(args.tokens, 1))
            modes["http8"].append(node.run(args.tokens, args.concurrency))
            modes["inproc8"].append(in_process(expert, engine, args.threads, args.tokens, args.concurrency))
            print(f"   round {round_no + 1}: ref {rate(modes['ref'][-1]):.1f} tok/s, in-process "
                  f"{rate(modes['inproc1'][-1]):.1f}, http {rate(modes['http1'][-1]):.1f}, http x{args.concurrency} "
                  f"{rate(modes['http8'][-1]):.1f} aggregate; load {loads[-1]:.2f}", flush=True)
        rss, peak = node.rss_mib()
    finally:
        node.stop()
        if engine == "llama.cpp":
            expert.close()
        del expert
    ref = best(modes["ref"])
    http8 = best(modes["http8"])
    first_alone = min(statistics.median(r["first"]) if isinstance(r["first"], list) else r["first"]
                      for r in modes["http1"])
    first_eight = min(statistics.median(r["first"]) for r in modes["http8"])
    return {
        "model": key, "engine": engine, "quantization": entry.filename, "ref": rate(ref),
        "inproc1": rate(best(modes["inproc1"])), "http1": rate(best(modes["http1"])), "http8": rate(http8),
        "inproc8": rate(best(modes["inproc8"])), "first_alone": first_alone, "first_eight": first_eight,
        "rss": rss, "peak": peak, "start": node.start_seconds, "pull": pull_seconds, "load": statistics.mean(loads),
    }


RSS_LIMIT_MIB = {"smollm2-135m": 600, "qwen2.5-1.5b": 2048}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="smollm2-135m,qwen2.5-0.5b,qwen2.5-1.5b")
    parser.add_argument("--engines", default="llama.cpp,torch")
    parser.add_argument("--torch-models", default="smollm2-135m", help="models the torch engine runs (memory)")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    from node.expert.model import catalog

    rows = []
    failed_runs: list[str] = []
    reference_cache: dict = {}
    with tempfile.TemporaryDirectory(prefix="mosaic-serving-") as tmp:
        for key in args.models.split(","):
            entry = catalog.lookup(key)
            if entry is None or catalog.state(entry, Path(tmp)) == "not installed" or "partial" in catalog.state(
                    entry, Path(tmp)):
                print(f"\n== {key}: packages not installed (python -m node models pull {key}); skipped")
                continue
            for engine in args.engines.split(","):
                if engine == "torch" and key not in args.torch_models.split(","):
                    continue
                try:
                    rows.append(bench_model(key, engine, args, Path(tmp), reference_cache))
                except Exception as exc:  # one model's failure must not lose the others' rows
                    print(f"   {key} on {engine} failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
                    failed_runs.append(f"{key} on {engine}")
    print(f"\ngreedy, {args.tokens} tokens, {args.threads} threads, {os.cpu_count()} CPUs; "
          f"reference = plain llama-cpp-python, one stream, same GGUF and threads")
    head = (f"{'model':<14}{'engine':<10}{'ref tok/s':>10}{'in-proc':>9}{'x ref':>7}{'HTTP':>8}{'x ref':>7}"
            f"{'HTTP x8':>9}{'x ref':>7}{'1st tok 1/8 s':>15}{'ratio':>7}{'RSS/peak MiB':>14}{'pull/start s':>13}"
            f"{'load':>6}")
    print(head)
    failed = []
    for r in rows:
        ratios = (r["inproc1"] / r["ref"], r["http1"] / r["ref"], r["http8"] / r["ref"],
                  r["first_eight"] / max(r["first_alone"], 1e-9))
        print(f"{r['model']:<14}{r['engine']:<10}{r['ref']:>10.1f}{r['inproc1']:>9.1f}{ratios[0]:>7.2f}"
              f"{r['http1']:>8.1f}{ratios[1]:>7.2f}{r['http8']:>9.1f}{ratios[2]:>7.2f}"
              f"{r['first_alone']:>7.2f}/{r['first_eight']:<7.2f}{ratios[3]:>7.2f}"
              f"{r['rss']:>7.0f}/{r['peak']:<6.0f}{r['pull']:>7.1f}/{r['start']:<5.1f}{r['load']:>6.2f}")
        if r["engine"] == "llama.cpp":
            checks = {"in-process >= 0.9x": ratios[0] >= 0.9, "HTTP >= 0.8x": ratios[1] >= 0.8,
                      "8 concurrent >= 2.5x": ratios[2] >= 2.5, "first token x8 <= 2x": ratios[3] <= 2.0,
                      "first start <= 10 s": r["start"] <= 10.0}
            limit = RSS_LIMIT_MIB.get(r["model"])
            if limit is not None:
                checks[f"RSS <= {limit} MiB"] = r["peak"] <= limit
            failed += [f"{r['model']}: {name}" for name, ok in checks.items() if not ok]
    failed += [f"{run}: did not finish" for run in failed_runs]
    print("\ntargets (llama.cpp engine): " + ("all met" if not failed else "MISSED: " + "; ".join(failed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
