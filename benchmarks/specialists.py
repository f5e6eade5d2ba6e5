"""Specialists: one LoRA adapter per task, trained on dev only, scored against its base on held-out dev.

Two steps, each resumable (a rerun skips what is done and resumes an interrupted training):

    python benchmarks/specialists.py train --tasks pubmedqa,bbh,... --out /work/artifacts/specialists
    python benchmarks/specialists.py eval  --tasks pubmedqa,bbh,... --out /work/artifacts/specialists \\
        --results docs/results/specialists

``train`` runs ``python -m node train`` once per task, one after another (never in parallel: a
2-core box), on the task file's dev split with ``--eval-split dev --heldout N``: the first N dev
items are held out (never trained on) and the rest is the training set.  The first N dev items
are exactly what ``node eval --split dev --limit N`` and a self-evaluation with limit N ask, so
the held-out score, the eval and the signed self-evaluation all use the same items.  The
adapter directories (``OUT/<task>/``) stay out of git; ``OUT/logs/`` has each run's log.

``eval`` starts one node per task on the base GGUF with the task's adapter (``--engine
llama.cpp`` by default: the peft adapter is converted to a GGUF LoRA on load), asks it for a
self-evaluation on the task's first N dev items (signed into its record; ``node self-eval``),
then runs ``node eval --split dev --limit N`` on the base and on the adapter with the given
token budgets (per-item logs under ``RESULTS/eval/<task>/``), and writes ``RESULTS/table.md``
and ``RESULTS/specialists.json``: accuracy with Wilson 95% intervals, the share of replies cut
at the token budget, and the torch held-out scores of the training card (a cross-check).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.participation import Cluster, ExpertSpec, free_port, wait_for_models  # noqa: E402

DEFAULT_TASKS = "pubmedqa,bbh,culturalbench_hard,arc_challenge,mmlu_redux,medqa"
BASE = "qwen2.5-0.5b"


def env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def tasks_dir(args: argparse.Namespace) -> Path:
    if args.tasks_dir:
        return Path(args.tasks_dir).resolve()
    from node.evaluation import find_tasks_dir

    found = find_tasks_dir()
    if found is None:
        raise SystemExit("no task folder: pass --tasks-dir (shared/data/tasks)")
    return Path(found).resolve()


def sha256_dir(path: Path) -> str:
    """sha256 over the adapter directory's files (name + bytes, sorted): what the report records."""
    digest = hashlib.sha256()
    for file in sorted(p for p in path.iterdir() if p.is_file()):
        digest.update(file.name.encode() + b"\0" + file.read_bytes())
    return digest.hexdigest()


