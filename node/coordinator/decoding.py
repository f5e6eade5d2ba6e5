"""Decoding defaults: what sampling a query gets when its client sent none, and what each role uses.

Measured on the quickstart's experts (SmolLM2-135M-Instruct, 40 easy questions,
tests/quality/easy_set.py): greedy answers 24/40, the OpenAI API's implied
temperature 1.0 about a third of that (issue 18: "12 + 30 = 32", "the capital
of Italy is ... Bari").  A question with one right answer wants the model's
single most likely answer, so the default is greedy; open-ended writing (a
story, a poem, ideas) wants variety, so it samples, at the model's own
generation config where the caller knows it, else at the toolkit's 0.7 / 0.9
(research/paper.md).  Small models' generation configs often carry no sampling
at all (SmolLM2's has only token ids): then the fallback applies.

Strategies set their members' sampling on purpose (``ROLE_TEMPERATURE``):
whoever aggregates, judges, routes, splits or composes decodes greedily (one
deterministic decision from the same inputs); proposers answer with the query's
own sampling, since the diversity of a fan-out comes from its different experts;
``select`` samples each expert several times on purpose (its own temperature).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

# The toolkit's sampling (MoCo samples at 0.7 / 0.9) for open-ended writing without a generation config.
OPEN_TEMPERATURE = 0.7
OPEN_TOP_P = 0.9

DETERMINISTIC = 0.0  # greedy: the temperature of aggregating, judging, routing, splitting, composing

# Deterministic roles: the same inputs give the same decision (a trace can be re-checked).
ROLE_TEMPERATURE: Mapping[str, float] = {
    "aggregator": 0.0, "summarizer": 0.0, "judge": 0.0, "router": 0.0, "decomposer": 0.0, "composer": 0.0,
    "knowledge": 0.0, "reviser": 0.0,
}

# Requests that ask for writing with many good answers (sampling helps) rather than one right answer.
_OPEN_ENDED = re.compile(
    r"\b(write|compose|draft|story|stories|poem|poetry|haiku|lyrics|song|essay|brainstorm|ideas|imagine|"
    r"invent|creative|slogan|joke|names? for|suggest)\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Decoding:
    temperature: float
    top_p: float
    why: str


def open_ended(question: str) -> bool:
    """Does ``question`` ask for open-ended writing (a story, a poem, ideas) rather than one answer?"""
    return bool(_OPEN_ENDED.search(question))


def default_decoding(question: str, generation_config: Mapping[str, object] | None = None) -> Decoding:
    """The sampling for a query whose client sent no temperature / top_p.

    ``generation_config``: the serving model's ``generation_config.json`` where
    the caller has it (its ``temperature``/``top_p``/``do_sample``).
    """
    if not open_ended(question):
        return Decoding(0.0, 1.0, "greedy: a question with one answer")
    config = generation_config or {}
    temperature = config.get("temperature")
    if config.get("do_sample") is not False and isinstance(temperature, int | float) and 0 < temperature <= 2:
        top_p = config.get("top_p")
        top_p = float(top_p) if isinstance(top_p, int | float) and 0 < top_p <= 1 else 1.0
        return Decoding(float(temperature), top_p, "open-ended: the model's generation config")
    return Decoding(OPEN_TEMPERATURE, OPEN_TOP_P, "open-ended: sampled at 0.7 / top-p 0.9")


def fill_defaults(question: str, temperature: float | None, top_p: float | None,
                  generation_config: Mapping[str, object] | None = None) -> tuple[float, float]:
    """The client's temperature / top_p where given, the defaults for ``question`` where not."""
    chosen = default_decoding(question, generation_config)
    if temperature is None:
        return chosen.temperature, chosen.top_p if top_p is None else top_p
    return temperature, 1.0 if top_p is None else top_p


def role_temperature(role: str) -> float | None:
    """The temperature a strategy's ``role`` decodes at (None: the query's own)."""
    return ROLE_TEMPERATURE.get(role)
