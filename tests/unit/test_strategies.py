"""Conformance suite: every strategy in the table, against an in-memory expert pool.

The same assertions hold for all: a real answer, a trace whose steps name the
peers really asked (never what an expert's reply claims), provenance that
points at a step that succeeded, diversity (distinct peers in a round when
there are enough), and quorum: a hung or dead expert never blocks the answer.
Time is trio's autojump clock, so a hang costs no real time.
"""

from __future__ import annotations

import pytest
import trio

import protocol as p
from node.coordinator import STRATEGIES, Coordinator, QueryFailed
from node.coordinator.health import Health
from tests.unit.fake_experts import FakeMerges, FakeTransport, team, with_adapters

QUESTION = (p.ChatMessage(role="user", content="What is six times seven?"),)


def query(strategy: str, **fields) -> p.QueryRequest:
    fields.setdefault("messages", QUESTION)
    fields.setdefault("sampling", p.SamplingParams(max_new_tokens=12))
    fields.setdefault("timeout_s", 60.0)
    return p.QueryRequest(request_id=f"conf-{strategy}", strategy=strategy, **fields)


def coordinator(transport: FakeTransport, **kw) -> Coordinator:
    async def no_semantics(text, records):  # the MiniLM path is covered by the cluster tests
        return {}

    c = Coordinator(transport.records, transport, first_token_timeout=5.0, health=Health(clock=trio.current_time), **kw)
    c.embedder.similarities = no_semantics  # type: ignore[method-assign]
    return c


async def run(strategy: str, transport: FakeTransport, **fields) -> tuple[p.QueryResult, list[p.QueryChunk]]:
    chunks: list[p.QueryChunk] = []

    async def emit(chunk: p.QueryChunk) -> None:
        chunks.append(chunk)

    kw = {}
    if strategy == "merge":  # peers advertise adapters; peer-d's own expert serves the merge
        with_adapters(list(transport.experts.values()))
        kw = {"local_id": "peer-d", "merges": FakeMerges(transport, "peer-d")}
    result = await coordinator(transport, **kw).run(query(strategy, **fields), emit)
    return result, chunks


def check_conformance(result: p.QueryResult, chunks: list[p.QueryChunk], transport: FakeTransport) -> None:
    trace = result.trace
    assert trace is not None and trace.strategy == result.strategy and trace.decision
    assert result.text.strip()
    assert "".join(c.text for c in chunks) == result.text  # streamed text is exactly the answer
    assert [c.index for c in chunks] == list(range(len(chunks)))
    assert [s.index for s in trace.steps] == list(range(len(trace.steps)))
    for step in trace.steps:
        assert step.peer in transport.experts  # the peer we streamed from, not "someone-else-entirely"
        assert step.input_digest.startswith("sha256:") and step.role
    ok = [s for s in trace.steps if s.status == "ok"]
    assert ok
    assert result.provenance and result.provenance[0].served_by in {s.peer for s in ok}
    assert all(prov.served_by != "someone-else-entirely" for prov in result.provenance)
    # Diversity: within one round and role, no peer twice (there are 4 experts, k <= 3).
    for rnd in {s.round for s in trace.steps}:
        for role in ("proposer", "debater", "knowledge", "sampler"):
            peers = [s.peer for s in trace.steps if s.round == rnd and s.role == role]
            if role == "sampler":
                continue
            assert len(peers) == len(set(peers)), (role, rnd, peers)
    assert p.decode(p.encode(result), p.QueryResult) == result  # fits the wire types and caps


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
async def test_every_strategy_answers_with_a_trace(strategy, autojump_clock):
    transport = FakeTransport(team())
    result, chunks = await run(strategy, transport)
    check_conformance(result, chunks, transport)


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
async def test_a_hung_expert_never_blocks(strategy, autojump_clock):
    """peer-a never answers (SIGSTOP): every strategy still answers, within the deadline."""
    transport = FakeTransport(team(**{"peer-a": {"hang": True}}))
    started = trio.current_time()
    result, chunks = await run(strategy, transport, timeout_s=60.0)
    assert trio.current_time() - started < 60.0
    check_conformance(result, chunks, transport)
    assert "peer-a" not in {s.peer for s in result.trace.steps if s.status == "ok"}


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
async def test_a_dead_expert_is_replaced(strategy, autojump_clock):
    transport = FakeTransport(team(**{"peer-b": {"dead": True}}))
    result, chunks = await run(strategy, transport)
    check_conformance(result, chunks, transport)


async def test_vote_returns_the_majority_full_answer(autojump_clock):
    transport = FakeTransport(team())
    result, _ = await run("vote", transport, params={"k": 4, "kind": "number"})
    assert "42" in result.text
    answers = sorted(s.answer for s in result.trace.steps if s.role == "proposer")
    assert answers == ["42", "42", "42", "7"]
    assert "3/4" in result.trace.decision


async def test_moa_aggregator_comes_from_the_majority_not_the_top_ranked_dissenter(autojump_clock):
    transport = FakeTransport(team())
    # The dissenter (peer-c, "7") matches the query's tag: it ranks first and used to aggregate.
    result, _ = await run("moa", transport, tags=("poetry",), params={"k": 3})
    proposers = [s.peer for s in result.trace.steps if s.role == "proposer"]
    assert "peer-c" in proposers
    aggregator = next(s for s in result.trace.steps if s.role == "aggregator")
    assert aggregator.peer in {"peer-a", "peer-b", "peer-d"}


