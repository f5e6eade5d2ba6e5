"""A tiny eval against a real cluster (coordinator with HTTP + two expert nodes, SmolLM2-135M).

The CLI runs as a separate process against the in-process cluster over HTTP, writes logs and a
report, and a rerun asks nothing; the libp2p client (``--peer``) is exercised in-process.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import trio

from node.config import HttpConfig
from node.eval.client import open_client
from node.eval.logs import read_logs
from node.eval.runner import run_eval, select_systems
from node.evaluation import load_tasks
from tests.cluster.test_query import expert_cluster

TASK = {
    "name": "tiny", "task_type": "multiple_choice", "dev": [],
    "test": [
        {"id": "a", "question": "What colour is the sky on a clear day?", "choices": {"A": "Blue", "B": "Green"},
         "answer": "A"},
        {"id": "b", "question": "How many legs does a cat have?", "choices": {"A": "Two", "B": "Four"}, "answer": "B"},
    ],
}
REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow  # ~20 s of model loading (shared) + ~15-50 s on 2 loaded cores
@pytest.mark.timeout(300)
async def test_eval_cli_logs_scores_reports_and_resumes(base_expert, adapter_expert, tmp_path: Path) -> None:
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    (tasks_dir / "tiny.json").write_text(json.dumps(TASK))
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with trio.fail_after(240):
        async with expert_cluster(base_expert, adapter_expert, http=HttpConfig(listen="127.0.0.1:0")) as c:
            command = [sys.executable, "-m", "node", "eval", "--http", c.http.url, "--tasks", str(tasks_dir),
                       "--names", "tiny", "--limit", "2", "--experts", "node-1,node-2/noisy", "--strategies", "route",
                       "--max-tokens", "6", "--concurrency", "2", "--out", str(out), "--no-progress"]
            first = await trio.run_process(command, capture_stdout=True, capture_stderr=True, env=env, check=False)
            assert first.returncode == 0, first.stderr.decode()
            assert "6 answers logged (0 already logged, 0 failed)" in first.stderr.decode()
            again = await trio.run_process([*command, "--report"], capture_stdout=True, capture_stderr=True, env=env,
                                           check=False)
            assert "0 answers logged (6 already logged, 0 failed)" in again.stderr.decode(), again.stderr.decode()

            # --peer: the same questions over /mosaic/query/1, pinned to node-1.
            async with open_client(peer=str(c.coordinator.full_multiaddrs()[0])) as client:
                systems = select_systems(await client.models(), "node-1", [], None, check_strategies=False)
                stats = await run_eval(client, [load_tasks(tasks_dir / "tiny.json")], systems, tmp_path / "peer",
                                       limit=1, max_tokens={"multiple_choice": 6}, progress=False)
            assert (stats.asked, stats.errors) == (1, 0)

    records = read_logs(out)
    assert {(r.system, r.item) for r in records} == {(s, i) for s in ("node-1", "node-2/noisy", "mosaic/route")
                                                   for i in ("a", "b")}
    for r in records:
        assert r.error is None and r.reply and r.completion_tokens <= 6 and r.seconds > 0
        assert r.expert_calls == 1 and r.served_by in (["node-1"], ["node-2"])
        assert r.score == float(r.extracted == r.gold)  # scored by the one scorer
    pinned = {r.item: r.reply for r in records if r.system == "node-1"}
    (peer_record,) = read_logs(tmp_path / "peer")
    assert peer_record.reply == pinned["a"]  # greedy: same expert, same answer over libp2p and HTTP
    report = (out / "report.md").read_text()
    assert "| node-1 | expert |" in report and "| mosaic/route | strategy |" in report
    assert json.loads((out / "summary.json").read_text())["tasks"] == ["tiny"]
    assert (out / "accuracy.png").stat().st_size > 1000
