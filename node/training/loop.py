"""The LoRA training loop: a few dozen lines of torch, checkpoints in safetensors only.

Why not ``transformers.Trainer``: it saves optimizer and RNG state with ``torch.save``
(pickle), and Mosaic never writes or reads pickle.  Here the optimizer's moments go to
``optimizer.safetensors`` and everything else to JSON.

Resume is exact: the batch at step ``s`` depends only on ``(seed, s)`` (a permutation per
epoch from a seeded generator), the learning rate is a function of ``s``, and LoRA dropout
defaults to 0, so an interrupted and resumed run ends with the same weights as an
uninterrupted one (tested).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..atomic import staged_directory
from .data import Example
from .tokens import collate, encode

CHECKPOINT_FILES = ("adapter.safetensors", "optimizer.safetensors", "state.json")


class ResumeError(ValueError):
    """A checkpoint cannot be resumed with these settings or data; the message says what differs."""


@dataclass(frozen=True)
class TrainSettings:
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    steps: int = 100
    batch_size: int = 4
    lr: float = 3e-4
    warmup_steps: int = 10
    max_length: int = 256
    seed: int = 0
    checkpoint_every: int = 25
    # LoRA on the top N transformer layers only (0: all): no backward pass below them, so a CPU
    # step costs little more than a forward -- enough to teach an answer format and a prior.
    lora_layers: int = 0
    # "bf16": matmuls under CPU/GPU autocast in bfloat16 (LoRA weights and Adam stay float32);
    # about 2x faster on CPUs with AVX512-BF16 or AMX.  "fp32": exact float32.
    precision: str = "fp32"

    def check(self) -> TrainSettings:
        for name in ("rank", "alpha", "steps", "batch_size", "max_length", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not 0 < self.lr < 1:
            raise ValueError("lr must be in (0, 1)")
        if not 0 <= self.dropout < 1:
            raise ValueError("dropout must be in [0, 1)")
        if self.max_length < 16:
            raise ValueError("max_length must be at least 16 tokens")
        if self.lora_layers < 0:
            raise ValueError("lora_layers must be 0 (all layers) or more")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError("precision must be fp32 or bf16")
        return self

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["target_modules"] = list(self.target_modules)
        return out


@dataclass
class TrainState:
    step: int = 0
    losses: list[float] = field(default_factory=list)  # mean loss per step


def lr_at(settings: TrainSettings, step: int) -> float:
    """Linear warm-up, then cosine decay to 10% of ``lr`` at the last step."""
    if step < settings.warmup_steps:
        return settings.lr * (step + 1) / settings.warmup_steps
    span = max(1, settings.steps - settings.warmup_steps)
    progress = min(1.0, (step - settings.warmup_steps) / span)
    return settings.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def batch_indices(settings: TrainSettings, n: int, step: int) -> list[int]:
    """Rows of step ``step``: consecutive slices of a per-epoch permutation seeded by ``(seed, epoch)``."""
    import torch

    out: list[int] = []
    position = step * settings.batch_size
    while len(out) < settings.batch_size:
        epoch, offset = divmod(position, n)
        generator = torch.Generator().manual_seed(settings.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=generator).tolist()
        take = min(settings.batch_size - len(out), n - offset)
        out.extend(order[offset : offset + take])
        position += take
    return out


def attach_lora(model: Any, settings: TrainSettings) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(settings.seed)  # LoRA A's init
    layers = None
    if settings.lora_layers:
        total = int(model.config.num_hidden_layers)
        if settings.lora_layers > total:
            raise ValueError(f"lora_layers {settings.lora_layers}: the model has {total} layers")
        layers = list(range(total - settings.lora_layers, total))
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), task_type="CAUSAL_LM",
                        layers_to_transform=layers)
    return get_peft_model(model, config)


def target_loss(model: Any, batch: dict[str, Any]) -> Any:
    """The mean cross-entropy of the target tokens, with logits computed at target positions only.

    The same number as ``model(**batch).loss`` (the labels' non-ignored tokens, shifted by one),
    but the vocabulary projection -- 136M of Qwen2.5-0.5B's 494M parameters, 151k logits per
    position -- runs on the few answer positions instead of every prompt token, forward and
    backward: on a CPU that is about a quarter of a training step saved.
    """
    import torch

    from .tokens import IGNORE

    labels = batch["labels"]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE  # position p predicts token p + 1
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
    targets = labels[:, 1:][labels[:, 1:] != IGNORE]
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets)


class Trainer:
    """Trains one LoRA adapter on ``examples``; checkpoints to ``checkpoint_dir`` every N steps."""

    def __init__(self, model: Any, tokenizer: Any, settings: TrainSettings, examples: tuple[Example, ...],
                 checkpoint_dir: Path, *, data_sha256: str) -> None:
        import torch

        self.settings = settings.check()
        self.tokenizer = tokenizer
        self.model = attach_lora(model, settings)
        self.rows = [encode(tokenizer, e, settings.max_length) for e in examples]
        if not self.rows:
            raise ValueError("no training examples")
        self.checkpoint_dir = checkpoint_dir
        self.data_sha256 = data_sha256
        self.params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=settings.lr, weight_decay=0.0)
        self.state = TrainState()
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.pad_id = int(pad if pad is not None else 0)

    # ------------------------------------------------------------------ the loop

    def run(self, on_step: Callable[[int, float], None] | None = None) -> TrainState:
        """Train from ``state.step`` to ``settings.steps``; ``on_step(step, loss)`` after each step.

        A ``KeyboardInterrupt`` (Ctrl-C, or raised by ``on_step``) saves a checkpoint first,
        so ``--resume`` continues from the last finished step.
        """
        import torch

        self.model.train()
        s = self.settings
        try:
            while self.state.step < s.steps:
                step = self.state.step
                batch = collate([self.rows[i] for i in batch_indices(s, len(self.rows), step)], self.pad_id)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr_at(s, step)
                with self._autocast():
                    loss = target_loss(self.model, batch)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(list(self.params.values()), 1.0)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                self.state.step = step + 1
                self.state.losses.append(round(float(loss.detach()), 5))
                if self.state.step % s.checkpoint_every == 0 or self.state.step == s.steps:
                    self.save_checkpoint()
                if on_step is not None:
                    on_step(self.state.step, self.state.losses[-1])
        except KeyboardInterrupt:
            self.save_checkpoint()
            raise
        finally:
            self.model.eval()
        return self.state

    def _autocast(self) -> Any:
        import contextlib

        import torch

        if self.settings.precision != "bf16":
            return contextlib.nullcontext()
        device = next(iter(self.params.values())).device.type
        return torch.autocast(device, dtype=torch.bfloat16)

    # ------------------------------------------------------------------ checkpoints (no pickle)

    def save_checkpoint(self) -> None:
        """Adapter weights, Adam moments and the step, written to a temp dir and renamed in."""
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        with staged_directory(self.checkpoint_dir, overwrite=True, private=True) as staging:
            adapter = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(self.model).items()}
            save_file(adapter, str(staging / "adapter.safetensors"))
            save_file(self._optimizer_tensors(), str(staging / "optimizer.safetensors"))
            state = {"step": self.state.step, "losses": self.state.losses, "settings": self.settings.as_dict(),
                     "data_sha256": self.data_sha256}
            (staging / "state.json").write_text(json.dumps(state))

    def _optimizer_tensors(self) -> dict[str, Any]:
        import torch

        out: dict[str, Any] = {}
        for name, param in self.params.items():
            for key, value in self.optimizer.state.get(param, {}).items():
                tensor = value if torch.is_tensor(value) else torch.tensor(value)
                out[f"{name}::{key}"] = tensor.detach().contiguous()
        return out

    def resume(self) -> bool:
        """Load the checkpoint if there is one; False if none.  Raises :class:`ResumeError` on mismatch."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        directory = self.checkpoint_dir
        if not all((directory / f).is_file() for f in CHECKPOINT_FILES):
            return False
        state = json.loads((directory / "state.json").read_text())
        saved = dict(state.get("settings", {}))
        mine = self.settings.as_dict()
        # steps may grow on resume (train longer); everything else must match.
        defaults = TrainSettings().as_dict()  # a checkpoint older than a setting had its default
        diff = sorted(k for k in mine if k not in ("steps", "checkpoint_every")
                      and saved.get(k, defaults[k]) != mine[k])
        if diff:
            raise ResumeError(f"checkpoint {directory} was made with different settings: {', '.join(diff)}")
        if state.get("data_sha256") != self.data_sha256:
            raise ResumeError(f"checkpoint {directory} was trained on different data (sha256 differs)")
        set_peft_model_state_dict(self.model, load_file(str(directory / "adapter.safetensors")))
        moments = load_file(str(directory / "optimizer.safetensors"))
        for name, param in self.params.items():
            slot = {key.split("::", 1)[1]: t for key, t in moments.items() if key.split("::", 1)[0] == name}
            if slot:
                self.optimizer.state[param] = slot
        self.state = TrainState(step=int(state["step"]), losses=list(state["losses"]))
        return True
