"""``GET /metrics`` on a 3-node cluster with real experts: the text parses and the counters move.

Node 0 coordinates (HTTP API, no model); nodes 1 and 2 serve SmolLM2 (see
tests/cluster/test_query.py).  One query over HTTP, one over /mosaic/query/1
and one that runs out of time must each show up in node 0's metrics, and the dashboard's
usage table must credit the expert that answered.
"""

from __future__ import annotations

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from node.config import HttpConfig
from node.net.discovery import dial
from tests.cluster.test_query import ask_all, client_host, expert_cluster, query

QUESTION = {"model": "mosaic/route", "messages": [{"role": "user", "content": "Name a primary colour."}],
            "max_tokens": 6, "temperature": 0}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the exposition, keyed by (name, sorted labels)."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def http(method: str, url: str, **kw) -> httpx.Response:
    def call() -> httpx.Response:
        with httpx.Client(timeout=60) as client:
            return client.request(method, url, **kw)

    return await trio.to_thread.run_sync(call)


async def test_counters_move_after_queries(base_expert, adapter_expert):
    with trio.fail_after(100):
        async with expert_cluster(base_expert, adapter_expert, http=HttpConfig(listen="127.0.0.1:0")) as c:
            url = c.http.url
            before = samples((await http("GET", url + "/metrics")).text)
            assert before[("mosaic_peers", ())] == 3 and before[("mosaic_experts", ())] == 2
            assert before.get(("mosaic_requests_total", (("protocol", "http"), ("strategy", "route"))), 0) == 0

            reply = await http("POST", url + "/v1/chat/completions", json=QUESTION)
            assert reply.status_code == 200, reply.text
            served_by = reply.headers["x-mosaic-served-by"]
            completion_tokens = reply.json()["usage"]["completion_tokens"]
            late = await http("POST", url + "/v1/chat/completions", json={**QUESTION, "timeout": 0.001})
            assert late.status_code == 504, late.text
            async with client_host() as host:
                coordinator_id = await dial(host, c.coordinator.full_multiaddrs()[0])
                await ask_all(host, coordinator_id, query(tags=("n1",)))

            # The coordinator finishes its record just after the client got the result: wait for it.
            with trio.fail_after(30):  # it closes the expert's stream first: slow on a loaded box
                while (after := samples((await http("GET", url + "/metrics")).text))[("mosaic_queries_in_flight", ())]:
                    await trio.sleep(0.05)
            route_http = (("protocol", "http"), ("strategy", "route"))
            assert after[("mosaic_requests_total", route_http)] == 2
            assert after[("mosaic_requests_total", (("protocol", "libp2p"), ("strategy", "route")))] == 1
            assert after[("mosaic_request_errors_total", (("code", "timeout"), *route_http))] == 1
            assert after[("mosaic_tokens_total", (("kind", "completion"),))] >= completion_tokens > 0
            assert after[("mosaic_tokens_total", (("kind", "prompt"),))] > 0
            assert after[("mosaic_query_seconds_count", (("strategy", "route"),))] == 2
            assert after[("mosaic_time_to_first_token_seconds_count", (("strategy", "route"),))] == 2
            assert after[("mosaic_queries_in_flight", ())] == 0

            # The expert nodes' own metrics (no HTTP there: read the node's own object).
            expert_side = samples(c.base.metrics.render().decode())
            assert ("mosaic_requests_total", route_http) not in expert_side  # they did not coordinate

            state = (await http("GET", url + "/v1/dashboard/state")).json()
            assert [q["status"] for q in state["queries"]] == ["ok", "error", "ok"]
            assert state["queries"][0]["provenance"][0]["served_by"] == served_by
            assert state["queries"][1]["error"]["code"] == "timeout"
            usage = state["usage"]
            assert usage[c.base.peer_id]["won"] >= 1 and sum(u["served"] for u in usage.values()) == 2
