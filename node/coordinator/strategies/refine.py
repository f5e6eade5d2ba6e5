"""``refine``: the debate's rounds of mutual revision (``debate.discuss``), ending in the best
expert's summary of the final answers rather than a vote."""

from __future__ import annotations

from typing import Any

from protocol import QueryRequest

from ..pool import Pool
from .base import Answer
from .debate import PARAMS as DEBATE_PARAMS
from .debate import conclude, discuss

PARAMS = {name: spec for name, spec in DEBATE_PARAMS.items() if name != "final"}


async def run(pool: Pool, query: QueryRequest, params: dict[str, Any]) -> Answer:
    params = {**params, "final": "summary"}
    return await conclude(pool, query, params, await discuss(pool, query, params))
