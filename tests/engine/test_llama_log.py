"""llama.cpp's own log lines reach the node's log: warnings as warnings, except the ones it handles itself."""

from __future__ import annotations

import logging

import pytest

from node.expert.serve.llamacpp.backend import forward_log

HANDLED = b"load: control-looking token: 128247 '</s>' was not control-type; this is probably a bug in the model. " \
          b"its type will be overridden\n"


@pytest.mark.parametrize(("level", "text", "expected"), [
    (3, b"llama_context: n_ctx_per_seq (512) < n_ctx_train (32768) -- the full capacity of the model will not be used",
     logging.WARNING),
    (4, b"failed to allocate the KV cache", logging.ERROR),
    (3, HANDLED, logging.DEBUG),  # on every start of a catalog Qwen model: nothing a contributor can do
    (4, HANDLED, logging.ERROR),  # an error is never demoted
])
def test_llama_cpp_log_lines_keep_their_level_unless_llama_cpp_handled_them(caplog, level, text, expected):
    with caplog.at_level(logging.DEBUG):
        forward_log(level, text)
    [record] = [r for r in caplog.records if "llama_cpp_log" in r.getMessage()]
    assert record.levelno == expected


def test_info_and_metadata_lines_stay_out_of_the_log(caplog):
    with caplog.at_level(logging.DEBUG):
        forward_log(2, b"llama_model_loader: - kv   0: general.architecture str = qwen2")
    assert not [r for r in caplog.records if "llama_cpp_log" in r.getMessage()]
