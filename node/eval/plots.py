"""PNG plots of a summary (matplotlib's Agg backend: no display needed)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def draw_plots(summary: dict[str, Any], out: Path) -> list[str]:
    """Accuracy bars with intervals, team-size curves and emergence bars; returns the file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    rows = [
        (s, summary["accuracy"][s]["macro"]) for s in summary["experts"] + summary["baselines"] + summary["strategies"]
    ]
    if summary.get("oracle"):
        rows.append(("oracle", summary["oracle"]["macro"]))
    rows = [(s, iv) for s, iv in rows if iv["n"] and not math.isnan(iv["mean"])]
    if rows:
        fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(rows) + 2), 4))
        means = [100 * iv["mean"] for _, iv in rows]
        errs = [[100 * (iv["mean"] - iv["low"]) for _, iv in rows], [100 * (iv["high"] - iv["mean"]) for _, iv in rows]]
        colors = [_color(summary, s) for s, _ in rows]
        ax.bar(range(len(rows)), means, yerr=errs, capsize=4, color=colors)
        ax.set_xticks(range(len(rows)), [s for s, _ in rows], rotation=30, ha="right")
        ax.set_ylabel("macro accuracy (%)")
        ax.set_title("Accuracy with 95% bootstrap intervals")
        fig.tight_layout()
        fig.savefig(out / "accuracy.png", dpi=110)
        plt.close(fig)
        files.append("accuracy.png")
    curve = (summary.get("teams") or {}).get("curve") or {}
    if curve:
        ks = sorted(int(k) for k in curve)
        row = [curve[k] if k in curve else curve[str(k)] for k in ks]
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(ks, [100 * r["vote"] for r in row], "o-", label="majority vote (mean of teams)")
        ax.fill_between(ks, [100 * r["vote_min"] for r in row], [100 * r["vote_max"] for r in row], alpha=0.2)
        ax.plot(ks, [100 * r["oracle"] for r in row], "s--", label="oracle (any member right)")
        for s in summary["strategies"] + summary["baselines"]:
            ax.axhline(100 * summary["accuracy"][s]["macro"]["mean"], linestyle=":", color=_color(summary, s), label=s)
        ax.set_xlabel("team size")
        ax.set_ylabel("macro accuracy (%)")
        ax.set_xticks(ks)
        ax.legend(fontsize=8)
        ax.set_title("Teams of single experts (from logged answers)")
        fig.tight_layout()
        fig.savefig(out / "teams.png", dpi=110)
        plt.close(fig)
        files.append("teams.png")
    emergence = summary.get("emergence") or {}
    if emergence:
        names = list(emergence)
        shares = [100 * (0 if math.isnan(emergence[s]["share"]) else emergence[s]["share"]) for s in names]
        fig, ax = plt.subplots(figsize=(max(5, 0.8 * len(names) + 2), 4))
        ax.bar(range(len(names)), shares, color=[_color(summary, s) for s in names])
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
        ax.set_ylabel("% solved")
        ax.set_title(f"Emergence: of {next(iter(emergence.values()))['unsolved_items']} items no single expert solved")
        fig.tight_layout()
        fig.savefig(out / "emergence.png", dpi=110)
        plt.close(fig)
        files.append("emergence.png")
    return files


def _color(summary: dict[str, Any], system: str) -> str:
    if system in summary["strategies"]:
        return "tab:green"
    if system in summary["baselines"]:
        return "tab:red"
    if system == "oracle":
        return "tab:gray"
    return "tab:blue"
