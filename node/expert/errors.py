"""The expert's errors, beneath its three rooms: why an inference request was refused (typed errors
that map onto ``ErrorMessage`` codes), and why a model or adapter cannot be provisioned."""

from __future__ import annotations

from protocol import ErrorCode, ErrorMessage


class RequestRejected(Exception):
    """The expert will not run this request; ``code`` is the wire ``ErrorMessage.code``."""

    code: ErrorCode = "bad_request"

    def __init__(self, message: str, *, request_id: str = "") -> None:
        super().__init__(message)
        self.request_id = request_id

    def to_message(self) -> ErrorMessage:
        return ErrorMessage(code=self.code, message=str(self)[:2048], request_id=self.request_id)


class Busy(RequestRejected):
    """The queue is full (backpressure): retry later or on another expert."""

    code: ErrorCode = "busy"


class UnknownAdapter(RequestRejected):
    code: ErrorCode = "not_found"


class PromptTooLong(RequestRejected):
    code: ErrorCode = "too_large"


class ExpertStopped(RequestRejected):
    code: ErrorCode = "unavailable"


class DeadlineExceeded(RequestRejected):
    code: ErrorCode = "timeout"


class Cancelled(RequestRejected):
    code: ErrorCode = "cancelled"


class ModelLoadError(RuntimeError):
    """A model or adapter cannot be loaded; the message says which path and why."""


class WeightsUnavailable(ModelLoadError):
    """Weights named by CID could not be fetched: the input was well-formed, the fetch failed
    (exit code 1 like ``node fetch``, not 2 like a wrong path)."""
