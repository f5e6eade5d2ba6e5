"""Fixtures for real-node clusters on 127.0.0.1 (see tests/cluster/harness.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from .harness import InProcessCluster, in_process_cluster


@pytest.fixture
async def cluster() -> AsyncIterator[InProcessCluster]:
    """An empty in-process cluster: ``await cluster.add(i)`` starts node ``i`` (fixed identity)."""
    async with in_process_cluster(0) as running:
        yield running
