"""Stream handlers under abuse: idle streams, silent streams, garbage, oversize, slow handlers."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager

import pytest
import trio

from node.net.discovery import dial
from node.net.exchange import fetch_table
from node.net.host import build_host, listen_multiaddrs
from node.net.keys import libp2p_key_pair
from node.net.streams import OPEN_SWARM, FramedStream, StreamClosed, open_stream, serve
from protocol import RECORD_PROTOCOL, Cancel, ErrorMessage, Identity
from protocol.framing import encode_varint

from ..cluster.harness import in_process_cluster

LOOPBACK = ["/ip4/127.0.0.1/tcp/0"]
ECHO = "/mosaic-test/echo/1"


def _address(host) -> str:
    addr = str(host.get_addrs()[0])
    return addr if "/p2p/" in addr else f"{addr}/p2p/{host.get_id().to_base58()}"


@asynccontextmanager
async def _hosts(count: int):
    hosts = [build_host(libp2p_key_pair(Identity.generate()), LOOPBACK) for _ in range(count)]
    async with trio.open_nursery() as nursery:
        for host in hosts:
            await nursery.start(_run_host, host)
        yield hosts
        nursery.cancel_scope.cancel()


async def _run_host(host, task_status=trio.TASK_STATUS_IGNORED) -> None:
    async with host.run(listen_addrs=listen_multiaddrs(LOOPBACK)):
        task_status.started()
        await trio.sleep_forever()


async def _echo(stream: FramedStream) -> None:
    while True:
        try:
            message = await stream.receive(Cancel)
        except StreamClosed:
            return
        if message.request_id == "boom":
            raise RuntimeError("secret internal detail")
        if message.request_id == "hang":
            await trio.sleep_forever()
        await stream.send(message)


async def _request(host, peer_id: str, request_id: str = "hello") -> object:
    stream = await open_stream(host, peer_id, ECHO)
    try:
        await stream.send(Cancel(request_id=request_id))
        return await stream.receive()
    finally:
        await stream.aclose()


async def test_idle_streams_from_one_peer_do_not_starve_another() -> None:
    with trio.fail_after(30):
        async with _hosts(3) as (server, attacker, honest):
            serve(server, ECHO, _echo, allowlist=OPEN_SWARM, first_message_timeout=20.0, max_per_peer=4, max_total=64)
            server_id = server.get_id().to_base58()
            await dial(attacker, _address(server))
            await dial(honest, _address(server))
            held = [await open_stream(attacker, server_id, ECHO) for _ in range(4)]
            # Streams beyond the per-peer cap are refused at once with a typed "busy".
            started = time.monotonic()
            for _ in range(20):
                extra = await open_stream(attacker, server_id, ECHO)
                reply = await extra.receive()
                assert isinstance(reply, ErrorMessage) and reply.code == "busy"
                await extra.aclose()
            assert time.monotonic() - started < 5.0
            # The honest peer is served promptly while the attacker still holds its idle streams.
            started = time.monotonic()
            reply = await _request(honest, server_id)
            elapsed = time.monotonic() - started
            assert reply == Cancel(request_id="hello")
            assert elapsed < 0.5, f"honest request took {elapsed:.3f}s"
            for stream in held:
                await stream.reset()


async def test_idle_streams_on_a_node_record_protocol_do_not_block_table_fetches() -> None:
    with trio.fail_after(30):
        async with in_process_cluster(1) as cluster, _hosts(2) as (attacker, honest):
            node = cluster.nodes[0]
            await dial(attacker, node.full_multiaddrs()[0])
            held = [await open_stream(attacker, node.peer_id, RECORD_PROTOCOL) for _ in range(30)]
            await dial(honest, node.full_multiaddrs()[0])
            started = time.monotonic()
            records = await fetch_table(honest, node.peer_id, None)
            elapsed = time.monotonic() - started
            assert len(records) == 1 and elapsed < 0.5, f"fetch took {elapsed:.3f}s"
            for stream in held:
                await stream.reset()


async def test_silent_stream_is_closed_after_the_first_message_deadline() -> None:
    first_message_timeout = 0.5
    with trio.fail_after(20):
        async with _hosts(2) as (server, client):
            serve(server, ECHO, _echo, allowlist=OPEN_SWARM, first_message_timeout=first_message_timeout, deadline=30.0)
            await dial(client, _address(server))
            stream = await open_stream(client, server.get_id().to_base58(), ECHO)
            started = time.monotonic()
            reply = await stream.receive()  # we send nothing; the server gives up on us
            waited = time.monotonic() - started
            assert isinstance(reply, ErrorMessage) and reply.code == "timeout"
            with pytest.raises(StreamClosed):
                await stream.receive()
            closed_after = time.monotonic() - started
    print(f"silent stream: timeout reply after {waited:.3f}s, closed after {closed_after:.3f}s")
    assert first_message_timeout - 0.05 <= waited <= first_message_timeout + 1.0


async def test_handler_deadline_bounds_a_stream_that_went_quiet_mid_exchange() -> None:
    with trio.fail_after(20):
        async with _hosts(2) as (server, client):
            serve(server, ECHO, _echo, allowlist=OPEN_SWARM, first_message_timeout=5.0, deadline=0.8)
            await dial(client, _address(server))
            started = time.monotonic()
            reply = await _request(client, server.get_id().to_base58(), "hang")
            assert isinstance(reply, ErrorMessage) and reply.code == "timeout"
            assert 0.7 <= time.monotonic() - started <= 2.0


async def test_garbage_oversize_and_crashes_get_typed_errors_and_the_server_keeps_serving() -> None:
    with trio.fail_after(30):
        async with _hosts(2) as (server, client):
            serve(server, ECHO, _echo, allowlist=OPEN_SWARM, max_frame=4096)
            server_id = server.get_id().to_base58()
            await dial(client, _address(server))

            async def raw(payload: bytes) -> object:
                stream = await open_stream(client, server_id, ECHO)
                await stream.raw.write(payload)
                try:
                    return await stream.receive()
                finally:
                    await stream.aclose()

            garbage = await raw(encode_varint(8) + b"\xc1\xff\x00garbg")
            assert isinstance(garbage, ErrorMessage) and garbage.code == "bad_request"
            huge = await raw(encode_varint(2**40))
            assert isinstance(huge, ErrorMessage) and huge.code == "too_large"
            bad_varint = await raw(b"\xff" * 11)
            assert isinstance(bad_varint, ErrorMessage) and bad_varint.code == "bad_request"
            crash = await _request(client, server_id, "boom")
            assert isinstance(crash, ErrorMessage) and crash.code == "internal"
            assert "secret" not in crash.message and "Traceback" not in crash.message
            assert await _request(client, server_id) == Cancel(request_id="hello")
