"""Checking a trace's receipts: did each expert really produce what the trace says it did?

For every step that carries a receipt (receipts.py) the check recomputes what
the expert must have signed from the trace's own fields, and verifies the
signature with the key embedded in the step's ``peer``:

* the signer is the step's peer, the request id is the step's
  (:func:`step_request_id`);
* ``generate``: the input digest is the step's ``input_digest`` (the prompt as
  sent) and the output digest is the digest of the step's ``output`` (unless the
  trace had to truncate it, which the check then says);
* ``session`` (token-level fusion): the input digest covers the prompt and the
  step's ``token_ids`` (the tokens the coordinator fed it: the fused answer);
  the output digest attests the distributions the expert returned, which a
  trace does not hold, so only the signature vouches for them.

A coordinator that edits an output, swaps peers or forges a receipt fails the
check of that step.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from .errors import DecodeError, ProtocolError
from .receipts import SignedReceipt, session_input_digest, text_digest, verify_receipt
from .trace import MAX_OUTPUT, Trace, TraceStep

_decoder = msgspec.msgpack.Decoder(SignedReceipt)
_encoder = msgspec.msgpack.Encoder()


@dataclass(frozen=True, slots=True)
class ReceiptCheck:
    step: int
    peer: str
    ok: bool
    detail: str


def step_request_id(request_id: str, index: int) -> str:
    """The request id a coordinator gives step ``index`` of query ``request_id`` (fits the 64-character cap)."""
    return f"{request_id[:56]}.{index}"


def encode_receipt(signed: SignedReceipt) -> bytes:
    """How a receipt is stored in :attr:`TraceStep.receipt`."""
    return _encoder.encode(signed)


def decode_receipt(data: bytes) -> SignedReceipt:
    try:
        return _decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise DecodeError(f"malformed receipt: {exc}") from None


def check_step(trace: Trace, step: TraceStep) -> ReceiptCheck:
    """Verify one step's receipt (the step must carry one)."""
    assert step.receipt is not None
    note = ""
    try:
        signed = decode_receipt(step.receipt)
        if step.call == "session":
            inputs, output = session_input_digest(step.input_digest, step.token_ids), None
            note = f"{len(step.token_ids)} fused tokens fed"
        else:
            truncated = len(step.output) >= MAX_OUTPUT
            inputs, output = step.input_digest, None if truncated else text_digest(step.output)
            note = "output truncated in the trace: signature and prompt only" if truncated else "output matches"
        receipt = verify_receipt(signed, peer_id=step.peer, request_id=step_request_id(trace.request_id, step.index),
                                 input_digest=inputs, output_digest=output)
    except ProtocolError as exc:
        return ReceiptCheck(step.index, step.peer, False, f"{type(exc).__name__}: {exc}")
    return ReceiptCheck(step.index, step.peer, True, f"{receipt.kind} receipt of {receipt.tokens} tokens; {note}")


def check_trace(trace: Trace) -> list[ReceiptCheck]:
    """One check per step that carries a receipt, in step order."""
    return [check_step(trace, step) for step in trace.steps if step.receipt is not None]
