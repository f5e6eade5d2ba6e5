"""Server-sent events as OpenAI streams them: ``data: <json>\\n\\n`` ... ``data: [DONE]\\n\\n``."""

from __future__ import annotations

import msgspec

_encoder = msgspec.json.Encoder()

DONE = b"data: [DONE]\n\n"
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    # Tells reverse proxies (nginx) not to buffer the stream.
    (b"x-accel-buffering", b"no"),
    # One stream per connection: after [DONE] the server closes it.  Kept alive, finished SSE
    # connections piled up open for minutes (issue 11, item 15); clients open a new one per stream.
    (b"connection", b"close"),
]


def event(payload: object) -> bytes:
    """One SSE event.  JSON never contains a raw newline, so one ``data:`` line suffices."""
    return b"data: " + _encoder.encode(payload) + b"\n\n"
