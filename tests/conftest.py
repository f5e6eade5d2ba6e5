import os

# Tests never reach a model hub: every model comes from an installed package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Expert fixtures (session-scoped model loads) live in tests/expert/fixtures.py.
from tests.expert.fixtures import adapter_expert, base_expert, expert_data_dir, lora_adapter_dir  # noqa: E402,F401
