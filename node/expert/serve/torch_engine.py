"""The torch engine: today's inference worker (batcher.py) behind the engine seam (engine.py)."""

from __future__ import annotations

from pathlib import Path

from .batcher import InferenceWorker


class TorchEngine(InferenceWorker):
    """transformers + peft: continuous batching of HF caches, per-row LoRA adapters."""

    name = "torch"

    @property
    def quantization(self) -> str:
        return str(self.expert.dtype)  # float32 on a CPU, bfloat16 / float16 on a GPU

    def attach_adapter(self, name: str, path: Path, *, evictable: tuple[str, ...]) -> list[str]:
        from .live_adapters import attach

        return attach(self, name, path, evictable=evictable)
