"""The loop guard (node/expert/serve/repetition.py via CompletionText): a completion that repeats
one sentence over and over stops with one copy kept; lists, code, numbers and tables never do."""

from __future__ import annotations

import pytest

from node.expert.serve.detokenize import CompletionText
from node.expert.serve.repetition import repeat_at_end


class CharTokenizer:
    """One token per character: the guard sees every prefix of the text."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(map(chr, ids))


def generate(text: str, *, loop_guard: bool = True) -> tuple[str, CompletionText, int]:
    """Feed ``text`` as a model would; the streamed text, the completion, and the tokens it took."""
    completion = CompletionText(CharTokenizer(), loop_guard=loop_guard)
    streamed, used = "", 0
    for char in text:
        streamed += completion.push(ord(char))
        used += 1
        if completion.stopped:
            break
    else:
        streamed += completion.finish()
    assert streamed == completion.text  # nothing trimmed was ever handed out
    return streamed, completion, used


PARAGRAPH = ("The question asks for the product of six and seven, which the table of seven gives as "
             "forty-two. ")
LOOPS = {  # looping text -> what is kept
    "sentence": ("Sure! " + "The capital of France is Paris. " * 30, "Sure! The capital of France is Paris."),
    "line": ("I am a helpful assistant.\n" * 30, "I am a helpful assistant."),
    "paragraph": ("Answer: 42.\n\n" + PARAGRAPH * 6, "Answer: 42.\n\n" + PARAGRAPH.strip()),
    # SmolLM2-135M on llama.cpp, greedy, "What is the capital of Italy?" (unit "il Coriobella, ").
    "phrase": ("Il Coriobella, " + "il Coriobella, " * 29, "Il Coriobella,"),
}


@pytest.mark.parametrize("name", sorted(LOOPS))
def test_a_looping_completion_stops_with_the_sentence_said_once(name):
    loop, kept = LOOPS[name]
    text, completion, used = generate(loop)
    assert completion.stopped and completion.stop_reason == "repetition"
    assert text.strip() == kept
    assert used < len(loop) - len(kept)  # stopped copies before the end of the budget


KEPT = {
    "digits": "The number is " + "1" * 200,
    "list": "".join(f"{i}. Item number {i} of the list\n" for i in range(1, 40)),
    "table": "| a | b | c |\n" + "| 0 | 0 | 0 |\n" * 30,
    "zero matrix": "[[" + "],\n [".join(["0, 0, 0, 0, 0, 0, 0, 0"] * 12) + "]]",
    "rule": "Title\n" + "-" * 120 + "\nBody",
    "chant": "ha " * 80,
    "code": "def main():\n" + "    print(\"hello world again\")\n" * 3 + "    return 0\n",
    "numbered steps": "".join(f"Step {i}: add the next number to the total.\n" for i in range(1, 30)),
    "refrain twice": "Row, row, row your boat, gently down the stream.\n" * 2 + "Merrily, merrily, life is a dream.",
    "cheer four times": "Hip hip hooray for the team! " * 4,
    "two words seven times": "Il Coriobella, " * 7,
    "code loop": "for i in range(10):\n    total = total + values[i]\n" * 4,
}


@pytest.mark.parametrize("name", sorted(KEPT))
def test_legitimate_answers_are_never_cut(name):
    text, completion, _ = generate(KEPT[name])
    assert text == KEPT[name] and not completion.stopped


def test_a_repetition_that_stops_is_released_in_full():
    answer = "The answer is 42. The answer is 42. The answer is 42. So six times seven is 42."
    text, completion, _ = generate(answer)
    assert text == answer and not completion.stopped


def test_a_repeating_tail_is_held_back_until_it_breaks():
    completion = CompletionText(CharTokenizer())
    released = ""
    for char in "Paris is the capital. Paris is the capital":
        released += completion.push(ord(char))
    assert released == "Paris is the capital. "[: len(released)]  # the second copy is not handed out
    released += completion.push(ord("!"))  # the second copy ended differently: no loop
    assert released == "Paris is the capital. Paris is the capital!"


def test_the_guard_can_be_off_for_sessions():
    loop = "The capital of France is Paris. " * 20
    text, completion, _ = generate(loop, loop_guard=False)
    assert text == loop and not completion.stopped


def test_the_repeat_found_is_the_shortest_period():
    found = repeat_at_end("x " + "We like green apples. " * 6)
    assert found is not None and found.unit == len("We like green apples. ") and found.is_loop()
    assert repeat_at_end("We like green apples. " * 2) is not None and not repeat_at_end("We like green apples. " * 2).is_loop()
