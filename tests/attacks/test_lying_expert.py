"""Attack 7 (issue 12): a lying expert answers promptly, and always wrongly.

Latency and failure bookkeeping never notice it.  Three kinds of evidence do
(node/coordinator/reputation.py, consensus.py):

* spot checks with known-answer dev items of ../shared/data/tasks, compared with
  the peers' accuracy (slow when honest experts are near chance, as SmolLM2-135M is);
* claimed vs observed: a record's self-evaluation claim against what spot checks see;
* consensus: every fan-out tells whether each member agreed with a clear majority
  of the others; a liar disagrees with every majority that is right.

The cluster tests run real nodes on loopback.  Their honest experts are scripted
(``ScriptedExpert``: a near-chance "model" answering one option per question, the
same for every copy, as copies of one base model under greedy decoding do) so that
twenty fan-out queries take seconds; benchmarks/liar.py runs the same attack with
real SmolLM2-135M experts.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable

import pytest
import trio

import protocol as p
from node.api.service import network_status
from node.coordinator import consensus
from node.coordinator.client import ask
from node.coordinator.reputation import (
    DEMOTE_P,
    MIN_AGREEMENT_OBSERVATIONS,
    MIN_BASELINE,
    Reputation,
    SpotChecker,
    binomial_cdf,
    load_check_items,
)
from node.coordinator.service import QueryService
from node.evaluation import TaskItem, build_prompt, find_tasks_dir
from node.expert.serve.service import ExpertService
from tests.cluster.harness import in_process_cluster

from .adversary import ForgingExpert

BAIT = "liar-bait"


class WrongOptionExpert(ForgingExpert):
    """Always a wrong option on known items (it is told the gold: the worst-case liar), also when it
    aggregates (moa) or is asked again: any prompt quoting a known question gets that question's lie.
    ``claims``: self-evaluation scores its signed record carries."""

    def __init__(self, wrong: dict[str, str], claims: tuple[p.EvalScore, ...] = ()) -> None:
        super().__init__("B", tags=[BAIT])
        self.wrong = wrong
        self.claims = claims

    def record_fields(self) -> dict[str, object]:
        return {**super().record_fields(), "evals": self.claims}

    def reply(self, request: p.GenerateRequest) -> str:
        text = request.messages[-1].content if request.messages else request.prompt or ""
        if text in self.wrong:
            return self.wrong[text]
        return next((letter for prompt, letter in self.wrong.items() if prompt[:200] in text), "A")


def wrong_options(items: Iterable[TaskItem], how: str = "random") -> dict[str, str]:
    """The liar's answer per prompt: ``first``, the first wrong letter (which coincides with a
    model that always says "A" whenever the gold is not A); ``random``, a wrong letter chosen per
    question (no pattern a majority shares)."""
    out = {}
    for item in items:
        prompt = build_prompt(item)
        wrong = [letter for letter, _ in item.choices if letter != item.gold]
        out[prompt] = wrong[0] if how == "first" else _pick("liar", prompt, wrong)
    return out


def _pick(salt: str, prompt: str, options: list[str]) -> str:
    return options[int(hashlib.sha256(f"{salt}:{prompt}".encode()).hexdigest(), 16) % len(options)]


class ScriptedExpert(ForgingExpert):
    """An honest but weak expert: one option per question, near chance, the same for every copy
    (copies of one base model agree under greedy decoding).  With ``minority`` it instead answers
    the gold on about a third of the questions: right where its peers are wrong (an honest
    dissenter that must not be demoted)."""

    def __init__(self, items: dict[str, TaskItem], *, minority: bool = False) -> None:
        super().__init__("A")
        self.items, self.minority = items, minority

    def reply(self, request: p.GenerateRequest) -> str:
        text = request.messages[-1].content if request.messages else request.prompt or ""
        item = self.items.get(text)
        if item is None:
            return "A"
        if self.minority and _pick("minority", text, ["gold", "base", "base"]) == "gold":
            return item.gold
        return _pick("base", text, [letter for letter, _ in item.choices])


def _trace(answers: dict[str, str]) -> p.Trace:
    steps = tuple(p.TraceStep(index=i, role="proposer", peer=peer, output=f"{key}) something")
                  for i, (peer, key) in enumerate(answers.items()))
    return p.Trace(request_id="r", strategy="vote", steps=steps)


def test_consensus_counts_only_clear_majorities_of_the_others() -> None:
    # Three agree, the liar does not: everyone is observed, only the liar disagreed.
    seen = dict(consensus.observations(consensus.member_answers(_trace({"a": "B", "b": "B", "c": "B", "x": "C"}))))
    assert seen == {"a": True, "b": True, "c": True, "x": False}
    # Two against two: nobody has a clear majority of the others (2 of 3 for a, but x and c split ...).
    seen = dict(consensus.observations(consensus.member_answers(_trace({"a": "B", "b": "C", "c": "D", "x": "C"}))))
    assert seen == {"a": False, "c": False}  # b's and x's others are split
    # Two members only: nothing to compare with.
    assert consensus.observations(consensus.member_answers(_trace({"a": "B", "x": "C"}))) == []
    # Later rounds (moa layers, debate) saw each other's answers: not counted.
    late = p.TraceStep(index=9, round=1, role="proposer", peer="x", output="C")
    trace = _trace({"a": "B", "b": "B", "c": "B"})
    assert "x" not in consensus.member_answers(p.Trace(request_id="r", strategy="moa", steps=trace.steps + (late,)))


def test_consensus_demotes_a_liar_not_an_honest_minority() -> None:
    clock = Clock()
    rep = Reputation(clock=clock, half_life_s=600.0)
    rng = random.Random(7)
    demoted_at = None
    for n in range(1, 41):
        right = rng.choice("ABCD")
        base = right if rng.random() < 0.3 else rng.choice("ABCD")  # a weak shared base model
        minority = right if rng.random() < 0.3 else base  # right where the others are wrong, now and then
        liar = rng.choice([c for c in "ABCD" if c != right])
        rep.observe(_trace({"h1": base, "h2": base, "m": minority, "liar": liar}))
        if demoted_at is None and rep.demoted("liar"):
            demoted_at = n
        assert not rep.demoted("m") and not rep.demoted("h1") and not rep.demoted("h2"), rep.snapshot("m")
    assert demoted_at is not None and MIN_AGREEMENT_OBSERVATIONS <= demoted_at <= 20, demoted_at
    assert "clear majorities" in str(rep.snapshot("liar")["demoted_why"])
    clock.now += 6000  # ten half-lives: a reformed peer comes back
    assert not rep.demoted("liar")


def test_claimed_vs_observed_demotes_an_over_claimer() -> None:
    rep = Reputation()
    claim = p.EvalScore(task="arc_challenge", n=50, accuracy=0.9, items_sha256="0" * 64)
    honest_claim = p.EvalScore(task="arc_challenge", n=50, accuracy=0.3, items_sha256="0" * 64)
    rep.note_claims("liar", [claim])
    rep.note_claims("weak", [honest_claim])
    for _ in range(3):
        rep.record("liar", False, "arc_challenge")
        rep.record("weak", False, "arc_challenge")  # unlucky, but plausible at its own claim
    assert rep.demoted("liar") and "claimed 90%" in str(rep.snapshot("liar")["demoted_why"])
    assert not rep.demoted("weak")
    plain = Reputation()  # the same answers without the claim: too little evidence against peers
    for _ in range(3):
        plain.record("liar", False, "arc_challenge")
        plain.record("weak", False, "arc_challenge")
    assert not plain.demoted("liar")


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
    # A busy hour holds thousands of observations: no float overflow (math.comb(2000, 1000) is ~1e600).
    assert binomial_cdf(700, 2000, 0.5) < 1e-30 and binomial_cdf(1500, 2000, 0.7) > 0.99


@pytest.mark.timeout(420)
@pytest.mark.skipif(find_tasks_dir() is None, reason="needs ../shared/data/tasks beside the repo")
async def test_liar_is_demoted_within_20_queries(base_expert) -> None:
    items = load_check_items(30)
    wrong = wrong_options(items, "first")
    with trio.fail_after(400):  # generous: a 2-core box shared with other jobs
        async with in_process_cluster() as cluster:
            net = dict(record_ttl=120.0, announce_interval=10.0)  # a busy loop must not let records lapse
            coordinator = await cluster.add(0, services=[QueryService()], **net)
            honest = await cluster.add(1, services=[ExpertService(expert=base_expert, threads=1)], **net)
            liar = await cluster.add(2, services=[WrongOptionExpert(wrong)], **net)
            await coordinator.registry.wait_for(lambda r: len(r.experts()) == 2, timeout=60)
            engine = coordinator.service(QueryService).coordinator
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


# Records must not lapse while a loaded 2-core box runs the test.
NET = dict(record_ttl=120.0, announce_interval=10.0)


async def _vote(engine, item: TaskItem, n: int, k: int = 4) -> p.QueryResult:
    """A vote through the coordinator node's engine (the experts answer over libp2p)."""
    # k_min = k: every member answers before the vote, even on a loaded box.
    request = p.QueryRequest(request_id=f"vote-{n}", strategy="vote", params={"k": k, "k_min": k},
                             messages=(p.ChatMessage(role="user", content=build_prompt(item)),),
                             sampling=p.SamplingParams(max_new_tokens=4), timeout_s=30.0)
    last = None
    async with engine.answer(request) as events:  # the spot check, if due, runs after the result
        async for event in events:
            last = event
    assert isinstance(last, p.QueryResult)
    return last


