"""The numbers of the report, computed from log records alone (pure functions, no I/O).

Definitions (also printed in the report):
- accuracy: mean item score (1/0, or the F1 for f1_match) over the items a system has a record
  for; a failed query scores 0.  Macro = mean over tasks.  95% intervals: percentile bootstrap
  over items (resampled within each task for the macro), ``BOOTSTRAP`` draws, fixed seed.
- best single: per task, the single expert with the highest accuracy on these test items
  (chosen on test, so optimistic); best single overall: the expert with the best macro.
- oracle: an item counts when any single expert solved it (score = the best member's score).
- emergence: among items that no single expert solved, the share a system solves.
- team accuracy: majority vote over the members' extracted answers (normalized); a tie goes to
  the member listed first in the randomly ordered team; the team's score is the score of a
  member that gave the winning answer.  Team oracle: any member solved it.
"""

from __future__ import annotations

import itertools
import math
import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass

from ..coordinator.reputation import wilson_bounds
from ..evaluation.scoring import normalize
from .logs import LogRecord

BOOTSTRAP = 1000
SEED = 20250607


@dataclass(frozen=True)
class Interval:
    mean: float
    low: float
    high: float
    n: int


class Table:
    """Scores indexed as ``score[system][task][item]`` plus each record, for the analyses below."""

    def __init__(self, records: list[LogRecord]) -> None:
        self.records: dict[str, dict[str, dict[str, LogRecord]]] = defaultdict(lambda: defaultdict(dict))
        self.kind: dict[str, str] = {}
        self.task_type: dict[str, str] = {}
        for r in records:
            self.records[r.system][r.task][r.item] = r
            self.kind[r.system] = r.kind
            self.task_type[r.task] = r.task_type
        self.tasks = sorted(self.task_type)

    def systems(self, kind: str) -> list[str]:
        return sorted(s for s, k in self.kind.items() if k == kind)

    def items(self, task: str, systems: list[str]) -> list[str]:
        """Items of ``task`` logged for every one of ``systems`` (the common ground of a comparison)."""
        sets = [set(self.records[s][task]) for s in systems if task in self.records[s]]
        if len(sets) < len(systems) or not sets:
            return []
        return sorted(set.intersection(*sets))

    def score(self, system: str, task: str, item: str) -> float:
        r = self.records[system][task].get(item)
        return 0.0 if r is None or r.error else float(r.score)

    def solved(self, system: str, task: str, item: str) -> bool:
        r = self.records[system][task].get(item)
        return bool(r and not r.error and r.correct)


def bootstrap(per_task: dict[str, list[float]], draws: int = BOOTSTRAP, seed: int = SEED) -> Interval:
    """Macro mean over tasks with a percentile interval from resampling items within each task."""
    per_task = {t: v for t, v in per_task.items() if v}
    if not per_task:
        return Interval(math.nan, math.nan, math.nan, 0)
    mean = sum(sum(v) / len(v) for v in per_task.values()) / len(per_task)
    rng = random.Random(seed)
    stats = []
    for _ in range(draws):
        macro = 0.0
        for values in per_task.values():
            macro += sum(rng.choice(values) for _ in values) / len(values)
        stats.append(macro / len(per_task))
    stats.sort()
    low, high = stats[int(0.025 * (draws - 1))], stats[math.ceil(0.975 * (draws - 1))]
    return Interval(mean, low, high, sum(len(v) for v in per_task.values()))


def wilson(correct: int, n: int, z: float = 1.96) -> Interval:
    """The Wilson score interval of ``correct`` of ``n`` (95% at z=1.96): unlike the normal
    approximation it stays inside [0, 1] and is sound for small n and scores near 0 or 1."""
    if n <= 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    low, high = wilson_bounds(correct, n, z)
    return Interval(correct / n, low, high, n)


def accuracy(table: Table, system: str, tasks: list[str] | None = None) -> dict[str, Interval]:
    """Per task and ``"macro"``: the system's accuracy with a 95% interval."""
    out: dict[str, Interval] = {}
    values: dict[str, list[float]] = {}
    for task in tasks or table.tasks:
        items = sorted(table.records[system].get(task, {}))
        values[task] = [table.score(system, task, i) for i in items]
        out[task] = bootstrap({task: values[task]})
    out["macro"] = bootstrap(values)
    return out


