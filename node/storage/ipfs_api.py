"""Optional external IPFS daemon (``--ipfs-api /ip4/127.0.0.1/tcp/5001``): add, cat, pin.

Uses ``ipfshttpclient.Client(addr)`` directly: ``ipfshttpclient.connect()`` runs a
version check that rejects every daemon >= 0.8.0, i.e. every modern Kubo
(research/ipfs.md B).  Blocking calls: run them in a worker thread from async code.
"""

from __future__ import annotations

import os
from collections.abc import Iterator


class IpfsApiError(Exception):
    """The daemon is unreachable or refused the request."""


def _client(api: str):
    import ipfshttpclient

    addr = api if api.endswith("/http") or api.endswith("/https") else api + "/http"
    try:
        return ipfshttpclient.Client(addr, timeout=60)
    except Exception as exc:  # ipfshttpclient raises its own hierarchy and requests' errors
        raise IpfsApiError(f"{type(exc).__name__}: {exc}") from None


def add_to_daemon(api: str, path: str | os.PathLike[str], *, cid_version: int = 1) -> str:
    """``ipfs add -r`` through the daemon with our CID options; returns the root CID."""
    client = _client(api)
    opts = {"cid_version": cid_version, "raw_leaves": cid_version == 1, "pin": True}
    try:
        result = client.add(str(path), recursive=os.path.isdir(path), **opts)
    except Exception as exc:
        raise IpfsApiError(f"{type(exc).__name__}: {exc}") from None
    entries = result if isinstance(result, list) else [result]
    return entries[-1]["Hash"]  # the root is listed last


def cat(api: str, cid: str, *, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """Stream a file's bytes from the daemon."""
    client = _client(api)
    offset = 0
    while True:
        try:
            piece = client.cat(cid, offset=offset, length=chunk_size)
        except Exception as exc:
            raise IpfsApiError(f"{type(exc).__name__}: {exc}") from None
        if not piece:
            return
        yield piece
        offset += len(piece)


def pin(api: str, cid: str) -> None:
    try:
        _client(api).pin.add(cid)
    except Exception as exc:
        raise IpfsApiError(f"{type(exc).__name__}: {exc}") from None
