"""Fan-out with a quorum: ask several experts at once, stop waiting once enough have answered.

As in hivemind's ``moe/client/moe.py`` (``k_min`` + ``timeout_after_k_min``):
the fan-out returns when every call finished, or ``grace_s`` after the
``k_min``-th answer arrived, or at the stage deadline.  Calls still running
then are cancelled and marked ``late`` in the trace; a dead or paused expert
therefore costs at most its token budget (see Pool.token_budget), and never
blocks the answer when others responded.
"""

from __future__ import annotations

from collections.abc import Sequence

import trio

from .aggregate import quorum
from .calls import CLIENT_ERRORS, Ask, Reply, StepFailed
from .pool import Pool
from .routing import Route


async def fan_out(pool: Pool, routes: Sequence[Route], asks: Ask | Sequence[Ask], *, role: str, round: int = 0,
                  k_min: int | None = None, grace_s: float = 1.0, deadline: float | None = None,
                  spares: Sequence[Route] = ()) -> list[Reply]:
    """Ask ``routes[i]`` with ``asks[i]`` (or the same ask) concurrently; the replies in route order."""
    replies = await fan_out_indexed(pool, routes, asks, role=role, round=round, k_min=k_min, grace_s=grace_s,
                                    deadline=deadline, spares=spares)
    return [replies[i] for i in sorted(replies)]


async def fan_out_indexed(pool: Pool, routes: Sequence[Route], asks: Ask | Sequence[Ask], *, role: str,
                          round: int = 0, k_min: int | None = None, grace_s: float = 1.0,
                          deadline: float | None = None, spares: Sequence[Route] = ()) -> dict[int, Reply]:
    """As :func:`fan_out`, keyed by the index of the call that answered (calls that did not are absent).

    A call that fails takes the next unused expert from ``spares`` as its
    failover (never one already in the fan-out, so diversity holds).  Raises
    :class:`StepFailed` only when no call answered at all.
    """
    asks = [asks] * len(routes) if isinstance(asks, Ask) else list(asks)
    total = len(routes)
    k_min = total if k_min is None else max(1, min(k_min, total))
    deadline = pool.deadline if deadline is None else min(deadline, pool.deadline)
    replies: dict[int, Reply] = {}
    errors: list[StepFailed] = []
    spare_pool = [r for r in spares if r.peer_id not in {x.peer_id for x in routes}]
    changed = trio.Event()
    state = {"changed": changed}

    async def one(i: int) -> None:
        try:
            # The other members (and spares) are the failover: a queue without progress is not waited on.
            replies[i] = await pool.generate([routes[i]], asks[i], role=role, round=round, deadline=deadline,
                                             wait_last=total == 1 and not spare_pool)
        except StepFailed as exc:
            if exc.code in CLIENT_ERRORS or not spare_pool:
                errors.append(exc)
            else:
                spare = spare_pool.pop(0)
                try:
                    replies[i] = await pool.generate([spare], asks[i], role=role, round=round, deadline=deadline,
                                                     wait_last=total == 1)
                except StepFailed as exc2:
                    errors.append(exc2)
        state["changed"].set()
        state["changed"] = trio.Event()

    async with trio.open_nursery() as nursery:
        for i in range(total):
            nursery.start_soon(one, i)
        with trio.move_on_at(deadline):
            grace_until: float | None = None
            while True:
                decision = quorum(len(replies), len(errors), total, k_min)
                if decision == "done":
                    break
                if decision == "grace" and grace_until is None:
                    grace_until = trio.current_time() + grace_s
                event = state["changed"]
                with trio.move_on_at(grace_until if grace_until is not None else deadline):
                    await event.wait()
                if grace_until is not None and trio.current_time() >= grace_until:
                    break
        nursery.cancel_scope.cancel()
    if not replies:
        client = next((e for e in errors if e.code in CLIENT_ERRORS), None)
        if client is not None:
            raise client
        detail = "; ".join(e.message for e in errors)[:1500] or "no expert answered before the deadline"
        raise StepFailed("timeout" if not errors else "unavailable", f"no {role} answered: {detail}")
    return replies
