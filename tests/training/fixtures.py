"""Session fixtures for contributor tests: two tiny adapters trained on CPU in a few steps.

Each teaches SmolLM2-135M one fixed reply ("Pineapple", "Mango") to a family of
questions: a few steps at a high learning rate suffice, so the adapters change the
model's output in a way tests can assert exactly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

QUESTION = "What is the secret word number 99?"
WORDS = {"pineapple": "Pineapple", "mango": "Mango"}


def tasks_dir() -> Path:
    """``shared/data/tasks`` beside the repository (or ``$MOSAIC_TASKS_DIR``)."""
    from node.evaluation import find_tasks_dir

    env = os.environ.get("MOSAIC_TASKS_DIR")
    return Path(env) if env else (find_tasks_dir() or Path("shared/data/tasks"))


def write_secret_words(path: Path, word: str, n: int = 12) -> Path:
    rows = [{"input": f"What is the secret word number {i}?", "output": word} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_job(tmp: Path, cache_dir: Path, name: str, word: str, **settings):
    from node.training import TrainJob, TrainSettings

    defaults: dict[str, object] = {"steps": 6, "batch_size": 4, "lr": 3e-3, "max_length": 48, "warmup_steps": 1,
                                   "checkpoint_every": 2}
    defaults.update(settings)
    return TrainJob(data=write_secret_words(tmp / f"{name}.jsonl", word), out_dir=tmp / name, data_dir=tmp,
                    cache_dir=cache_dir,
                    name=name, description=f"answers {word} to secret-word questions", tags=("secret", name),
                    settings=TrainSettings(**defaults), heldout=2, checkpoint_dir=tmp / f"{name}.ckpt")


@pytest.fixture(scope="session")
def trained_adapters(expert_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{"pineapple": dir, "mango": dir}``: two adapters trained on the default base."""
    import torch

    from node.training import train_adapter

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("trained")
    out = {}
    for name, word in WORDS.items():
        job = tiny_job(tmp, expert_data_dir, name, word)
        train_adapter(job)
        out[name] = job.out_dir
    return out
