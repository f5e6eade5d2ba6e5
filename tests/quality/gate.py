"""The quality gate: every strategy against the network's best single member, on the same items, in one run.

``ask_all`` sends each question (tests/quality/easy_set.py) to every system
under test through a real coordinator over ``/mosaic/query``: each single
member (the model pinned: ``model=<expert name>``) and each strategy, with the
HTTP API's default request settings (the query is built by the API's own
``to_query`` from a body that sets nothing but the question and max_tokens).

``compare`` is the noise-aware verdict, paired on the items: of the items where
exactly one of (best member, strategy) is right, ``b`` went to the member and
``c`` to the strategy; the strategy is worse beyond noise when ``b`` is
implausibly large for a fair coin (one-sided exact sign test, McNemar's exact
form, p < ``alpha``) *and* its accuracy is more than ``margin`` below the
member's.  A team sets its own absolute floor (``Team.threshold``): what its
models can be asked to reach on the easy set.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field

import trio

import protocol as p
from node.api import openai_schema as oai
from node.coordinator.calls import QueryFailed
from node.coordinator.client import ask

from .easy_set import Item, correct

ALPHA = 0.05
MARGIN = 0.05  # the "no more than 5 points below the best single member"
RECONNECTS = 3  # times ask_all dials the coordinator again when the client's connection is gone


@dataclass(frozen=True, slots=True)
class Team:
    """A network under test: its members (expert model ids) and the accuracy its strategies must reach."""

    name: str
    members: tuple[str, ...]
    threshold: float  # every strategy's floor on the easy set (SmolLM2-135M cannot reach the 0.85)


@dataclass
class Outcome:
    reply: str
    right: bool
    seconds: float
    decision: str = ""
    failed: bool = False  # the query failed (counted wrong; the table says how many)


@dataclass
class Verdict:
    system: str
    accuracy: float
    best_member: str
    member_accuracy: float
    member_only: int  # b: items the best member got and the system missed
    system_only: int  # c
    p_value: float
    worse: bool
    below_threshold: bool
    examples: list[str] = field(default_factory=list)


def sign_test(b: int, c: int) -> float:
    """P(X >= b) for X ~ Binomial(b + c, 1/2): how likely the member wins ``b`` of the discordant items by luck."""
    n = b + c
    if n == 0 or b == 0:
        return 1.0
    return min(1.0, sum(math.comb(n, i) for i in range(b, n + 1)) / 2**n)


def compare(system: str, outcomes: Sequence[Outcome], members: dict[str, Sequence[Outcome]], items: Sequence[Item],
            *, threshold: float = 0.0, alpha: float = ALPHA, margin: float = MARGIN) -> Verdict:
    """``system`` against the best member of the same run, paired on the items."""
    best = max(members, key=lambda m: sum(o.right for o in members[m]))
    member = members[best]
    n = len(outcomes)
    b = sum(1 for m, s in zip(member, outcomes, strict=True) if m.right and not s.right)
    c = sum(1 for m, s in zip(member, outcomes, strict=True) if s.right and not m.right)
    accuracy = sum(o.right for o in outcomes) / n
    member_accuracy = sum(o.right for o in member) / n
    p_value = sign_test(b, c)
    worse = p_value < alpha and accuracy < member_accuracy - margin
    examples = [f"{item.question!r}: member {m.reply[:60]!r} / {system} {s.reply[:60]!r} ({s.decision[:120]})"
                for item, m, s in zip(items, member, outcomes, strict=True) if m.right and not s.right][:3]
    return Verdict(system, accuracy, best, member_accuracy, b, c, p_value, worse, accuracy < threshold, examples)


def default_query(question: str, *, model: str, max_tokens: int, timeout: float) -> p.QueryRequest:
    """The query the HTTP API makes of a client's body with only the question, the model and max_tokens."""
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens}
    request = oai.parse(json.dumps(body).encode(), oai.ChatCompletionRequest)
    if model.startswith("mosaic/"):
        return oai.to_query(request, strategy=model.removeprefix("mosaic/"), model=None, default_timeout=timeout)
    return oai.to_query(request, strategy="route", model=model, default_timeout=timeout)


async def ask_one(host: object, peer: object, query: p.QueryRequest) -> tuple[str, p.QueryResult]:
    result = None
    async with aclosing(ask(host, peer, query)) as events:  # type: ignore[arg-type]
        async for event in events:
            if isinstance(event, p.QueryResult):
                result = event
    assert result is not None
    return result.text, result


async def ask_all(host: object, peer: object, items: Sequence[Item], systems: Sequence[str], *,
                  max_tokens: int = 32, timeout: float = 300.0, log: bool = False,
                  stop_at: float | None = None,
                  redial: Callable[[], Awaitable[object]] | None = None) -> dict[str, list[Outcome]]:
    """Every item to every system (a member's model id, or ``mosaic/<strategy>``), item by item.

    ``stop_at`` (a ``time.monotonic()`` instant): no item is started after it, so every system
    has answered the same first items (the comparison stays paired).  ``redial``: how to connect
    the client again when its connection to the coordinator is gone (``unavailable``, seen on
    the shared box under load 15: the client's link dropped, not an expert); the query is then
    asked again, up to ``RECONNECTS`` times, and a failure after that counts as a wrong answer.
    """
    out: dict[str, list[Outcome]] = {s: [] for s in systems}
    for item in items:
        if stop_at is not None and time.monotonic() > stop_at:
            break
        for system in systems:
            began = time.monotonic()
            try:
                query = default_query(item.question, model=system, max_tokens=max_tokens, timeout=timeout)
                for attempt in range(RECONNECTS + 1):
                    try:
                        with trio.fail_after(timeout + 30):
                            text, result = await ask_one(host, peer, query)
                        break
                    except QueryFailed as exc:
                        if exc.code != "unavailable" or redial is None or attempt == RECONNECTS:
                            raise
                        await trio.sleep(1.0)
                        await redial()
            except (QueryFailed, trio.TooSlowError) as exc:  # no answer is a wrong answer, said as such
                outcome = Outcome("", False, time.monotonic() - began, f"failed: {exc}", failed=True)
            else:
                outcome = Outcome(text, correct(item, text), time.monotonic() - began,
                                  result.trace.decision if result.trace else "")
            out[system].append(outcome)
            if log:
                print(f"  {system:22} {'ok ' if outcome.right else 'BAD'} {outcome.seconds:5.1f}s "
                      f"{item.question[:40]!r} -> {(outcome.reply or outcome.decision)[:70]!r}", flush=True)
    return out
