"""`python -m node --help` is fast and its lists are true (issue 21, item 10)."""

from __future__ import annotations

import subprocess
import sys

from tests.cluster.harness import REPO_ROOT

HEAVY = ("torch", "transformers", "peft", "libp2p", "trio", "node.expert", "node.coordinator", "node.net")


def test_building_the_parser_imports_nothing_heavy() -> None:
    """Every `COMMAND --help` builds the whole parser: it must not import torch, transformers or
    libp2p (it imported libp2p through node.training and node.expert: 0.8 s per command)."""
    probe = ("import sys\nfrom node.cli import build_parser\nbuild_parser()\n"
             f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r} or m.startswith({HEAVY!r})))")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


def test_help_runs_without_importing_heavy_modules() -> None:
    out = subprocess.run([sys.executable, "-X", "importtime", "-m", "node", "--help"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "exit codes" in out.stdout
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert not {m for m in imported if m.split(".")[0] in ("torch", "transformers", "libp2p")}


def test_the_help_lists_match_their_sources() -> None:
    from node.cli.choices import CATALOG_KEYS, MERGE_METHODS, STRATEGY_NAMES
    from node.coordinator.strategies import STRATEGIES
    from node.expert.model.catalog import CATALOG
    from node.expert.model.merge import METHODS

    assert CATALOG_KEYS == tuple(CATALOG)
    assert STRATEGY_NAMES == tuple(STRATEGIES)
    assert MERGE_METHODS == METHODS


def test_help_texts_name_the_choices() -> None:
    from node.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices  # type: ignore[union-attr]
    start_help = sub["start"].format_help()
    for key in ("smollm2-135m", "gemma3-270m", "qwen2.5-0.5b", "qwen2.5-1.5b"):
        assert key in start_help
    query_help = sub["query"].format_help()
    for name in ("route", "debate", "moa", "cascade"):
        assert name in query_help


def test_eval_in_a_fresh_clone_says_where_task_files_come_from(tmp_path) -> None:
    """A clone with no shared/data/tasks above it (the files are never in the repo)."""
    import os
    import shutil

    clone = tmp_path / "clone"
    for package in ("node", "protocol"):
        shutil.copytree(REPO_ROOT / package, clone / package, ignore=shutil.ignore_patterns("__pycache__"))
    assert not any((folder / "shared" / "data" / "tasks").is_dir() for folder in (clone, *clone.parents))
    env = {k: v for k, v in os.environ.items() if k != "MOSAIC_TASKS_DIR"}
    out = subprocess.run([sys.executable, "-m", "node", "eval", "--http", "http://127.0.0.1:9", "--out",
                          str(tmp_path / "run")], cwd=clone, capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2, out.stderr
    [line] = out.stderr.strip().splitlines()
    assert line.startswith("error: no task files")
    for hint in ("--tasks DIR", "$MOSAIC_TASKS_DIR", "BunsenFeng/model_collaboration", "docs/evaluation.md"):
        assert hint in line
