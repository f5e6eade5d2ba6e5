"""Pure expert scoring: which peer answers, and in which failover order."""

from __future__ import annotations

import pytest

import protocol as p
from node.coordinator.routing import Candidate, Need, NoExpertAvailable, model_ids, rank


def expert(peer: str, name: str, *, tags=(), adapters=(), queue=0, load=0.0) -> p.CapabilityRecord:
    return p.CapabilityRecord(
        peer_id=peer, name=name, tags=tuple(tags), seq=1, issued_at=0.0, ttl=60.0, queue_depth=queue, load=load,
        adapters=tuple(p.AdapterInfo(name=a) for a in adapters), base_model="SmolLM2-135M",
    )


def peers(routes):
    return [r.peer_id for r in routes]


def test_tag_match_wins():
    general = Candidate(expert("A", "general"))
    math = Candidate(expert("B", "mathy", tags=("math",)))
    assert peers(rank([general, math], Need(tags=("math",)))) == ["B", "A"]


def test_partial_tag_match_ranks_between():
    full = Candidate(expert("A", "a", tags=("math", "proof")))
    half = Candidate(expert("B", "b", tags=("math",)))
    none = Candidate(expert("C", "c", tags=("law",)))
    assert peers(rank([none, half, full], Need(tags=("Math", "proof")))) == ["A", "B", "C"]


def test_adapter_named_after_tag_is_chosen():
    routes = rank([Candidate(expert("A", "smol", adapters=("law", "math")))], Need(tags=("math",)))
    assert routes[0].adapter == "math"


def test_claimed_load_and_queue_do_not_rank_measured_latency_does():
    # Issue 22, attack 7: a record's load and queue are the expert's own claims.
    liar = Candidate(expert("A", "a", tags=("x",), load=0.0, queue=0), latency_s=2.5)
    honest = Candidate(expert("B", "b", tags=("x",), load=0.9, queue=3), latency_s=0.4)
    assert peers(rank([liar, honest], Need(tags=("x",)))) == ["B", "A"]
    # Not measured yet: UNMEASURED_LATENCY_S, so it is tried when the measured ones are slower ...
    newcomer = Candidate(expert("C", "c", tags=("x",), load=0.0))
    assert peers(rank([liar, newcomer], Need(tags=("x",)))) == ["C", "A"]
    # ... and not before a measured fast one, whatever it claims.
    assert peers(rank([honest, newcomer], Need(tags=("x",)))) == ["B", "C"]


def test_slow_specialist_loses_to_fast_generalist_only_when_much_slower():
    slow = Candidate(expert("A", "a", tags=("x",)), latency_s=12.0)
    fast = Candidate(expert("B", "b"), latency_s=0.5)
    assert peers(rank([slow, fast], Need(tags=("x",)))) == ["B", "A"]
    assert peers(rank([Candidate(expert("A", "a", tags=("x",)), latency_s=3.0), fast], Need(tags=("x",)))) == ["A", "B"]


def test_a_known_good_expert_is_the_second_attempt_at_the_latest():
    good = Candidate(expert("Z", "z", tags=("x",)), latency_s=4.0, verified=True)
    unmeasured = [Candidate(expert(pid, pid, tags=("x",)), verified=True) for pid in ("A", "B", "C")]
    assert peers(rank([good, *unmeasured], Need(tags=("x",)))) == ["A", "Z", "B", "C"]
    banned = Candidate(expert("Z", "z", tags=("x",)), latency_s=4.0, verified=True, banned=True)
    assert peers(rank([banned, *unmeasured], Need(tags=("x",))))[-1] == "Z"


def test_a_shared_name_prefers_the_claimant_that_served_this_node():
    served = Candidate(expert("B", "shared"), latency_s=1.5, verified=True)
    squatter = Candidate(expert("A", "shared", load=0.0), verified=True)
    assert peers(rank([squatter, served], Need(model="shared"))) == ["B"]


