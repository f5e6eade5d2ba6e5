"""The quality gate through real nodes: no strategy worse than the best single member beyond noise.

Two expert nodes serving SmolLM2-135M on the torch engine (node 0 also
coordinates), the easy question set, the HTTP API's default request settings;
the single members are measured in the same run, item by item
(tests/quality/gate.py: a paired sign test plus a 5-point margin, and the
team's own floor).  CI asks a few items of the strategies that write free text
(where the issue saw moa answer 2 of 30); ``MOSAIC_GATE_ITEMS`` and
``MOSAIC_GATE_STRATEGIES`` widen it, and benchmarks/answers.py runs every strategy.
"""

from __future__ import annotations

import os

import pytest
import trio

from tests.quality.easy_set import easy_items
from tests.quality.gate import ask_all, compare, sign_test
from tests.quality.network import smol_network

# Five items: a strategy that misses all the member got is caught (sign test p = 1/32); the
# benchmark asks 40.  Answers of the easy set fit in 16 tokens ("12 + 30 = 42").
ITEMS = int(os.environ.get("MOSAIC_GATE_ITEMS", "5"))
STRATEGIES = os.environ.get("MOSAIC_GATE_STRATEGIES", "moa,refine").split(",")
MAX_TOKENS = 16


def test_the_sign_test_sees_a_collapse_and_forgives_noise():
    assert sign_test(5, 0) < 0.05  # the member right on 5 items the strategy missed, never the reverse
    assert sign_test(3, 1) > 0.05 and sign_test(0, 4) == 1.0


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_no_strategy_is_worse_than_its_best_member(base_expert):
    items = easy_items(ITEMS)
    async with smol_network([base_expert, base_expert]) as network:
        # Both nodes serve the same loaded model, greedily: their answers are the same, so one is
        # measured (benchmarks/answers.py measures every member).
        members_asked = network.team.members[:1]
        systems = list(members_asked) + [f"mosaic/{s}" for s in STRATEGIES]
        outcomes = await ask_all(network.host, network.peer, items, systems, max_tokens=MAX_TOKENS)
    members = {m: outcomes[m] for m in members_asked}
    for member in members_asked:  # the team can answer the easy set at all (the floor is the team's)
        assert sum(o.right for o in outcomes[member]) / len(items) >= network.team.threshold, outcomes[member]
    for strategy in STRATEGIES:
        verdict = compare(strategy, outcomes[f"mosaic/{strategy}"], members, items,
                          threshold=network.team.threshold)
        assert not verdict.worse and not verdict.below_threshold, verdict


# The README's default network: three nodes serving the catalog's default model on llama.cpp.
DEFAULT_ITEMS = int(os.environ.get("MOSAIC_GATE_DEFAULT_ITEMS", "3"))
DEFAULT_STRATEGIES = os.environ.get("MOSAIC_GATE_DEFAULT_STRATEGIES", "vote,moa").split(",")


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_the_default_network_answers_the_easy_set(expert_data_dir):
    """The issue's gate on the default team: each strategy at the team's floor (0.85) and not below its
    member.  Small in CI (3 items, vote and moa: minutes on 2 cores); benchmarks/answers.py runs it all."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (scripts/install.sh builds it)")
    from node.expert.model import catalog
    from node.expert.serve.llamacpp.model import load_llama_expert
    from tests.quality.network import TEAM_FLOORS, team_network

    model = catalog.CATALOG[catalog.DEFAULT_KEY]
    try:
        catalog.part_paths(model)
    except catalog.NotInstalled:
        pytest.skip(f"the default model's packages are not installed (scripts/install.sh installs {model.key})")
    expert = await trio.to_thread.run_sync(lambda: load_llama_expert(model.key, cache_dir=expert_data_dir))
    items = easy_items(DEFAULT_ITEMS)
    async with team_network([expert] * 3, name=f"{model.model_id} (llama.cpp)",
                            threshold=TEAM_FLOORS[model.key]) as network:
        member = network.team.members[0]  # the three serve one model greedily: the same answers
        systems = [member] + [f"mosaic/{s}" for s in DEFAULT_STRATEGIES]
        outcomes = await ask_all(network.host, network.peer, items, systems, max_tokens=32,
                                 redial=network.redial)
    assert sum(o.right for o in outcomes[member]) / len(items) >= network.team.threshold, outcomes[member]
    for strategy in DEFAULT_STRATEGIES:
        verdict = compare(strategy, outcomes[f"mosaic/{strategy}"], {member: outcomes[member]}, items,
                          threshold=network.team.threshold)
        assert not verdict.worse and not verdict.below_threshold, verdict


def test_the_gate_fails_a_collapsed_strategy_and_passes_one_within_noise():
    from tests.quality.gate import Outcome

    items = easy_items(8)
    member = [Outcome("right", True, 1.0)] * 6 + [Outcome("wrong", False, 1.0)] * 2
    collapsed = [Outcome("I'm ready to assist you.", False, 1.0)] * 8
    noisy = [Outcome("wrong", False, 1.0)] + [Outcome("right", True, 1.0)] * 4 + [Outcome("wrong", False, 1.0)] * 3
    assert compare("moa", collapsed, {"m": member}, items).worse
    assert not compare("vote", noisy, {"m": member}, items).worse  # 5/8 vs 6/8: b=2, c=1 is noise
    assert compare("vote", noisy, {"m": member}, items, threshold=0.85).below_threshold  # the team's floor


@pytest.mark.parametrize(("question", "reply", "right"), [
    ("What is the capital of Italy?", "Uncádado Capital è Bari Smoking", False),  # the answers
    ("What is 12 + 30?", "12 + 30 = 32", False),
    ("What is 7 x 6?", "7 x 6 = 49", False),
    ("What is 12 + 30?", "12 + 30 = 42.\n\nThis is a classic example of addition.", True),
    ("What is the capital of Italy?", "The capital of Italy is Rome.", True),
    ("What is the capital of Italy?", "Il Coriobella, Italy. Rome is nice too.", False),  # first sentence
    ("How many legs does a spider have?", "Sure! A spider has eight legs.", True),
    ("What is 8 x 2?", "To calculate 8 x 2, you multiply 8 by itself twice, which is 16.", True),
    # decompose on the 1.5B default team: a quoted question does not end the sentence
    ("What is 100 - 1?", 'The answer to the question "What is 100 - 1? " is 99.', True),
    ("What is 100 - 1?", 'The answer to "What is 100 - 1?" is 98. It is 99.', False),
])
def test_the_easy_set_scores_as_a_person_would(question, reply, right):
    from tests.quality.easy_set import correct

    item = next(i for i in easy_items() if i.question == question)
    assert correct(item, reply) is right
