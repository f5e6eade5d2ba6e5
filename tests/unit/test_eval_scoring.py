"""Scoring rules of shared/data/tasks/README.md on hand-written replies, for every task type."""

from __future__ import annotations

import pytest

from node.evaluation import (
    EM_INSTRUCTION,
    MC_INSTRUCTION,
    TaskItem,
    build_prompt,
    extract_answer,
    normalize,
    score,
    token_f1,
)

MC = TaskItem(
    task="arc", task_type="multiple_choice", split="test", key="q1",
    question="Which is the most likely effect of faster rotation?",
    answers=("C",),
    choices=(("A", "Planetary density will decrease."), ("B", "Planetary years will become longer."),
             ("C", "Planetary days will become shorter."), ("D", "Planetary gravity will become stronger.")),
)
EM = TaskItem(task="gsm8k", task_type="exact_match", split="test", key="7",
              question="Paul spends $6 and $2 a day for 14 days. How much?", answers=("112",))
F1 = TaskItem(task="popqa", task_type="f1_match", split="test", key="9", question="What is the capital of Var?",
              answers=("Toulon", "Port-la-Montagne", "Tolon"))


def test_prompts_follow_the_readme() -> None:
    assert build_prompt(MC) == (
        "Which is the most likely effect of faster rotation?\n"
        "A) Planetary density will decrease.\nB) Planetary years will become longer.\n"
        "C) Planetary days will become shorter.\nD) Planetary gravity will become stronger.\n" + MC_INSTRUCTION)
    assert build_prompt(EM) == EM.question + "\n\n" + EM_INSTRUCTION
    assert EM_INSTRUCTION.endswith("wrapped exactly as \\box{ANSWER}")


@pytest.mark.parametrize("reply", [
    "C", "C.", "C)", "(C)", "**C**", " C: the days get shorter", "C - because momentum",
    "The answer is C", "the answer is (C).", "Answer: C", "I think the correct answer is **C**.",
    "The correct option is C", "Option C", "\\boxed{C}", "So, \\box{C}",
    "Planetary days will become shorter.", "I believe planetary days will become shorter",
    "After thinking, (C) is right.", "Looking at it, C) fits best.",
])
def test_multiple_choice_phrasings_score_the_letter(reply: str) -> None:
    result = score(MC, reply)
    assert result.extracted == "C", reply
    assert result.correct and result.value == 1.0


@pytest.mark.parametrize("reply,expected", [
    ("B", "B"),
    ("A good question! The answer is D", "D"),  # a leading article is not option A
    ("the answer is a dog", None),  # a lowercase article is not option A
    ("I do not know.", None),
    ("", None),
    ("E) none of these", None),  # not an option of this item
    ("Answer: B. Actually, the answer is D", "D"),  # the last explicit statement wins
])
def test_multiple_choice_wrong_or_missing(reply: str, expected: str | None) -> None:
    result = score(MC, reply)
    assert result.extracted == expected
    assert not result.correct and result.value == 0.0


def test_multiple_choice_text_of_several_options_falls_back_to_patterns() -> None:
    reply = ("Planetary years will become longer is wrong; planetary days will become shorter "
             "is right, so the answer is (C).")
    assert score(MC, reply).extracted == "C"


def test_multiple_choice_digit_keys() -> None:
    item = TaskItem("arc", "multiple_choice", "test", "n", "Nutrient source for fungi?", ("4",),
                    (("1", "sunlight"), ("2", "oxygen"), ("3", "carbon dioxide"), ("4", "dead organisms")))
    assert score(item, "4) dead organisms").correct
    assert score(item, "They feed on dead organisms.").correct
    assert score(item, "The answer is 2").extracted == "2"


@pytest.mark.parametrize("reply", [
    "He pays 6*14 + 2*14 = 112. \\box{112}",
    "So the total is \\boxed{112}.",
    "First guess \\box{100}, corrected: \\boxed{112}",
    "Final Answer: 112",
    "Reasoning...\nThe answer is $112.\nThanks",
    "answer: 112.",
    "112",
    "  $112 ",
    "\\boxed{112",  # cut by max_tokens inside the box
])
def test_exact_match_extraction(reply: str) -> None:
    assert score(EM, reply).correct, (reply, score(EM, reply))


@pytest.mark.parametrize("reply", ["\\box{113}", "Final Answer: 11 2 dollars", "I spent 112 dollars in total"])
def test_exact_match_wrong(reply: str) -> None:
    result = score(EM, reply)
    assert not result.correct and result.value == 0.0


def test_exact_match_nested_braces_and_normalization() -> None:
    math = TaskItem("math", "exact_match", "test", "1", "Simplify", ("\\frac{1}{2}",))
    assert extract_answer("so \\boxed{\\frac{1}{2}} done") == "\\frac{1}{2}"
    assert score(math, "so \\boxed{\\frac{1}{2}} done").correct
    bbh = TaskItem("bbh", "exact_match", "test", "2", "Is it valid?", ("valid",))
    assert score(bbh, "\\box{Valid.}").correct
    assert not score(bbh, "\\box{invalid}").correct
    assert normalize("  The  Eiffel, Tower! ") == "eiffel tower"
    assert normalize("An apple a day") == "apple day"


def test_f1_best_alias() -> None:
    assert score(F1, "\\box{Toulon}").value == 1.0
    assert score(F1, "The answer is Tolon").correct
    partial = score(F1, "\\box{Port la Montagne city}")  # 'port-la-montagne' normalizes to one token
    assert partial.value == pytest.approx(token_f1("Port la Montagne city", "Port-la-Montagne"))
    near = score(F1, "Final Answer: Toulon France")
    assert near.value == pytest.approx(2 / 3) and near.correct  # best alias F1 >= 0.5 counts as solved
    assert score(F1, "Paris").value == 0.0 and not score(F1, "Paris").correct


def test_token_f1_values() -> None:
    assert token_f1("the cat sat", "cat sat down") == pytest.approx(0.8)
    assert token_f1("", "") == 1.0
    assert token_f1("", "x") == 0.0
