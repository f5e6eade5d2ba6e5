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


def aggregate(q: str, answers: Sequence[str]) -> Chat:
    """Mixture-of-agents aggregator: synthesise one best answer from the proposals."""
    return plain(
        f"Question:\n{clip(q, QUESTION_CLIP)}\n\nSeveral assistants answered:\n\n{_numbered(answers)}\n\n"
        "Critically evaluate these answers; some may be wrong. Write one correct, complete answer "
        "to the question. Reply with the answer only.")


def revise(q: str, own: str, others: Sequence[str]) -> Chat:
    """Refine / debate round: see the others' answers, then give an updated answer."""
    return plain(
        f"Question:\n{clip(q, QUESTION_CLIP)}\n\nYour previous answer:\n{clip(own, ANSWER_CLIP)}\n\n"
        f"Other assistants answered:\n\n{_numbered(others)}\n\n"
        "Using their reasoning as additional advice, give your updated answer. "
        "State the final answer clearly at the end.")


def summarize(q: str, answers: Sequence[str]) -> Chat:
    """The best expert's closing summary of a debate."""
    return plain(
        f"Question:\n{clip(q, QUESTION_CLIP)}\n\nAfter a discussion, the participants' final answers are:\n\n"
        f"{_numbered(answers)}\n\nSummarise the discussion into one final answer to the question. "
        "Reply with the answer only.")


def knowledge(q: str) -> Chat:
    """Knowledge card: background facts, not the answer."""
    return plain(
        f"Write a short paragraph of background knowledge that is relevant to the question below. "
        f"Give facts only; do not answer the question.\n\nQuestion:\n{clip(q, QUESTION_CLIP)}")


def answer_with_knowledge(q: str, cards: Sequence[str]) -> Chat:
    return plain(
        f"Background knowledge from several experts:\n\n{_numbered(cards, 'Knowledge')}\n\n"
        f"Using the knowledge where it helps, answer the question.\n\nQuestion:\n{clip(q, QUESTION_CLIP)}")


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
    return plain(
        f"Question:\n{clip(q, QUESTION_CLIP)}\n\nIt was split into sub-questions, answered by experts:\n\n{steps}\n\n"
        "Using these, write the final answer to the original question.")


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
