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
]


def event(payload: object) -> bytes:
    """One SSE event.  JSON never contains a raw newline, so one ``data:`` line suffices."""
    return b"data: " + _encoder.encode(payload) + b"\n\n"
