"""The ``fuse`` strategy against the in-memory expert pool (fake sessions: a word is a token)."""

from __future__ import annotations

import pytest

import protocol as p
from node.coordinator import QueryFailed
from tests.unit.fake_experts import FakeTransport, team
from tests.unit.test_strategies import check_conformance, coordinator, query, run


async def test_fuse_merges_two_experts_word_by_word(autojump_clock):
    transport = FakeTransport(team(**{"peer-a": {"answer": "six sevens make 42"},
                                      "peer-b": {"answer": "six sevens make 42 indeed"}}))
    result, chunks = await run("fuse", transport, tags=("math",), params={"k": 2})
    check_conformance(result, chunks, transport)
    # After "42", a ends its text (p=0.7) and b says "indeed" (p=0.7, end 0.1): end wins 0.4 to 0.35.
    assert result.text == "six sevens make 42" and result.finish_reason == "stop"
    steps = result.trace.steps
    assert [s.call for s in steps] == ["session", "session"] and {s.peer for s in steps} == {"peer-a", "peer-b"}
    assert all(s.role == "fuser" and s.status == "ok" and len(s.token_ids) == 4 for s in steps)
    assert "fused 2 experts" in result.trace.decision and result.usage.completion_tokens == 4


async def test_fuse_refuses_clearly_without_two_experts_sharing_a_tokenizer(autojump_clock):
    transport = FakeTransport(team())
    records = transport.records()
    transport.records = lambda: [msgspec_replace(r, tokenizer=f"vocab-sha256:{i}") for i, r in enumerate(records)]
    with pytest.raises(QueryFailed) as info:
        await coordinator(transport).run(query("fuse"))
    assert info.value.code == "unavailable" and "same tokenizer" in info.value.message
    assert transport.calls == {}  # refused before asking anyone


async def test_an_expert_dying_mid_fusion_is_replaced_by_a_reserve_that_replays_the_tokens(autojump_clock):
    words = "one two three four"
    transport = FakeTransport(team(**{"peer-a": {"answer": words, "die_after": 2}, "peer-b": {"answer": words},
                                      "peer-c": {"answer": words}, "peer-d": {"answer": words}}))
    result, chunks = await run("fuse", transport, tags=("math",), params={"k": 2})
    assert result.text == words == "".join(c.text for c in chunks)
    steps = result.trace.steps
    dead = next(s for s in steps if s.peer == "peer-a")
    assert dead.status == "failed" and "reset" in dead.error
    (stand_in,) = [s for s in steps if s.continues == dead.index]
    assert stand_in.peer in ("peer-c", "peer-d") and stand_in.status == "ok"
    assert list(stand_in.token_ids) == list(next(s for s in steps if s.peer == "peer-b").token_ids)  # replayed
    assert "1 failed and left the fusion" in result.trace.decision


async def test_without_a_reserve_a_dying_expert_leaves_and_the_rest_finish(autojump_clock):
    transport = FakeTransport(team(**{"peer-a": {"answer": "one two three four", "die_after": 2},
                                      "peer-b": {"answer": "one two three four"}})[:2])
    result, chunks = await run("fuse", transport, params={"k": 2})
    assert result.text == "one two three four" == "".join(c.text for c in chunks)
    by_peer = {s.peer: s for s in result.trace.steps}
    assert by_peer["peer-a"].status == "failed" and by_peer["peer-b"].status == "ok"
    assert len(by_peer["peer-b"].token_ids) == 4 and result.provenance[0].served_by == "peer-b"


async def test_fuse_stops_at_a_stop_string_and_at_max_tokens(autojump_clock):
    transport = FakeTransport(team(**{"peer-a": {"answer": "alpha beta STOP gamma"},
                                      "peer-b": {"answer": "alpha beta STOP gamma"}}))
    result, _ = await run("fuse", transport, tags=("math",), sampling=p.SamplingParams(stop=(" STOP",)))
    assert result.text == "alpha beta" and result.finish_reason == "stop"
    result, _ = await run("fuse", transport, tags=("math",), sampling=p.SamplingParams(max_new_tokens=2))
    assert result.text == "alpha beta" and result.finish_reason == "length"


def msgspec_replace(record, **fields):
    import msgspec

    return msgspec.structs.replace(record, **fields)
