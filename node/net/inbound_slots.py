"""Give back py-libp2p's inbound connection slot when the connection closes (issue 22, attack 1).

The upstream leak, py-libp2p 0.8.1, ``libp2p/network/swarm.py``:

* ``Swarm._handle_inbound_connection`` takes a token of ``Swarm._inbound_limiter``
  (``trio.CapacityLimiter(max_connections - min_connections)``: 300 - 50 = 250 by
  default) and releases it only when ``_do_handle_inbound_connection`` returns;
* ``Swarm._do_handle_inbound_connection``, after a successful
  ``upgrade_inbound_raw_conn``, parks on ``await self.manager.wait_finished()``
  ("Intentional barrier: keep handler alive"): it returns when the *swarm*
  stops, not when the *connection* closes.

So every inbound connection that ever completed its upgrade holds a token (and
a task with its connection objects) for the node's lifetime; after 250 of them,
however short-lived, ``acquire_nowait`` fails and every new inbound connection is
closed unread, for good.  Any peer can do it in seconds with fresh identities
(one connection open at a time, so no per-IP cap engages), and a busy bootstrap
node does it to itself: every CLI command is an inbound connection that closes.

The handler must stay alive while the connection lives (trio's ``serve_listeners``
closes the socket when a handler returns), so the fix cannot just return early.
:func:`release_inbound_slots_on_close` wraps two methods of this one host's swarm
(nothing in site-packages is changed): ``_handle_inbound_connection`` marks its
task as a listener's, and ``upgrade_inbound_raw_conn``, in such a task only, waits
until the upgraded connection has closed (or the swarm stops) and then raises
:class:`InboundConnectionEnded`.  ``_do_handle_inbound_connection`` catches that
like any failed connection (it logs at debug and closes the already-closed
socket) and returns, and ``_handle_inbound_connection``'s ``finally`` releases the
token.  Other callers of ``upgrade_inbound_raw_conn`` (hole punching's
``dial_addr_as_responder``) get the upstream behaviour.
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import trio
from libp2p.abc import IHost, IMuxedConn
from libp2p.network.exceptions import SwarmException
from multiaddr import Multiaddr

# How often a muxer without a ``event_closed`` event is polled for ``is_closed``.
CLOSED_POLL_SECONDS = 1.0


# Set in the task of a listener's inbound handler (trio gives each task its own context).
_in_listener_handler: ContextVar[bool] = ContextVar("mosaic_in_listener_handler", default=False)


class InboundConnectionEnded(SwarmException):
    """Not an error: the upgraded inbound connection closed; unwinds libp2p's handler."""


async def wait_closed(muxed_conn: IMuxedConn) -> None:
    """Return once ``muxed_conn`` is closed (yamux sets ``event_closed``; others are polled)."""
    event = getattr(muxed_conn, "event_closed", None)
    if isinstance(event, trio.Event):
        await event.wait()
        return
    while not muxed_conn.is_closed:
        await trio.sleep(CLOSED_POLL_SECONDS)


def release_inbound_slots_on_close(host: IHost) -> None:
    """Make ``host``'s swarm release an inbound slot when that connection closes, not at shutdown."""
    swarm: Any = host.get_network()
    if getattr(swarm, "_mosaic_releases_inbound_slots", False):
        return
    handle = swarm._handle_inbound_connection  # the bound upstream methods
    upgrade = swarm.upgrade_inbound_raw_conn

    async def handle_marked(read_write_closer: Any, maddr: Multiaddr) -> None:
        _in_listener_handler.set(True)
        await handle(read_write_closer, maddr)

    async def upgrade_and_hold_until_closed(raw_conn: Any, maddr: Multiaddr) -> IMuxedConn:
        muxed_conn = await upgrade(raw_conn, maddr)
        if not _in_listener_handler.get():
            return muxed_conn
        # Until the connection closes, or the swarm stops (upstream's barrier): a stopping node
        # must still close its inbound connections, or its peers keep a dead node for live.
        async with trio.open_nursery() as nursery:

            async def until(wait: Any) -> None:
                await wait()
                nursery.cancel_scope.cancel()

            nursery.start_soon(until, lambda: wait_closed(muxed_conn))
            nursery.start_soon(until, swarm.manager.wait_finished)
        raise InboundConnectionEnded("inbound connection closed")

    swarm._handle_inbound_connection = handle_marked
    swarm.upgrade_inbound_raw_conn = upgrade_and_hold_until_closed
    swarm._mosaic_releases_inbound_slots = True
