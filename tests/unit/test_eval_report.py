"""Report numbers on synthetic logs whose right answers are worked out by hand; resume of a run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
import trio.lowlevel

from node.eval import analysis as an
from node.eval.client import ModelInfo, QueryError, Reply
from node.eval.logs import LogRecord, append, read_logs, write_run
from node.eval.report import write_report
from node.eval.runner import PlanError, System, run_eval, select_systems
from node.evaluation.tasks import TaskItem, TaskSet

# Four multiple-choice items (gold A) and what each system answered.
ANSWERS = {
    "e1": ["A", "B", "B", "C"],
    "e2": ["A", "C", "C", "C"],
    "e3": ["B", "A", "C", "D"],
    "mosaic/vote": ["A", "C", "C", "C"],
    "mosaic/moa": ["A", "A", "A", "D"],
    "big": ["A", "A", "B", "B"],
}
KIND = {"e1": "expert", "e2": "expert", "e3": "expert", "mosaic/vote": "strategy", "mosaic/moa": "strategy",
        "big": "baseline"}


def records() -> list[LogRecord]:
    out = []
    for system, answers in ANSWERS.items():
        for i, a in enumerate(answers):
            out.append(LogRecord(system=system, kind=KIND[system], task="quiz", task_type="multiple_choice",
                                 split="test", item=str(i), gold="A", reply=a, extracted=a, score=float(a == "A"),
                                 correct=a == "A", seconds=1.0, expert_calls=3 if KIND[system] == "strategy" else 1,
                                 expert_tokens=30 if KIND[system] == "strategy" else 10))
    return out


def test_accuracy_oracle_and_emergence() -> None:
    table = an.Table(records())
    assert an.accuracy(table, "e1")["quiz"].mean == 0.25
    assert an.accuracy(table, "mosaic/moa")["macro"].mean == 0.75
    experts = table.systems("expert")
    # Items 0 (e1, e2) and 1 (e3) are solved by some expert; items 2 and 3 by none.
    assert an.oracle_scores(table, experts, "quiz") == {"0": 1.0, "1": 1.0, "2": 0.0, "3": 0.0}
    em = an.emergence(table, experts, ["mosaic/vote", "mosaic/moa", "big"])
    assert em["mosaic/vote"]["unsolved_items"] == 2
    assert em["mosaic/vote"]["share"] == 0.0
    assert em["mosaic/moa"]["solved"] == 1 and em["mosaic/moa"]["share"] == 0.5  # item 2
    assert em["big"]["share"] == 0.0
    per_task, overall = an.best_single(table, experts)
    assert per_task["quiz"][0] == "e1" and overall == "e1"  # e1, e2, e3 tie at 25%: first by name


def test_team_vote_and_curve() -> None:
    table = an.Table(records())
    # e1+e2+e3: item 0 votes A (2 of 3), item 1 B/C/A tie -> first listed member (e1: B), item 2 C, item 3 C.
    assert an.team_answer(table, ["e1", "e2", "e3"], "quiz", "0") == (1.0, True)
    assert an.team_answer(table, ["e3", "e1", "e2"], "quiz", "1") == (1.0, True)  # tie: e3 listed first says A
    assert an.team_accuracy(table, ["e1", "e2", "e3"]) == (0.25, 0.5)
    curve = an.team_curve(table, ["e1", "e2", "e3"], draws=20, seed=1)
    assert curve[1]["teams"] == 3 and curve[1]["vote"] == pytest.approx(0.25) and curve[1]["oracle"] == pytest.approx(0.25)
    # Pairs: oracle {e1,e2}=1/4, {e1,e3}=2/4, {e2,e3}=2/4.
    assert curve[2]["oracle"] == pytest.approx((0.25 + 0.5 + 0.5) / 3)
    assert curve[3]["teams"] == 1 and curve[3]["oracle"] == 0.5


def test_similar_vs_dissimilar_uses_the_profiles() -> None:
    table = an.Table(records())
    systems = [{"label": "e1", "profile": {"math": 0.9, "law": 0.1}},
               {"label": "e2", "profile": {"math": 0.8, "law": 0.2}},
               {"label": "e3", "profile": {"math": 0.1, "law": 0.9}}]
    vectors, source = an.profile_vectors(systems)
    assert source == "dev profiles"
    result = an.similar_vs_dissimilar(table, ["e1", "e2", "e3"], vectors, 2)
    assert result["similar"]["team"] == ["e1", "e2"]
    assert result["dissimilar"]["team"] in (["e1", "e3"], ["e2", "e3"])
    assert result["similar"]["oracle"] == 0.25 and result["dissimilar"]["oracle"] == 0.5
    vectors, source = an.profile_vectors([{"label": "math-a", "description": "algebra tutor"},
                                          {"label": "law-b", "description": "contracts"}])
    assert source.startswith("bag of words") and an.cosine(vectors["math-a"], vectors["law-b"]) == 0.0


def test_bootstrap_interval_brackets_the_mean() -> None:
    iv = an.bootstrap({"t": [1.0] * 30 + [0.0] * 70})
    assert iv.mean == pytest.approx(0.3) and iv.low < 0.3 < iv.high and iv.n == 100
    assert an.bootstrap({"t": [1.0] * 5}).low == 1.0


def test_wilson_interval_matches_worked_values() -> None:
    # 45 of 60: p=0.75, Wilson 95% = [0.6277, 0.8422] (the textbook formula, worked separately).
    got = an.wilson(45, 60)
    assert got.mean == 0.75 and got.n == 60
    assert got.low == pytest.approx(0.6277, abs=1e-4) and got.high == pytest.approx(0.8422, abs=1e-4)
    # At 0 and n the interval stays inside [0, 1] and still has width (the normal approximation has none).
    zero, full = an.wilson(0, 20), an.wilson(20, 20)
    assert zero.low == 0.0 and zero.high == pytest.approx(0.1611, abs=1e-4)
    assert full.high == 1.0 and full.low == pytest.approx(0.8389, abs=1e-4)


def test_report_files_from_logs_alone(tmp_path: Path) -> None:
    append(tmp_path, records())
    write_run(tmp_path, {"split": "test", "limit": 4, "temperature": 0.0, "max_tokens": {"multiple_choice": 8},
                         "systems": [{"label": "e1", "kind": "expert", "tags": ["quiz"]}]})
    report = write_report(tmp_path)
    text = report.read_text()
    assert "| mosaic/moa | strategy | 75.0" in text
    assert "Items no single expert solved: 2" in text
    assert "| e1 | quiz | 25.0 |" in text  # e1 claims the task 'quiz' by its tag
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["oracle"]["macro"]["mean"] == 0.5
    assert summary["cost"]["mosaic/vote"]["expert_calls"] == 3.0
    for png in ("accuracy.png", "teams.png", "emergence.png"):
        assert (tmp_path / png).read_bytes()[:4] == b"\x89PNG"


def test_failed_attempt_then_answer_keeps_the_answer(tmp_path: Path) -> None:
    base = {"system": "e1", "kind": "expert", "task": "quiz", "task_type": "multiple_choice", "split": "test", "item": "0", "gold": "A"}
    append(tmp_path, [LogRecord(**base, error="busy"), LogRecord(**base, extracted="A", score=1.0, correct=True),
                      LogRecord(**base, error="timeout")])
    (only,) = read_logs(tmp_path)
    assert only.correct and only.error is None
    (tmp_path / "logs" / "e1.jsonl").open("a").write('{"system": "e1", "trunc')  # a killed writer's torn line
    assert len(read_logs(tmp_path)) == 1


class ScriptedNetwork:
    """A test double for the network: answers 'A' after ``fail_first`` refusals, counts questions."""

    def __init__(self, fail_first: int = 0) -> None:
        self.asked: list[str] = []
        self.fail_first = fail_first

    async def models(self) -> list[ModelInfo]:
        return [ModelInfo("e1", "expert"), ModelInfo("mosaic/route", "strategy")]

    async def ask(self, model: str, prompt: str, max_tokens: int, temperature: float, timeout: float,
                  tags: tuple[str, ...] = ()) -> Reply:
        self.asked.append(model)
        refuse = len(self.asked) <= self.fail_first
        await trio.lowlevel.checkpoint()
        if refuse:
            raise QueryError("HTTP 503 busy: every expert is busy")
        return Reply(text="A) yes", seconds=0.01, completion_tokens=3)


def task_set(n: int) -> TaskSet:
    items = tuple(TaskItem("quiz", "multiple_choice", "test", str(i), f"Q{i}?", ("A",), (("A", "yes"), ("B", "no")))
                  for i in range(n))
    return TaskSet("quiz", "multiple_choice", {"test": items, "dev": ()}, {"test": 0, "dev": 0})


async def test_resume_skips_logged_items_and_retries_failures(tmp_path: Path) -> None:
    net = ScriptedNetwork(fail_first=2)
    systems = select_systems(await net.models(), "all", ["route"], None)
    assert [s.label for s in systems] == ["e1", "mosaic/route"]
    stats = await run_eval(net, [task_set(3)], systems, tmp_path, limit=3, progress=False)
    assert (stats.asked, stats.errors, stats.skipped) == (6, 2, 0)
    stats = await run_eval(net, [task_set(5)], systems, tmp_path, limit=5, progress=False)
    assert (stats.asked, stats.errors, stats.skipped) == (6, 0, 4)  # 2 failed + 4 new; 4 answered skipped
    assert len(net.asked) == 12
    logged = read_logs(tmp_path)
    assert len(logged) == 10 and all(r.correct and r.extracted == "A" for r in logged)
    with pytest.raises(PlanError, match="other settings"):
        await run_eval(net, [task_set(5)], systems, tmp_path, temperature=0.7, progress=False)


def test_select_systems_names_what_exists() -> None:
    models = [ModelInfo("e1", "expert"), ModelInfo("e2", "expert", peers=("p" * 10, "q" * 10)),
              ModelInfo("mosaic/route", "strategy")]
    with pytest.raises(PlanError, match="unknown expert.s. nope; the network offers: e1, e2"):
        select_systems(models, "nope", [], None)
    with pytest.raises(PlanError, match="unknown strategy 'vote'; the network offers: route"):
        select_systems(models, "all", ["vote"], None)
    labels = [s.label for s in select_systems(models, "all", ["route"], "e1")]
    assert labels == ["e2@pppppp", "e2@qqqqqq", "mosaic/route", "e1"]  # baseline e1 is not a team member
    assert System("x", "expert", "x").kind == "expert"


def test_cli_eval_report_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from node.cli import main

    append(tmp_path, records())
    assert main(["eval", "report", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "report.md")
    assert main(["eval", "report", str(tmp_path / "nothing")]) == 2
    assert "no logs/ folder" in capsys.readouterr().err
    assert main(["eval", "--out", str(tmp_path)]) == 2  # neither --http nor --peer
    assert "exactly one of --http" in capsys.readouterr().err


async def test_a_task_limit_overrides_the_common_limit(tmp_path: Path) -> None:
    net = ScriptedNetwork()
    systems = select_systems(await net.models(), "e1", [], None)
    items = tuple(TaskItem("other", "multiple_choice", "test", str(i), f"O{i}?", ("B",), (("A", "x"), ("B", "y")))
                  for i in range(4))
    other = TaskSet("other", "multiple_choice", {"test": items, "dev": ()}, {"test": 0, "dev": 0})
    stats = await run_eval(net, [task_set(5), other], systems, tmp_path, limit=4, task_limits={"quiz": 2},
                           progress=False)
    assert stats.asked == 6  # quiz 2 + other 4
    assert sorted((r.task, r.item) for r in read_logs(tmp_path))[:2] == [("other", "0"), ("other", "1")]
    assert json.loads((tmp_path / "run.json").read_text())["task_limits"] == {"quiz": 2}


async def test_signed_dev_scores_become_the_profiles_of_similar_vs_dissimilar(tmp_path: Path) -> None:
    import protocol as p
    from node.coordinator.routing import model_profile

    def claim(task: str, accuracy: float, adapter: str | None = None, split: str = "dev") -> p.EvalScore:
        return p.EvalScore(task=task, split=split, n=60, accuracy=accuracy, items_sha256="0" * 64, adapter=adapter)

    record = p.CapabilityRecord(peer_id="peer", name="qwen", seq=1, issued_at=0.0, ttl=60.0,
                                adapters=(p.AdapterInfo(name="quiz"),),
                                evals=(claim("quiz", 0.3), claim("quiz", 0.8, "quiz"), claim("other", 0.5),
                                       claim("quiz", 0.9, split="test")))
    # The base's dev claims for `qwen`, the adapter's for `qwen/quiz`; a test-split claim is no profile.
    assert model_profile(record, "qwen") == {"quiz": 0.3, "other": 0.5}
    assert model_profile(record, "qwen/quiz") == {"quiz": 0.8}

    class ProfiledNetwork(ScriptedNetwork):
        async def models(self) -> list[ModelInfo]:
            return [ModelInfo("e1", "expert", dev_scores=(("quiz", 0.3),)),
                    ModelInfo("e2", "expert", dev_scores=(("quiz", 0.8),))]

    net = ProfiledNetwork()
    systems = select_systems(await net.models(), "all", [], None)
    await run_eval(net, [task_set(2)], systems, tmp_path, limit=2, progress=False)
    run = json.loads((tmp_path / "run.json").read_text())
    assert {s["label"]: s["profile"] for s in run["systems"]} == {"e1": {"quiz": 0.3}, "e2": {"quiz": 0.8}}
    vectors, source = an.profile_vectors(run["systems"])
    assert source == "dev profiles" and vectors["e2"] == {"quiz": 0.8}
