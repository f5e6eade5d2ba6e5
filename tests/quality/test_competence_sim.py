"""The competence simulation, small form: each strategy against what its experts' competence allows.

The real coordinator and strategies over scripted experts of known accuracy
(competence_sim.py); benchmarks/competence.py prints the full table
(docs/collaboration.md).  What must hold, per profile:

- one strong generalist among weak experts: no strategy falls more than 0.1
  below the strong expert alone (routing and weights find it; aggregators
  do not let the weak majority overrule it);
- specialists with disjoint strengths: competence-aware strategies reach the
  per-task best expert (route by verified competence, weighted votes, the
  judge's weighted likelihood, moa's weighted majority, the cascade's margin);
- many weak independent voters: the fan-out strategies beat the best single
  expert by more than 0.1 and come within 0.1 of the plurality vote of all.
"""

from __future__ import annotations

import pytest

from tests.quality.competence_sim import STRATEGIES, bounds, items, profiles, run_profile

ITEMS = 45
TOLERANCE = 0.1
COMPETENCE_AWARE = ("route", "vote", "judge", "moa", "debate", "refine", "cascade")
FAN_OUT = ("vote", "select", "judge", "moa", "debate", "refine")


@pytest.fixture(scope="module")
def questions():
    return items(ITEMS)


def profile(name: str):
    return next(p for p in profiles() if p.name == name)


async def test_a_strong_generalist_is_never_outvoted(questions):
    chosen = profile("strong generalist")
    bound = bounds(chosen.experts, questions)
    run = await run_profile(chosen, questions, STRATEGIES)
    low = {s: a for s, a in run.accuracy.items() if a < bound.best_single - TOLERANCE}
    assert not low, (bound, run.accuracy)


async def test_specialists_are_found_per_task(questions):
    chosen = profile("disjoint specialists")
    bound = bounds(chosen.experts, questions)
    assert bound.per_task_best > bound.best_single + 0.2  # the profile is what it says
    run = await run_profile(chosen, questions, COMPETENCE_AWARE)
    low = {s: a for s, a in run.accuracy.items() if a < bound.per_task_best - TOLERANCE}
    assert not low, (bound, run.accuracy)


async def test_many_weak_voters_beat_each_of_them(questions):
    chosen = profile("weak independent voters")
    bound = bounds(chosen.experts, questions)
    assert bound.majority > bound.best_single + 0.1
    run = await run_profile(chosen, questions, FAN_OUT)
    for strategy, accuracy in run.accuracy.items():
        assert accuracy > bound.best_single + TOLERANCE, (strategy, bound, run.accuracy)
        assert accuracy >= bound.majority - TOLERANCE, (strategy, bound, run.accuracy)