def train(args: argparse.Namespace) -> int:
    out = Path(args.out).resolve()
    (out / "logs").mkdir(parents=True, exist_ok=True)
    folder = tasks_dir(args)
    code = 0
    for task in args.tasks.split(","):
        adapter = out / task
        if (adapter / "mosaic-card.json").is_file():
            print(f"[{task}] done already ({adapter}); delete it to retrain", file=sys.stderr)
            continue
        command = ["nice", "-n", str(args.nice), sys.executable, "-m", "node", "train",
                   "--data", str(folder / f"{task}.json"), "--split", "dev", "--eval-split", "dev",
                   "--heldout", str(args.heldout), "--name", task, "--model", args.model,
                   "--description", f"{task} specialist: LoRA on {args.model}, trained on {task} dev "
                   f"(first {args.heldout} dev items held out)",
                   "--tags", task, "--steps", str(args.steps), "--lr", str(args.lr), "--rank", str(args.rank),
                   "--alpha", str(2 * args.rank), "--batch-size", str(args.batch_size),
                   "--max-length", str(args.max_length), "--threads", str(args.threads),
                   "--checkpoint-every", str(args.checkpoint_every),
                   "--out", str(adapter), "--data-dir", str(out / "data"), "--resume", "--no-progress"]
        command += ["--lora-layers", str(args.lora_layers), "--precision", args.precision]
        if task not in args.score.split(","):
            command.append("--no-scoring")  # scored on llama.cpp by `eval`; torch scoring costs minutes
        if args.eval_max_tokens:
            command += ["--eval-max-tokens", str(args.eval_max_tokens)]
        log = out / "logs" / f"train-{task}.log"
        print(f"[{task}] training: {' '.join(command[3:])}\n  log: {log}", file=sys.stderr, flush=True)
        started = time.monotonic()
        with log.open("a") as f:
            f.write(f"$ {' '.join(command)}\n")
            f.flush()
            result = subprocess.run(command, cwd=REPO, env={**env(), "OMP_NUM_THREADS": str(args.threads)},
                                    stdout=f, stderr=subprocess.STDOUT, check=False)
        wall = time.monotonic() - started
        if result.returncode != 0:
            print(f"[{task}] exit {result.returncode} after {wall:.0f} s; see {log}", file=sys.stderr)
            code = result.returncode
            continue
        card = json.loads((adapter / "mosaic-card.json").read_text())
        (adapter.parent / f"{task}.run.json").write_text(json.dumps({
            "task": task, "wall_seconds": round(wall, 1), "sha256": sha256_dir(adapter),
            "command": command}, indent=2))
        s = card["scores"]
        scored = (f"torch accuracy {s['before']['accuracy']:.3f} -> {s['after']['accuracy']:.3f}"
                  if s.get("before") and s.get("after") else "not scored here")
        print(f"[{task}] {wall:.0f} s; held-out ({s['split']}) {scored}", file=sys.stderr, flush=True)
    return code


def eval_task(args: argparse.Namespace, task: str, out: Path, results: Path) -> dict:
    """One node: base GGUF + the task's adapter; self-eval (signed), then node eval on the held-out items."""
    work = out / "nodes" / task
    cluster = Cluster(work, "cpu", ("--engine", args.engine, "--threads", str(args.threads)))
    spec = ExpertSpec("qwen", args.gguf, f"{BASE} with the {task} specialist", task, [f"{task}={out / task}"])
    port = free_port()
    record: dict = {"task": task}
    try:
        cluster.address(cluster.spawn("qwen", expert=spec, bootstrap=None, http_port=port))
        url = f"http://127.0.0.1:{port}"
        wait_for_models(url, {"qwen", f"qwen/{task}"})
        if not args.no_self_eval:
            started = time.monotonic()
            data_dir = work / "nodes" / "qwen"
            task_type = json.loads((tasks_dir(args) / f"{task}.json").read_text())["task_type"]
            budget = dict(part.split("=") for part in args.max_tokens.split(","))[task_type]
            got = subprocess.run([sys.executable, "-m", "node", "self-eval", "--data-dir", str(data_dir),
                                  "--tasks", task, "--limit", str(args.self_eval_limit or args.heldout),
                                  "--max-tokens", budget, "--json"],
                                 cwd=REPO, env=env(), capture_output=True, text=True, check=False, timeout=7200)
            record["self_eval_seconds"] = round(time.monotonic() - started, 1)
            if got.returncode == 0:
                record["self_eval"] = json.loads(got.stdout)
            else:
                record["self_eval_error"] = got.stderr.strip()[-500:]
            print(f"[{task}] self-eval exit {got.returncode} in {record['self_eval_seconds']:.0f} s: "
                  f"{got.stdout.strip()[:400] or got.stderr.strip()[-300:]}", file=sys.stderr, flush=True)
        if args.self_eval_only:
            return record
        command = [sys.executable, "-m", "node", "eval", "--http", url, "--tasks", str(tasks_dir(args)),
                   "--names", task, "--split", "dev", "--limit", str(args.heldout),
                   "--experts", f"qwen,qwen/{task}", "--strategies", "", "--max-tokens", args.max_tokens,
                   "--concurrency", str(args.concurrency), "--timeout", "1200",
                   "--out", str(results / "eval" / task), "--no-progress"]
        started = time.monotonic()
        record["eval_exit"] = subprocess.run(command, cwd=REPO, env=env(), check=False).returncode
        record["eval_seconds"] = round(time.monotonic() - started, 1)
        print(f"[{task}] node eval exit {record['eval_exit']} in {record['eval_seconds']:.0f} s",
              file=sys.stderr, flush=True)
    finally:
        cluster.stop()
    return record


