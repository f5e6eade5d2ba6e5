"""Why an inference request was refused, as typed errors that map onto ``ErrorMessage`` codes."""

from __future__ import annotations

from protocol import ErrorMessage


class RequestRejected(Exception):
    """The expert will not run this request; ``code`` is the wire ``ErrorMessage.code``."""

    code = "bad_request"

    def __init__(self, message: str, *, request_id: str = "") -> None:
        super().__init__(message)
        self.request_id = request_id

    def to_message(self) -> ErrorMessage:
        return ErrorMessage(code=self.code, message=str(self)[:2048], request_id=self.request_id)


class Busy(RequestRejected):
    """The queue is full (backpressure): retry later or on another expert."""

    code = "busy"


class UnknownAdapter(RequestRejected):
    code = "not_found"


class PromptTooLong(RequestRejected):
    code = "too_large"


class ExpertStopped(RequestRejected):
    code = "unavailable"


class DeadlineExceeded(RequestRejected):
    code = "timeout"


class Cancelled(RequestRejected):
    code = "cancelled"
