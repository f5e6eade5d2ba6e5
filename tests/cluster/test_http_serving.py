"""The HTTP API under real use (issue 11, items 14, 15, 16): abandoned requests, connection ends, odd input.

Node 0 serves the API and coordinates (no model); node 1 is the expert.
Raw sockets where the behaviour is about the connection itself.
"""

from __future__ import annotations

import json
import logging
import socket
from contextlib import asynccontextmanager

import httpx
import trio

from node.api.service import HttpService
from node.config import ExpertConfig, HttpConfig
from node.coordinator.service import QueryService
from node.expert.serve.service import ExpertService
from tests.cluster.harness import in_process_cluster

LONG = "Count from 1 to 1000, separated by commas."


@asynccontextmanager
async def api_cluster(base_expert):
    async with in_process_cluster() as cluster:
        queries = QueryService()
        http = HttpService(HttpConfig(listen="127.0.0.1:0"), queries=queries)
        coordinator = await cluster.add(0, services=[queries, http])
        expert = ExpertService(ExpertConfig(max_batch=4, queue_size=8), expert=base_expert, threads=1)
        expert_node = await cluster.add(1, services=[expert, QueryService()])
        await coordinator.registry.wait_for(lambda r: len(r.experts()) == 1, timeout=15)
        yield http.url, coordinator, expert, expert_node


def request_bytes(url: str, body: dict) -> bytes:
    data = json.dumps(body).encode()
    host = url.removeprefix("http://")
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n\r\n").encode() + data


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host, int(port)), timeout=30)


def chat(content: str, **fields) -> dict:
    return {"model": "mosaic/route", "messages": [{"role": "user", "content": content}], **fields}


async def wait_until(predicate, timeout: float, step: float = 0.05) -> bool:
    with trio.move_on_after(timeout):
        while not predicate():
            await trio.sleep(step)
        return True
    return False


async def test_an_abandoned_non_streaming_request_stops_generating(base_expert, caplog):
    """Item 14: a client that hangs up on a non-streamed request frees the expert, as streaming does,
    and the handler ends quietly (it once raised UnboundLocalError and logged a 500 per hang-up)."""
    caplog.set_level(logging.ERROR, logger="mosaic")
    with trio.fail_after(120):
        async with api_cluster(base_expert) as (url, _, expert, _node):
            sock = connect(url)
            try:
                sock.sendall(request_bytes(url, chat(LONG, max_tokens=2000, temperature=0)))
                # The generation is running on the expert (thousands of steps away from its end) ...
                assert await wait_until(lambda: expert.worker.active == 1 and expert.worker.steps > 3, 60)
            finally:
                sock.close()  # ... when the client goes away.
            steps_at_hangup = expert.worker.steps
            assert await wait_until(lambda: expert.worker.active == 0, 15), "the expert kept generating"
            assert expert.worker.steps - steps_at_hangup < 500
            # The handler's error, if any, is logged as the cancel unwinds, before the expert hears of it.
            unhandled = lambda: [r for r in caplog.records if "unhandled error" in r.getMessage()]  # noqa: E731
            assert not await wait_until(lambda: bool(unhandled()), 2.0), unhandled()[0].exc_text


async def test_a_streamed_answer_ends_and_the_connection_closes(base_expert):
    """Item 15: after data: [DONE] the chunked body ends and the server closes the connection."""
    with trio.fail_after(180):
        async with api_cluster(base_expert) as (url, _, _, _node):

            def exchange() -> bytes:
                with connect(url) as sock:
                    sock.sendall(request_bytes(url, chat("Say hi.", max_tokens=8, temperature=0, stream=True)))
                    sock.settimeout(90)  # the first answer may wait for a model load on a loaded box
                    received = b""
                    while True:
                        if b"data: [DONE]" in received:
                            sock.settimeout(10)  # the answer is complete: the close must follow promptly
                        try:
                            part = sock.recv(65536)
                        except TimeoutError:
                            return received + b"<still open>"
                        if not part:
                            return received  # the server closed the connection
                        received += part

            # Several in a row: the connection was left open by a race (about every other stream).
            for _ in range(4):
                received = await trio.to_thread.run_sync(exchange)
                head, _, body = received.partition(b"\r\n\r\n")
                assert head.startswith(b"HTTP/1.1 200")
                assert b"data: [DONE]" in body and not received.endswith(b"<still open>"), (head, received[-100:])
                assert body.endswith(b"0\r\n\r\n")  # the chunked body's terminator: the response ended properly
                assert b"connection: close" in head.lower()


async def test_odd_but_valid_sampling_and_odd_json(base_expert):
    """Item 16: tiny temperature/top_p are answered (greedy), never count against the expert;
    invalid UTF-8 in a string and deep nesting in ignored fields are 400s, not 500s."""
    with trio.fail_after(120):
        async with api_cluster(base_expert) as (url, coordinator, _, expert_node), \
                httpx.AsyncClient(base_url=url, timeout=60) as http:
            greedy = await http.post("/v1/chat/completions", json=chat("Name a colour.", max_tokens=6, temperature=0))
            for temperature, top_p in ((1e-300, 1.0), (1.0, 1e-300), (1e-300, 5e-324)):
                reply = await http.post("/v1/chat/completions", json=chat(
                    "Name a colour.", max_tokens=6, temperature=temperature, top_p=top_p))
                assert reply.status_code == 200, reply.text
                assert reply.json()["choices"][0]["message"] == greedy.json()["choices"][0]["message"]
            assert coordinator.service(QueryService).coordinator.health.failures(expert_node.peer_id) == 0
            head = b'{"model": "mosaic/route", "messages": [{"role": "user", "content": "hi"}]'
            for body in (b'{"model": "mosaic/route", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
                         head + b', "tools": ' + b"[" * 1200 + b"]" * 1200 + b"}",
                         head + b', "response_format": {"type": "text", "x": ' + b"[" * 1200 + b"]" * 1200 + b"}}",
                         head + b', "unknown": ' + b'{"a": ' * 1200 + b"1" + b"}" * 1200 + b"}"):
                reply = await http.post("/v1/chat/completions", content=body,
                                        headers={"content-type": "application/json"})
                assert reply.status_code == 400, (reply.status_code, reply.text[:300])
                assert reply.json()["error"]["code"] == "invalid_json"
