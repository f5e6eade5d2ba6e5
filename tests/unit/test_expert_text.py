"""Incremental detokenization and per-request sampling with the real SmolLM2 tokenizer."""

from __future__ import annotations

import pytest

from node.expert.serve.detokenize import CompletionText
from node.expert.serve.sampling import TokenSampler, choose_tokens
from protocol import SamplingParams


@pytest.fixture(scope="module")
def tokenizer(torch_expert):
    return torch_expert.tokenizer


def stream(tokenizer, text: str, stop: tuple[str, ...] = ()) -> tuple[list[str], CompletionText]:
    completion = CompletionText(tokenizer, stop)
    pieces = []
    for token in tokenizer(text, add_special_tokens=False)["input_ids"]:
        pieces.append(completion.push(token))
        if completion.stopped:
            break
    if not completion.stopped:
        pieces.append(completion.finish())
    return pieces, completion


def test_pieces_add_up_to_the_text_including_multibyte_characters(tokenizer):
    text = "Paris est très belle — 東京 too 🙂!"
    pieces, completion = stream(tokenizer, text)
    assert "".join(pieces) == text == completion.text
    assert all("\ufffd" not in p for p in pieces)  # half characters are held back, never emitted


def test_stop_string_is_cut_and_never_leaks(tokenizer):
    pieces, completion = stream(tokenizer, "Answer: 42\nUser: next question", stop=("\nUser:",))
    assert completion.stopped and completion.text == "Answer: 42"
    assert "".join(pieces) == "Answer: 42"
    assert not any("User" in p for p in pieces)


def test_text_that_might_start_a_stop_string_is_held_back_until_it_cannot(tokenizer):
    completion = CompletionText(tokenizer, ("ENDX",))
    released = ""
    for token in tokenizer("one END two", add_special_tokens=False)["input_ids"]:
        released += completion.push(token)
        assert not released.endswith("END") or released.endswith(" two")
    released += completion.finish()
    assert released == "one END two" and not completion.stopped


def test_greedy_rows_take_the_argmax_and_seeded_rows_repeat():
    import torch

    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    greedy = TokenSampler(SamplingParams(), "cpu")
    a = [TokenSampler(SamplingParams(temperature=1.0, seed=5), "cpu") for _ in range(2)]
    first = choose_tokens(logits, [greedy, a[0], a[0]])
    second = choose_tokens(logits, [greedy, a[1], a[1]])
    assert first[0] == int(logits[0].argmax())
    assert first == second  # same seed, same draws


def test_tiny_top_p_keeps_only_the_top_token():
    import torch

    logits = torch.randn(200, generator=torch.Generator().manual_seed(1))
    sampler = TokenSampler(SamplingParams(temperature=2.0, top_p=0.01, seed=3), "cpu")
    assert {sampler.sample(logits) for _ in range(20)} == {int(logits.argmax())}
