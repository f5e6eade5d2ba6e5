"""Which task items `node train` holds out: never one it trains on (no model loaded, milliseconds)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from node.training import DataError, TrainJob
from node.training.contribute import heldout_examples
from node.training.data import load_dataset


def task_file(tmp_path: Path, dev: int, test: int = 3) -> Path:
    def item(split: str, i: int) -> dict:
        return {"id": f"{split}-{i}", "question": f"{split} question {i}?", "choices": {"A": "yes", "B": "no"},
                "answer": "AB"[i % 2]}

    path = tmp_path / "toy.json"
    path.write_text(json.dumps({"name": "toy", "task_type": "multiple_choice",
                                "dev": [item("dev", i) for i in range(dev)],
                                "test": [item("test", i) for i in range(test)]}))
    return path


def job(path: Path, tmp_path: Path, heldout: int, eval_split: str | None) -> TrainJob:
    return TrainJob(data=path, out_dir=tmp_path / "out", data_dir=tmp_path, name="toy", heldout=heldout,
                    eval_split=eval_split)


def keys(examples) -> list[str]:
    return [e.item.key for e in examples]


def test_eval_split_equal_to_the_training_split_holds_its_first_items_out(tmp_path):
    path = task_file(tmp_path, dev=10)
    dataset = load_dataset(path, split="dev")
    train, held, described = heldout_examples(job(path, tmp_path, 4, "dev"), dataset)
    # The held-out items are the first 4 of dev: what `node eval --split dev --limit 4` and a
    # self-evaluation with limit 4 ask; none of them is trained on.
    assert keys(held) == keys(dataset.examples[:4])
    assert keys(train) == keys(dataset.examples[4:])
    assert not set(keys(held)) & set(keys(train))
    assert "first 4 items, not trained on" in described


def test_another_eval_split_trains_on_the_whole_training_split(tmp_path):
    path = task_file(tmp_path, dev=10)
    dataset = load_dataset(path, split="dev")
    train, held, _ = heldout_examples(job(path, tmp_path, 2, "test"), dataset)
    assert len(train) == 10 and [e.item.question for e in held] == ["test question 0?", "test question 1?"]


def test_holding_out_the_whole_training_split_is_refused(tmp_path):
    path = task_file(tmp_path, dev=5)
    with pytest.raises(DataError, match="nothing left to train on"):
        heldout_examples(job(path, tmp_path, 5, "dev"), load_dataset(path, split="dev"))
