"""How long a CLI command takes to start (issue 21, item 10): `python -m node --help`.

In one run, on this machine: the median wall time of ``python -m node --help`` against
that of a bare ``python -c pass`` (the interpreter's own start), their ratio, and the
heavy packages building the parser imports (torch, transformers, libp2p: none now).
Before, the parser imported libp2p through node.training and node.expert: 1.1-1.3 s on
a lightly loaded 2-core box (0.15 s bare), 7-9 s at load average 15.

    .venv/bin/python benchmarks/cli_startup.py [--runs 7]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "peft", "libp2p", "trio")


def wall(args: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(args, cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    bare, helps = [], []
    for _ in range(args.runs):  # interleaved: both see the same machine load
        bare.append(wall([sys.executable, "-c", "pass"]))
        helps.append(wall([sys.executable, "-m", "node", "--help"]))
    probe = ("import sys\nfrom node.cli import build_parser\nbuild_parser()\n"
             f"print(','.join(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r}))))")
    heavy = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    b, h = statistics.median(bare), statistics.median(helps)
    print(f"python -c pass          median {b:.3f} s  ({args.runs} runs)")
    print(f"python -m node --help   median {h:.3f} s  ({args.runs} runs)")
    print(f"ratio --help / bare     {h / b:.2f}x   (--help costs {h - b:.3f} s above the interpreter)")
    print(f"heavy packages imported by the parser: {heavy.stdout.strip() or 'none'}")


if __name__ == "__main__":
    main()
