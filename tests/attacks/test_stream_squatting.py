"""Attack 6 (issue 12): stream squatting.

20 fresh identities holding 4 idle ``/mosaic/query/1`` streams each (within the
per-peer cap of 4) filled the protocol's 64 slots and every honest query got
``busy``.  Now a full protocol resets its longest-idle stream (one that never
sent a request) to admit a newcomer, and one IP / subnet may hold only a share
of the slots (loopback, this machine, is exempt: the real-node test below
shares 127.0.0.1, so the per-address caps are checked on the accounting).
"""

from __future__ import annotations

import contextlib

import pytest
import trio

import protocol as p
from node.coordinator.client import ask
from node.coordinator.service import QueryService
from node.expert.serve.service import ExpertService
from node.net.discovery import dial
from node.net.host import build_host, listen_multiaddrs
from node.net.keys import libp2p_key_pair
from node.net.streams import StreamClosed, _Limits, open_stream
from tests.cluster.harness import in_process_cluster

SQUATTERS = 20
STREAMS_EACH = 4


async def _run_host(host, task_status=trio.TASK_STATUS_IGNORED) -> None:
    async with host.run(listen_addrs=listen_multiaddrs(["/ip4/127.0.0.1/tcp/0"])):
        task_status.started()
        await trio.sleep_forever()


@pytest.mark.timeout(300)
async def test_idle_squatters_do_not_starve_honest_queries(base_expert) -> None:
    with trio.fail_after(240):
        async with in_process_cluster() as cluster, trio.open_nursery() as nursery:
            victim = await cluster.add(0, services=[ExpertService(expert=base_expert, threads=1), QueryService()])
            addr = victim.full_multiaddrs()[0]
            held = [0]

            async def squat(host) -> None:
                """Hold one idle stream, and open a new one whenever the node ends it (as a real
                squatter does: the node's 10 s first-message deadline alone frees nothing)."""
                while True:
                    try:
                        stream = await open_stream(host, victim.peer_id, p.QUERY_PROTOCOL)  # and say nothing
                    except StreamClosed:
                        await trio.sleep(0.05)
                        continue
                    held[0] += 1
                    with contextlib.suppress(Exception):  # reset, busy, timeout: all mean "open another"
                        await stream.receive()
                    held[0] -= 1

            for _ in range(SQUATTERS):
                host = build_host(libp2p_key_pair(p.Identity.generate()), ["/ip4/127.0.0.1/tcp/0"])
                await nursery.start(_run_host, host)
                await dial(host, addr)
                for _ in range(STREAMS_EACH):
                    nursery.start_soon(squat, host)
            with trio.fail_after(60):  # the protocol's 64 slots are all held by squatters
                while held[0] < 64:
                    await trio.sleep(0.05)

            honest = build_host(libp2p_key_pair(p.Identity.generate()), ["/ip4/127.0.0.1/tcp/0"])
            await nursery.start(_run_host, honest)
            await dial(honest, addr)
            for i in range(3):
                request = p.QueryRequest(request_id=f"honest-{i}", messages=(p.ChatMessage(role="user", content="Hi"),),
                                         sampling=p.SamplingParams(max_new_tokens=2), timeout_s=60.0, stream=False)
                with trio.fail_after(60):
                    async for event in ask(honest, victim.peer_id, request):  # raises QueryFailed("busy") if refused
                        last = event
                assert isinstance(last, p.QueryResult) and last.provenance[0].served_by == victim.peer_id
            nursery.cancel_scope.cancel()


def test_one_address_or_subnet_gets_only_a_share() -> None:
    limits = _Limits(max_per_peer=4, max_total=64)
    # 20 identities behind one public address: at most half the slots.
    admitted = sum(limits.try_acquire(f"sybil-{i}", "203.0.113.7") for i in range(20) for _ in range(4))
    assert admitted == 32
    # Their neighbours in the /24 get up to 3/4 of the slots together.
    admitted += sum(limits.try_acquire(f"neighbour-{i}", f"203.0.113.{10 + i}") for i in range(40))
    assert admitted == 48
    # Someone elsewhere still gets in, and loopback (this machine) is never address-capped.
    assert limits.try_acquire("honest", "198.51.100.1")
    assert limits.try_acquire("local", "127.0.0.1")
    for i in range(4):
        limits.release(f"sybil-{i}", "203.0.113.7")
    assert limits.per_ip["203.0.113.7"] == 28
