"""The ``knowledge`` strategy weighs its grounded answer against the members' own answers.

Scripted experts (fake_experts.py): each answers plainly with its ``answer``, writes its answer
as a card, and answers with the cards (a prompt marked "(some may be wrong)") with ``aggregate``:
a misleading card is an answerer that says something else once it has read the cards.
"""

from __future__ import annotations

from tests.unit.fake_experts import FakeTransport, team
from tests.unit.test_strategies import check_conformance, run


def misled(answers: dict[str, str] | None = None, grounded: str = "Surely it is 7.") -> FakeTransport:
    experts = team()
    for expert in experts:
        expert.answer = (answers or {}).get(expert.peer_id, expert.answer)
        expert.aggregate = grounded
    return FakeTransport(experts)


async def test_a_grounded_answer_against_the_members_clear_majority_is_replaced_by_it(autojump_clock):
    transport = misled()  # three of four members say 42 plainly
    result, chunks = await run("knowledge", transport, params={"k": 4})
    check_conformance(result, chunks, transport)
    assert "42" in result.text and "7" not in result.text
    assert "fell back to the members' majority '42'" in result.trace.decision
    roles = [s.role for s in result.trace.steps]
    assert roles.count("knowledge") == 4 and roles.count("proposer") == 4
    answer = next(s for s in result.trace.steps if s.role == "answer")
    assert "contradicts the members' clear majority" in answer.error
    # Weighed first: the answerer scored both answers without the cards (fake scorers prefer "42").
    assert [s.role for s in result.trace.steps].count("confidence") == 2
    assert all("7" not in c.text for c in chunks)  # the rejected answer never reached the client


async def test_a_grounded_answer_the_answerer_finds_likelier_overrules_the_majority(autojump_clock):
    wrong = {peer: "It is 7." for peer in ("peer-a", "peer-b", "peer-c", "peer-d")}
    result, _ = await run("knowledge", misled(wrong, grounded="Six times seven is 42."), params={"k": 4})
    assert result.text == "Six times seven is 42."
    assert "contradicts the members' majority but is likelier" in result.trace.decision


async def test_the_cards_decide_where_the_members_disagree(autojump_clock):
    split = {"peer-a": "It is 42.", "peer-b": "It is 9.", "peer-c": "It is 7.", "peer-d": "It is 5."}
    result, _ = await run("knowledge", misled(split), params={"k": 4})
    assert result.text == "Surely it is 7." and "fell back" not in result.trace.decision


async def test_a_grounded_answer_that_agrees_is_kept(autojump_clock):
    result, _ = await run("knowledge", misled(grounded="Six times seven is 42."), params={"k": 4})
    assert result.text == "Six times seven is 42." and "fell back" not in result.trace.decision


async def test_without_trust_majority_the_members_are_not_asked_and_the_cards_stand(autojump_clock):
    transport = misled()
    result, _ = await run("knowledge", transport, params={"k": 4, "trust_majority": False})
    assert result.text == "Surely it is 7."
    assert "proposer" not in {s.role for s in result.trace.steps}
    assert sum(transport.calls.values()) == 5  # 4 cards + 1 answer
