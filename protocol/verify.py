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

The final text is bound too (:func:`bind_text`, issue 22): a coordinator that
replaced only ``QueryResult.text``, or returned a vote winner whose step
carries no receipt, passed every step's check.  The result's text must be
the signed output of a step whose receipt verifies (its receipt's output
digest is the digest of the text, so the trace's 2048-character cap does not
matter), signed by the peer the provenance credits.  Token-level fusion
(``session`` steps) has no single author: its text is accepted as the fused
text the trace records for signed sessions that were all fed the same
tokens; decoding those tokens back to the text needs the model's tokenizer,
which this check does not load.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from .errors import DecodeError, ProtocolError
from .receipts import SignedReceipt, open_receipt, session_input_digest, text_digest, verify_receipt
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


def bind_text(trace: Trace, text: str, author: str | None = None) -> ReceiptCheck:
    """Is ``text`` (the result's final text) the signed output of a step whose receipt verifies?

    ``author``: the peer the result's provenance credits with the final answer; the signing step
    must be that peer's.  ``ok`` False says why not (edited text, an unsigned winner, a mismatch).
    """
    want = text_digest(text)
    signed_by: list[TraceStep] = []
    sessions: list[TraceStep] = []
    for step in trace.steps:
        if step.receipt is None or not check_step(trace, step).ok:
            continue
        if step.call == "session":
            sessions.append(step)
            continue
        try:
            if open_receipt(decode_receipt(step.receipt)).output_digest == want:
                signed_by.append(step)
        except ProtocolError:
            continue
    for step in signed_by:
        if author is None or step.peer == author:
            return ReceiptCheck(step.index, step.peer, True, f"the final text is step {step.index}'s signed output")
    if signed_by:
        step = signed_by[0]
        return ReceiptCheck(step.index, step.peer, False, f"the final text is signed by {step.peer[-8:]} (step "
                                                          f"{step.index}) but credited to {(author or '')[-8:]}")
    if sessions and all(s.output == text[:MAX_OUTPUT] for s in sessions) and len({s.token_ids for s in sessions}) == 1:
        step = sessions[0]
        return ReceiptCheck(step.index, step.peer, True,
                            f"the final text is the fused text of {len(sessions)} signed sessions fed the same "
                            f"{len(step.token_ids)} tokens (their decoding to the text is not checked)")
    plain = next((s for s in trace.steps if s.receipt is None and s.status == "ok" and s.output == text), None)
    if plain is not None:
        return ReceiptCheck(plain.index, plain.peer, False,
                            f"the final text is step {plain.index}'s output, which carries no receipt (unsigned)")
    return ReceiptCheck(-1, author or "", False, "the final text is no signed step's output "
                                                 "(edited by the coordinator, or stitched from an unsigned part)")
