import os
import shutil
import sys
import tempfile

import pytest

# Tests never reach a model hub: every model comes from an installed package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# As node/__main__.py: numpy's BLAS single-threaded (in-process nodes embed with numpy MiniLM).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# The one place that pins the tests' model: a node started with no --model (in-process experts of
# load_expert(None) and `python -m node start` children, which inherit the environment) serves
# SmolLM2-135M, not the heavier default (node/expert/model/catalog.py, DEFAULT_KEY).  A test about
# the default itself removes it (monkeypatch.delenv).
os.environ.setdefault("MOSAIC_DEFAULT_MODEL", "smollm2-135m")

# The model cache is per user (~/.cache/mosaic): tests must not write there.  Every
# in-process expert and every `python -m node start` child shares one test cache:
# $MOSAIC_TEST_DATA_DIR to reuse conversions across runs, else a session temp dir.
_OWN_CACHE = None
if not os.environ.get("MOSAIC_CACHE_DIR"):
    _OWN_CACHE = os.environ.get("MOSAIC_TEST_DATA_DIR") or tempfile.mkdtemp(prefix="mosaic-test-cache-")
    os.environ["MOSAIC_CACHE_DIR"] = _OWN_CACHE


def _one_torch_thread() -> None:
    """Torch computes in the test's own thread too (reference forwards, fixtures, training): one thread.

    Torch's intra-op thread count is per calling thread; the main thread defaults to every core,
    and on a busy 2-core box two threads make a forward 7x slower (0.4 s vs 2.9 s measured at load
    5; test_fuse's torch reference took 82 s, 13 s pinned).  Experts pin their own worker threads.
    """
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef, request):
    _one_torch_thread()  # a fixture that computes with torch already imported
    yield
    _one_torch_thread()  # a fixture that imported it


def pytest_runtest_call(item):
    _one_torch_thread()


def pytest_sessionfinish(session, exitstatus):
    if _OWN_CACHE and not os.environ.get("MOSAIC_TEST_DATA_DIR"):
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


# Expert fixtures (session-scoped model loads) live in tests/expert/fixtures.py.
from tests.expert.fixtures import (  # noqa: E402,F401
    adapter_expert,
    base_expert,
    engine_experts,
    expert_data_dir,
    llama_adapter_expert,
    llama_expert,
    lora_adapter_dir,
    torch_adapter_expert,
    torch_expert,
)
from tests.training.fixtures import trained_adapters  # noqa: E402,F401
