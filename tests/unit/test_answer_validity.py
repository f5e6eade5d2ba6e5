"""Invalid aggregates fall back to the members' majority; decoding defaults; deterministic roles.

The invalid replies below are ones SmolLM2-135M really wrote as moa's
aggregator on easy questions (issue 18).
"""

from __future__ import annotations

import pytest

import protocol as p
from node.coordinator.aggregate import Ballot, extract
from node.coordinator.decoding import default_decoding, fill_defaults
from node.coordinator.validity import clear_majority, invalid_reason
from tests.unit.fake_experts import FakeTransport, team
from tests.unit.test_strategies import check_conformance, run


@pytest.mark.parametrize("text", [
    "", "   \n", "...", "I'm ready to assist you.", "I'm ready to help. What's your next question?",
    "I'm sorry for the confusion. You're right, there are indeed some incorrect answers to this",
    "As an AI, I cannot answer that.", "How can I assist you today?",
    "Critically evaluate these answers; some may be wrong. Answer 1: 42",
])
def test_what_is_no_answer(text):
    assert invalid_reason(text) is not None


@pytest.mark.parametrize("text", [
    "The capital of France is Paris.", "42", "12 + 30 = 42", "B", "I think the answer is 42.",
    "Sorry is a song by Justin Bieber.",  # starts like a refusal word but is an answer ("sorry," is not)
])
def test_answers_are_valid(text):
    assert invalid_reason(text) is None


def test_an_aggregate_contradicting_a_clear_majority_is_invalid():
    def agreed(*answers: str, weights: tuple[float, ...] = ()) -> str | None:
        weights = weights or (1.0,) * len(answers)
        return clear_majority([Ballot(extract(a), w) for a, w in zip(answers, weights, strict=True)])

    assert agreed("The answer is 42.", "42", "I think it is 42") == "42"
    assert "majority '42'" in invalid_reason("The answer is 49.", agreed="42")
    assert invalid_reason("Six times seven is 42.", agreed="42") is None
    # A rephrased fact agrees with the majority's short answer; a different fact does not.
    assert invalid_reason("The capital of France is Paris.", agreed="paris") is None
    assert invalid_reason("Lyon", agreed="paris") is not None
    # No clear majority: nothing to contradict; a proven specialist outweighs two members sharing an error.
    assert agreed("42", "7", "9") is None and agreed("42") is None
    assert agreed("A", "C", "C", weights=(3.3, 0.48, 0.48)) == "A"


@pytest.mark.parametrize("strategy", ["moa", "refine"])
async def test_an_invalid_aggregate_falls_back_to_the_members_majority_and_says_so(strategy, autojump_clock):
    experts = team()
    for expert in experts:
        expert.aggregate = "I'm ready to assist you."
    transport = FakeTransport(experts)
    result, chunks = await run(strategy, transport)
    check_conformance(result, chunks, transport)
    assert "42" in result.text and "ready" not in result.text
    assert "fell back to the members' majority '42'" in result.trace.decision
    final = [s for s in result.trace.steps if s.role in ("aggregator", "summarizer")]
    assert final and all("invalid aggregate: a refusal" in s.error for s in final)
    # The rejected text never reached the client: aggregates are not streamed.
    assert all("ready" not in c.text for c in chunks)


async def test_a_valid_aggregate_is_kept(autojump_clock):
    experts = team()
    for expert in experts:
        expert.aggregate = "Six times seven is 42."
    result, _ = await run("moa", FakeTransport(experts))
    assert result.text == "Six times seven is 42." and "fell back" not in result.trace.decision


@pytest.mark.parametrize(("strategy", "params", "replaced_by"), [
    ("knowledge", {}, "fell back to the members' majority '42'"),  # its members also answered plainly
    ("knowledge", {"trust_majority": False}, "answered the question plainly"),
    ("decompose", {}, "answered the question plainly")])
async def test_an_invalid_final_answer_is_replaced_by_a_plain_answer(strategy, params, replaced_by, autojump_clock):
    experts = team()
    for expert in experts:
        expert.aggregate = "I'm ready to assist you."
    transport = FakeTransport(experts)
    result, chunks = await run(strategy, transport, params=params)
    check_conformance(result, chunks, transport)
    assert "ready" not in result.text and replaced_by in result.trace.decision


