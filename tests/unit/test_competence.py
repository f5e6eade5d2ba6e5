"""Verified competence: claims and spot checks combined, vote weights, routing and voting by it."""

from __future__ import annotations

import math

import protocol as p
from node.coordinator import competence
from node.coordinator.health import Health
from node.coordinator.pool import candidates_of
from node.coordinator.routing import Need, rank
from tests.unit.fake_experts import FakeTransport, team
from tests.unit.test_strategies import coordinator, query


def claim(task: str, accuracy: float) -> p.EvalScore:
    return p.EvalScore(task=task, n=50, accuracy=accuracy, items_sha256="0" * 64)


def record(peer: str, *evals: p.EvalScore) -> p.CapabilityRecord:
    return p.CapabilityRecord(peer_id=peer, name=peer, evals=evals, seq=1, issued_at=0.0, ttl=60.0)


def test_spot_checks_outweigh_a_claim_they_contradict():
    assert competence.verified_accuracy(None, 0, 0) is None
    assert competence.verified_accuracy(0.9, 0, 0) == 0.9
    assert competence.verified_accuracy(0.9, 1, 10) < 0.4  # claimed 90%, checked 1/10
    assert competence.verified_accuracy(None, 9, 10) == 10 / 12


def test_vote_weights_are_the_log_odds_against_a_wrong_option():
    assert math.isclose(competence.vote_weight(0.75, 4), math.log(9))
    assert competence.vote_weight(0.9) > competence.vote_weight(None) > competence.vote_weight(0.2)
    assert competence.vote_weight(0.0, 4) == competence.MIN_WEIGHT
    # One 90% expert outweighs two 40% experts on four options; three 60% experts outweigh one 80%.
    assert competence.vote_weight(0.9, 4) > 2 * competence.vote_weight(0.4, 4)
    assert 3 * competence.vote_weight(0.6, 4) > competence.vote_weight(0.8, 4)
    assert competence.options_of(None, ["A", "C"]) == 4 and competence.options_of(None, ["42", "A"]) == 10


def test_route_by_task_competence_else_the_best_generalist():
    math_expert = record("p-math", claim("gsm8k", 0.8), claim("arc_challenge", 0.3))
    generalist = record("p-gen", claim("arc_challenge", 0.7), claim("mmlu_redux", 0.7))
    nobody = record("p-none")
    records = [nobody, generalist, math_expert]

    def best(tags, observed=None):
        found = candidates_of(records, Health(), verified=set(), local_id=None, demoted=lambda _: False,
                              tags=tags, observed=observed)
        return rank(found, Need(tags=tags))[0].peer_id

    assert best(("gsm8k",)) == "p-math"
    assert best(("arc_challenge",)) == "p-gen"
    assert best(("popqa",)) == "p-gen" and best(()) == "p-gen"  # nobody shown on it: the best generalist

    # Spot checks this node made overrule the math expert's claim.
    def observed(peer, task):
        return (1.0, 12.0) if (peer, task) == ("p-math", "gsm8k") else (0.0, 0.0)

    assert competence.task_competence(math_expert, ["gsm8k"], observed) < 0.3
    assert best(("gsm8k",), observed) == "p-gen"  # 0.7 elsewhere (discounted) beats 0.26 shown here


async def test_a_vote_weighs_ballots_by_verified_competence(autojump_clock):
    experts = team()  # peer-a, b, d say 42; c says 7
    transport = FakeTransport(experts)
    records = transport.records

    def with_claims():
        out = []
        for r in records():
            strong = r.peer_id == "peer-c"
            out.append(p.CapabilityRecord(**{**{f: getattr(r, f) for f in r.__struct_fields__},
                                            "evals": (claim("gsm8k", 0.95 if strong else 0.3),)}))
        return out

    transport.records = with_claims  # type: ignore[method-assign]
    c = coordinator(transport)
    tagged = query("vote", params={"k": 4, "kind": "number"}, tags=("gsm8k",))
    result = await c.run(tagged)
    assert "7" in result.text and "of the weight" in result.trace.decision  # log-odds 5.1 > 3 x 1.35
    unweighted = await c.run(query("vote", params={"k": 4, "kind": "number", "weighted": False}, tags=("gsm8k",)))
    assert "42" in unweighted.text


async def test_a_vote_without_majority_asks_the_authors_confidence(autojump_clock):
    experts = team()
    experts[0].answer, experts[1].answer, experts[3].answer = "It is 41", "It is 43", "It is 44"  # all differ
    transport = FakeTransport(experts)
    result = await coordinator(transport).run(query("vote", params={"k": 4, "kind": "number"}))
    confidence = [s for s in result.trace.steps if s.role == "confidence"]
    assert len(confidence) == 4 and "authors' confidence" in result.trace.decision


async def test_experts_that_cannot_score_still_vote_and_judge(autojump_clock):
    from node.expert import ExpertError

    experts = team()
    experts[0].answer, experts[1].answer, experts[3].answer = "It is 41", "It is 43", "It is 44"
    transport = FakeTransport(experts)

    async def no_score(peer_id, request, timeout):
        raise ExpertError("bad_request", "UnknownMessageType: got 'score'")

    transport.score = no_score  # type: ignore[method-assign]
    result = await coordinator(transport).run(query("vote", params={"k": 4, "kind": "number"}))
    assert result.text and all(s.status == "failed" for s in result.trace.steps if s.call == "score")
    judged = await coordinator(transport).run(query("judge", params={"k": 3}))
    assert judged.text
