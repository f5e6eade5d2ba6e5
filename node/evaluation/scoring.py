"""Prompts and scoring for the three task types (rules of ``shared/data/tasks/README.md``).

One module serves the eval harness and the experts' self-evaluation on dev items, so a number
in a report and a number an expert advertises mean the same thing.

- multiple_choice: the chosen option is a leading letter; else the one option whose text appears
  in the reply; else a pattern ("answer is (B)", "Answer: B", "\\boxed{B}", "(B)", "B)", "B.").
  Score 1/0 against the gold letter.
- exact_match: the last ``\\box{...}``/``\\boxed{...}``; else the text after the last "Final
  Answer:", "The answer is", "Answer:"; else the whole reply.  Normalized (lower case, ASCII
  punctuation and the articles a/an/the dropped, whitespace collapsed) and compared for equality.
- f1_match: extracted like exact_match, scored by the best token F1 over the aliases.  An item
  counts as *solved* (for oracle, emergence and team votes) when that F1 is at least 0.5.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from dataclasses import dataclass

from .tasks import TaskItem

MC_INSTRUCTION = "Please select the correct answer by choosing the letter corresponding to your choice."
EM_INSTRUCTION = "Please provide the final, direct answer wrapped exactly as \\box{ANSWER}"
F1_SOLVED = 0.5


@dataclass(frozen=True)
class Score:
    """What was read from a reply and how it scored: ``value`` is 1/0 or the F1 in [0, 1]."""

    extracted: str | None
    value: float
    correct: bool


def build_prompt(item: TaskItem) -> str:
    """The single user turn sent for ``item`` (no system prompt, as in the paper's protocol)."""
    if item.task_type == "multiple_choice":
        lines = [item.question, *(f"{letter}) {text}" for letter, text in item.choices), MC_INSTRUCTION]
        return "\n".join(lines)
    return f"{item.question}\n\n{EM_INSTRUCTION}"


def score(item: TaskItem, reply: str) -> Score:
    """Extract the answer from ``reply`` and score it against ``item``."""
    if item.task_type == "multiple_choice":
        letter = extract_choice(reply, item.choices)
        ok = letter is not None and letter == item.answers[0]
        return Score(letter, 1.0 if ok else 0.0, ok)
    answer = extract_answer(reply)
    if item.task_type == "exact_match":
        ok = normalize(answer) == normalize(item.answers[0])
        return Score(answer, 1.0 if ok else 0.0, ok)
    f1 = max(token_f1(answer, alias) for alias in item.answers)
    return Score(answer, f1, f1 >= F1_SOLVED)


# ---------------------------------------------------------------- multiple choice

# "**B**", "(B)", "B)", "B.", "B:", "B" alone, "B - text": a letter that opens the reply.  A bare
# "A " followed by a word is the English article ("A good question ..."), not a choice.
_LEADING = re.compile(r"^[\s*_`\"'(\[]*([A-Za-z0-9])(?=\s*$|[)\].:,*_`\"']|\s+[-–—:]|\s*\n)")
_STRONG = (  # explicit statements of the answer; the last one wins (replies often revise)
    r"\\box(?:ed)?\{\s*\(?([A-Za-z0-9])\)?\s*\}",
    r"answer\s*(?:is|would be|should be|:)\s*[:\s]*(?:option|choice|letter)?\s*[*_`\"'(\[]*([A-Za-z0-9])\b(?![\w'-])",
    r"(?:option|choice|letter)\s*(?:is\s*)?:?\s*[*_`\"'(\[]*([A-Z0-9])\b(?![\w'-])",
)
_WEAK = (  # a letter marked as an option label anywhere; the first one wins
    r"\(([A-Z0-9])\)",
    r"(?<![\w\\])([A-Z0-9])\)",
    r"(?<![\w\\.])([A-Z0-9])\.(?!\w)",
)


def extract_choice(reply: str, choices: tuple[tuple[str, str], ...]) -> str | None:
    """The option key the reply chose, or None when it names none of ``choices``."""
    keys = {letter for letter, _ in choices}
    lead = _LEADING.match(reply)
    if lead and lead.group(1).upper() in keys and (lead.group(1).isupper() or not lead.group(1).isalpha()):
        return lead.group(1)
    by_text = _choice_by_text(reply, choices)
    if by_text is not None:
        return by_text
    for pattern in _STRONG:
        # The letter itself is case-sensitive: "the answer is a dog" names no option.
        found = [m.group(1) for m in re.finditer(pattern, reply, flags=re.IGNORECASE)]
        found = [f for f in found if f in keys]
        if found:
            return found[-1]
    for pattern in _WEAK:
        for m in re.finditer(pattern, reply):
            if m.group(1) in keys:
                return m.group(1)
    return None


def _choice_by_text(reply: str, choices: tuple[tuple[str, str], ...]) -> str | None:
    """The option whose (normalized) text appears in the reply, when exactly one does.

    A reply that quotes several options (reasoning about each) is left to the patterns.  An
    option whose text is inside another appearing option's text (e.g. "4" inside "4 km") does not
    count on its own.
    """
    said = f" {normalize(reply)} "
    hits = []
    for letter, text in choices:
        norm = normalize(text)
        if norm and f" {norm} " in said:
            hits.append((letter, norm))
    hits = [(letter, n) for letter, n in hits if not any(n != o and f" {n} " in f" {o} " for _, o in hits)]
    return hits[0][0] if len(hits) == 1 else None


# ---------------------------------------------------------------- free text

_BOX = re.compile(r"\\box(?:ed)?\s*\{")
_LEAD_INS = re.compile(r"(?:final answer\s*(?:is)?\s*:?|the answer is\s*:?|answer\s*:)", re.IGNORECASE)


def extract_answer(reply: str) -> str:
    """The answer a free-text reply commits to (see the module docstring for the order)."""
    boxed = _last_boxed(reply)
    if boxed is not None:
        return boxed.strip()
    leads = list(_LEAD_INS.finditer(reply))
    if leads:
        rest = reply[leads[-1].end():].strip()
        line = rest.split("\n", 1)[0].strip()
        return line.rstrip(".").strip() if line else rest
    return reply.strip()


def _last_boxed(reply: str) -> str | None:
    """The content of the last ``\\box{...}``/``\\boxed{...}``, braces balanced (``\\frac{1}{2}`` stays whole)."""
    found = None
    for m in _BOX.finditer(reply):
        depth, i = 1, m.end()
        while i < len(reply) and depth:
            depth += {"{": 1, "}": -1}.get(reply[i], 0)
            i += 1
        # An unclosed box (generation cut at max_tokens) still states its answer so far.
        found = reply[m.end():i - 1] if depth == 0 else reply[m.end():]
    return found


_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalize(text: str) -> str:
    """Lower case, ASCII punctuation removed, articles a/an/the removed, whitespace collapsed."""
    text = text.lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, gold: str) -> float:
    """SQuAD-style token F1 between normalized strings (0 when either is empty, unless both are)."""
    pred, ref = normalize(prediction).split(), normalize(gold).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)
