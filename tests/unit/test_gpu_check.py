"""benchmarks/gpu_check.py in its tiny CPU form: the script a bare GPU box runs works end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def test_gpu_check_needs_nothing_of_mosaic():
    """The GPU box has no libp2p, msgspec or trio: the script may import torch, transformers, peft only."""
    import ast

    imported = set()
    for node in ast.walk(ast.parse(SCRIPT.read_text())):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    allowed = {"__future__", "argparse", "os", "platform", "sys", "time", "torch", "transformers", "peft"}
    assert imported <= allowed, imported - allowed


def test_gpu_check_tiny_runs_on_cpu(tmp_path):
    out = tmp_path / "gpu.md"
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--device", "cpu", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    table = out.read_text()
    rows = [line for line in table.splitlines() if line.startswith("| tiny |")]
    assert [row.split("|")[3].strip() for row in rows] == ["1", "4"]  # one row per stream count
    assert all(float(row.split("|")[5]) > 0 for row in rows)  # aggregate tok/s
    fp32 = next(line for line in table.splitlines() if line.startswith("| fp32 |"))
    assert fp32.split("|")[4].strip() == "1.000"  # CPU vs CPU: the same top token everywhere
