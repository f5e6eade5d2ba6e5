"""The pure fusion math: tokenizer groups, merging top-k distributions, choosing the token."""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass

import pytest

from node.coordinator.fusion import Distribution, NoSharedTokenizer, choose, fusable_group, merge


@dataclass(frozen=True)
class Rec:
    peer_id: str
    tokenizer: str
    name: str = ""


def dist(pairs: dict[int, float]) -> Distribution:
    return Distribution(tuple(pairs), tuple(math.log(p) for p in pairs.values()))


def test_group_takes_the_best_ranked_shared_tokenizer_on_distinct_peers():
    records = [Rec("p1", "A", "best"), Rec("p2", "B"), Rec("p1", "A", "same peer"), Rec("p3", "B"),
               Rec("p4", "A", "second")]
    assert [r.name for r in fusable_group(records, k=2)] == ["best", "second"]
    assert [r.peer_id for r in fusable_group(records, k=5)] == ["p1", "p4"]
    assert [r.peer_id for r in fusable_group([Rec("p2", "B"), Rec("p1", "A"), Rec("p3", "B")])] == ["p2", "p3"]


def test_group_refuses_clearly_when_no_two_experts_share_a_tokenizer():
    with pytest.raises(NoSharedTokenizer, match="seen: A x1, B x1"):
        fusable_group([Rec("p1", "A"), Rec("p2", "B"), Rec("p3", "")])
    with pytest.raises(NoSharedTokenizer, match="A x1"):
        fusable_group([Rec("p1", "A"), Rec("p1", "A")])  # one peer twice is not two experts
    with pytest.raises(NoSharedTokenizer, match="none announced"):
        fusable_group([])
    with pytest.raises(ValueError):
        fusable_group([Rec("p1", "A"), Rec("p2", "A")], k=1)


def test_merge_is_the_weighted_average_of_probabilities():
    a = dist({1: 0.6, 2: 0.3})
    b = dist({2: 0.5, 3: 0.4})
    merged = merge([a, b])
    assert merged == pytest.approx({1: 0.3, 2: 0.4, 3: 0.2})
    weighted = merge([a, b], [3.0, 1.0])
    assert weighted == pytest.approx({1: 0.45, 2: 0.35, 3: 0.1})
    assert merge([a]) == pytest.approx({1: 0.6, 2: 0.3})


def test_merge_rejects_bad_input():
    a = dist({1: 0.5})
    for bad in ([], ):
        with pytest.raises(ValueError):
            merge(bad)
    with pytest.raises(ValueError):
        merge([a, a], [1.0])
    with pytest.raises(ValueError):
        merge([a], [-1.0])
    with pytest.raises(ValueError):
        merge([a], [0.0])
    with pytest.raises(ValueError):
        merge([Distribution((1, 2), (0.0,))])


def test_fusion_can_pick_a_token_neither_expert_ranks_first():
    # Each expert prefers its own token; both rank token 7 second: the fused choice is 7.
    a = dist({1: 0.5, 7: 0.4})
    b = dist({2: 0.5, 7: 0.4})
    assert choose(merge([a, b])) == 7


def test_greedy_ties_break_to_the_lowest_token_id():
    assert choose({9: 0.25, 4: 0.25, 5: 0.1}) == 4


def test_temperature_sampling_follows_the_tempered_distribution():
    merged = {1: 0.6, 2: 0.3, 3: 0.1}
    rng = random.Random(7)
    counts = Counter(choose(merged, temperature=1.0, rng=rng) for _ in range(4000))
    assert counts[1] / 4000 == pytest.approx(0.6, abs=0.03) and counts[3] / 4000 == pytest.approx(0.1, abs=0.02)
    sharp = Counter(choose(merged, temperature=0.1, rng=rng) for _ in range(500))
    assert sharp[1] > 490
    again = [choose(merged, temperature=1.0, rng=random.Random(3)) for _ in range(5)]
    assert again == [choose(merged, temperature=1.0, rng=random.Random(3)) for _ in range(5)]
    with pytest.raises(ValueError):
        choose({})
