"""The competence simulation: scripted experts of known per-task accuracy behind the real coordinator.

Each strategy's accuracy is compared with what that competence makes achievable,
independently of how strong today's small models are (issue 18, DESIGN.md).
The coordinator, its pool, routing, competence, aggregation and every strategy
are the real ones; only the experts are scripted (an in-memory ``Transport``).

An item is a four-option question of one task with a gold letter and a "trap"
letter.  Expert ``e`` knows item ``i`` with probability ``accuracy[e][task]``,
drawn once per (expert, item, sample seed), so a greedy expert answers the same
every time it is asked and a sampled one draws again.  When it does not know,
it answers the trap with probability ``rho`` (errors shared between experts:
correlation), else one of the three wrong letters at random.

What a scripted expert does in each role (coordinator/prompts.py), as a model of a
competent but fallible member:

- asked the question: "The answer is X." (its draw);
- asked to aggregate, revise, summarise or compose (the prompts marked
  "(some may be wrong)"): the gold letter when it knows the item, else the
  plurality of the letters shown to it, else its own draw;
- knowledge cards: a line of no letters; answering with them: its own draw;
- router ("Which expert"): the first expert whose description names the task;
- decomposer: the question itself as the single sub-question;
- pairwise judge: the side whose letter is its own answer;
- ``score`` of a candidate: its own answer gets -0.1 per token when the expert
  feels sure and -0.7 when it does not, any other answer -2.0.  It feels sure
  when it knows the item, except that with probability ``1 - calibration``
  (0.8 by default) the feeling is the opposite (over- or under-confidence).

Experts' records carry their true per-task accuracies as signed self-evaluation
claims (``evals``) and the coordinator holds spot-check evidence drawn at those
accuracies, so competence-aware strategies can use what the network could verify.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field

import trio

import protocol as p
from node.coordinator import Coordinator
from node.coordinator.aggregate import extract
from node.coordinator.health import Health
from node.coordinator.prompts import MAY_BE_WRONG

LETTERS = "ABCD"
TASKS = ("math", "facts", "science")
# Text-level strategies the simulation can script (fuse and merge work on tokens and weights).
STRATEGIES = ("route", "prompt-route", "vote", "select", "judge", "moa", "debate", "refine", "knowledge",
              "decompose", "cascade")
_ITEM = re.compile(r"\[(\w+)\] Question (\d+)")
_SHOWN = re.compile(r"(?:Answer|Knowledge) \d+:\n(.*)")


@dataclass(frozen=True, slots=True)
class Item:
    index: int
    task: str
    gold: str
    trap: str

    @property
    def question(self) -> str:
        return f"[{self.task}] Question {self.index}: which option is right, A, B, C or D?"


@dataclass(frozen=True)
class SimExpert:
    name: str
    accuracy: dict[str, float]
    rho: float = 0.0
    tags: tuple[str, ...] = ()
    calibration: float = 0.8  # how often its confidence says whether it knows

    @property
    def peer_id(self) -> str:
        return f"sim-{self.name}"

    def knows(self, item: Item, seed: int | None = None) -> bool:
        return _draw(self.name, item.index, seed, "knows") < self.accuracy[item.task]

    def answer(self, item: Item, seed: int | None = None) -> str:
        if self.knows(item, seed):
            return item.gold
        if _draw(self.name, item.index, seed, "trap") < self.rho:
            return item.trap
        wrong = [x for x in LETTERS if x != item.gold]
        return wrong[int(_draw(self.name, item.index, seed, "wrong") * len(wrong))]

    def sure(self, item: Item) -> bool:
        return self.knows(item) == (_draw(self.name, item.index, "calibrated") < self.calibration)

    def record(self, spot_checks: int) -> p.CapabilityRecord:
        description = "good at " + ", ".join(self.tags) if self.tags else "a general assistant"
        evals = tuple(p.EvalScore(task=task, n=max(1, spot_checks), accuracy=round(acc, 3), items_sha256="0" * 64)
                      for task, acc in self.accuracy.items())
        return p.CapabilityRecord(peer_id=self.peer_id, name=self.name, description=description, tags=self.tags,
                                  base_model="sim", tokenizer="vocab-sha256:sim", evals=evals, seq=1,
                                  issued_at=0.0, ttl=3600.0)


def _draw(*key: object) -> float:
    digest = hashlib.sha256(repr(key).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass
class Profile:
    name: str
    experts: list[SimExpert]
    summary: str


def profiles() -> list[Profile]:
    """The three competence profiles of issue 18."""
    generalist = [SimExpert("strong", {t: 0.85 for t in TASKS}, rho=0.5)] + [
        SimExpert(f"weak{i}", {t: 0.45 for t in TASKS}, rho=0.5) for i in range(1, 5)]
    specialists = [SimExpert(f"{t}-specialist", {u: 0.9 if u == t else 0.35 for u in TASKS}, rho=0.3, tags=(t,))
                   for t in TASKS]
    voters = [SimExpert(f"voter{i}", {t: 0.6 for t in TASKS}, rho=0.0) for i in range(1, 8)]
    return [
        Profile("strong generalist", generalist, "one expert at 85%, four at 45% with shared errors (rho 0.5)"),
        Profile("disjoint specialists", specialists, "three experts, each 90% on its task and 35% elsewhere"),
        Profile("weak independent voters", voters, "seven experts at 60%, independent errors"),
    ]


def items(n: int, seed: int = 18) -> list[Item]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        gold = rng.choice(LETTERS)
        out.append(Item(i, TASKS[i % len(TASKS)], gold, rng.choice([x for x in LETTERS if x != gold])))
    return out


class SimTransport:
    """The pool's transport over scripted experts (coordinator/calls.py ``Transport``)."""

    def __init__(self, experts: Sequence[SimExpert], questions: Sequence[Item], spot_checks: int = 10) -> None:
        self.experts = {e.peer_id: e for e in experts}
        self.items = {item.index: item for item in questions}
        self._records = [e.record(spot_checks) for e in experts]
        self.calls = 0

    def records(self) -> list[p.CapabilityRecord]:
        return self._records

    def _item(self, text: str) -> Item:
        match = _ITEM.search(text)
        if match is None:
            raise ValueError(f"no simulated item in {text[:80]!r}")
        return self.items[int(match.group(2))]

    def reply(self, expert: SimExpert, request: p.GenerateRequest) -> str:
        text = request.prompt or "\n".join(m.content for m in request.messages or ())
        item = self._item(text)
        seed = request.sampling.seed if request.sampling.temperature > 0 else None
        if "Which expert" in text:
            listing = re.findall(r"^(\d+)\. (.*)$", text, re.MULTILINE)
            return next((n for n, line in listing if item.task in line), "1")
        if "Split the question" in text:
            return f"1. {item.question}"
        if "Reply with A or B" in text:
            first = re.search(r"Answer A:\n(.*)", text)
            return "A" if first and extract(first.group(1), "option") == expert.answer(item) else "B"
        if "facts that help" in text:
            return "Some background on the topic."
        if MAY_BE_WRONG in text and "Background knowledge" not in text:
            if expert.knows(item):
                return f"The answer is {item.gold}."
            shown = [extract(s, "option") for s in _SHOWN.findall(text)]
            shown = [s for s in shown if s in LETTERS]
            if shown:
                return f"The answer is {max(sorted(set(shown)), key=shown.count)}."
        return f"The answer is {expert.answer(item, seed)}."

    async def generate(self, peer_id: str,
                       request: p.GenerateRequest) -> AsyncIterator[p.TokenChunk | p.GenerateResult]:
        self.calls += 1
        await trio.lowlevel.checkpoint()
        text = self.reply(self.experts[peer_id], request)
        yield p.TokenChunk(request_id=request.request_id, index=0, text=text, token_ids=(1,))
        yield p.GenerateResult(request_id=request.request_id, text=text, finish_reason="stop",
                               usage=p.Usage(prompt_tokens=10, completion_tokens=4, seconds=0.0))

    async def score(self, peer_id: str, request: p.ScoreRequest, timeout: float) -> p.ScoreResult:
        self.calls += 1
        await trio.lowlevel.checkpoint()
        expert = self.experts[peer_id]
        item = self._item("\n".join(m.content for m in request.messages or ()) or request.prompt or "")
        own = expert.answer(item)
        said = extract(request.continuation, "option")
        value = (-0.1 if expert.sure(item) else -0.7) if said == own else -2.0
        return p.ScoreResult(request_id=request.request_id, token_ids=(1, 2, 3, 4), logprobs=(value,) * 4)

    async def next_token(self, peer_id: str, request: p.NextTokenRequest, timeout: float) -> p.NextTokenResult:
        raise NotImplementedError("the simulation scripts text, not tokens")

    def open_session(self, peer_id: str, request: p.SessionOpen, timeout: float):  # pragma: no cover
        raise NotImplementedError("the simulation scripts text, not tokens")