def oracle_scores(table: Table, experts: list[str], task: str) -> dict[str, float]:
    """Per item (common to all ``experts``), the best single expert's score."""
    return {i: max(table.score(e, task, i) for e in experts) for i in table.items(task, experts)}


def best_single(table: Table, experts: list[str]) -> tuple[dict[str, tuple[str, Interval]], str | None]:
    """Per task the best expert (chosen on these items: optimistic), and the best expert by macro."""
    per_task = {}
    accs = {e: accuracy(table, e) for e in experts}
    for task in table.tasks:
        ranked = sorted((-accs[e][task].mean, e) for e in experts if accs[e][task].n)  # ties: first by name
        if ranked:
            best = ranked[0][1]
            per_task[task] = (best, accs[best][task])
    overall = min(experts, key=lambda e: (-accs[e]["macro"].mean, e)) if experts else None
    return per_task, overall


def emergence(table: Table, experts: list[str], systems: list[str]) -> dict[str, dict[str, float | int]]:
    """Among items no single expert solved: per system, how many and what share it solved (per task, and all)."""
    out: dict[str, dict[str, float | int]] = {}
    unsolved: dict[str, list[str]] = {}
    for task in table.tasks:
        unsolved[task] = [i for i in table.items(task, experts) if not any(table.solved(e, task, i) for e in experts)]
    total = sum(len(v) for v in unsolved.values())
    for system in systems:
        row: dict[str, float | int] = {"unsolved_items": total}
        hits = 0
        for task, items in unsolved.items():
            got = sum(table.solved(system, task, i) for i in items if i in table.records[system].get(task, {}))
            hits += got
            row[task] = got / len(items) if items else math.nan
        row["solved"] = hits
        row["share"] = hits / total if total else math.nan
        out[system] = row
    return out


def team_answer(table: Table, team: list[str], task: str, item: str) -> tuple[float, bool]:
    """(score, solved) of the team's majority vote on one item; see the module docstring."""
    answers = []
    for member in team:
        r = table.records[member][task].get(item)
        if r is None or r.error or r.extracted is None:
            continue
        answers.append((_vote_key(r.extracted, r.task_type), member))
    if not answers:
        return 0.0, False
    counts = Counter(key for key, _ in answers)
    top = max(counts.values())
    winner = next(m for key, m in answers if counts[key] == top)  # first listed among the tied answers
    return table.score(winner, task, item), table.solved(winner, task, item)


def _vote_key(extracted: str, task_type: str) -> str:
    return extracted if task_type == "multiple_choice" else normalize(extracted)


def team_accuracy(table: Table, team: list[str]) -> tuple[float, float]:
    """Macro (vote accuracy, oracle accuracy) of a team over the items common to its members."""
    votes, oracles = [], []
    for task in table.tasks:
        items = table.items(task, team)
        if not items:
            continue
        votes.append(sum(team_answer(table, team, task, i)[0] for i in items) / len(items))
        oracles.append(sum(max(table.score(m, task, i) for m in team) for i in items) / len(items))
    if not votes:
        return math.nan, math.nan
    return sum(votes) / len(votes), sum(oracles) / len(oracles)


def team_curve(table: Table, experts: list[str], draws: int = 20, seed: int = SEED) -> dict[int, dict[str, float]]:
    """Team size k = 1..K: mean (and min/max) vote and oracle accuracy over random teams.

    All teams are used when there are at most ``draws`` of that size; otherwise ``draws`` random
    ones (fixed seed).  Members are shuffled so vote ties are broken at random, not by name.
    """
    rng = random.Random(seed)
    out = {}
    for k in range(1, len(experts) + 1):
        combos = list(itertools.combinations(experts, k))
        teams = combos if len(combos) <= draws else rng.sample(combos, draws)
        results = []
        for team in teams:
            members = list(team)
            rng.shuffle(members)
            results.append(team_accuracy(table, members))
        vote = [v for v, _ in results]
        oracle = [o for _, o in results]
        out[k] = {"teams": len(teams), "vote": sum(vote) / len(vote), "vote_min": min(vote), "vote_max": max(vote),
                  "oracle": sum(oracle) / len(oracle)}
    return out


