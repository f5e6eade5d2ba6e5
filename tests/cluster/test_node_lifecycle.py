"""Start-up and shutdown of real nodes on 127.0.0.1: used ports, bootstrap retry, goodbye
records, fetch-only clients (issue 11, items 1, 7, 8, 10)."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import pytest
import trio

from node.app import Node
from node.net.discovery import routing_table_peers
from node.net.ports import PortInUse
from node.storage import BlockStore, StorageService
from node.storage.providers import find_providers
from tests.cluster.harness import fixed_identity, in_process_cluster, node_config, prepare_data_dir

pytestmark = pytest.mark.timeout(60)


def _port_of(node: Node) -> int:
    return int(node.full_multiaddrs()[0].split("/tcp/")[1].split("/")[0])


async def test_a_node_refuses_a_port_another_node_listens_on(tmp_path: Path) -> None:
    with trio.fail_after(20):
        async with in_process_cluster(1) as cluster:
            port = _port_of(cluster.nodes[0])
            config = node_config(prepare_data_dir(tmp_path, 1), 1)
            config.net.listen = [f"/ip4/127.0.0.1/tcp/{port}"]
            # py-libp2p's listener sets SO_REUSEPORT: without a check this would bind.
            with pytest.raises(PortInUse, match=f"port {port} .*already in use"):
                await Node(config).run()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_failed_bootstrap_is_a_warning_and_retried_until_the_peer_comes(tmp_path: Path, caplog) -> None:
    port = _free_port()
    bootstrap = f"/ip4/127.0.0.1/tcp/{port}/p2p/{fixed_identity(0).peer_id}"
    caplog.set_level(logging.INFO, logger="mosaic")
    with trio.fail_after(40):
        async with in_process_cluster() as cluster:
            # Node 1 starts first: its bootstrap peer is not there yet.
            joiner = await cluster.add(1, bootstrap=[bootstrap])
            warnings = [r for r in caplog.records if "bootstrap_failed" in r.getMessage()]
            assert warnings and warnings[0].levelno == logging.WARNING
            assert "retry_in=" in warnings[0].getMessage() and port and str(port) in warnings[0].getMessage()
            await cluster.add(0, bootstrap=[], listen=[f"/ip4/127.0.0.1/tcp/{port}"])
            await joiner.registry.wait_for(lambda r: fixed_identity(0).peer_id in r, timeout=25)


async def test_a_cleanly_stopped_node_leaves_the_tables_at_once(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with in_process_cluster(3, record_ttl=300.0) as cluster:
            a, b, c = cluster.nodes
            for node in cluster.nodes:
                await node.registry.wait_for(lambda r: len(r) == 3, timeout=15)
            old_record = c.signed_record()
            c.stop()  # what SIGINT/SIGTERM does in `python -m node start`
            for node in (a, b):
                await node.registry.wait_for(lambda r: c.peer_id not in r, timeout=5)
            # The goodbye is signed and newer than anything c issued: its old record, still
            # inside its 300 s TTL, cannot come back through gossip or the DHT.
            assert a.registry.offer(old_record, source="gossip") is None
            assert c.peer_id not in a.registry and c.peer_id not in {r.peer_id for r in a.registry.all()}
            # The DHT holds the goodbye too, so a node that joins later and learns about c from
            # the DHT alone does not list it either.
            from node.net.dht import record_key
            from protocol import SignedRecord, decode, verify_record

            with trio.fail_after(5):
                while True:
                    held = a.dht.value_store.get(record_key(c.peer_id).encode())
                    record = verify_record(decode(held.value, SignedRecord), time.time()) if held else None
                    if record is not None and record.withdrawn:
                        break
                    await trio.sleep(0.05)


async def test_a_fetch_only_client_advertises_nothing(tmp_path: Path) -> None:
    src = tmp_path / "weights.bin"
    src.write_bytes(b"mosaic" * 50_000)
    with trio.fail_after(40):
        async with in_process_cluster() as cluster:
            storage_a = StorageService(BlockStore(tmp_path / "store-a"))
            a = await cluster.add(0, services=[storage_a])
            b = await cluster.add(1)
            published = await storage_a.publish(src)

            config = node_config(tmp_path / "client", 9, bootstrap=[a.full_multiaddrs()[0]])
            storage_c = StorageService(BlockStore(tmp_path / "store-c"))
            client = Node(config, services=[storage_c], client=True)
            async with trio.open_nursery() as nursery:
                await nursery.start(client.run)
                await storage_c.fetch(published.cid)
                assert storage_c.store.is_pinned(published.cid)
                await trio.sleep(1.5)  # several gossip/DHT upkeep rounds (1 s in tests)
                for node in (a, b):
                    assert client.peer_id not in node.registry
                    assert client.peer_id not in routing_table_peers(node.dht)
                providers = await find_providers(b.dht, published.cid)
                assert [str(p.peer_id) for p in providers] == [a.peer_id]
                assert client.signed_record() is None
                nursery.cancel_scope.cancel()


async def test_a_running_node_provides_what_another_process_pinned_into_its_data_dir(tmp_path: Path) -> None:
    from node.storage.importer import import_path

    src = tmp_path / "late.bin"
    src.write_bytes(b"pinned later" * 40_000)
    with trio.fail_after(40):
        async with in_process_cluster() as cluster:
            storage_a = StorageService(BlockStore(tmp_path / "store-a"), reprovide_interval=1.0)
            a = await cluster.add(0, services=[storage_a])
            b = await cluster.add(1)
            # `publish --offline` / `pin` in another process: their own BlockStore on the same dir.
            other_process = BlockStore(tmp_path / "store-a")
            entry = import_path(other_process, src)
            other_process.pin(entry.cid, "late.bin")
            while not [p for p in await find_providers(b.dht, entry.cid) if str(p.peer_id) == a.peer_id]:
                await trio.sleep(0.5)


async def test_the_control_endpoint_refuses_bad_requests_and_survives_them(tmp_path: Path) -> None:
    from node.control import ControlService

    with trio.fail_after(20):
        async with in_process_cluster() as cluster:
            control = ControlService()
            storage = StorageService(BlockStore(tmp_path / "store"))
            node = await cluster.add(0, services=[storage, control])
            host, port = control.address.split(":")

            async def ask(raw: bytes) -> dict:
                stream = await trio.open_tcp_stream(host, int(port))
                async with stream:
                    await stream.send_all(raw)
                    data = b""
                    while not data.endswith(b"\n"):
                        chunk = await stream.receive_some(4096)
                        if not chunk:
                            break
                        data += chunk
                import json

                return json.loads(data) if data else {}

            cid = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
            assert (await ask(b'{"token": "wrong", "op": "provide", "cid": "%s"}\n' % cid.encode()))["error"] == "bad token"
            token = control.token.encode()
            for raw in (b"\xff\xfe not json\n", b'{"token": "%s", "op": "provide", "cid": "nope"}\n' % token,
                        b'{"token": "%s", "op": "provide", "cid": "%s"}\n' % (token, cid.encode()),
                        b'{"token": "%s", "op": "rm -rf", "cid": "%s"}\n' % (token, cid.encode()), b"x" * 10_000):
                assert (await ask(raw)).get("ok") is False  # an explicit refusal, also for a line too long
            stream = await trio.open_tcp_stream(host, int(port))  # connect and vanish
            await stream.aclose()
            assert (await ask(b'{"token": "%s", "op": "unprovide", "cid": "%s"}\n' % (token, cid.encode())))["ok"]
            assert node.peer_id in {r.peer_id for r in node.registry.all()}