def summarize(task: str, results: Path, out: Path) -> dict:
    """Accuracy with Wilson 95% intervals and the cut share, base vs adapter, from the eval logs."""
    from node.eval.analysis import wilson
    from node.eval.logs import read_logs

    rows: dict = {}
    for record in read_logs(results / "eval" / task):
        row = rows.setdefault(record.system, {"n": 0, "correct": 0, "cut": 0, "errors": 0, "tokens": 0,
                                              "seconds": 0.0})
        row["n"] += 1
        row["correct"] += bool(record.correct)
        row["cut"] += record.finish_reason == "length"
        row["errors"] += record.error is not None
        row["tokens"] += record.completion_tokens
        row["seconds"] += record.seconds
    for row in rows.values():
        interval = wilson(row["correct"], row["n"])
        row.update(accuracy=interval.mean, low=interval.low, high=interval.high,
                   cut_share=row["cut"] / row["n"] if row["n"] else 0.0)
    card = json.loads((out / task / "mosaic-card.json").read_text())
    run_file = out / f"{task}.run.json"
    trained = json.loads(run_file.read_text()) if run_file.is_file() else {}
    return {"task": task, "systems": rows, "card": {
        "steps": card["training"]["steps_done"], "lr": card["settings"]["lr"], "rank": card["settings"]["rank"],
        "lora_layers": card["settings"].get("lora_layers", 0), "precision": card["settings"].get("precision"),
        "batch_size": card["settings"]["batch_size"], "train_examples": card["data"]["train_examples"],
        "heldout": card["scores"]["split"], "torch_heldout": card["scores"],
        "train_seconds": card["training"]["seconds"], "first_loss": card["training"]["first_loss"],
        "final_loss": card["training"]["final_loss"], "wall_seconds": trained.get("wall_seconds"),
        "sha256": trained.get("sha256") or sha256_dir(out / task)}}


