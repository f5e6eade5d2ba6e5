"""The known-answer items a node ships (issue 22 item 5): valid, scorable, and used without task files."""

from __future__ import annotations

from node.coordinator import reputation
from node.coordinator.known_answers import TASK, known_answer_items
from node.coordinator.reputation import PROBATION_ITEMS, Reputation, SpotChecker, wilson_lower
from node.evaluation import build_prompt, score


def test_every_item_scores_its_gold_right_and_the_other_options_wrong() -> None:
    items = known_answer_items()
    assert len(items) >= 200 and len({build_prompt(i) for i in items}) == len(items)  # no duplicate prompts
    for item in items:
        assert item.task == TASK and [c for c, _ in item.choices] == ["A", "B", "C", "D"]
        assert len({text for _, text in item.choices}) == 4
        assert score(item, item.gold).correct and score(item, f"The answer is {item.gold}.").correct
        assert not any(score(item, c).correct for c, _ in item.choices if c != item.gold)
    sums = [i for i in items if i.key.startswith("arith-") and " + " in i.question]
    a, _, b = sums[0].question.removeprefix("What is ").rstrip("?").partition(" + ")
    assert dict(sums[0].choices)[sums[0].gold] == str(int(a) + int(b))


def test_spot_checks_fall_back_to_the_shipped_items(monkeypatch) -> None:
    monkeypatch.setattr(reputation, "find_tasks_dir", lambda: None)
    items = reputation.load_check_items()
    assert items and all(i.task == TASK for i in items)


def test_trust_needs_evidence_and_ranks_a_liar_last() -> None:
    rep = Reputation()
    assert rep.trust("fresh") == 0.0  # keys are free: no evidence, no trust
    for n in range(10):
        rep.record("honest", n % 4 != 0)
        rep.record("liar", False)
    assert rep.trust("honest") > rep.trust("liar") == 0.0 < rep.trust("honest")
    assert 0.0 < wilson_lower(7, 10, 1.645) < 0.7


def test_probation_checks_new_contributors_more_often_and_the_least_checked_first() -> None:
    rep = Reputation()
    checker = SpotChecker(rep, [], rate=0.05)
    for _ in range(PROBATION_ITEMS):
        rep.record("old", True)
    assert checker.on_probation(["old", "new"]) == ["new"]
    assert checker.on_probation(["new"]) == []  # alone: nothing to compare with, the normal rate
    assert checker.pick(["old", "new"]) == "new"
    due = sum(checker.due(["old", "new"]) for _ in range(2000)) / 2000
    assert 0.2 < due < 0.3
    checker.rate = 0.0  # checks off: off, probation included
    assert not any(checker.due(["old", "new"]) for _ in range(100))
