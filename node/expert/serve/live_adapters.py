"""Adapters added to an expert while it serves: the merged adapters the ``merge`` strategy makes.

peft mutates the model's LoRA layers when it loads or deletes an adapter, so both
run on the inference worker's own thread between two steps
(:meth:`~node.expert.serve.batcher.InferenceWorker.between_steps`): no forward ever sees
a half-loaded adapter.  A base served without adapters becomes a ``PeftModel`` on
the first one; rows without an adapter then run with the LoRA layers disabled
(batcher._forward), so their output is the same as before.

Merged adapters are bounded (:data:`MAX_LIVE`, oldest first out): each one costs
memory for as long as the node runs, and a record lists at most 32 adapters.  An
adapter that a running or queued request or an open session uses is not evicted.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..model.loader import ModelLoadError, adapter_weights_digest, attach_adapter

if TYPE_CHECKING:
    from .batcher import InferenceWorker

MAX_LIVE = 4  # merged adapters held at once per expert


def attach(worker: InferenceWorker, name: str, path: Path, *, evictable: tuple[str, ...]) -> list[str]:
    """Load adapter ``name`` from ``path`` into the worker's model (worker thread); returns the evicted names.

    ``evictable``: the adapters added live before, oldest first; beyond :data:`MAX_LIVE`
    the oldest unused ones are deleted.
    """
    import torch

    expert = worker.expert
    if name in expert.adapters:
        return []
    digest = adapter_weights_digest(path)
    # The worker thread runs in inference mode; adapter weights made there would be inference
    # tensors that peft's later loads (copy_ into them) refuse.  Build them as ordinary tensors.
    with torch.inference_mode(False), torch.no_grad():
        model = attach_adapter(expert.model, name, path)
        model.to(expert.device).eval()
    expert.model = model
    expert.adapters[name] = digest
    evicted: list[str] = []
    excess = len(evictable) + 1 - MAX_LIVE
    if excess > 0:
        busy = worker.adapters_in_use()
        for old in evictable:
            if len(evicted) >= excess:
                break
            if old in busy or old not in expert.adapters:
                continue
            with torch.inference_mode(False), torch.no_grad():
                expert.model.delete_adapter(old)
            del expert.adapters[old]
            evicted.append(old)
    return evicted


__all__ = ["MAX_LIVE", "ModelLoadError", "attach"]
