"""Expert serving: a base model + LoRA adapters behind a batched inference worker and ``/mosaic/infer/1``.

Importing this package is light (no torch); the model loads when
:class:`ExpertService` starts or :func:`~node.expert.model.loader.load_expert` runs.
"""

from .errors import Busy, RequestRejected, UnknownAdapter
from .serve.local import ExpertError, LocalExpert
from .serve.service import ExpertService

__all__ = ["Busy", "ExpertError", "ExpertService", "LocalExpert", "RequestRejected", "UnknownAdapter"]
