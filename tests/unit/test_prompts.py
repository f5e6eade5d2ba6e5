"""Pure role prompts and the parsers of what roles answer."""

from __future__ import annotations

import protocol as p
from node.coordinator import prompts


def test_question_is_the_last_user_message_or_the_prompt():
    q = p.QueryRequest(request_id="q", messages=(p.ChatMessage(role="system", content="be brief"),
                                                  p.ChatMessage(role="user", content="What is 2+2?")))
    assert prompts.question(q) == "What is 2+2?"
    assert prompts.question(p.QueryRequest(request_id="q", prompt="2+2=")) == "2+2="


def test_role_prompts_show_the_question_and_the_numbered_answers():
    for chat in (prompts.aggregate("Q?", ["a1", "a2"]), prompts.summarize("Q?", ["a1", "a2"])):
        text = chat[-1].content
        assert chat[-1].role == "user" and "Q?" in text and "Answer 1:\na1" in text and "Answer 2:\na2" in text
    revise = prompts.revise("Q?", "mine", ["theirs"])[-1].content
    assert "Your previous answer:\nmine" in revise and "Answer 1:\ntheirs" in revise
    assert "Knowledge 2:\nk2" in prompts.answer_with_knowledge("Q?", ["k1", "k2"])[-1].content
    # A card may state the answer (forbidden it, the 1.5B wrote a wrong "fact" instead); the answerer may ignore cards.
    assert "do not answer" not in prompts.knowledge("Q?")[-1].content
    assert "ignore it where it is wrong" in prompts.answer_with_knowledge("Q?", ["k1"])[-1].content


def test_long_answers_are_clipped():
    text = prompts.aggregate("Q?", ["x" * 10_000])[-1].content
    assert len(text) < 2000 and "..." in text


def test_subquestions_are_parsed_from_numbered_or_bulleted_lines():
    reply = "Sure:\n1. What is 6*7?\n2) Is it even?\n- Who asked?\nok"
    assert prompts.parse_subquestions(reply, 5) == ["What is 6*7?", "Is it even?", "Who asked?"]
    assert prompts.parse_subquestions(reply, 2) == ["What is 6*7?", "Is it even?"]
    assert prompts.parse_subquestions("no list here", 3) == []


def test_router_choice_and_pairwise_verdicts():
    assert "1. math: numbers" in prompts.choose_expert("Q?", ["math: numbers", "poet"])[-1].content
    assert prompts.parse_choice("Expert 2.", 3) == 1
    assert prompts.parse_choice("0 or 7", 3) is None
    assert prompts.parse_pairwise("B") == "B" and prompts.parse_pairwise("Answer A is better") == "A"
    assert prompts.parse_pairwise("neither") is None


def test_compose_lists_subquestions_with_answers():
    text = prompts.compose("Q?", [("s1", "a1"), ("s2", "a2")])[-1].content
    assert "Sub-question 1: s1\nAnswer: a1" in text and "Sub-question 2: s2" in text