def profile_vectors(systems: list[dict]) -> tuple[dict[str, dict[str, float]], str]:
    """A vector per expert for similarity, and which source it came from.

    Dev profiles (per-task dev accuracy in ``systems[].profile``) when every expert has one;
    otherwise a bag of words of its name, description, tags and base model -- a crude stand-in
    for description embeddings that needs no model.
    """
    if systems and all(isinstance(s.get("profile"), dict) and s["profile"] for s in systems):
        return {s["label"]: {k: float(v) for k, v in s["profile"].items()} for s in systems}, "dev profiles"
    vectors = {}
    for s in systems:
        text = " ".join(
            [s.get("label", ""), s.get("description", ""), " ".join(s.get("tags", [])), s.get("base_model", "")]
        )
        words = [w for w in re.split(r"[^a-z0-9]+", text.lower()) if len(w) > 1]
        vectors[s["label"]] = {w: float(c) for w, c in Counter(words).items()}
    return vectors, "bag of words of name, description, tags and base model"


def cosine(a: dict[str, float], b: dict[str, float]) -> float:
    dot = sum(v * b.get(k, 0.0) for k, v in a.items())
    na, nb = math.sqrt(sum(v * v for v in a.values())), math.sqrt(sum(v * v for v in b.values()))
    return dot / (na * nb) if na and nb else 0.0


def similar_vs_dissimilar(table: Table, experts: list[str], vectors: dict[str, dict[str, float]],
                          size: int) -> dict[str, object] | None:
    """The most similar and the most dissimilar team of ``size`` (mean pairwise cosine) and their accuracy."""
    if size < 2 or size >= len(experts):
        return None
    scored = []
    for team in itertools.combinations(experts, size):
        pairs = list(itertools.combinations(team, 2))
        sim = sum(cosine(vectors.get(a, {}), vectors.get(b, {})) for a, b in pairs) / len(pairs)
        scored.append((sim, list(team)))
    scored.sort(key=lambda p: (p[0], p[1]))
    (low_sim, dissimilar), (high_sim, similar) = scored[0], scored[-1]
    if similar == dissimilar or high_sim - low_sim < 1e-9:
        return None  # the profiles do not tell the experts apart: no similar/dissimilar contrast
    sv, so = team_accuracy(table, similar)
    dv, do = team_accuracy(table, dissimilar)
    return {"size": size, "similar": {"team": similar, "similarity": high_sim, "vote": sv, "oracle": so},
            "dissimilar": {"team": dissimilar, "similarity": low_sim, "vote": dv, "oracle": do}}


def own_tasks(systems: list[dict], tasks: list[str]) -> dict[str, list[str]]:
    """Each contributor's own tasks: ``systems[].own_task`` if logged, else its tags or name parts equal to a task."""
    out = {}
    for s in systems:
        if s.get("kind") != "expert":
            continue
        if s.get("own_task") in tasks:
            out[s["label"]] = [s["own_task"]]
            continue
        words = set(s.get("tags", [])) | set(re.split(r"[^A-Za-z0-9_]+", s["label"]))
        hits = [t for t in tasks if t in words]
        if hits:
            out[s["label"]] = hits
    return out


def costs(table: Table, system: str) -> dict[str, float]:
    """Per answered item: expert calls, tokens generated and seconds; and how many failed."""
    rows = [r for task in table.records[system].values() for r in task.values()]
    answered = [r for r in rows if not r.error]
    n = len(answered)
    return {"answered": n, "errors": len(rows) - n,
            "expert_calls": sum(r.expert_calls for r in answered) / n if n else math.nan,
            "tokens": sum(r.expert_tokens for r in answered) / n if n else math.nan,
            "seconds": sum(r.seconds for r in answered) / n if n else math.nan,
            "cut_at_max_tokens": sum(r.finish_reason == "length" for r in answered) / n if n else math.nan}
