"""Issue 22 item 5: liars that write the answer.

An expert that always answers a wrong option (spot checks too) was never
demoted over 65 ARC queries and its answer was final in 48 of them: ``vote``
broke ties by rank, and the liar ranks first (it advertises load 0 and
answers at once); spot checks ran only where ``../shared/data/tasks`` sits
beside the checkout.  Now ties go to the member with the most evidence of
right answers (reputation.trust), the node checks with the known-answer items
it ships (node/coordinator/known_answers.py) when the task files are absent,
and a peer with too little evidence is on probation (checked more often), so
demotion works at the production spot-check rate.

Real nodes on loopback; the experts are scripted protocol speakers: two
honest but weak ones that disagree on hard questions (3-way splits are
where a tie-break decides) and get most easy known-answer items right, and
a liar that is always wrong on the items it can recognise.
"""

from __future__ import annotations

import hashlib
import random

import pytest
import trio

import protocol as p
from node.coordinator import reputation as reputation_module
from node.coordinator.known_answers import known_answer_items
from node.coordinator.reputation import SPOT_CHECK_RATE, SpotChecker
from node.coordinator.service import QueryService
from node.evaluation import build_prompt
from tests.cluster.harness import in_process_cluster

from .adversary import ForgingExpert

pytestmark = pytest.mark.timeout(150)

NET = dict(record_ttl=120.0, announce_interval=10.0)
KNOWN = {build_prompt(item): item for item in known_answer_items()}
QUERIES = 60


def _pick(salt: str, text: str, options: list[str]) -> str:
    return options[int(hashlib.sha256(f"{salt}:{text}".encode()).hexdigest(), 16) % len(options)]


def _question(n: int) -> str:
    return (f"Question {n}: which of these statements about sample {n} holds?\n"
            "A) the first\nB) the second\nC) the third\nD) the fourth\nAnswer with the letter.")


class WeakHonestExpert(ForgingExpert):
    """Right on 80 % of the easy known-answer items; on hard questions, its own guess (two such
    experts disagree most of the time).  Advertises some load: it ranks after an idle claim."""

    def __init__(self, salt: str) -> None:
        super().__init__("A")
        self.salt = salt

    def record_fields(self) -> dict[str, object]:
        return {**super().record_fields(), "load": 0.5}

    def reply(self, request: p.GenerateRequest) -> str:
        text = request.messages[-1].content if request.messages else request.prompt or ""
        item = KNOWN.get(text)
        if item is not None:
            if _pick(self.salt, text, list(range(10))) < 8:
                return item.gold
            return _pick(self.salt, text, [c for c, _ in item.choices if c != item.gold])
        return _pick(self.salt, text, list("ABCD"))


class AlwaysWrongExpert(ForgingExpert):
    """A wrong option on every known item it is asked (spot checks too); on hard questions its own
    pick; advertises load 0 and answers at once: it ranks first."""

    def __init__(self) -> None:
        super().__init__("A")

    def record_fields(self) -> dict[str, object]:
        return {**super().record_fields(), "load": 0.0}

    def reply(self, request: p.GenerateRequest) -> str:
        text = request.messages[-1].content if request.messages else request.prompt or ""
        item = KNOWN.get(text)
        if item is not None:
            return _pick("liar", text, [c for c, _ in item.choices if c != item.gold])
        return _pick("liar", text, list("ABCD"))


async def _vote(engine, n: int) -> p.QueryResult:
    request = p.QueryRequest(request_id=f"liar-vote-{n}", strategy="vote", params={"k": 3, "k_min": 3},
                             messages=(p.ChatMessage(role="user", content=_question(n)),),
                             sampling=p.SamplingParams(max_new_tokens=4), timeout_s=30.0)
    last = None
    async with engine.answer(request) as events:  # a due spot check runs before this block ends
        async for event in events:
            last = event
    assert isinstance(last, p.QueryResult)
    return last


async def test_liar_does_not_write_answers_and_is_demoted_without_task_files(monkeypatch) -> None:
    monkeypatch.setattr(reputation_module, "find_tasks_dir", lambda: None)  # an installed node: no shared/
    with trio.fail_after(140):
        async with in_process_cluster() as cluster:
            coordinator = await cluster.add(0, services=[QueryService()], **NET)
            honest = [await cluster.add(1 + i, services=[WeakHonestExpert(f"honest-{i}")], **NET) for i in range(2)]
            liar = await cluster.add(3, services=[AlwaysWrongExpert()], **NET)
            await coordinator.registry.wait_for(lambda r: len(r.experts()) == 3, timeout=60)
            engine = coordinator.service(QueryService).coordinator
            # The production rate and the production item source; only the draw is seeded.
            engine.spot_checks = SpotChecker(engine.reputation, rng=random.Random(22))
            assert engine.spot_checks.rate == SPOT_CHECK_RATE
            written = 0  # queries whose final answer is the liar's own (it wrote it)
            demoted_after = None
            after: list[p.QueryResult] = []
            for n in range(1, QUERIES + 1):
                result = await _vote(engine, n)
                final = result.trace.steps[result.provenance and next(
                    s.index for s in result.trace.steps if s.peer == result.provenance[0].served_by)]
                assert final.status == "ok"
                if final.peer == liar.peer_id:
                    written += 1
                if demoted_after is None and engine.reputation.demoted(liar.peer_id):
                    demoted_after = n
                if n > QUERIES - 10:
                    after.append(result)
            snapshot = engine.reputation.snapshot(liar.peer_id)
            assert demoted_after is not None and demoted_after <= 45, (demoted_after, snapshot)
            assert "spot checks" in str(snapshot["demoted_why"]), snapshot
            assert engine.spot_checks.checks >= 1 and round(snapshot["checked"]) >= 4  # (decayed counts)
            assert written <= QUERIES // 4, (written, QUERIES)  # before: about 4 in 5
            # At the edge a demotion can lapse for a while (hysteresis, reputation.RESTORE_P) until more
            # checks come in; by the last ten queries the evidence is firm and the liar is left out.
            assert engine.reputation.demoted(liar.peer_id)
            assert all(liar.peer_id not in {s.peer for s in r.trace.steps} for r in after)
            assert not any(engine.reputation.demoted(h.peer_id) for h in honest)
            assert all(engine.reputation.trust(h.peer_id) > engine.reputation.trust(liar.peer_id) for h in honest)
    print(f"liar wrote {written}/{QUERIES} answers, demoted after {demoted_after} queries "
          f"({engine.spot_checks.checks} spot checks at the production rate, no task files)")
