"""``python -m node eval report DIR``: summary.json, report.md and PNG plots from the logs alone."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from . import analysis as an
from .logs import read_logs, read_run

REPORT_FILE, SUMMARY_FILE = "report.md", "summary.json"


def summarize(out: Path, team_draws: int = 20) -> dict[str, Any]:
    """Every number of the report, as JSON-ready data."""
    run = read_run(out)
    table = an.Table(read_logs(out))
    experts, strategies, baselines = table.systems("expert"), table.systems("strategy"), table.systems("baseline")
    summary: dict[str, Any] = {"tasks": table.tasks, "task_types": table.task_type, "experts": experts,
                               "strategies": strategies, "baselines": baselines, "run": run}
    acc = {s: an.accuracy(table, s) for s in experts + strategies + baselines}
    summary["accuracy"] = {s: {t: _iv(v) for t, v in a.items()} for s, a in acc.items()}
    if experts:
        per_task, overall = an.best_single(table, experts)
        summary["best_single_per_task"] = {t: {"expert": e, **_iv(iv)} for t, (e, iv) in per_task.items()}
        summary["best_single_overall"] = overall
        oracle = {t: list(an.oracle_scores(table, experts, t).values()) for t in table.tasks}
        summary["oracle"] = {
            **{t: _iv(an.bootstrap({t: v})) for t, v in oracle.items()},
            "macro": _iv(an.bootstrap(oracle)),
        }
        bs_macro = {t: [table.score(per_task[t][0], t, i) for i in sorted(table.records[per_task[t][0]][t])]
                    for t in per_task}
        summary["best_single_per_task"]["macro"] = _iv(an.bootstrap(bs_macro))
        summary["emergence"] = an.emergence(table, experts, strategies + baselines)
        summary["teams"] = {"definition": "majority vote over members' extracted answers; oracle = any member solved",
                            "curve": an.team_curve(table, experts, draws=team_draws)}
        vectors, source = an.profile_vectors([s for s in run.get("systems", []) if s.get("label") in experts])
        summary["teams"]["similarity_source"] = source
        summary["teams"]["similar_vs_dissimilar"] = [r for k in range(2, len(experts))
                                                     if (r := an.similar_vs_dissimilar(table, experts, vectors, k))]
        own = an.own_tasks(run.get("systems", []), table.tasks)
        summary["contributors"] = [{"expert": e, "task": t, "alone": acc[e][t].mean,
                                    **{s: acc[s][t].mean for s in strategies + baselines}}
                                   for e, ts in own.items() for t in ts if t in acc[e]]
    summary["cost"] = {s: an.costs(table, s) for s in experts + strategies + baselines}
    return summary


def write_report(out: Path, team_draws: int = 20) -> Path:
    """Write summary.json, the plots and report.md under ``out``; returns the report's path."""
    summary = summarize(out, team_draws)
    (out / SUMMARY_FILE).write_text(json.dumps(_clean(summary), indent=2, sort_keys=True), encoding="utf-8")
    from .plots import draw_plots

    plots = draw_plots(summary, out)
    (out / REPORT_FILE).write_text(render(summary, plots), encoding="utf-8")
    return out / REPORT_FILE


def render(summary: dict[str, Any], plots: list[str]) -> str:
    """The markdown report (tables in percent, intervals in brackets)."""
    tasks, experts, strategies, baselines = (summary[k] for k in ("tasks", "experts", "strategies", "baselines"))
    run = summary.get("run", {})
    lines = ["# Mosaic eval report", ""]
    own = "".join(f", {t} {n}" for t, n in sorted(run.get("task_limits", {}).items()))
    lines += [(f"Split `{run.get('split', '?')}`, first {run.get('limit', 'all')} items per task{own}, "
              f"temperature {run.get('temperature', '?')}, max new tokens {run.get('max_tokens', '?')}."),
              f"Items per task: {', '.join(f'{t} {_n(summary, t)}' for t in tasks)}.", ""]
    if run.get("command"):
        lines += ["Command:", "", "```", run["command"], "```", ""]
    lines += ["## Accuracy (%), 95% bootstrap interval", "",
              ("Score = exact match (multiple choice, exact_match) or best-alias token F1 (f1_match); a failed query "
              "scores 0. Best single per task is picked on these same test items (optimistic)."), ""]
    cols = [*tasks, "macro"]
    lines += ["| system | kind | " + " | ".join(cols) + " |", "|---|---|" + "---|" * len(cols)]
    acc = summary["accuracy"]
    for s in experts + baselines + strategies:
        kind = "expert" if s in experts else "baseline" if s in baselines else "strategy"
        lines.append(f"| {s} | {kind} | " + " | ".join(_cell(acc[s].get(c)) for c in cols) + " |")
    if experts:
        bs = summary["best_single_per_task"]
        lines.append(
            "| best single (per task) | expert | "
            + " | ".join(
                (_cell(bs[c]) + (f" {bs[c]['expert']}" if "expert" in bs[c] else "")) if c in bs else "-" for c in cols
            )
            + " |"
        )
        lines.append(f"| best single overall: {summary['best_single_overall']} | expert | "
                     + " | ".join(_cell(acc[summary['best_single_overall']].get(c)) for c in cols) + " |")
        lines.append(
            "| oracle (any expert right) | - | " + " | ".join(_cell(summary["oracle"].get(c)) for c in cols) + " |"
        )
    lines.append("")
    if experts and (strategies or baselines):
        lines += _emergence(summary)
    if experts:
        lines += _teams(summary)
        lines += _contributors(summary, strategies + baselines)
    lines += ["## Cost per answered item", "",
              "| system | answered | failed | expert calls | tokens generated | seconds | cut at max tokens |",
              "|---|---|---|---|---|---|---|"]
    for s, c in summary["cost"].items():
        lines.append(f"| {s} | {c['answered']} | {c['errors']} | {_f(c['expert_calls'], 2)} | {_f(c['tokens'], 1)} "
                     f"| {_f(c['seconds'], 2)} | {_pct(c['cut_at_max_tokens'])} |")
    lines += ["", ("Expert calls and tokens come from the strategy's trace when the network sends one; "
              "otherwise an answer counts as one call and its completion tokens. Seconds are wall time "
              "seen by the client (with the run's concurrency)."), ""]
    for plot in plots:
        lines += [f"![{plot}]({plot})", ""]
    return "\n".join(lines)


