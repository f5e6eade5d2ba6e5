"""Hostile and malformed HTTP requests against the OpenAI-compatible API.

Every bad request gets the right 4xx status and an OpenAI-style error body,
and the node keeps serving: a good request (answered by a remote expert) is
checked after each bad one.
"""

from __future__ import annotations

import json
import socket

import httpx
import pytest
import trio

from node.api.app import MAX_BODY
from node.config import HttpConfig
from tests.cluster.test_query import expert_cluster

GOOD = {"model": "mosaic/route", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1, "temperature": 0}
CHAT = "/v1/chat/completions"


def chat(**changes) -> bytes:
    body = dict(GOOD)
    for key, value in changes.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    return json.dumps(body).encode()


def chunked(data: bytes, size: int = 64 * 1024):
    for start in range(0, len(data), size):
        yield data[start : start + size]


# (name, method, path, body, expected status, expected error code, expected param)
CASES = [
    ("malformed json", "POST", CHAT, b'{"model": "mosaic/route", "messages": [', 400, "invalid_json", None),
    ("not utf-8", "POST", CHAT, b"\xff\xfe\xfa", 400, "invalid_json", None),
    ("json array", "POST", CHAT, b"[1, 2]", 400, "invalid_value", None),
    ("deep nesting", "POST", CHAT, b"[" * 50_000, 400, None, None),
    ("empty body", "POST", CHAT, b"", 400, "invalid_json", None),
    ("unknown model", "POST", CHAT, chat(model="gpt-17"), 404, "model_not_found", "model"),
    ("unknown strategy", "POST", CHAT, chat(model="mosaic/no-such-strategy"), 404, "model_not_found", "model"),
    ("missing messages", "POST", CHAT, chat(messages=None), 400, "missing_required_parameter", "messages"),
    ("missing model", "POST", CHAT, chat(model=None), 400, "missing_required_parameter", "model"),
    ("empty messages", "POST", CHAT, chat(messages=[]), 400, "invalid_value", "messages"),
    ("bad role", "POST", CHAT, chat(messages=[{"role": "root", "content": "x"}]), 400, "invalid_value", "messages"),
    ("content not text", "POST", CHAT, chat(messages=[{"role": "user", "content": 5}]), 400, "invalid_value", "messages"),
    ("negative max_tokens", "POST", CHAT, chat(max_tokens=-5), 400, "invalid_value", "max_tokens"),
    ("huge max_tokens", "POST", CHAT, chat(max_tokens=10**9), 400, "invalid_value", "max_tokens"),
    ("temperature too high", "POST", CHAT, chat(temperature=7), 400, "invalid_value", "temperature"),
    ("temperature not a number", "POST", CHAT, chat(temperature="hot"), 400, "invalid_value", "temperature"),
    ("top_p zero", "POST", CHAT, chat(top_p=0), 400, "invalid_value", "top_p"),
    ("n > 1", "POST", CHAT, chat(n=3), 400, "unsupported_parameter", "n"),
    ("tools", "POST", CHAT, chat(tools=[{"type": "function", "function": {"name": "f"}}]), 400,
     "unsupported_parameter", "tools"),
    ("too many stops", "POST", CHAT, chat(stop=["a", "b", "c", "d", "e"]), 400, "invalid_value", "stop"),
    ("completion echo", "POST", "/v1/completions", json.dumps({"model": "node-1", "prompt": "x", "echo": True}).encode(),
     400, "unsupported_parameter", "echo"),
    ("completion missing prompt", "POST", "/v1/completions", json.dumps({"model": "node-1"}).encode(), 400,
     "missing_required_parameter", "prompt"),
    ("body over 1 MiB", "POST", CHAT, b"x" * (MAX_BODY + 1), 413, "request_too_large", None),
    ("deadline passes", "POST", CHAT, chat(timeout=0.001, max_tokens=64), 504, "timeout", None),
    ("wrong method", "GET", CHAT, None, 405, "method_not_allowed", None),
    ("unknown route", "GET", "/v1/engines", None, 404, "unknown_url", None),
    ("unknown model card", "GET", "/v1/models/nope", None, 404, "model_not_found", "model"),
]


def check_error(response: httpx.Response, status: int, code: str | None, param: str | None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] in ("invalid_request_error", "server_error", "timeout", "server_overloaded")
    if code is not None:
        assert error["code"] == code
    assert error["param"] == param