async def test_vote_quorum_then_grace_cuts_off_a_slow_expert(autojump_clock):
    transport = FakeTransport(team(**{"peer-c": {"delay": 30.0}}))
    started = trio.current_time()
    result, _ = await run("vote", transport, params={"k": 4, "k_min": 3, "grace_s": 2.0})
    assert trio.current_time() - started < 10.0
    late = [s for s in result.trace.steps if s.status == "late"]
    assert [s.peer for s in late] == ["peer-c"]


async def test_midstream_failure_is_continued_by_the_next_expert(autojump_clock):
    """peer-a dies after 2 words; the next expert continues the partial answer, the client sees one text."""
    transport = FakeTransport(team(**{"peer-b": {"answer": "The answer is 42."}, "peer-a": {"die_after": 2}}))
    result, chunks = await run("route", transport, tags=("math",))
    assert result.text == "The answer is 42."
    assert "".join(c.text for c in chunks) == result.text
    first, second = result.trace.steps
    assert first.peer == "peer-a" and first.status == "failed" and first.output == "The answer"
    assert second.continues == first.index and second.status == "ok" and second.peer != "peer-a"
    assert {c.provenance.served_by for c in chunks} == {"peer-a", second.peer}
    assert transport.experts[second.peer].seen[-1] == "The answer"  # it was asked to continue the partial text


async def test_cascade_stops_at_the_first_confident_expert(autojump_clock):
    transport = FakeTransport(team())
    result, _ = await run("cascade", transport, params={"threshold": 0.5})
    generated = [s for s in result.trace.steps if s.role == "cascade"]
    assert len(generated) == 1 and generated[0].score is not None and generated[0].score >= 0.5
    transport = FakeTransport(team(**{pid: {"logprob": -0.5} for pid in ("peer-a", "peer-b", "peer-c", "peer-d")}))
    for expert in transport.experts.values():
        expert.answer = "no idea"
    result, _ = await run("cascade", transport, params={"threshold": 0.9, "max_steps": 3})
    assert len([s for s in result.trace.steps if s.role == "cascade"]) == 3
    assert "no expert reached" in result.trace.decision


async def test_judge_loglik_prefers_what_the_judge_finds_likely(autojump_clock):
    transport = FakeTransport(team())
    result, _ = await run("judge", transport, params={"k": 3, "method": "loglik"})
    assert "42" in result.text
    assert any(s.call == "score" and s.role == "judge" for s in result.trace.steps)
    judges = {s.peer for s in result.trace.steps if s.role == "judge"}
    proposers = {s.peer for s in result.trace.steps if s.role == "proposer"}
    assert judges and not judges & proposers  # a 4th expert judges when there is one


async def test_judge_by_the_members_likelihood_asks_every_proposer_to_score_every_candidate(autojump_clock):
    transport = FakeTransport(team())
    result, _ = await run("judge", transport, params={"k": 3})
    assert "42" in result.text and "proposers' mean likelihood" in result.trace.decision
    proposers = {s.peer for s in result.trace.steps if s.role == "proposer"}
    scores = [s for s in result.trace.steps if s.call == "score"]
    texts = {s.output for s in result.trace.steps if s.role == "proposer"}
    assert {s.peer for s in scores} == proposers and len(scores) == len(proposers) * len(texts)


async def test_debate_rounds_show_each_expert_the_others(autojump_clock):
    transport = FakeTransport(team())
    result, _ = await run("debate", transport, params={"k": 3, "rounds": 2})
    assert {s.round for s in result.trace.steps if s.role == "debater"} == {0, 1}
    revised = [e.seen[-1] for e in transport.experts.values() if len(e.seen) >= 2]
    assert revised and all("Answers from other assistants" in text for text in revised)


async def test_params_are_validated_before_any_expert_is_asked(autojump_clock):
    transport = FakeTransport(team())
    for params, needle in (({"k": 0}, "'k'"), ({"bogus": 1}, "bogus"), ({"kind": "essay"}, "'kind'"),
                           ({"k": "many"}, "'k'")):
        with pytest.raises(QueryFailed) as info:
            await run("vote", transport, params=params)
        assert info.value.code == "bad_request" and needle in info.value.message
    assert transport.calls == {}
    with pytest.raises(QueryFailed) as info:
        await run("no-such", transport)
    assert info.value.code == "bad_request"


async def test_no_expert_at_all_is_unavailable(autojump_clock):
    for strategy in STRATEGIES:
        with pytest.raises(QueryFailed) as info:
            await run(strategy, FakeTransport([]))
        assert info.value.code in ("unavailable", "not_found"), strategy


async def test_deadline_bounds_a_query_whose_experts_all_hang(autojump_clock):
    transport = FakeTransport(team(**{pid: {"hang": True} for pid in ("peer-a", "peer-b", "peer-c", "peer-d")}))
    started = trio.current_time()
    with pytest.raises(QueryFailed) as info:
        await run("vote", transport, timeout_s=8.0)
    assert info.value.code in ("timeout", "unavailable") and trio.current_time() - started <= 8.5
