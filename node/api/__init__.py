"""The OpenAI-compatible HTTP API of a node."""

from .app import MAX_BODY, MosaicApi
from .errors import ApiError

__all__ = ["MAX_BODY", "ApiError", "MosaicApi"]
