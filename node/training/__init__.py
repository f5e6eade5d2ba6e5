"""Contributor training: LoRA adapters on a catalog base from a contributor's own data.

``python -m node train`` (node/cli/train.py) is the face; :func:`train_adapter` the work.
Importing this package is light: its names load on first use (PEP 562), so the CLI's
parser can read :class:`TrainSettings` defaults without importing the expert package,
libp2p or torch (``python -m node --help`` took 0.8 s when it did).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .contribute import TrainJob, train_adapter
    from .data import DataError, Dataset, Example, load_dataset
    from .loop import ResumeError, TrainSettings

__all__ = ["DataError", "Dataset", "Example", "ResumeError", "TrainJob", "TrainSettings", "load_dataset",
           "train_adapter"]

_HOMES = {"TrainJob": "contribute", "train_adapter": "contribute", "DataError": "data", "Dataset": "data",
          "Example": "data", "load_dataset": "data", "ResumeError": "loop", "TrainSettings": "loop"}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{home}", __name__), name)
