"""Ed25519 identities and libp2p peer ids, without libp2p.

A libp2p peer id for an Ed25519 key is the *identity* multihash of the
protobuf-encoded public key, so the public key can be recovered from the peer
id itself.  That lets any node verify a record signed by a peer it has never
talked to: the record names its peer id, and the peer id names the key.

Spec: https://github.com/libp2p/specs/blob/master/peer-ids/peer-ids.md
"""

from __future__ import annotations

import base58
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from .errors import BadSignature, InvalidPeerId

# protobuf PublicKey{Type: Ed25519 (1), Data: 32 bytes}
_ED25519_PB_PREFIX = b"\x08\x01\x12\x20"
# multihash: identity function (0x00), digest length 36
_IDENTITY_MH_PREFIX = b"\x00\x24"
_MAX_PEER_ID_LEN = 128


def peer_id_from_public_key(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base58.b58encode(_IDENTITY_MH_PREFIX + _ED25519_PB_PREFIX + raw).decode("ascii")


def public_key_from_peer_id(peer_id: str) -> Ed25519PublicKey:
    """Recover the Ed25519 key embedded in ``peer_id`` or raise :class:`InvalidPeerId`."""
    if not isinstance(peer_id, str) or not 0 < len(peer_id) <= _MAX_PEER_ID_LEN:
        raise InvalidPeerId("peer id must be a short non-empty string")
    try:
        raw = base58.b58decode(peer_id)
    except ValueError as exc:
        raise InvalidPeerId(f"peer id is not base58: {exc}") from None
    prefix = _IDENTITY_MH_PREFIX + _ED25519_PB_PREFIX
    if len(raw) != len(prefix) + 32 or not raw.startswith(prefix):
        raise InvalidPeerId("peer id does not embed an Ed25519 public key")
    return Ed25519PublicKey.from_public_bytes(raw[len(prefix) :])


class Identity:
    """A node's signing identity: an Ed25519 key and the peer id derived from it."""

    __slots__ = ("_key", "peer_id")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.peer_id = peer_id_from_public_key(private_key.public_key())

    @classmethod
    def generate(cls) -> Identity:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> Identity:
        """Build from the 32-byte private seed (what the node stores on disk)."""
        if len(seed) != 32:
            raise ValueError("an Ed25519 seed is exactly 32 bytes")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    def seed(self) -> bytes:
        return self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    def public_bytes(self) -> bytes:
        return self._key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def __repr__(self) -> str:
        return f"Identity({self.peer_id})"


def verify_signature(peer_id: str, data: bytes, signature: bytes) -> None:
    """Raise :class:`BadSignature` unless ``signature`` is ``peer_id``'s over ``data``."""
    key = public_key_from_peer_id(peer_id)
    try:
        key.verify(signature, data)
    except InvalidSignature:
        raise BadSignature(f"signature does not verify for peer {peer_id[-8:]}") from None
