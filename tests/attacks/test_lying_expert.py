"""Attack 7 (issue 12): a lying expert answers promptly, and always wrongly.

Latency and failure bookkeeping never notice it.  The coordinator now spot-checks
the expert that answered with known-answer dev items of ../shared/data/tasks (the
evaluation scorer), at a low rate in production (reputation.SPOT_CHECK_RATE) and on
every query here, and demotes a peer whose accuracy is implausibly low next to its
peers'.  Here the liar advertises exactly the tag the queries ask for, so it wins
every route until it is demoted; it must be demoted within 20 queries, after which
the honest expert answers.
"""

from __future__ import annotations

import random

import pytest
import trio

import protocol as p
from node.coordinator.client import ask
from node.coordinator.reputation import (
    DEMOTE_P,
    MIN_BASELINE,
    Reputation,
    SpotChecker,
    binomial_cdf,
    load_check_items,
)
from node.coordinator.service import QueryService, coordinator_for
from node.evaluation import build_prompt
from node.expert.service import ExpertService
from tests.cluster.harness import in_process_cluster

from .adversary import ForgingExpert

BAIT = "liar-bait"


class WrongOptionExpert(ForgingExpert):
    """Always a wrong option on known items (it is told the gold: the worst-case liar)."""

    def __init__(self, wrong: dict[str, str]) -> None:
        super().__init__("B", tags=[BAIT])
        self.wrong = wrong

    def reply(self, request: p.GenerateRequest) -> str:
        text = request.messages[-1].content if request.messages else request.prompt or ""
        return self.wrong.get(text, "A")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_demotion_needs_evidence_and_decays() -> None:
    clock = Clock()
    rep = Reputation(clock=clock, half_life_s=600.0)
    rng = random.Random(3)
    for _ in range(40):  # a weak honest model: right a third of the time
        rep.record("honest-a", rng.random() < 0.33)
        rep.record("honest-b", rng.random() < 0.33)
    for i in range(20):
        rep.record("liar", False)
        if binomial_cdf(0, i + 1, max(MIN_BASELINE, 0.3)) >= DEMOTE_P:
            assert not rep.demoted("liar")  # not before the evidence is strong
    assert rep.demoted("liar")
    assert not rep.demoted("honest-a") and not rep.demoted("honest-b")
    clock.now += 6000  # ten half-lives: the old evidence has faded
    assert not rep.demoted("liar")


@pytest.mark.timeout(420)
@pytest.mark.skipif(not load_check_items(), reason="needs ../shared/data/tasks beside the repo")
async def test_liar_is_demoted_within_20_queries(base_expert) -> None:
    items = load_check_items(30)
    wrong = {build_prompt(item): next(letter for letter, _ in item.choices if letter != item.gold) for item in items}
    with trio.fail_after(400):  # generous: a 2-core box shared with other jobs
        async with in_process_cluster() as cluster:
            net = dict(record_ttl=120.0, announce_interval=10.0)  # a busy loop must not let records lapse
            coordinator = await cluster.add(0, services=[QueryService()], **net)
            honest = await cluster.add(1, services=[ExpertService(expert=base_expert, threads=1)], **net)
            liar = await cluster.add(2, services=[WrongOptionExpert(wrong)], **net)
            await coordinator.registry.wait_for(lambda r: len(r.experts()) == 2, timeout=60)
            engine = coordinator_for(coordinator)
            engine.spot_checks = SpotChecker(engine.reputation, items, rate=1.0, items_per_check=2,
                                             rng=random.Random(5))
            demoted_after = None
            for n in range(1, 21):
                checks = engine.spot_checks.checks
                request = p.QueryRequest(request_id=f"lie-{n}", prompt="Pick one: A or B?", tags=(BAIT,),
                                         sampling=p.SamplingParams(max_new_tokens=2), timeout_s=60.0)
                async for event in ask(honest.host, coordinator.peer_id, request):
                    last = event
                assert isinstance(last, p.QueryResult)
                with trio.fail_after(90):  # the check runs right after the answer
                    while engine.spot_checks.checks == checks:
                        await trio.sleep(0.05)
                if engine.reputation.demoted(liar.peer_id):
                    demoted_after = n
                    break
            assert demoted_after is not None and demoted_after <= 20, engine.reputation.snapshot(liar.peer_id)
            engine.spot_checks.rate = 0.0
            request = p.QueryRequest(request_id="after", prompt="Pick one: A or B?", tags=(BAIT,),
                                     sampling=p.SamplingParams(max_new_tokens=2), timeout_s=60.0)
            async for event in ask(honest.host, coordinator.peer_id, request):
                last = event
            assert last.provenance[0].served_by == honest.peer_id
            assert not engine.reputation.demoted(honest.peer_id)
    print(f"liar demoted after {demoted_after} queries")
