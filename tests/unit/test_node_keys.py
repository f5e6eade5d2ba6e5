"""The persistent identity key: created once with mode 0600, reloaded, libp2p-compatible."""

from __future__ import annotations

import hashlib
import os
import stat

import pytest
from libp2p.peer.id import ID

from node.net.keys import KEY_FILE, IdentityFileError, libp2p_key_pair, load_or_create_identity, write_identity
from protocol import Identity


def test_created_once_with_mode_0600_and_reloaded(tmp_path) -> None:
    first = load_or_create_identity(tmp_path / "data")
    path = tmp_path / "data" / KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(path.read_bytes()) == 32
    assert load_or_create_identity(tmp_path / "data").peer_id == first.peer_id


def test_libp2p_peer_id_equals_protocol_peer_id() -> None:
    for i in range(5):
        identity = Identity.from_seed(hashlib.sha256(b"mosaic-test-node-%d" % i).digest())
        key_pair = libp2p_key_pair(identity)
        assert ID.from_pubkey(key_pair.public_key).to_base58() == identity.peer_id


def test_refuses_a_world_readable_or_truncated_key(tmp_path) -> None:
    write_identity(tmp_path, Identity.generate())
    os.chmod(tmp_path / KEY_FILE, 0o644)
    with pytest.raises(IdentityFileError, match="0600"):
        load_or_create_identity(tmp_path)
    os.chmod(tmp_path / KEY_FILE, 0o600)
    (tmp_path / KEY_FILE).write_bytes(b"short")
    with pytest.raises(IdentityFileError, match="32 bytes"):
        load_or_create_identity(tmp_path)
