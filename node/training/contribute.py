"""One contributor run: data -> held-out score -> LoRA training -> held-out score -> adapter dir.

The output directory holds only what a peer needs and can trust: ``adapter_config.json``,
``adapter_model.safetensors`` (peft, safetensors), ``mosaic-card.json`` and ``README.md``.
Checkpoints live elsewhere (``<data_dir>/training/<name>/``) so they never end up in the
adapter's CID.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..expert.model.adapter_card import save_adapter
from ..expert.model.catalog import default_key
from ..logs import stage
from .data import DataError, Dataset, Example, load_dataset, split_heldout
from .heldout import HeldoutScore, max_tokens_for, score_heldout
from .loop import Trainer, TrainSettings


@dataclass
class TrainJob:
    data: Path
    out_dir: Path
    data_dir: Path
    name: str
    description: str = ""
    tags: tuple[str, ...] = ()
    model: str | None = None  # catalog key, GGUF or HF dir; None = the default base
    split: str = "dev"  # task files: the split trained on
    settings: TrainSettings = field(default_factory=TrainSettings)
    heldout: int = 20  # examples held out and scored before/after (0: none)
    eval_split: str | None = None  # task files: score on this split's first `heldout` items instead
    eval_max_tokens: int | None = None
    score: bool = True  # score the held-out items before/after (False: only hold them out)
    resume: bool = False
    checkpoint_dir: Path | None = None
    cache_dir: Path | None = None  # the per-user model cache (None: node.config.default_cache_dir())

    @property
    def checkpoints(self) -> Path:
        return self.checkpoint_dir or self.data_dir / "training" / self.name

    @property
    def model_cache(self) -> Path:
        from ..config import default_cache_dir

        return self.cache_dir or default_cache_dir()


def load_base(model: str | None, cache_dir: Path) -> tuple[Any, Any, Any]:
    """``(model, tokenizer, ModelSource)`` in float32 on CPU (training precision)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..expert.model.loader import resolve_source

    source = resolve_source(model, cache_dir)
    tokenizer = AutoTokenizer.from_pretrained(source.directory, local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    base = AutoModelForCausalLM.from_pretrained(source.directory, dtype=torch.float32, use_safetensors=True,
                                                local_files_only=True)
    return base, tokenizer, source


def heldout_examples(job: TrainJob, dataset: Dataset) -> tuple[tuple[Example, ...], tuple[Example, ...], str]:
    """``(train, heldout, description of the held-out items)``."""
    if job.eval_split and dataset.kind.startswith("task:"):
        if job.eval_split == job.split:
            # The first items of the training split: the ones `node eval --split dev --limit N`
            # and a self-evaluation with limit N ask, so they must not be trained on.
            if job.heldout >= len(dataset.examples):
                raise DataError(f"cannot hold out {job.heldout} of {len(dataset.examples)} "
                                f"{job.split} items: nothing left to train on")
            held = dataset.examples[: job.heldout]
            return (dataset.examples[job.heldout :], held,
                    f"{dataset.kind}, first {len(held)} items, not trained on")
        other = load_dataset(job.data, split=job.eval_split)
        held = other.examples[: job.heldout]
        return dataset.examples, held, f"{other.kind}, first {len(held)} items"
    train, held = split_heldout(dataset.examples, job.heldout, job.settings.seed)
    return train, held, f"{dataset.kind}, {len(held)} examples drawn with seed {job.settings.seed}, not trained on"


def train_adapter(job: TrainJob, *, on_step: Callable[[int, float], None] | None = None,
                  progress: bool = False) -> dict[str, Any]:
    """Run ``job`` and write the adapter directory; returns its card."""
    import torch

    started = time.monotonic()
    dataset = load_dataset(job.data, split=job.split)
    train, held, held_desc = heldout_examples(job, dataset)
    # The silent stretches (model load, held-out scoring) show a progress line on a terminal.
    with stage("loading the base model"):
        base, tokenizer, source = load_base(job.model, job.model_cache)
    max_new = job.eval_max_tokens or max_tokens_for(held, tokenizer, dataset.task_type)
    s = job.settings
    before_file = job.checkpoints / "before.json"
    before = _cached_before(before_file, job, dataset) if job.resume else None
    if not job.score:
        before = HeldoutScore(0, 0.0, 0.0)  # not scored: the items are only held out
    elif before is None:
        with stage(f"scoring {len(held)} held-out examples before training"):
            before = score_heldout(base, tokenizer, held, max_new_tokens=max_new, max_length=s.max_length)
    trainer = Trainer(base, tokenizer, s, train, job.checkpoints, data_sha256=dataset.sha256)
    resumed_from = trainer.state.step
    if job.resume and trainer.resume():
        resumed_from = trainer.state.step
    elif job.checkpoints.exists():
        shutil.rmtree(job.checkpoints)  # a fresh run must not resume an old one by accident
    job.checkpoints.mkdir(parents=True, exist_ok=True)
    before_file.write_text(json.dumps({"data_sha256": dataset.sha256, "heldout": held_desc, **before.as_dict()}))
    bar = _progress_bar(s.steps, resumed_from) if progress else None

    def step_done(step: int, loss: float) -> None:
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{trainer.optimizer.param_groups[0]['lr']:.1e}")
        if on_step is not None:
            on_step(step, loss)

    torch.manual_seed(s.seed)
    try:
        state = trainer.run(step_done)
    finally:
        if bar is not None:
            bar.close()
    after = HeldoutScore(0, 0.0, 0.0)
    if job.score:
        with stage(f"scoring {len(held)} held-out examples after training"):
            after = score_heldout(trainer.model, tokenizer, held, max_new_tokens=max_new, max_length=s.max_length)
    card = {
        "name": job.name,
        "kind": "lora",
        "description": job.description,
        "tags": list(job.tags),
        "base": {"model": job.model or default_key(), "model_id": source.model_id, "sha256": source.sha256,
                 "cid": source.cid},
        "data": {**dataset.describe(), "train_examples": len(train)},
        "settings": s.as_dict(),
        "training": {"steps_done": state.step, "resumed_from": resumed_from, "final_loss": state.losses[-1],
                     "first_loss": state.losses[0] if state.losses else None,
                     "seconds": round(time.monotonic() - started, 1)},
        "scores": {"split": held_desc, "max_new_tokens": max_new, "before": before.as_dict() if job.score else None,
                   "after": after.as_dict() if job.score else None},
    }
    save_adapter(trainer.model, job.out_dir, card, model_id=source.model_id)
    return card


def _cached_before(path: Path, job: TrainJob, dataset: Dataset) -> HeldoutScore | None:
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if saved.get("data_sha256") != dataset.sha256:
        return None
    return HeldoutScore(int(saved["n"]), float(saved["accuracy"]), float(saved["loss"]))


def _progress_bar(total: int, initial: int):
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)