def _emergence(summary: dict[str, Any]) -> list[str]:
    em = summary["emergence"]
    any_row = next(iter(em.values()))
    lines = ["## Emergence", "", (f"Items no single expert solved: {any_row['unsolved_items']}. "
             "Share of them each system solved (per task where it has such items):"), "",
             "| system | solved | share | " + " | ".join(summary["tasks"]) + " |",
             "|---|---|---|" + "---|" * len(summary["tasks"])]
    for s, row in em.items():
        lines.append(f"| {s} | {row['solved']} | {_pct(row['share'])} | "
                     + " | ".join(_pct(row.get(t, math.nan)) for t in summary["tasks"]) + " |")
    return lines + [""]


def _teams(summary: dict[str, Any]) -> list[str]:
    teams = summary["teams"]
    lines = ["## Diversity: teams of single experts", "",
             f"Team accuracy = {teams['definition']} (macro over tasks; from the logged answers, no new queries).", "",
             "| size | teams | vote (mean) | vote min..max | oracle (mean) |", "|---|---|---|---|---|"]
    for k, row in teams["curve"].items():
        lines.append(f"| {k} | {row['teams']} | {_pct(row['vote'])} | {_pct(row['vote_min'])}..{_pct(row['vote_max'])} "
                     f"| {_pct(row['oracle'])} |")
    if teams["similar_vs_dissimilar"]:
        lines += [
            "",
            f"Similar vs dissimilar teams (similarity: {teams['similarity_source']}; mean pairwise cosine):",
            "",
            "| size | team | similarity | vote | oracle |",
            "|---|---|---|---|---|",
        ]
        for r in teams["similar_vs_dissimilar"]:
            for label in ("similar", "dissimilar"):
                t = r[label]
                lines.append(f"| {r['size']} | {label}: {', '.join(t['team'])} | {t['similarity']:.2f} "
                             f"| {_pct(t['vote'])} | {_pct(t['oracle'])} |")
    return lines + [""]


def _contributors(summary: dict[str, Any], systems: list[str]) -> list[str]:
    rows = summary.get("contributors") or {}
    if not rows:
        return ["## Contributors' priorities", "",
                "No expert names a task as its own (tag or name equal to a task, or `own_task` in run.json).", ""]
    lines = ["## Contributors' priorities: own task, expert alone vs the system", "",
             "| expert | own task | alone | " + " | ".join(systems) + " |", "|---|---|---|" + "---|" * len(systems)]
    for r in rows:
        lines.append(
            f"| {r['expert']} | {r['task']} | {_pct(r['alone'])} | "
            + " | ".join(_pct(r.get(s, math.nan)) for s in systems)
            + " |"
        )
    return lines + [""]


def _iv(iv: an.Interval) -> dict[str, float | int]:
    return {"mean": iv.mean, "low": iv.low, "high": iv.high, "n": iv.n}


def _n(summary: dict[str, Any], task: str) -> int:
    return max((a[task]["n"] for a in summary["accuracy"].values() if task in a), default=0)


def _cell(iv: dict | None) -> str:
    if not iv or not iv.get("n"):
        return "-"
    return f"{100 * iv['mean']:.1f} [{100 * iv['low']:.0f}-{100 * iv['high']:.0f}]"


def _pct(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}"


def _f(x: float, digits: int) -> str:
    return "-" if isinstance(x, float) and math.isnan(x) else f"{x:.{digits}f}"


def _clean(value: Any) -> Any:
    """NaN is not JSON: written as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value
