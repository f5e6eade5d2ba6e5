"""Receipts in a trace: protocol/verify.py and ``node query --verify``'s report."""

from __future__ import annotations

import msgspec

import protocol as p
from node.cli.query import verify_receipts
from protocol.receipts import (
    Receipt,
    prompt_digest,
    session_input_digest,
    sign_receipt,
    text_digest,
)
from protocol.verify import check_step, check_trace, encode_receipt, step_request_id

EXPERT = p.Identity.from_seed(b"\x05" * 32)
OTHER = p.Identity.from_seed(b"\x06" * 32)
MESSAGES = (p.ChatMessage(role="user", content="2+2?"),)


def generate_step(index: int = 0, output: str = "4", signer: p.Identity = EXPERT) -> p.TraceStep:
    receipt = Receipt(kind="generate", request_id=step_request_id("q1", index), peer_id=signer.peer_id,
                      model_cid="bafymodel", input_digest=prompt_digest(None, MESSAGES),
                      output_digest=text_digest(output), tokens=1)
    return p.TraceStep(index=index, role="answer", peer=EXPERT.peer_id, output=output,
                       input_digest=prompt_digest(None, MESSAGES), receipt=encode_receipt(sign_receipt(receipt, signer)))


def session_step(index: int, fed: tuple[int, ...]) -> p.TraceStep:
    prompt = prompt_digest(None, MESSAGES)
    receipt = Receipt(kind="session", request_id=step_request_id("q1", index), peer_id=EXPERT.peer_id,
                      model_cid="bafymodel", input_digest=session_input_digest(prompt, fed),
                      output_digest=text_digest("chain"), tokens=len(fed))
    return p.TraceStep(index=index, role="fuser", peer=EXPERT.peer_id, call="session", input_digest=prompt,
                       token_ids=fed, receipt=encode_receipt(sign_receipt(receipt, EXPERT)))


def trace(*steps: p.TraceStep) -> p.Trace:
    return p.Trace(request_id="q1", strategy="fuse", steps=steps)


def test_genuine_receipts_verify_and_survive_the_wire():
    t = trace(generate_step(0), session_step(1, (5, 6, 7)))
    t = p.decode(p.encode(t), p.Trace)
    checks = check_trace(t)
    assert [c.ok for c in checks] == [True, True], checks
    assert "output matches" in checks[0].detail and "3 fused tokens" in checks[1].detail


def test_every_kind_of_tampering_fails():
    good = generate_step(0)
    t = trace(good)
    assert not check_step(t, msgspec.structs.replace(good, output="5")).ok  # edited output
    assert not check_step(t, msgspec.structs.replace(good, peer=OTHER.peer_id)).ok  # credited to another peer
    assert not check_step(t, msgspec.structs.replace(good, index=3)).ok  # moved to another step
    assert not check_step(t, generate_step(0, signer=OTHER)).ok  # re-signed by someone else
    assert not check_step(t, msgspec.structs.replace(good, receipt=b"\x00junk")).ok
    forged = msgspec.msgpack.decode(good.receipt)
    forged["signature"] = bytes(64)
    assert not check_step(t, msgspec.structs.replace(good, receipt=msgspec.msgpack.encode(forged))).ok
    fused = session_step(1, (5, 6, 7))
    assert not check_step(t, msgspec.structs.replace(fused, token_ids=(5, 6, 8))).ok  # edited fused tokens


def test_cli_report_says_ok_or_fail_per_step(capsys):
    assert verify_receipts(trace(generate_step(0), session_step(1, (1,))))
    assert capsys.readouterr().err.count("receipt ok") == 2
    bad = msgspec.structs.replace(generate_step(0), output="5")
    assert not verify_receipts(trace(bad))
    assert "receipt FAIL step 0" in capsys.readouterr().err
    assert not verify_receipts(trace(p.TraceStep(index=0, role="answer", peer=EXPERT.peer_id)))
    assert "no receipt" in capsys.readouterr().err


def test_the_final_text_must_be_a_signed_output_of_the_credited_peer(capsys):
    from protocol.verify import bind_text

    signed = trace(generate_step(0, output="4"))
    assert bind_text(signed, "4", EXPERT.peer_id).ok
    assert verify_receipts(signed, "4", EXPERT.peer_id)
    assert "text    ok" in capsys.readouterr().err
    # The coordinator replaced only the result's text: every step still verifies, the text does not.
    assert not bind_text(signed, "5", EXPERT.peer_id).ok
    assert not verify_receipts(signed, "5", EXPERT.peer_id)
    assert "no signed step's output" in capsys.readouterr().err
    # Credited to another peer than the one who signed it.
    assert "credited to" in bind_text(signed, "4", OTHER.peer_id).detail
    # A vote whose winning step carries no receipt (another step is signed).
    unsigned = p.TraceStep(index=1, role="proposer", peer=OTHER.peer_id, output="7", status="ok")
    check = bind_text(trace(generate_step(0, output="4"), unsigned), "7", OTHER.peer_id)
    assert not check.ok and "carries no receipt" in check.detail
    # A long answer (over the trace's 2048-character cap) binds through the receipt's digest.
    long = "x" * 3000
    step = msgspec.structs.replace(generate_step(0, output=long), output=long[:2048])
    assert bind_text(trace(step), long, EXPERT.peer_id).ok
    # Token-level fusion: the fused text of signed sessions fed the same tokens.
    fused = [msgspec.structs.replace(session_step(i, (5, 6)), output="ok") for i in (0, 1)]
    assert bind_text(trace(*fused), "ok").ok and not bind_text(trace(*fused), "edited").ok
