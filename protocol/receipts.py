"""Signed receipts: an expert's own statement of what it was asked and what it answered.

A coordinator assembles answers from many experts and reports who produced
what (the trace).  Nothing stops a dishonest or buggy coordinator from
crediting an expert with text it never wrote, or blaming it for one.  A
receipt closes that gap: the expert signs, with its peer key, the request id,
the model and adapter it used (by content id), a digest of the prompt it
received, a digest of the output it produced and the number of tokens.  Any
holder of the trace checks the signature against the key embedded in the
peer id (protocol/identity.py) and recomputes the digests from the trace's own
prompt and output; a changed byte fails one or the other.

Like capability records (records.py) the signature covers the exact encoded
payload bytes behind a domain prefix, so verification never depends on
re-encoding, and a receipt signature can never pass for a record signature.

Two kinds: ``generate`` (output digest = digest of the result text) and
``session`` (a generation session used for token-level fusion: the expert was
fed the prompt plus a sequence of tokens chosen by the coordinator, and
returned one next-token distribution per step; the input digest covers the
prompt and the fed tokens, the output digest chains the distributions).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Sequence
from typing import Annotated, Literal

import msgspec
from msgspec import Meta

from .errors import BadSignature, DecodeError, InvalidValue
from .identity import Identity, verify_signature

_SIGNING_DOMAIN = b"/mosaic/receipt/1\n"
MAX_RECEIPT_SIZE = 2048

Digest = Annotated[str, Meta(pattern=r"^sha256:[0-9a-f]{64}$")]
ReceiptKind = Literal["generate", "session"]


class Receipt(msgspec.Struct, frozen=True, kw_only=True):
    """What the expert attests to (see the module docstring)."""

    kind: ReceiptKind
    request_id: Annotated[str, Meta(min_length=1, max_length=64)]
    peer_id: Annotated[str, Meta(min_length=1, max_length=128)]  # the signer
    model_cid: Annotated[str, Meta(max_length=128)]
    adapter: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    adapter_cid: Annotated[str, Meta(max_length=128)] | None = None
    input_digest: Digest
    output_digest: Digest
    tokens: Annotated[int, Meta(ge=0)]  # tokens produced (generate) or fed after the prompt (session)


class SignedReceipt(msgspec.Struct, frozen=True, kw_only=True):
    """An encoded :class:`Receipt` and its signer's Ed25519 signature over it."""

    payload: Annotated[bytes, Meta(max_length=MAX_RECEIPT_SIZE)]
    signature: Annotated[bytes, Meta(min_length=64, max_length=64)]


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Receipt)


# --------------------------------------------------------------------------- digests


def _digest(tag: bytes, data: bytes) -> str:
    return "sha256:" + hashlib.sha256(tag + b"\n" + data).hexdigest()


def text_digest(text: str) -> str:
    """Digest of a generated text (UTF-8)."""
    return _digest(b"text", text.encode("utf-8"))


def prompt_digest(prompt: str | None, messages: Sequence[object] | None) -> str:
    """Digest of a request's prompt as the expert received it: a raw prompt or chat messages.

    ``messages`` items need ``role`` and ``content`` attributes (protocol ChatMessage).
    """
    if messages is None:
        return _digest(b"prompt", (prompt or "").encode("utf-8"))
    pairs = [[m.role, m.content] for m in messages]  # type: ignore[attr-defined]
    return _digest(b"messages", _encoder.encode(pairs))


def session_input_digest(prompt: str, token_ids: Iterable[int]) -> str:
    """Digest of a session's input: the prompt digest, then every token fed after it."""
    ids = list(token_ids)
    return _digest(b"session-input", prompt.encode("ascii") + struct.pack(f"<{len(ids)}I", *ids))


class DistributionChain:
    """Running digest of the next-token distributions a session returned, in order.

    ``update`` folds one step's (token ids, log-probabilities); the verifier
    rebuilds the same chain from the distributions recorded in a trace.
    Log-probabilities enter as IEEE doubles, exactly as they crossed the wire.
    """

    def __init__(self) -> None:
        self._state = hashlib.sha256(b"session-output\n").digest()

    def update(self, token_ids: Sequence[int], logprobs: Sequence[float]) -> None:
        if len(token_ids) != len(logprobs):
            raise InvalidValue("a distribution needs one log-probability per token id")
        body = struct.pack(f"<I{len(token_ids)}I{len(logprobs)}d", len(token_ids), *token_ids, *logprobs)
        self._state = hashlib.sha256(self._state + body).digest()

    def digest(self) -> str:
        return "sha256:" + self._state.hex()


# --------------------------------------------------------------------------- sign / verify


def sign_receipt(receipt: Receipt, identity: Identity) -> SignedReceipt:
    if receipt.peer_id != identity.peer_id:
        raise ValueError("an expert can only sign receipts in its own name")
    payload = _encoder.encode(receipt)
    return SignedReceipt(payload=payload, signature=identity.sign(_SIGNING_DOMAIN + payload))


def open_receipt(signed: SignedReceipt) -> Receipt:
    """Decode and check the signature against the key in the receipt's own ``peer_id``."""
    if len(signed.payload) > MAX_RECEIPT_SIZE:
        raise DecodeError("receipt payload too large")
    try:
        receipt = _decoder.decode(signed.payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise DecodeError(f"malformed receipt: {exc}") from None
    verify_signature(receipt.peer_id, _SIGNING_DOMAIN + signed.payload, signed.signature)
    return receipt


def verify_receipt(
    signed: SignedReceipt,
    *,
    peer_id: str,
    request_id: str | None = None,
    input_digest: str | None = None,
    output_digest: str | None = None,
) -> Receipt:
    """Check that ``peer_id`` signed ``signed`` and that it attests to what the trace claims.

    Every expectation given must match, else :class:`BadSignature` (the signer
    differs or the bytes were altered) or :class:`InvalidValue` (the receipt is
    genuine but about something else than the trace says).
    """
    receipt = open_receipt(signed)
    if receipt.peer_id != peer_id:
        raise BadSignature(f"receipt is signed by {receipt.peer_id[-8:]}, not by {peer_id[-8:]}")
    for name, expected in (("request_id", request_id), ("input_digest", input_digest),
                           ("output_digest", output_digest)):
        if expected is not None and getattr(receipt, name) != expected:
            raise InvalidValue(f"receipt of {peer_id[-8:]}: {name} does not match the trace")
    return receipt
