"""The dashboard's routes on a real node without a model: the token rule, the state, the report files.

The page at ``/`` carries no data and loads without the token; every data
route (``/metrics``, ``/v1/dashboard/*``) needs it, like the rest of the API.
"""

from __future__ import annotations

import httpx
import trio
from prometheus_client.parser import text_string_to_metric_families

from node.api.service import HttpService
from node.config import HttpConfig
from node.coordinator.service import QueryService

TOKEN = "dashboard-secret"
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 32


async def get(url: str, token: str | None = None, **kw) -> httpx.Response:
    headers = {"authorization": f"Bearer {token}"} if token else {}

    def call() -> httpx.Response:
        with httpx.Client(timeout=10) as client:
            return client.get(url, headers=headers, **kw)

    return await trio.to_thread.run_sync(call)


async def test_page_is_public_data_needs_the_token_and_report_files_stay_inside(cluster, tmp_path):
    reports = tmp_path / "reports"
    (reports / "old").mkdir(parents=True)
    (reports / "old" / "accuracy.png").write_bytes(b"old")
    latest = reports / "2026-11-26-run"
    latest.mkdir()
    (latest / "accuracy.png").write_bytes(PNG)
    (latest / "report.md").write_text("# Report\n")
    (latest / "notes.txt").write_text("not served")
    (tmp_path / "secret.png").write_bytes(b"outside")
    import os
    os.utime(reports / "old", (1, 1))  # the older run

    queries = QueryService()
    http = HttpService(HttpConfig(listen="127.0.0.1:0", token=TOKEN, report_dir=str(reports)), queries=queries)
    with trio.fail_after(30):
        node = await cluster.add(0, services=[queries, http])
        await cluster.add(1)
        await node.registry.wait_for(lambda r: len(r) == 2, timeout=15)
        base = http.url

        page = await get(base + "/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert "/dashboard/app.js" in page.text and "script-src 'self'" in page.headers["content-security-policy"]
        script = await get(base + "/dashboard/app.js")
        assert script.status_code == 200 and "textContent" in script.text

        for path in ("/metrics", "/v1/dashboard/state", "/v1/dashboard/report/2026-11-26-run/accuracy.png"):
            assert (await get(base + path)).status_code == 401, path
            assert (await get(base + path, "wrong")).status_code == 401, path

        metrics = await get(base + "/metrics", TOKEN)
        assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(metrics.text)}
        assert families["mosaic_peers"].samples[0].value == 2
        assert families["mosaic_experts"].samples[0].value == 0

        state = (await get(base + "/v1/dashboard/state", TOKEN)).json()
        assert state["node"]["peer_id"] == node.peer_id and state["strategies"]
        assert {p["record"]["name"] for p in state["peers"]} == {"node-0", "node-1"}
        assert [p["self"] for p in state["peers"] if p["record"]["name"] == "node-0"] == [True]
        assert all(p["last_seen_s"] is not None and p["last_seen_s"] >= 0 for p in state["peers"])
        report = state["report"]
        assert report["name"] == "2026-11-26-run"
        assert [f["name"] for f in report["files"]] == ["accuracy.png", "report.md"]

        plot = await get(base + report["files"][0]["url"], TOKEN)
        assert plot.status_code == 200 and plot.content == PNG and plot.headers["content-type"] == "image/png"
        for bad in ("2026-11-26-run/notes.txt", "../secret.png", "..%2Fsecret.png", "missing.png"):
            assert (await get(base + "/v1/dashboard/report/" + bad, TOKEN)).status_code == 404, bad


async def test_events_stream_starts_with_the_state_and_follows_the_registry(cluster):
    queries = QueryService()
    http = HttpService(HttpConfig(listen="127.0.0.1:0"), queries=queries)
    with trio.fail_after(30):
        node = await cluster.add(0, services=[queries, http])

        events: list[dict] = []
        got_two = trio.Event()

        def read_stream() -> None:
            import json

            with httpx.Client(timeout=20) as client, client.stream("GET", http.url + "/v1/dashboard/events") as reply:
                assert reply.headers["content-type"].startswith("text/event-stream")
                for line in reply.iter_lines():
                    if line.startswith("data: "):
                        events.append(json.loads(line[6:]))
                        if events[-1]["type"] == "peers" and len(events[-1]["peers"]) == 2:
                            trio.from_thread.run_sync(got_two.set)
                            return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, read_stream)
            await cluster.add(1)
            await got_two.wait()
        assert events[0]["type"] == "state" and events[0]["state"]["node"]["peer_id"] == node.peer_id
