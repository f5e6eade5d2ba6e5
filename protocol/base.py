"""The base of every wire message: the protocol version, the ``Message`` struct and the field caps.

A leaf: :mod:`protocol.messages` and :mod:`protocol.trace` build on it, and the codec on them
(like h11's events, which readers and writers depend on and which depend on nothing).
"""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

PROTOCOL_VERSION = 1

# Caps.  They bound memory per message; frames carry a separate byte cap.
Short = Annotated[str, Meta(max_length=128)]
Name = Annotated[str, Meta(min_length=1, max_length=64)]
Text = Annotated[str, Meta(max_length=256 * 1024)]
RequestId = Annotated[str, Meta(min_length=1, max_length=64)]
NonNegInt = Annotated[int, Meta(ge=0)]
Seconds = Annotated[float, Meta(ge=0.0, le=86_400.0)]
RequestTimeout = Annotated[float, Meta(gt=0.0, le=3600.0)]  # a request's own deadline, at most an hour
TokenIds = Annotated[tuple[Annotated[int, Meta(ge=0, lt=2**31)], ...], Meta(max_length=32_768)]
LogProbs = Annotated[tuple[float, ...], Meta(max_length=32_768)]


class Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="t"):
    """Base of every top-level wire message."""

    v: int = PROTOCOL_VERSION

ParamKey = Annotated[str, Meta(min_length=1, max_length=32, pattern=r"^[a-z][a-z0-9_]*$")]
ParamValue = bool | int | float | Annotated[str, Meta(max_length=256)]
# Strategy parameters (k, rounds, threshold, ...): a small flat map; each strategy checks its own keys.
Params = Annotated[dict[ParamKey, ParamValue], Meta(max_length=16)]
