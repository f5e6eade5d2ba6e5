"""Names the parser lists in ``--help``, written out here so building the parser imports
nothing heavy: the catalog, the strategy table and the merge methods live in packages
that import libp2p (0.8 s before ``--help`` printed).  tests/unit/test_cli_help.py
checks each list against its source, so they cannot drift apart.
"""

from __future__ import annotations

CATALOG_KEYS = ("smollm2-135m", "gemma3-270m", "qwen2.5-0.5b", "qwen2.5-1.5b")  # node.expert.model.catalog.CATALOG
STRATEGY_NAMES = ("route", "prompt-route", "vote", "select", "judge", "moa", "debate", "refine", "knowledge",
                  "decompose", "cascade", "fuse", "merge")  # node.coordinator.strategies.STRATEGIES
# What a client that names no length gets, from every door: node.api.openai_schema.DEFAULT_CHAT_MAX_TOKENS
# (the HTTP API), `node query`'s --max-tokens and the dashboard's box (node/api/static/index.html).
DEFAULT_MAX_TOKENS = 256
MERGE_METHODS = ("linear", "ties", "dare_ties", "dare_linear")  # node.expert.model.merge.METHODS
