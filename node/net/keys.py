"""The node's persistent identity: a 32-byte Ed25519 seed in ``<data dir>/identity.key``.

The same key is the libp2p peer key and the record-signing key, so a record's
``peer_id`` is the libp2p peer id of the host that announced it
(``protocol.Identity`` computes it without libp2p; :func:`libp2p_key_pair`
checks that both agree).
"""

from __future__ import annotations

import os
from pathlib import Path

from libp2p.crypto import ed25519
from libp2p.crypto.keys import KeyPair
from libp2p.peer.id import ID

from protocol import Identity

KEY_FILE = "identity.key"


class IdentityFileError(Exception):
    """The identity file exists but is unreadable, the wrong size or too widely readable."""


def load_or_create_identity(data_dir: str | os.PathLike[str]) -> Identity:
    """Load ``identity.key`` from ``data_dir``, creating it (mode 0600) on first start."""
    directory = Path(data_dir).expanduser()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / KEY_FILE
    if path.exists():
        mode = path.stat().st_mode & 0o777
        if mode & 0o077:
            raise IdentityFileError(f"{path} has mode {mode:o}; it holds a private key and must be 0600")
        seed = path.read_bytes()
        if len(seed) != 32:
            raise IdentityFileError(f"{path} must hold exactly 32 bytes (an Ed25519 seed), found {len(seed)}")
        return Identity.from_seed(seed)
    identity = Identity.generate()
    write_identity(directory, identity)
    return identity


def write_identity(data_dir: str | os.PathLike[str], identity: Identity) -> Path:
    """Store ``identity``'s seed atomically with mode 0600 (used by the test harness for fixed ids)."""
    directory = Path(data_dir).expanduser()
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = directory / KEY_FILE
    tmp = directory / (KEY_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, identity.seed())
    finally:
        os.close(fd)
    os.replace(tmp, path)
    return path


def libp2p_key_pair(identity: Identity) -> KeyPair:
    """The libp2p key pair for ``identity``; its peer id must equal ``identity.peer_id``."""
    key_pair = ed25519.create_new_key_pair(identity.seed())
    libp2p_id = ID.from_pubkey(key_pair.public_key).to_base58()
    if libp2p_id != identity.peer_id:  # would mean records and the host disagree on who we are
        raise RuntimeError(f"libp2p peer id {libp2p_id} != protocol peer id {identity.peer_id}")
    return key_pair