async def test_aggregating_and_revising_are_greedy_while_proposers_use_the_querys_sampling(autojump_clock):
    experts = team()
    transport = FakeTransport(experts)
    await run("moa", transport, sampling=p.SamplingParams(max_new_tokens=12, temperature=0.8))
    temperatures = sorted(t for e in experts for t in e.temperatures)
    assert temperatures.count(0.8) == 3 and temperatures.count(0.0) == 1  # 3 proposers, 1 aggregator


def test_default_decoding_is_greedy_for_questions_and_the_models_config_for_open_writing():
    assert default_decoding("What is the capital of Italy?").temperature == 0.0
    assert default_decoding("Write a haiku about rain.").temperature == 0.7
    qwen = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20}
    assert (default_decoding("Write a poem", qwen).temperature, default_decoding("Write a poem", qwen).top_p) \
        == (0.7, 0.8)
    assert default_decoding("Write a poem", {"do_sample": False, "temperature": 0.3}).temperature == 0.7
    assert fill_defaults("What is 2 + 2?", None, None) == (0.0, 1.0)
    assert fill_defaults("What is 2 + 2?", 1.2, None) == (1.2, 1.0)


def test_the_cli_sends_the_same_defaults_as_the_http_api():
    import argparse

    from node.cli import query as cli_query

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    cli_query.add_parser(sub)
    args = parser.parse_args(["query", "--peer", "/ip4/127.0.0.1/tcp/1", "What is 12 + 30?"])
    assert cli_query.build_request(args).sampling.temperature == 0.0
    args = parser.parse_args(["query", "--peer", "/ip4/127.0.0.1/tcp/1", "Write a story about a cat"])
    assert cli_query.build_request(args).sampling.temperature == 0.7
    args = parser.parse_args(["query", "--peer", "/ip4/127.0.0.1/tcp/1", "--temperature", "1.0", "Hi"])
    assert cli_query.build_request(args).sampling.temperature == 1.0


async def test_select_asks_each_expert_greedily_first_then_samples(autojump_clock):
    experts = team()
    await run("select", FakeTransport(experts), params={"k": 3, "samples": 3, "temperature": 0.7})
    asked = [e.temperatures for e in experts if e.temperatures]
    assert len(asked) == 3 and all(sorted(t) == [0.0, 0.7, 0.7] for t in asked)


def test_the_dashboard_ask_box_leaves_sampling_to_the_api_defaults():
    from pathlib import Path

    script = (Path(__file__).resolve().parents[2] / "node" / "api" / "static" / "app.js").read_text()
    body = script[script.index('api("/v1/chat/completions"'):]
    body = body[: body.index("});")]
    assert "messages" in body and "temperature" not in body and "top_p" not in body


def test_the_api_the_cli_and_the_dashboard_default_to_the_same_length():
    import argparse
    import re
    from pathlib import Path

    from node.api.openai_schema import DEFAULT_CHAT_MAX_TOKENS
    from node.cli import query as cli_query
    from node.cli.choices import DEFAULT_MAX_TOKENS

    static = Path(__file__).resolve().parents[2] / "node" / "api" / "static"
    box = re.search(r'id="max-tokens"[^>]*value="(\d+)"', (static / "index.html").read_text())
    assert box is not None and int(box.group(1)) == DEFAULT_CHAT_MAX_TOKENS == DEFAULT_MAX_TOKENS
    assert f'Number($("max-tokens").value) || {DEFAULT_CHAT_MAX_TOKENS}' in (static / "app.js").read_text()
    parser = argparse.ArgumentParser()
    cli_query.add_parser(parser.add_subparsers())
    args = parser.parse_args(["query", "--peer", "/ip4/127.0.0.1/tcp/1", "What is 12 + 30?"])
    assert cli_query.build_request(args).sampling.max_new_tokens == DEFAULT_CHAT_MAX_TOKENS
