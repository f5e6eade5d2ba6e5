"""Pure aggregation: answer extraction and normalisation, vote, confidence, quorum decisions."""

from __future__ import annotations

import math

import pytest

from node.coordinator import aggregate as a


@pytest.mark.parametrize("text, key", [
    ("The answer is 42.", "42"),
    ("6 * 7 = 42", "42"),
    ("First 3 apples, then 4 more: #### 7", "7"),
    ("It costs $1,000.50 in total", "1000.5"),
    ("So x = 3.0", "3"),
    ("half: 1/2", "0.5"),
    ("\\boxed{12}", "12"),
    ("Answer: -5", "-5"),
])
def test_numbers(text, key):
    assert a.extract(text) == key
    assert a.extract(text, "number") == key


@pytest.mark.parametrize("text, key", [
    ("B", "B"), ("(c) because", "C"), ("The answer is D.", "D"), ("Answer: (a)", "A"), ("option b", "B"),
])
def test_option_letters(text, key):
    assert a.extract(text, "option") == key


def test_option_in_parentheses_only_when_asked_for_options():
    assert a.extract("I pick (B) since it fits", "option") == "B"
    assert a.extract("I pick (B) since it fits", "text") == "i pick b since it fits"


def test_short_text_is_normalised():
    assert a.extract("The Paris.\nIt is the capital.", "text") == "paris"
    assert a.extract("  PARIS!  ") == a.extract("paris") == "paris"
    assert len(a.extract("word " * 100, "text")) <= 64


def test_number_normalisation_is_one_key_per_value():
    assert a.normalize_number("1,000") == a.normalize_number("1000.0") == "1000"
    assert a.normalize_number("0.333333333") == "0.333333"
    assert a.normalize_number("1/0") == "1/0"  # not a value: kept as written


def test_vote_majority_and_winner_index():
    d = a.vote([a.Ballot("7"), a.Ballot("42"), a.Ballot("42")])
    assert (d.winner, d.votes, d.total, d.index) == ("42", 2, 3, 1)
    assert math.isclose(d.share, 2 / 3)


def test_vote_ties_go_to_the_higher_dev_score_then_the_earlier_ballot():
    assert a.vote([a.Ballot("7", tiebreak=0.2), a.Ballot("42", tiebreak=0.9)]).winner == "42"
    assert a.vote([a.Ballot("7"), a.Ballot("42")]).winner == "7"


def test_vote_weights_and_empty_keys():
    assert a.vote([a.Ballot("7", weight=3.0), a.Ballot("42"), a.Ballot("42")]).winner == "7"
    assert a.vote([a.Ballot(""), a.Ballot(""), a.Ballot("9")]).winner == "9"  # blanks do not vote
    assert a.vote([]).index == -1


def test_confidence_is_the_majority_share():
    assert a.confidence(["4", "4", "5"]) == ("4", pytest.approx(2 / 3))
    assert a.confidence(["x"]) == ("x", 1.0)


@pytest.mark.parametrize("ok, failed, total, k_min, state", [
    (0, 0, 3, 2, "wait"), (1, 0, 3, 2, "wait"), (2, 0, 3, 2, "grace"), (3, 0, 3, 2, "done"),
    (1, 2, 3, 2, "done"),  # no more answers can come: done with what there is
    (1, 1, 3, 2, "wait"), (0, 0, 2, 5, "wait"), (2, 0, 2, 5, "done"),
])
def test_quorum(ok, failed, total, k_min, state):
    assert a.quorum(ok, failed, total, k_min) == state


def test_mean_token_probability():
    assert a.mean_token_probability([]) == 0.0
    assert a.mean_token_probability([math.log(0.5)] * 4) == pytest.approx(0.5)
