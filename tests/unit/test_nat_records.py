"""Issue 20's record fields, circuit addresses and config keys (pure, no network)."""

from __future__ import annotations

import msgspec
import pytest

from node.config import ConfigError, NodeConfig, apply_mapping
from node.net.circuits import MAX_CIRCUIT_ADDRS, circuit_addrs_of, direct_addrs_of, split_circuit
from protocol import CapabilityRecord, Identity, decode, encode, sign_record, verify_record

RELAY = "12D3KooWD3gmvc5QrJGox9yjDY1ETi4NER559oDJ4zFXqXpojCJX"


def _record(identity: Identity, **fields: object) -> CapabilityRecord:
    return CapabilityRecord(peer_id=identity.peer_id, name="n", seq=1, issued_at=1000.0, ttl=60.0, **fields)  # type: ignore[arg-type]


def test_nat_record_fields_round_trip_and_old_records_decode_as_unknown() -> None:
    identity = Identity.generate()
    new = _record(identity, reachability="private", relay_service=True)
    assert verify_record(sign_record(new, identity), 1001.0).reachability == "private"
    # A record from a node that predates the fields: the same message without them.
    old_payload = msgspec.msgpack.encode({k: v for k, v in msgspec.to_builtins(_record(identity)).items()
                                          if k not in ("reachability", "relay_service")})
    old = decode(old_payload, CapabilityRecord)
    assert old.reachability == "unknown" and old.relay_service is False
    # A value a later version may add decodes as plain text (bounded), never an error.
    assert decode(encode(_record(identity, reachability="cgnat")), CapabilityRecord).reachability == "cgnat"


def test_nat_circuit_addrs_lead_to_the_record_signer_only_and_are_capped() -> None:
    me = Identity.generate().peer_id
    other = Identity.generate().peer_id
    relay_addr = f"/ip4/10.99.0.1/tcp/4001/p2p/{RELAY}"
    mine = f"{relay_addr}/p2p-circuit/p2p/{me}"
    assert split_circuit(mine) == (relay_addr, RELAY, me)
    addrs = [mine, f"{relay_addr}/p2p-circuit/p2p/{other}", "/ip4/10.1.0.2/tcp/4001",
             f"/p2p/{me}/p2p-circuit/p2p/{me}", "/p2p-circuit/p2p/garbage"]
    assert circuit_addrs_of(me, addrs) == [mine]
    many = [f"/ip4/10.99.0.{i}/tcp/4001/p2p/{RELAY}/p2p-circuit/p2p/{me}" for i in range(10)]
    assert len(circuit_addrs_of(me, many)) == MAX_CIRCUIT_ADDRS
    assert direct_addrs_of(addrs) == ["/ip4/10.1.0.2/tcp/4001"]


def test_nat_relay_config_keys_are_checked() -> None:
    config = NodeConfig()
    apply_mapping(config, {"net": {"relay_service": True, "relay_limits": {"reservations_per_ip": 2}}})
    assert config.validate().net.relay_limits.reservations_per_ip == 2
    bad = NodeConfig()
    apply_mapping(bad, {"net": {"relay_limits": {"circuit_bytes": 0}}})
    with pytest.raises(ConfigError, match="relay_limits.circuit_bytes"):
        bad.validate()
    bad = NodeConfig()
    bad.net.reachability = "maybe"
    with pytest.raises(ConfigError, match="reachability"):
        bad.validate()


def test_nat_node_status_shows_reachability_and_relays() -> None:
    from node.cli.status import render

    me = Identity.generate().peer_id
    status = {
        "peer_id": me, "reachability": "private",
        "nat": {"reservations": {"relays": [{"relay": RELAY}]},
                "relay_service": {"reservations": 3, "circuits_active": 1, "bytes_relayed": 2048}},
        "peers": [{"peer_id": me, "name": "home", "self": True, "reachability": "private"},
                  {"peer_id": RELAY, "name": "relay", "reachability": "public", "relay_service": True}],
    }
    text = render(status)
    assert f"reachability: private via relay(s) …{RELAY[-10:]}" in text
    assert "relay service: 3 reservation(s), 1 circuit(s) open, 2048 B relayed" in text
    assert "REACH" in text and "public+relay" in text and "private" in text


def test_nat_autonat_ignores_servers_on_our_lan() -> None:
    from node.net.reachability import on_our_lan

    own = [f"/ip4/10.1.0.2/tcp/4001/p2p/{RELAY}", "/ip4/127.0.0.1/tcp/4001"]
    assert on_our_lan("10.1.0.7", own)  # a neighbour reaches us on our private address
    assert on_our_lan("127.0.0.1", own) and on_our_lan(None, own)
    assert not on_our_lan("10.99.0.1", own)  # a relay out on the internet: its verdict counts
    assert not on_our_lan("2001:db8::1", own)