def test_observed_latency_and_failures_count():
    slow = Candidate(expert("A", "a"), latency_s=2.0)
    fast = Candidate(expert("B", "b"), latency_s=0.1)
    failing = Candidate(expert("C", "c"), recent_failures=1)
    assert peers(rank([slow, failing, fast], Need())) == ["B", "A", "C"]


def test_ties_are_stable_by_peer_id():
    cands = [Candidate(expert(pid, pid)) for pid in ("C", "A", "B")]
    assert peers(rank(cands, Need())) == ["A", "B", "C"]


def test_exclude_removes_failed_peers():
    cands = [Candidate(expert("A", "a")), Candidate(expert("B", "b"))]
    assert peers(rank(cands, Need(), exclude={"A"})) == ["B"]
    assert rank(cands, Need(), exclude={"A", "B"}) == []


def test_pinned_model_by_name_peer_or_adapter():
    cands = [Candidate(expert("A", "alpha", adapters=("law",))), Candidate(expert("B", "beta", tags=("law",)))]
    assert peers(rank(cands, Need(model="alpha", tags=("law",)))) == ["A"]
    assert peers(rank(cands, Need(model="B"))) == ["B"]
    routes = rank(cands, Need(model="alpha/law"))
    assert peers(routes) == ["A"] and routes[0].adapter == "law"


def test_pinned_unknown_model_raises():
    with pytest.raises(NoExpertAvailable):
        rank([Candidate(expert("A", "alpha"))], Need(model="gamma"))
    with pytest.raises(NoExpertAvailable):
        rank([Candidate(expert("A", "alpha", adapters=("law",)))], Need(model="alpha/math"))


def test_pinned_model_all_excluded_is_empty_not_unknown():
    assert rank([Candidate(expert("A", "alpha"))], Need(model="alpha"), exclude={"A"}) == []


def test_virtual_model_is_not_a_pin():
    cands = [Candidate(expert("A", "a")), Candidate(expert("B", "b", tags=("math",)))]
    assert peers(rank(cands, Need(model="mosaic/route", tags=("math",)))) == ["B", "A"]


def test_required_adapter_filters():
    cands = [Candidate(expert("A", "a", adapters=("law",))), Candidate(expert("B", "b"))]
    routes = rank(cands, Need(adapter="law"))
    assert peers(routes) == ["A"] and routes[0].adapter == "law"


def test_no_experts_is_empty():
    assert rank([], Need(tags=("x",))) == []


def test_model_ids_lists_adapters():
    assert model_ids(expert("A", "smol", adapters=("law", "math"))) == ["smol", "smol/law", "smol/math"]


def test_semantic_relevance_is_rescaled_and_ignored_when_flat():
    from node.coordinator.routing import rescale

    code, poet = Candidate(expert("A", "code")), Candidate(expert("B", "poet"))
    # Cosines as MiniLM gives them: low and close, yet the best match must win over ~2 s of latency.
    slow_code = Candidate(expert("A", "code"), latency_s=2.0)
    assert peers(rank([poet, slow_code], Need(), relevance={"A": 0.16, "B": 0.08})) == ["A", "B"]
    assert rescale({"A": 0.16, "B": 0.08}) == {"A": 1.0, "B": 0.0}
    assert rescale({"A": 0.11, "B": 0.10}) == {}  # no signal: load, latency and ties decide
    assert peers(rank([code, poet], Need(), relevance={"A": 0.11, "B": 0.12})) == ["A", "B"]
    # A full tag match still beats the best description.
    tagged = Candidate(expert("C", "c", tags=("poetry",)))
    assert peers(rank([code, tagged], Need(tags=("poetry",)), relevance={"A": 0.5, "C": 0.0}))[0] == "C"


def test_diverse_takes_distinct_peers_and_repeats_only_when_asked():
    from node.coordinator.routing import diverse

    routes = rank([Candidate(expert(x, x)) for x in "ABC"], Need())
    assert peers(diverse(routes, 2)) == ["A", "B"]
    assert peers(diverse(routes, 5)) == ["A", "B", "C"]
    assert peers(diverse(routes, 5, repeat=True)) == ["A", "B", "C", "A", "B"]
