"""The participation experiment on one machine, in one command.

Starts a localhost Mosaic network -- a coordinator node (HTTP API, no model) and one node per
contributor expert -- plus a monolithic baseline alone in a network of its own (so no strategy
can consult it), runs ``python -m node eval`` on a fixed slice of test items per task against
both, and writes the report (markdown, PNG plots, JSON) into ``--out``.

    python benchmarks/participation.py --out docs/results/cpu-small
    python benchmarks/participation.py --contrib-dir /tmp/i9/contrib --out docs/results/cpu-contrib

``--contrib-dir DIR`` makes the team the contributors of the participation run
(docs/contributors.md): each ``DIR/*/mosaic-card.json`` adapter is served by a node of its own
on the card's base model, described and tagged by its card (plus the task it was trained on),
and measured as ``c-NAME/NAME`` (its adapter; the node's bare base is not measured as a single
expert, it would be the plain base once per contributor).  The catalog's other bases join them.

Experts (``--expert NAME=MODEL[+ADAPTER_NAME=PATH][@TAGS]``, repeatable) default to the model
catalog's small bases when the catalog is in this tree (SmolLM2-135M, Qwen2.5-Coder-0.5B, Gemma 3
270M, the last a base model asked with plain completion prompts),
else to the one embedded SmolLM2-135M; the baseline defaults to the
largest catalog model (Qwen2.5-Coder-1.5B).  Converted weights live in the per-user model cache
(``MOSAIC_CACHE_DIR``), so a rerun starts in seconds; a rerun with the same ``--out`` resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LISTEN_LINE = re.compile(r"^mosaic node (\S+) listening on (\S+)$")
DEFAULT_TASKS = "arc_challenge,truthfulqa,gsm8k,popqa"
# Catalog keys -> what each contributor says it offers.  The tags name the tasks it claims as its
# own (declarations, not measurements): routing hints, and the "contributors' priorities" rows.
CATALOG_EXPERTS = {
    "smollm2": ("smollm2-135m", "SmolLM2 135M instruct: short general answers, everyday chat, facts",
                "general,chat,truthfulqa,popqa"),
    "qwen-coder": ("qwen2.5-0.5b", "Qwen2.5 Coder 0.5B instruct: code, math and step-by-step reasoning, science",
                   "code,math,gsm8k,arc_challenge,mmlu_redux"),
    # A base model without a chat template: the expert renders chat messages as a plain
    # "...\nAnswer:" completion prompt (node/expert/serve/prompts.py), so strategies can ask it too.
    "gemma": ("gemma3-270m", "Gemma 3 270M base: plain text completion, general knowledge and facts",
              "general,facts,popqa"),
}
BASELINE = "qwen2.5-1.5b"


@dataclass
class ExpertSpec:
    name: str
    model: str | None  # catalog key, model path, or None for the embedded default
    description: str = ""
    tags: str = ""
    adapters: list[str] = field(default_factory=list)  # NAME=PATH
    ask_base: bool = True  # measure the bare base model as a single expert too
    own_task: str | None = None  # the task a contributor trained its adapter on


def contributor_experts(directory: Path, models: dict[str, str]) -> list[ExpertSpec]:
    """One expert per adapter directory under ``directory`` (``*/mosaic-card.json``), from its card.

    ``models`` maps catalog keys to model paths (e.g. an already converted GGUF), so the card's
    base resolves without joining the catalog's chunks again in every node's data dir; the
    embedded SmolLM2-135M needs no entry.
    """
    cards = sorted(directory.glob("*/mosaic-card.json"))
    if not cards:
        raise SystemExit(f"--contrib-dir {directory}: no */mosaic-card.json (adapter directories of `node train`)")
    specs = []
    for path in cards:
        card = json.loads(path.read_text())
        name, base = card["name"], card["base"]["model"]
        kind = card.get("data", {}).get("kind", "")
        task = kind.removeprefix("task:").split("/")[0] if kind.startswith("task:") else None
        tags = [*card.get("tags", []), *([task] if task else [])]
        description = (f"contributor {name}: {card.get('description', '')} "
                       f"(LoRA on {card['base'].get('model_id', base)}, trained on {kind or 'own data'})")
        model = models.get(base, None if base == "smollm2-135m" else base)
        specs.append(ExpertSpec(f"c-{name}", model, description, ",".join(dict.fromkeys(tags)),
                                [f"{name}={path.parent.resolve()}"], ask_base=False, own_task=task))
    return specs


def catalog_available() -> bool:
    try:
        import node.expert.model.catalog  # noqa: F401
    except ImportError:
        return False
    return True


def default_experts() -> tuple[list[ExpertSpec], str | None, str]:
    if catalog_available():
        specs = [ExpertSpec(name, key, desc, tags) for name, (key, desc, tags) in CATALOG_EXPERTS.items()]
        return specs, BASELINE, "catalog bases (no adapters yet)"
    return ([ExpertSpec("smollm2", None, "SmolLM2 135M instruct (embedded default)", "general")], None,
            "the embedded SmolLM2-135M only (no model catalog in this tree)")


def parse_expert(text: str) -> ExpertSpec:
    """``NAME=MODEL[+ADAPTER=PATH...][@TAGS]``; MODEL ``default`` is the embedded SmolLM2."""
    head, _, tags = text.partition("@")
    name, sep, rest = head.partition("=")
    if not sep or not name:
        raise SystemExit(f"--expert {text!r}: expected NAME=MODEL[+ADAPTER=PATH][@TAGS]")
    model, *adapters = rest.split("+")
    known = CATALOG_EXPERTS.get(name)  # a catalog expert given another way (e.g. a GGUF path) keeps its claims
    description = known[1] if known else f"{name} ({model})"
    tags = tags or (known[2] if known else "")
    return ExpertSpec(name, None if model in ("", "default") else model, description, tags, adapters)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """The node processes of the experiment; all are stopped on exit."""

    def __init__(self, work: Path, device: str, node_args: tuple[str, ...] = ()) -> None:
        self.work, self.device = work, device
        self.node_args = node_args  # added to every expert node's `node start` (e.g. --engine llama.cpp)
        self.procs: list[subprocess.Popen[str]] = []

    def spawn(self, name: str, *, expert: ExpertSpec | None, bootstrap: str | None,
              http_port: int | None) -> subprocess.Popen[str]:
        """Start ``python -m node start`` for one node; ``address()`` waits for it to listen."""
        data = self.work / "nodes" / name
        data.mkdir(parents=True, exist_ok=True)
        args = [sys.executable, "-m", "node", "start", "--data-dir", str(data), "--listen", "/ip4/127.0.0.1/tcp/0",
                "--name", name, "--log-level", "warning", "--announce-interval", "5"]
        args += ["--http", f"127.0.0.1:{http_port}"] if http_port else ["--no-http"]
        if bootstrap:
            args += ["--bootstrap", bootstrap]
        if expert is None:
            args.append("--no-expert")
        else:
            args += ["--device", self.device, "--description", expert.description]
            if expert.tags:
                args += ["--tags", expert.tags]
            if expert.model:
                args += ["--model", expert.model]
            for adapter in expert.adapters:
                args += ["--adapter", adapter]
            args += self.node_args
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
               "HF_HUB_OFFLINE": "1"}
        log = (self.work / f"{name}.log").open("w")
        proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True, env=env)
        proc.name = name  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def address(self, proc: subprocess.Popen[str], timeout: float = 1800.0) -> str:
        """The multiaddr the node prints once it listens (a first start converts its model: minutes)."""
        line = _read_line(proc, timeout)
        match = LISTEN_LINE.match(line.strip())
        if match is None:
            name = proc.name  # type: ignore[attr-defined]
            raise RuntimeError(f"node {name} did not start (got {line!r}); see {self.work / f'{name}.log'}")
        return match.group(2)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    out: list[str] = []
    reader = threading.Thread(target=lambda: out.append(proc.stdout.readline()), daemon=True)  # type: ignore[union-attr]
    reader.start()
    reader.join(timeout)
    return out[0] if out else ""


def wait_for_models(url: str, wanted: set[str], timeout: float = 120.0) -> list[dict]:
    """Poll ``GET /v1/models`` until every wanted model id is listed (records travel by gossip)."""
    deadline = time.monotonic() + timeout
    seen: set[str] = set()
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/v1/models", timeout=10) as reply:
                cards = json.load(reply)["data"]
            seen = {c["id"] for c in cards}
            if wanted <= seen:
                return cards
        except OSError:
            pass
        time.sleep(1.0)
    raise RuntimeError(f"{url}: models {sorted(wanted - seen)} never appeared (have {sorted(seen)})")


def wait_for_dev_scores(url: str, wanted: set[str], timeout: float = 4 * 3600.0) -> list[dict]:
    """Poll ``GET /v1/models`` until every wanted expert id carries signed dev scores (self-evaluation
    at start takes minutes per task on a CPU)."""
    deadline = time.monotonic() + timeout
    missing = set(wanted)
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url + "/v1/models", timeout=30) as reply:
            cards = json.load(reply)["data"]
        missing = {c["id"] for c in cards if c["id"] in wanted and not c.get("mosaic", {}).get("dev_scores")}
        if not missing:
            return cards
        time.sleep(10.0)
    raise RuntimeError(f"{url}: no self-evaluation scores from {sorted(missing)} after {timeout:.0f} s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="results folder (logs, report.md, plots, summary.json)")
    parser.add_argument("--work", default=str(Path(os.environ.get("TMPDIR", "/tmp")) / "mosaic-participation"),
                        help="node data dirs (identities) and logs")
    parser.add_argument("--tasks", default=None, help="task folder (default: shared/data/tasks beside the repo)")
    parser.add_argument("--names", default=DEFAULT_TASKS)
    parser.add_argument("--limit", default="5", metavar="N[,TASK=N...]",
                        help="test items per task (the first N, fixed); TASK=N for one task, e.g. 20,gsm8k=10")
    parser.add_argument("--expert", action="append", help="NAME=MODEL[+ADAPTER=PATH][@TAGS] (repeatable)")
    parser.add_argument("--contrib-dir", help="contributors' adapter dirs (*/mosaic-card.json): each is an expert")
    parser.add_argument("--model-path", action="append", metavar="KEY=PATH",
                        help="use PATH for catalog model KEY (e.g. a converted GGUF); repeatable")
    parser.add_argument("--baseline", default=None, help="catalog key or model path; 'none' to skip")
    parser.add_argument("--strategies", default="route,vote,moa", help="strategies to evaluate (those the network offers)")
    parser.add_argument("--max-tokens", default="multiple_choice=16,exact_match=64,f1_match=24")
    # 1: on a loaded 2-core box a queued request misses the coordinator's 20 s first-token budget.
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per query")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--engine", default=None, choices=["auto", "llama.cpp", "torch"],
                        help="every expert node's inference engine (default: node start's)")
    parser.add_argument("--threads", type=int, default=None, help="inference threads per expert node")
    parser.add_argument("--self-eval", default=None, metavar="TASKS",
                        help="each expert node scores itself (base and adapters) on these tasks' first "
                        "--self-eval-limit dev items at start; the signed scores become the report's dev "
                        "profiles (similar vs dissimilar teams)")
    parser.add_argument("--self-eval-limit", type=int, default=20)
    args = parser.parse_args()
    engine_args: list[str] = []  # every expert node, the baseline's too
    if args.engine:
        engine_args += ["--engine", args.engine]
    if args.threads:
        engine_args += ["--threads", str(args.threads)]
    self_eval_args = ["--self-eval", args.self_eval, "--self-eval-limit", str(args.self_eval_limit)] \
        if args.self_eval else []  # the team's experts only: the baseline is no team member

    experts, baseline, source = default_experts()
    if args.expert:
        experts, source = [parse_expert(e) for e in args.expert], "given on the command line"
    if args.contrib_dir:
        models = dict(m.split("=", 1) for m in args.model_path or [])
        if not args.expert:  # the catalog's bases as they are, each at most once
            experts = [parse_expert(f"{name}={models.get(key, key)}") for name, (key, _, _) in CATALOG_EXPERTS.items()]
            experts = [e for e in experts if e.model != "smollm2-135m"] + [ExpertSpec(
                "smollm2", None, CATALOG_EXPERTS["smollm2"][1], CATALOG_EXPERTS["smollm2"][2])]
        experts = contributor_experts(Path(args.contrib_dir), models) + experts
        source = f"contributors' adapters from {args.contrib_dir} + " + (
            "experts given on the command line" if args.expert else "the catalog's bases")
    if args.baseline:
        baseline = None if args.baseline == "none" else args.baseline
    elif baseline and args.model_path:
        baseline = dict(m.split("=", 1) for m in args.model_path).get(baseline, baseline)
    out, work = Path(args.out).resolve(), Path(args.work).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    # Two phases so that the team and the baseline never hold memory at the same time (CPU fp32:
    # Qwen2.5-Coder-1.5B alone takes ~6 GB), and nodes start one by one so that at most one model
    # is being converted at a time (a first conversion peaks at several GB).
    common = ["--names", args.names, "--split", "test", "--limit", args.limit, "--max-tokens", args.max_tokens,
              "--concurrency", str(args.concurrency), "--timeout", str(args.timeout), "--out", str(out), "--no-progress",
              "--task-tags"]  # strategy queries carry the task name as a routing hint
    if args.tasks:
        common += ["--tasks", args.tasks]
    phases: dict[str, dict[str, float]] = {}
    wanted = sorted({s.name for s in experts if s.ask_base}
                    | {f"{s.name}/{a.split('=')[0]}" for s in experts for a in s.adapters})
    code = _phase("team", work, args.device, experts, coordinator_http=True, phases=phases,
                  node_args=engine_args + self_eval_args, self_eval=bool(args.self_eval), eval_args=[
        "--experts", ",".join(wanted), "--strategies", args.strategies, *common])
    if baseline and code in (0, 4):
        spec = ExpertSpec("baseline", baseline, f"monolithic baseline {baseline}")
        code = max(code, _phase("baseline", work, args.device, [spec], coordinator_http=False, phases=phases,
                                node_args=engine_args, eval_args=[
                                    "--experts", "none", "--strategies", "", "--baseline", "baseline", *common]))
    total = time.monotonic() - started
    _annotate(out, experts, baseline, source, args, phases, total)
    report = subprocess.run([sys.executable, "-m", "node", "eval", "report", str(out)], cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, check=False, capture_output=True, text=True)
    if report.returncode != 0:
        print(report.stderr, file=sys.stderr)
        return report.returncode
    print(f"eval exit {code}; wall time {total:.0f} s ({json.dumps(phases)}); report: {report.stdout.strip()}",
          file=sys.stderr)
    return 0 if code in (0, 4) else code


def _phase(name: str, work: Path, device: str, experts: list[ExpertSpec], *, coordinator_http: bool,
           phases: dict[str, dict[str, float]], eval_args: list[str], node_args: list[str] | None = None,
           self_eval: bool = False) -> int:
    """Start a network (a model-less coordinator with HTTP, or the one expert with HTTP), eval, stop it.

    With ``self_eval`` the eval waits until every expert's record carries its signed dev scores
    (``dev_scores`` in ``GET /v1/models``), so ``node eval`` records them as profiles."""
    cluster = Cluster(work, device, tuple(node_args or ()))
    started = time.monotonic()
    try:
        port = free_port()
        if coordinator_http:
            entry = cluster.address(cluster.spawn("coordinator", expert=None, bootstrap=None, http_port=port))
            for spec in experts:
                cluster.address(cluster.spawn(spec.name, expert=spec, bootstrap=entry, http_port=None))
                print(f"[{name}] node {spec.name} is up after {time.monotonic() - started:.0f} s", file=sys.stderr)
        else:
            (spec,) = experts
            cluster.address(cluster.spawn(spec.name, expert=spec, bootstrap=None, http_port=port))
        url = f"http://127.0.0.1:{port}"
        cards = wait_for_models(url, {s.name for s in experts})
        if self_eval:
            cards = wait_for_dev_scores(url, {c["id"] for c in cards if c.get("mosaic", {}).get("kind") == "expert"})
        ready = time.monotonic() - started
        print(f"[{name}] network ready in {ready:.0f} s", file=sys.stderr)
        command = [sys.executable, "-m", "node", "eval", "--http", url, *eval_args]
        eval_started = time.monotonic()
        code = subprocess.run(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, check=False).returncode
        phases[name] = {"network_ready_s": round(ready, 1), "eval_s": round(time.monotonic() - eval_started, 1)}
        print(f"[{name}] eval exit {code} after {phases[name]['eval_s']:.0f} s", file=sys.stderr)
        return code
    finally:
        cluster.stop()


def _annotate(out: Path, experts: list[ExpertSpec], baseline: str | None, source: str, args: argparse.Namespace,
              phases: dict[str, dict[str, float]], total: float) -> None:
    """Record in run.json what the report cannot know from the logs: who is who, and how it was run."""
    path = out / "run.json"
    run = json.loads(path.read_text()) if path.exists() else {}
    by_name = {s.name: s for s in experts}
    for system in run.get("systems", []):
        spec = by_name.get(system["label"].split("/")[0])
        if spec is not None and system["kind"] == "expert":
            system["contributor_model"] = spec.model or "embedded SmolLM2-135M"
            if spec.own_task and "/" in system["label"]:
                system["own_task"] = spec.own_task
    run["benchmark"] = {
        "command": "python benchmarks/participation.py " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "experts_source": source, "baseline": baseline, "device": args.device,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "gpu": shutil.which("nvidia-smi") is not None,
        "wall_seconds": {**phases, "total": round(total, 1)},
    }
    run["command"] = run["benchmark"]["command"]
    path.write_text(json.dumps(run, indent=2, sort_keys=True))


if __name__ == "__main__":
    sys.exit(main())