@dataclass
class Bounds:
    best_single: float
    per_task_best: float
    majority: float  # plurality of every expert's greedy answer (independent voters' bound)
    oracle: float  # some expert is right


def bounds(experts: Sequence[SimExpert], questions: Sequence[Item]) -> Bounds:
    n = len(questions)
    right = {e.name: [e.answer(i) == i.gold for i in questions] for e in experts}
    best_single = max(sum(r) for r in right.values()) / n
    per_task = 0
    for task in TASKS:
        idx = [k for k, i in enumerate(questions) if i.task == task]
        per_task += max(sum(right[e.name][k] for k in idx) for e in experts)
    majority = 0
    for item in questions:
        answers = [e.answer(item) for e in experts]
        top = max(answers.count(a) for a in set(answers))
        winners = {a for a in answers if answers.count(a) == top}
        majority += (item.gold in winners) / len(winners)  # a tie is a coin toss among the tied
    oracle = sum(any(right[e.name][k] for e in experts) for k in range(n))
    return Bounds(best_single, per_task / n, majority / n, oracle / n)


@dataclass
class Run:
    accuracy: dict[str, float] = field(default_factory=dict)
    calls: dict[str, float] = field(default_factory=dict)  # expert calls per query


def params_for(strategy: str, k: int) -> dict[str, object]:
    k = min(k, 8)
    fan = {"k": k, "k_min": k}
    return {"vote": fan, "select": {**fan, "samples": 3}, "judge": fan, "moa": fan, "debate": fan,
            "refine": fan, "knowledge": fan, "cascade": {"max_steps": k}}.get(strategy, {})