def _test_items(n: int) -> list[TaskItem]:
    from node.evaluation import find_tasks_dir, load_tasks

    folder = find_tasks_dir()
    assert folder is not None
    return list(load_tasks(folder / "arc_challenge.json").items("test", n))


@pytest.mark.timeout(120)
@pytest.mark.skipif(find_tasks_dir() is None, reason="needs ../shared/data/tasks beside the repository")
async def test_consensus_demotes_liar_within_20_fan_out_queries() -> None:
    """Four experts, one liar, spot checks off: the fan-outs alone demote the liar, not the dissenter,
    and later votes leave the liar out."""
    items = _test_items(40)
    by_prompt = {build_prompt(item): item for item in items}
    with trio.fail_after(110):
        async with in_process_cluster() as cluster:
            coordinator = await cluster.add(0, services=[QueryService()], **NET)
            honest = [await cluster.add(1 + i, services=[ScriptedExpert(by_prompt)], **NET) for i in range(2)]
            minority = await cluster.add(3, services=[ScriptedExpert(by_prompt, minority=True)], **NET)
            liar = await cluster.add(4, services=[WrongOptionExpert(wrong_options(by_prompt.values()))], **NET)
            await coordinator.registry.wait_for(lambda r: len(r.experts()) == 4, timeout=60)
            engine = coordinator.service(QueryService).coordinator
            engine.spot_checks.rate = 0.0  # consensus only: before it, nothing here demoted anyone
            demoted_after = None
            for n, item in enumerate(items[:20], start=1):
                result = await _vote(engine, item, n)
                assert liar.peer_id in {s.peer for s in result.trace.steps}  # all four vote until then
                if engine.reputation.demoted(liar.peer_id):
                    demoted_after = n
                    break
            assert demoted_after is not None, engine.reputation.snapshot(liar.peer_id)
            status = {peer["peer_id"]: peer for peer in network_status(coordinator, coordinator.service(QueryService).coordinator)["peers"]}  # GET /status
            assert status[liar.peer_id]["reputation"]["demoted"] is True
            assert "clear majorities" in status[liar.peer_id]["reputation"]["demoted_why"]
            for n, item in enumerate(items[20:30], start=21):  # the dissenter keeps dissenting: still routable
                result = await _vote(engine, item, n)
                assert liar.peer_id not in {s.peer for s in result.trace.steps}  # left out of the vote
                assert len(result.trace.steps) == 3
            assert not engine.reputation.demoted(minority.peer_id), engine.reputation.snapshot(minority.peer_id)
            assert not any(engine.reputation.demoted(h.peer_id) for h in honest)
            snapshot = engine.reputation.snapshot(minority.peer_id)
            assert snapshot["agreement_observed"] >= 8 and snapshot["agreed"] < snapshot["agreement_observed"]
    print(f"liar demoted after {demoted_after} vote queries")


