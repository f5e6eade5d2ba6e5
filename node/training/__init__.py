"""Contributor training: LoRA adapters on a catalog base from a contributor's own data.

``python -m node train`` (node/cli/train.py) is the face; :func:`train_adapter` the work.
Importing this package is light; torch loads when training starts.
"""

from .contribute import TrainJob, train_adapter
from .data import DataError, Dataset, Example, load_dataset
from .loop import ResumeError, TrainSettings

__all__ = ["DataError", "Dataset", "Example", "ResumeError", "TrainJob", "TrainSettings", "load_dataset",
           "train_adapter"]