async def run_profile(profile: Profile, questions: Sequence[Item], strategies: Sequence[str] = STRATEGIES,
                      spot_checks: int = 10) -> Run:
    """Every strategy on every item through a real Coordinator over the scripted experts."""
    transport = SimTransport(profile.experts, questions, spot_checks)

    async def no_semantics(text: str, records: object) -> dict[str, float]:
        return {}  # descriptions are matched by tags here; MiniLM's part is tested on real nodes

    out = Run()
    for strategy in strategies:
        # The experts answered this node before (its spot checks below): verified, so a fan-out is
        # not held to the budget of unreached newcomers (pool.MAX_UNVERIFIED_ATTEMPTS, issue 22).
        known = {expert.peer_id for expert in profile.experts}
        coordinator = Coordinator(transport.records, transport, first_token_timeout=5.0,
                                  health=Health(clock=trio.current_time), verified=lambda: known)
        coordinator.embedder.similarities = no_semantics  # type: ignore[method-assign]
        for expert in profile.experts:  # spot checks this node made, at the experts' true accuracy
            for task in TASKS:
                for j in range(spot_checks):
                    coordinator.reputation.record(expert.peer_id, _draw(expert.name, task, j) < expert.accuracy[task],
                                                  task)
        right = 0
        before = transport.calls
        for item in questions:
            query = p.QueryRequest(request_id=f"sim-{strategy}-{item.index}", strategy=strategy,
                                   messages=(p.ChatMessage(role="user", content=item.question),),
                                   tags=(item.task,), sampling=p.SamplingParams(max_new_tokens=16),
                                   timeout_s=60.0, params=params_for(strategy, len(profile.experts)))
            result = await coordinator.run(query)
            right += extract(result.text, "option") == item.gold
        out.accuracy[strategy] = right / len(questions)
        out.calls[strategy] = (transport.calls - before) / len(questions)
    return out
