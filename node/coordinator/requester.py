"""Who a query is answered for: the remote peer on ``/mosaic/query/1``, for quotas on its behalf.

``/mosaic/query/1`` has no authentication: any peer may ask, and what a query
makes this node fetch or store (the ``merge`` strategy's adapters by CID) is
charged to that peer's quota (node/storage/quota.py, issue 22).  The query
server sets it around each query; the tasks a query starts inherit it (trio
copies the context into every task).  None: the node's own user (the HTTP API
on its own listen address, the CLI).
"""

from __future__ import annotations

from contextvars import ContextVar

current_requester: ContextVar[str | None] = ContextVar("mosaic_requester", default=None)
