"""Task-file loader: the real files load; a malformed file fails with a message naming the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.evaluation import (
    TaskFileError,
    build_prompt,
    find_tasks_dir,
    load_task_dir,
    load_tasks,
    score,
)

TASKS = find_tasks_dir()
GOOD_MC = {"id": 1, "question": "Q?", "choices": {"A": "x", "B": "y"}, "answer": "B"}


def write(tmp_path: Path, payload: object, name: str = "t.json") -> Path:
    path = tmp_path / name
    path.write_text(payload if isinstance(payload, str) else json.dumps(payload))
    return path


@pytest.mark.skipif(TASKS is None, reason="shared/data/tasks is not beside this checkout")
def test_every_shared_task_file_loads_and_scores_its_own_gold() -> None:
    sets = load_task_dir(TASKS)
    assert len(sets) == 12
    for task in sets:
        for split in ("dev", "test"):
            items = task.items(split)
            assert items, (task.name, split)
            assert len({i.key for i in items}) == len(items), "keys must be unique for resume"
            for item in items[:50]:
                assert build_prompt(item)
                gold = item.gold if item.task_type != "multiple_choice" else item.answers[0]
                assert score(item, f"\\boxed{{{gold}}}").correct, (task.name, item.key, gold)
    math = next(t for t in sets if t.name == "math")
    assert math.skipped["test"] == 5  # output null: not askable
    assert any("#" in i.key for i in math.items("test"))  # duplicated ids got a suffix


@pytest.mark.parametrize("payload,message", [
    ("{not json", "not valid JSON"),
    ([], "top level must be an object"),
    ({"name": "t", "task_type": "essay", "dev": [], "test": []}, "'task_type' is 'essay'"),
    ({"name": "t", "task_type": "multiple_choice", "dev": [], "test": {}}, "'test' must be a list"),
    ({"name": "t", "task_type": "multiple_choice", "dev": [], "test": [{**GOOD_MC, "answer": "C"}]},
     "test[0]: 'answer' 'C' is not one of the options A, B"),
    ({"name": "t", "task_type": "multiple_choice", "dev": [GOOD_MC, {"question": "Q"}], "test": []},
     "dev[1]: missing or non-string/int 'id'"),
    ({"name": "t", "task_type": "multiple_choice", "dev": [{**GOOD_MC, "choices": ["x", "y"]}], "test": []},
     "dev[0]: 'choices' must be an object"),
    ({"name": "t", "task_type": "exact_match", "dev": [{"id": 1, "output": "3"}], "test": []},
     "dev[0]: exact_match item needs a string 'input'"),
    ({"name": "t", "task_type": "f1_match", "dev": [{"id": 1, "input": "q", "output": "Paris"}], "test": []},
     "dev[0]: 'output' must be a list of aliases"),
])
def test_malformed_file_names_the_problem(tmp_path: Path, payload: object, message: str) -> None:
    path = write(tmp_path, payload)
    with pytest.raises(TaskFileError) as info:
        load_tasks(path)
    assert message in str(info.value)
    assert str(path) in str(info.value)


def test_missing_task_names_what_exists(tmp_path: Path) -> None:
    write(tmp_path, {"name": "t", "task_type": "exact_match", "dev": [], "test": []})
    with pytest.raises(TaskFileError, match="no task file for nope .have: t."):
        load_task_dir(tmp_path, ["nope"])
    assert [t.name for t in load_task_dir(tmp_path)] == ["t"]


def test_limit_takes_the_first_items_in_file_order(tmp_path: Path) -> None:
    items = [{"id": i, "input": f"q{i}", "output": str(i)} for i in range(5)]
    task = load_tasks(write(tmp_path, {"name": "t", "task_type": "exact_match", "dev": [], "test": items}))
    assert [i.key for i in task.items("test", 3)] == ["0", "1", "2"]
    with pytest.raises(KeyError, match="no split 'train'"):
        task.items("train")


def test_limit_option_takes_one_n_and_per_task_overrides() -> None:
    from node.cli.eval import parse_limit

    assert parse_limit(None) == (None, {})
    assert parse_limit("20") == (20, {})
    assert parse_limit("20, gsm8k=10") == (20, {"gsm8k": 10})
    assert parse_limit("gsm8k=10") == (None, {"gsm8k": 10})
    for bad in ("0", "x", "gsm8k=", "gsm8k=-1"):
        with pytest.raises(ValueError):
            parse_limit(bad)