def write_table(summaries: list[dict], results: Path) -> str:
    def pct(x: float) -> str:
        return f"{100 * x:.1f}"

    lines = ["| task | n | base acc [95% Wilson] | base cut | adapter acc [95% Wilson] | adapter cut | margin "
             "| torch base -> adapter (card, 16/64 tok) | steps, lr, rank, layers, batch | train examples | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        task = s["task"]
        base, tuned = s["systems"].get("qwen", {}), s["systems"].get(f"qwen/{task}", {})
        if not base or not tuned:
            lines.append(f"| {task} | (not evaluated) |")
            continue
        c = s["card"]
        torch_scores = c["torch_heldout"]
        if torch_scores.get("before") and torch_scores.get("after"):
            cross = f"{pct(torch_scores['before']['accuracy'])} -> {pct(torch_scores['after']['accuracy'])}"
        else:
            cross = "-"
        lines.append(
            f"| {task} | {base['n']} | {pct(base['accuracy'])} [{pct(base['low'])}-{pct(base['high'])}] "
            f"| {pct(base['cut_share'])}% | {pct(tuned['accuracy'])} [{pct(tuned['low'])}-{pct(tuned['high'])}] "
            f"| {pct(tuned['cut_share'])}% | {100 * (tuned['accuracy'] - base['accuracy']):+.1f} "
            f"| {cross} | {c['steps']}, {c['lr']:g}, {c['rank']}, {c['lora_layers'] or 'all'}, {c['batch_size']} "
            f"| {c['train_examples']} "
            f"| {c['wall_seconds'] or c['train_seconds']} |")
    table = "\n".join(lines) + "\n"
    (results / "table.md").write_text(table)
    return table


def evaluate(args: argparse.Namespace) -> int:
    out, results = Path(args.out).resolve(), Path(args.results).resolve()
    results.mkdir(parents=True, exist_ok=True)
    runs_file = results / "runs.json"
    runs = json.loads(runs_file.read_text()) if runs_file.is_file() else {}
    for task in args.tasks.split(","):
        if not (out / task / "mosaic-card.json").is_file():
            print(f"[{task}] no adapter in {out / task}: train it first", file=sys.stderr)
            continue
        if args.table_only:
            continue
        new = eval_task(args, task, out, results)
        runs[task] = {**runs.get(task, {}), **new}
        for key, stale in (("self_eval", "self_eval_error"), ("self_eval_error", "self_eval")):
            if key in new:
                runs[task].pop(stale, None)  # the latest self-evaluation's outcome only
        runs_file.write_text(json.dumps(runs, indent=2))
    # Every task evaluated so far (this call's and earlier calls'), in a stable order.
    evaluated = sorted(p.parent.name for p in (results / "eval").glob("*/logs"))
    summaries = [summarize(t, results, out) for t in evaluated if (out / t / "mosaic-card.json").is_file()]
    (results / "specialists.json").write_text(json.dumps({"summaries": summaries, "runs": runs}, indent=2))
    print(write_table(summaries, results))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("train", "eval"):
        p = sub.add_parser(name)
        p.add_argument("--tasks", default=DEFAULT_TASKS, help="comma-separated task names")
        p.add_argument("--tasks-dir", default=None, help="task folder (default: shared/data/tasks beside the repo)")
        p.add_argument("--out", default="/work/artifacts/specialists", help="adapters, checkpoints, node dirs, logs")
        p.add_argument("--heldout", type=int, default=60, help="the first N dev items: held out, evaluated")
        p.add_argument("--threads", type=int, default=2)
    t = sub.choices["train"]
    t.add_argument("--model", default=BASE)
    t.add_argument("--steps", type=int, default=100)
    t.add_argument("--lr", type=float, default=3e-4)
    t.add_argument("--rank", type=int, default=16)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--max-length", type=int, default=384)
    t.add_argument("--checkpoint-every", type=int, default=25)
    t.add_argument("--eval-max-tokens", type=int, default=None, help="torch held-out scoring reply length")
    t.add_argument("--nice", type=int, default=10)
    t.add_argument("--lora-layers", type=int, default=8, help="LoRA on the top N layers (0: all)")
    t.add_argument("--precision", default="bf16", choices=["fp32", "bf16"])
    t.add_argument("--score", default="", help="tasks whose held-out items node train also scores on torch "
                   "(before/after, in the card: a cross-check of the llama.cpp eval)")
    t.set_defaults(run=train)
    e = sub.choices["eval"]
    e.add_argument("--results", default=str(REPO / "docs" / "results" / "specialists"))
    e.add_argument("--gguf", default=None, help="the base GGUF (default: the catalog's, joined in the model cache)")
    e.add_argument("--engine", default="llama.cpp", choices=["llama.cpp", "torch"])
    e.add_argument("--max-tokens", default="multiple_choice=64,exact_match=128,f1_match=48")
    e.add_argument("--concurrency", type=int, default=4)
    e.add_argument("--no-self-eval", action="store_true", help="skip the signed self-evaluation")
    e.add_argument("--self-eval-limit", type=int, default=None,
                   help="items the self-evaluation asks (the first N held-out items; default: all of them)")
    e.add_argument("--table-only", action="store_true", help="only rebuild the table from the logs")
    e.add_argument("--self-eval-only", action="store_true",
                   help="only the signed self-evaluation (e.g. to re-sign after a fix); the eval logs stay")
    e.set_defaults(run=evaluate)
    args = parser.parse_args()
    if args.command == "eval" and args.gguf is None:
        args.gguf = default_gguf()
    return int(args.run(args))


def default_gguf() -> str:
    from node.config import default_cache_dir
    from node.expert.model import catalog

    entry = catalog.lookup(BASE)
    assert entry is not None
    gguf, _, _ = catalog.ensure_gguf(entry, default_cache_dir())
    return str(gguf)


if __name__ == "__main__":
    raise SystemExit(main())
