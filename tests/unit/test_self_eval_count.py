"""Self-evaluation counts every correct reply, however the concurrent items interleave."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from node.expert.serve.self_eval import evaluate
from protocol import GenerateResult, Usage


class RightEveryTime:
    """A stand-in for LocalExpert: answers each item's gold letter after a few scheduler turns,
    so that the self-evaluation's concurrent items are all in flight at once."""

    def __init__(self, golds: dict[str, str]) -> None:
        self.golds = golds

    async def generate(self, request):
        question = request.messages[0].content.split("\n")[0]
        for _ in range(3):
            await trio.sleep(0)
        yield GenerateResult(request_id=request.request_id, text=f"{self.golds[question]}) it", finish_reason="stop",
                             usage=Usage(prompt_tokens=9, completion_tokens=3, seconds=0.0))


async def test_concurrent_correct_replies_all_count(tmp_path: Path) -> None:
    items = [{"id": str(i), "question": f"question {i}?", "choices": {"A": "x", "B": "y"}, "answer": "AB"[i % 2]}
             for i in range(12)]
    (tmp_path / "toy.json").write_text(json.dumps({"name": "toy", "task_type": "multiple_choice", "dev": items,
                                                   "test": []}))
    local = RightEveryTime({item["question"]: item["answer"] for item in items})
    result = await evaluate(local, "toy", limit=12, tasks_dir=tmp_path, max_tokens=8)  # type: ignore[arg-type]
    # Before the fix the count lost the updates of the items in flight together: 1/12 here.
    assert (result.n, result.accuracy, result.max_new_tokens) == (12, 1.0, 8)
