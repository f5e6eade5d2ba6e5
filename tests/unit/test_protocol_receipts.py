"""Signed receipts: sign, verify, and every kind of tampering fails."""

from __future__ import annotations

import msgspec
import pytest

import protocol as p
from protocol.receipts import (
    DistributionChain,
    Receipt,
    open_receipt,
    prompt_digest,
    session_input_digest,
    sign_receipt,
    text_digest,
    verify_receipt,
)

EXPERT = p.Identity.from_seed(b"\x01" * 32)
OTHER = p.Identity.from_seed(b"\x02" * 32)
MESSAGES = (p.ChatMessage(role="user", content="What is 2+2?"),)


def receipt(**overrides) -> Receipt:
    fields = {"kind": "generate", "request_id": "r1", "peer_id": EXPERT.peer_id, "model_cid": "bafymodel",
              "adapter": "law", "adapter_cid": "bafyadapter", "input_digest": prompt_digest(None, MESSAGES),
              "output_digest": text_digest("4"), "tokens": 1}
    fields.update(overrides)
    return Receipt(**fields)


def test_signed_receipt_verifies_against_the_key_in_the_peer_id():
    signed = sign_receipt(receipt(), EXPERT)
    opened = verify_receipt(signed, peer_id=EXPERT.peer_id, request_id="r1",
                            input_digest=prompt_digest(None, MESSAGES), output_digest=text_digest("4"))
    assert opened == receipt()


def test_receipt_survives_the_wire_inside_a_generate_result():
    signed = sign_receipt(receipt(), EXPERT)
    result = p.GenerateResult(request_id="r1", text="4", finish_reason="stop",
                              usage=p.Usage(prompt_tokens=5, completion_tokens=1, seconds=0.1), receipt=signed)
    decoded = p.decode(p.encode(result), p.GenerateResult)
    assert open_receipt(decoded.receipt) == receipt()


def test_a_node_cannot_sign_in_another_peers_name():
    with pytest.raises(ValueError):
        sign_receipt(receipt(peer_id=OTHER.peer_id), EXPERT)


def test_tampered_payload_fails():
    signed = sign_receipt(receipt(), EXPERT)
    forged = msgspec.msgpack.encode(receipt(output_digest=text_digest("5")))
    with pytest.raises(p.BadSignature):
        open_receipt(p.SignedReceipt(payload=forged, signature=signed.signature))


def test_flipped_signature_bit_fails():
    signed = sign_receipt(receipt(), EXPERT)
    bad = bytes([signed.signature[0] ^ 1]) + signed.signature[1:]
    with pytest.raises(p.BadSignature):
        open_receipt(p.SignedReceipt(payload=signed.payload, signature=bad))


def test_receipt_resigned_by_another_peer_is_not_the_experts():
    # A coordinator that re-signs a receipt with its own key cannot pass it off as the expert's.
    forged = sign_receipt(receipt(peer_id=OTHER.peer_id), OTHER)
    with pytest.raises(p.BadSignature):
        verify_receipt(forged, peer_id=EXPERT.peer_id)


def test_genuine_receipt_about_other_text_does_not_credit_the_expert():
    signed = sign_receipt(receipt(), EXPERT)
    with pytest.raises(p.InvalidValue):
        verify_receipt(signed, peer_id=EXPERT.peer_id, output_digest=text_digest("5"))
    with pytest.raises(p.InvalidValue):
        verify_receipt(signed, peer_id=EXPERT.peer_id, request_id="r2")


def test_garbage_payload_is_a_decode_error():
    with pytest.raises(p.DecodeError):
        open_receipt(p.SignedReceipt(payload=b"\xc1junk", signature=b"s" * 64))
    with pytest.raises(p.DecodeError):
        open_receipt(p.SignedReceipt(payload=msgspec.msgpack.encode({"kind": "nope"}), signature=b"s" * 64))


def test_prompt_digest_separates_raw_prompts_from_chat_messages():
    assert prompt_digest("hi", None) != prompt_digest(None, (p.ChatMessage(role="user", content="hi"),))
    assert prompt_digest(None, MESSAGES) == prompt_digest(None, tuple(MESSAGES))
    assert prompt_digest(None, (p.ChatMessage(role="system", content="What is 2+2?"),)) != prompt_digest(None, MESSAGES)


def test_session_digests_depend_on_every_token_and_every_distribution():
    base = prompt_digest("x", None)
    assert session_input_digest(base, [1, 2]) != session_input_digest(base, [2, 1])
    assert session_input_digest(base, [1, 2]) == session_input_digest(base, (1, 2))
    a, b, c = DistributionChain(), DistributionChain(), DistributionChain()
    for chain, last in ((a, -0.5), (b, -0.5), (c, -0.50000001)):
        chain.update([5, 6], [-0.1, -2.0])
        chain.update([7], [last])
    assert a.digest() == b.digest() != c.digest()
    with pytest.raises(p.InvalidValue):
        a.update([1, 2], [0.0])
