"""Pure role prompts of the collaboration strategies, and parsers of what the roles answer.

Small instruct models follow short, concrete instructions best, so each prompt
restates the question, shows the other answers as a numbered list and asks for
one thing.  Long inputs are clipped (``clip``) so a round of debate cannot grow
the prompt past a small expert's context.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from protocol import ChatMessage, QueryRequest

ANSWER_CLIP = 1200  # characters of each other answer shown to an expert
QUESTION_CLIP = 4000

Chat = tuple[ChatMessage, ...]


def clip(text: str, limit: int) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def question(query: QueryRequest) -> str:
    """The question in plain text: the last user message, or the raw prompt."""
    if query.messages is not None:
        users = [m.content for m in query.messages if m.role == "user"]
        return users[-1] if users else query.messages[-1].content
    return query.prompt or ""


def plain(text: str, system: str | None = None) -> Chat:
    """A one-turn chat (optionally with a system message)."""
    head = (ChatMessage(role="system", content=system),) if system else ()
    return head + (ChatMessage(role="user", content=text),)


def _numbered(answers: Sequence[str], label: str = "Answer") -> str:
    return "\n\n".join(f"{label} {i + 1}:\n{clip(a, ANSWER_CLIP)}" for i, a in enumerate(answers))


# The prompts follow the toolkit's (research/paper.md: refine shows the others' answers "as additional
# advice", moa asks to critically evaluate them) cut down for 135M-0.5B models, validated on
# SmolLM2-135M (docs/collaboration.md, "Prompts small models follow"): short, the others' answers
# marked as possibly wrong, and the question restated last, so that a small model's reply answers
# the question instead of commenting on the list ("I'm ready to help", "The answer is correct.").
MAY_BE_WRONG = "(some may be wrong)"


def aggregate(q: str, answers: Sequence[str]) -> Chat:
    """Mixture-of-agents aggregator: one correct answer from the proposals."""
    q = clip(q, QUESTION_CLIP)
    return plain(
        f"Question: {q}\n\nAnswers from other assistants {MAY_BE_WRONG}:\n\n{_numbered(answers)}\n\n"
        f"Reply with the correct answer only.\n\nQuestion: {q}")


def revise(q: str, own: str, others: Sequence[str]) -> Chat:
    """Refine / debate round: see the others' answers, then give an updated answer."""
    q = clip(q, QUESTION_CLIP)
    return plain(
        f"Question: {q}\n\nAnswers from other assistants {MAY_BE_WRONG}:\n\n{_numbered(others)}\n\n"
        f"Your previous answer:\n{clip(own, ANSWER_CLIP)}\n\n"
        f"Using the other answers as additional advice, give your updated answer.\n\nQuestion: {q}")


def summarize(q: str, answers: Sequence[str]) -> Chat:
    """The best expert's closing summary of a debate."""
    q = clip(q, QUESTION_CLIP)
    return plain(
        f"Question: {q}\n\nFinal answers after a discussion {MAY_BE_WRONG}:\n\n{_numbered(answers)}\n\n"
        f"Reply with the correct answer only.\n\nQuestion: {q}")


def knowledge(q: str) -> Chat:
    """Knowledge card: two or three true facts relevant to the question.

    Not "do not answer the question": forbidden the one fact it knows best, the 1.5B wrote
    "Mercury is known as the Red Planet." as background for "Which planet is known as the Red
    Planet?" (its plain answer is Mars), and the answerer repeated it.  A card may state the answer.
    """
    return plain(
        f"Write two or three short, true facts that are relevant to the question below.\n\n"
        f"Question: {clip(q, QUESTION_CLIP)}")


def answer_with_knowledge(q: str, cards: Sequence[str]) -> Chat:
    """The answer with the cards as context the answerer may ignore (the question restated last)."""
    q = clip(q, QUESTION_CLIP)
    return plain(
        f"Background knowledge from other assistants {MAY_BE_WRONG}:\n\n{_numbered(cards, 'Knowledge')}\n\n"
        f"Use the knowledge only where it agrees with what you know, and ignore it where it is wrong. "
        f"Answer the question.\n\nQuestion: {q}")


def decompose(q: str, max_parts: int) -> Chat:
    return plain(
        f"Split the question below into at most {max_parts} simpler sub-questions that together answer it. "
        f"Write one sub-question per line, numbered 1., 2., ... and nothing else.\n\n"
        f"Question:\n{clip(q, QUESTION_CLIP)}")


_NUMBERED_LINE = re.compile(r"^\s*(?:\d+[.)]|[-*])\s*(.+?)\s*$")


def parse_subquestions(text: str, max_parts: int) -> list[str]:
    """The sub-questions of a decomposer's reply (numbered or bulleted lines), at most ``max_parts``."""
    parts = []
    for line in text.splitlines():
        match = _NUMBERED_LINE.match(line)
        if match and len(match.group(1)) > 3:
            parts.append(clip(match.group(1), 500))
    return parts[:max_parts]


def compose(q: str, subs: Sequence[tuple[str, str]]) -> Chat:
    steps = "\n\n".join(f"Sub-question {i + 1}: {clip(s, 500)}\nAnswer: {clip(a, ANSWER_CLIP)}"
                        for i, (s, a) in enumerate(subs))
    q = clip(q, QUESTION_CLIP)
    return plain(
        f"Question: {q}\n\nIt was split into sub-questions, answered by other assistants {MAY_BE_WRONG}:\n\n"
        f"{steps}\n\nUsing these, answer the question.\n\nQuestion: {q}")


def choose_expert(q: str, descriptions: Sequence[str]) -> Chat:
    """prompt-route: the router reads the numbered self-descriptions and names one."""
    listing = "\n".join(f"{i + 1}. {clip(d, 300)}" for i, d in enumerate(descriptions))
    return plain(
        f"Experts:\n{listing}\n\nQuestion:\n{clip(q, QUESTION_CLIP)}\n\n"
        f"Which expert (1-{len(descriptions)}) is best suited to answer the question? "
        "Reply with the number only.")


def parse_choice(text: str, n: int) -> int | None:
    """0-based index of the first number 1..n in the router's reply, else None."""
    for match in re.finditer(r"\d+", text):
        value = int(match.group())
        if 1 <= value <= n:
            return value - 1
    return None


def pairwise(q: str, first: str, second: str) -> Chat:
    """Pairwise judge: which of two answers is better (position bias is handled by asking both ways)."""
    return plain(
        f"Question:\n{clip(q, QUESTION_CLIP)}\n\nAnswer A:\n{clip(first, ANSWER_CLIP)}\n\n"
        f"Answer B:\n{clip(second, ANSWER_CLIP)}\n\nWhich answer is more correct and helpful? Reply with A or B only.")


def parse_pairwise(text: str) -> str | None:
    """``"A"`` or ``"B"`` from a judge's reply, else None."""
    match = re.search(r"\b([AB])\b", text.strip().upper())
    return match.group(1) if match else None


def judge_context(q: str) -> Chat:
    """The prompt under which a judge scores each candidate's log-likelihood."""
    return plain(f"{clip(q, QUESTION_CLIP)}")