@pytest.mark.timeout(120)
@pytest.mark.skipif(find_tasks_dir() is None, reason="needs ../shared/data/tasks beside the repository")
async def test_over_claiming_liar_is_demoted_by_its_own_claim() -> None:
    """The liar's signed record claims 90 % on ARC; spot checks on ARC see it wrong every time."""
    items = _test_items(20)
    checks = [item for item in load_check_items(30) if item.task == "arc_challenge"]
    by_prompt = {build_prompt(item): item for item in items + checks}
    claim = p.EvalScore(task="arc_challenge", n=30, accuracy=0.9, items_sha256="0" * 64)
    with trio.fail_after(110):
        async with in_process_cluster() as cluster:
            coordinator = await cluster.add(0, services=[QueryService()], **NET)
            honest = [await cluster.add(1 + i, services=[ScriptedExpert(by_prompt)], **NET) for i in range(2)]
            liar_service = WrongOptionExpert(wrong_options(by_prompt.values()), claims=(claim,))
            liar = await cluster.add(3, services=[liar_service], **NET)
            await coordinator.registry.wait_for(lambda r: len(r.experts()) == 3, timeout=60)
            record = coordinator.registry.get(liar.peer_id)
            assert record is not None and record.evals == (claim,)  # the claim travels in the signed record
            engine = coordinator.service(QueryService).coordinator
            spot = SpotChecker(engine.reputation, checks, rate=1.0, items_per_check=2, rng=random.Random(5))
            engine.spot_checks = spot
            demoted_after = None
            for n, item in enumerate(items, start=1):
                done = spot.checks
                await _vote(engine, item, n, k=3)
                with trio.fail_after(30):  # the check runs right after the answer
                    while spot.checks == done:
                        await trio.sleep(0.05)
                if engine.reputation.demoted(liar.peer_id):
                    demoted_after = n
                    break
            why = str(engine.reputation.snapshot(liar.peer_id)["demoted_why"])
            assert demoted_after is not None and why.startswith("claimed 90%"), (demoted_after, why)
            assert not any(engine.reputation.demoted(h.peer_id) for h in honest)
    print(f"over-claiming liar demoted after {demoted_after} queries: {why}")