def good(http: httpx.Client, served: set[str]) -> None:
    response = http.post(CHAT, content=chat())
    assert response.status_code == 200, response.text
    assert response.headers["x-mosaic-served-by"] in served
    assert response.json()["choices"][0]["message"]["role"] == "assistant"


def raw_request(url: str, data: bytes) -> bytes:
    """Send raw bytes over a socket and return the status line (for things httpx will not send)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(data)
        return sock.recv(4096).split(b"\r\n", 1)[0]


async def test_bad_requests_get_openai_errors_and_the_node_keeps_serving(base_expert, adapter_expert):
    with trio.fail_after(110):
        async with expert_cluster(base_expert, adapter_expert, http=HttpConfig(listen="127.0.0.1:0")) as c:
            served = {c.base.peer_id, c.noisy.peer_id}

            def run_all() -> None:
                with httpx.Client(base_url=c.http.url, timeout=30) as http:
                    good(http, served)
                    for name, method, path, body, status, code, param in CASES:
                        response = http.request(method, path, content=body)
                        try:
                            check_error(response, status, code, param)
                        except AssertionError as exc:
                            raise AssertionError(f"case {name!r}: {exc}") from None
                        good(http, served)

                    # A body over the cap without Content-Length (chunked) is cut off while reading.
                    response = http.post(CHAT, content=chunked(b" " * (3 * MAX_BODY)))
                    check_error(response, 413, "request_too_large", None)
                    good(http, served)

                    # A prompt longer than the expert's context: the expert's typed error becomes a 413.
                    long = chat(messages=[{"role": "user", "content": "word " * 50_000}])
                    response = http.post(CHAT, content=long)
                    check_error(response, 413, "too_large", None)
                    good(http, served)

                    # A client that leaves in the middle of a stream does not disturb the server.
                    with http.stream("POST", CHAT, content=chat(max_tokens=64, stream=True)) as stream:
                        assert stream.status_code == 200
                        next(stream.iter_lines())
                    good(http, served)

                # Malformed HTTP itself (h11 rejects it before the app).
                status = raw_request(c.http.url, b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: nope\r\n\r\n")
                assert status.startswith(b"HTTP/1.1 400"), status
                with httpx.Client(base_url=c.http.url, timeout=30) as http:
                    good(http, served)

            await trio.to_thread.run_sync(run_all)


async def test_bearer_token_is_required(base_expert, adapter_expert):
    with trio.fail_after(100):
        http_config = HttpConfig(listen="127.0.0.1:0", token="tok-123")
        async with expert_cluster(base_expert, adapter_expert, http=http_config) as c:
            served = {c.base.peer_id, c.noisy.peer_id}

            def run_all() -> None:
                with httpx.Client(base_url=c.http.url, timeout=30) as anonymous:
                    for path in ("/v1/models", "/status"):
                        check_error(anonymous.get(path), 401, "invalid_api_key", None)
                    check_error(anonymous.post(CHAT, content=chat()), 401, "invalid_api_key", None)
                    check_error(anonymous.post(CHAT, content=chat(), headers={"authorization": "Bearer tok-12"}),
                                401, "invalid_api_key", None)
                    check_error(anonymous.post(CHAT, content=chat(), headers={"authorization": "Basic tok-123"}),
                                401, "invalid_api_key", None)
                    assert anonymous.get("/health").status_code == 200
                with httpx.Client(base_url=c.http.url, timeout=30, headers={"authorization": "Bearer tok-123"}) as http:
                    good(http, served)
                    status = http.get("/status").json()
                    assert status["peer_id"] == c.coordinator.peer_id
                    names = {peer["name"] for peer in status["peers"]}
                    assert names == {"node-0", "node-1", "node-2"}

            await trio.to_thread.run_sync(run_all)


@pytest.mark.parametrize("value", ["", "Bearer", "Bearer ", "bearer tok-123 extra"])
def test_malformed_authorization_headers_are_unauthorized(value):
    from node.api.app import MosaicApi
    from node.api.errors import ApiError
    from node.coordinator import Coordinator

    api = MosaicApi(Coordinator(lambda: [], None), token="tok-123")  # type: ignore[arg-type]
    with pytest.raises(ApiError) as info:
        api._authorize({"headers": [(b"authorization", value.encode())]})
    assert info.value.status == 401
