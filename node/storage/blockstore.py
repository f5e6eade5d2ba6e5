"""A persistent, content-addressed block store in the node's data dir.

Layout (``<data_dir>/blocks``)::

    blocks/ab/ab12...ef      one file per block, named by its sha2-256 digest (hex)
    pins/<cid>               one small JSON file per recursive pin (name, size, time)

Blocks are keyed by digest, not by CID, as Kubo keys by multihash: a CIDv0 and a
CIDv1 of the same dag-pb bytes are one block.  Writes go to a temp file and are
renamed into place, so a crash or a killed fetch never leaves a half block under
a valid name, and a restarted fetch can trust every block it finds (resume).

Methods are synchronous and cheap per block (one 256 KiB read or write hits the
page cache); bulk operations (import, export, gc) run in a worker thread via
``trio.to_thread`` in the callers.  Several processes may share one store: every
write is atomic and idempotent.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from protocol.cid import CID, RAW, parse_cid
from protocol.errors import ProtocolError
from protocol.unixfs import MAX_BLOCK_SIZE, child_cids

log = logging.getLogger(__name__)


class StorageError(Exception):
    """Base of node.storage errors."""


class BlockMismatch(StorageError):
    """Bytes do not hash to the CID they were offered under."""


class MissingBlock(StorageError):
    """A block needed to read a DAG is not in the store."""

    def __init__(self, cid: CID) -> None:
        super().__init__(f"block {cid} is not in the local store")
        self.cid = cid


@dataclass(frozen=True, slots=True)
class Pin:
    cid: str
    name: str
    size: int
    pinned_at: float


class BlockStore:
    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self._blocks = self.root / "blocks"
        self._pins = self.root / "pins"
        self._tmp = self.root / "tmp"
        for d in (self._blocks, self._pins, self._tmp):
            d.mkdir(parents=True, exist_ok=True)
        self._made_dirs: set[str] = set()

    @classmethod
    def for_data_dir(cls, data_dir: str | os.PathLike[str]) -> BlockStore:
        return cls(Path(data_dir).expanduser() / "ipfs")

    # ------------------------------------------------------------------ blocks

    def _path(self, cid: CID) -> Path:
        hexd = cid.digest.hex()
        return self._blocks / hexd[:2] / hexd

    def has(self, cid: CID) -> bool:
        return self._path(cid).is_file()

    def get(self, cid: CID) -> bytes | None:
        try:
            with open(self._path(cid), "rb") as fh:
                return fh.read(MAX_BLOCK_SIZE + 1)
        except FileNotFoundError:
            return None

    def require(self, cid: CID) -> bytes:
        data = self.get(cid)
        if data is None:
            raise MissingBlock(cid)
        return data

    def size(self, cid: CID) -> int | None:
        try:
            return self._path(cid).stat().st_size
        except FileNotFoundError:
            return None

    def put(self, cid: CID, data: bytes, *, verify: bool = True) -> bool:
        """Store a block; returns False if it was already there.

        ``verify=False`` only for blocks we just hashed ourselves (the importer).
        """
        if len(data) > MAX_BLOCK_SIZE:
            raise StorageError(f"block of {len(data)} bytes exceeds {MAX_BLOCK_SIZE}")
        if verify and not cid.verify(data):
            raise BlockMismatch(f"bytes do not hash to {cid}")
        path = self._path(cid)
        if path.exists():
            return False
        if path.parent.name not in self._made_dirs:  # one mkdir per fan-out dir, not per block
            path.parent.mkdir(exist_ok=True)
            self._made_dirs.add(path.parent.name)
        fd, tmp = tempfile.mkstemp(dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return True

    def delete(self, cid: CID) -> None:
        self._path(cid).unlink(missing_ok=True)

    def digests(self) -> Iterator[str]:
        for sub in self._blocks.iterdir():
            if sub.is_dir():
                for f in sub.iterdir():
                    yield f.name

    # ------------------------------------------------------------------ DAGs

    def _reachable(self, root: CID) -> Iterator[tuple[CID, bool]]:
        """Every CID reachable from ``root`` once (depth first, root first, links in
        order), with whether its block is in the store.  Raw leaves have no links, so
        they are checked with a stat rather than read."""
        stack = [root]
        seen: set[bytes] = set()
        while stack:
            cid = stack.pop()
            if cid.digest in seen:
                continue
            seen.add(cid.digest)
            if cid.codec == RAW:
                yield cid, self.has(cid)
                continue
            data = self.get(cid)
            yield cid, data is not None
            if data is not None:
                try:
                    stack.extend(reversed(child_cids(cid, data)))
                except ProtocolError as exc:
                    raise StorageError(f"block {cid} is not a valid dag-pb node: {exc}") from None

    def walk(self, root: CID, *, missing_ok: bool = False) -> Iterator[CID]:
        """Every CID reachable from ``root`` (depth first, root first)."""
        for cid, present in self._reachable(root):
            if present:
                yield cid
            elif not missing_ok:
                raise MissingBlock(cid)

    def missing(self, root: CID) -> list[CID]:
        """CIDs below ``root`` that are referenced but absent (empty: the DAG is complete)."""
        return [cid for cid, present in self._reachable(root) if not present]

    def dag_size(self, root: CID) -> int:
        return sum(self.size(c) or 0 for c in self.walk(root, missing_ok=True))

    # ------------------------------------------------------------------ pins and GC

    def _pin_path(self, cid: CID) -> Path:
        return self._pins / str(cid)

    def pin(self, cid: CID, name: str = "") -> Pin:
        """Recursively pin a complete DAG (raises :class:`MissingBlock` if incomplete)."""
        size = sum(self.size(c) or 0 for c in self.walk(cid))  # walk raises MissingBlock
        pin = Pin(str(cid), name[:255], size, time.time())
        tmp = self._tmp / f"pin-{os.getpid()}-{cid}"
        tmp.write_text(json.dumps(_pin_dict(pin)))
        os.replace(tmp, self._pin_path(cid))
        return pin

    def unpin(self, cid: CID) -> bool:
        path = self._pin_path(cid)
        existed = path.exists()
        path.unlink(missing_ok=True)
        return existed

    def is_pinned(self, cid: CID) -> bool:
        return self._pin_path(cid).exists()

    def pins(self) -> list[Pin]:
        out = []
        for path in sorted(self._pins.iterdir()):
            try:
                raw = json.loads(path.read_text())
                parse_cid(raw["cid"])
                out.append(
                    Pin(raw["cid"], raw.get("name", ""), int(raw.get("size", 0)), float(raw.get("pinned_at", 0)))
                )
            except (ValueError, KeyError, TypeError, ProtocolError):
                log.warning("ignoring unreadable pin file %s", path.name)
        return out

    def discard(self, root: CID) -> int:
        """Delete the blocks of ``root``'s DAG that no pin reaches (a refused fetch: nothing kept);
        returns the bytes freed.  Like :meth:`gc`, not while another fetch fills the same DAG."""
        if self.is_pinned(root):
            return 0
        keep: set[bytes] = set()
        for pin in self.pins():
            keep.update(c.digest for c in self.walk(parse_cid(pin.cid), missing_ok=True))
        freed = 0
        for cid in list(self.walk(root, missing_ok=True)):
            if cid.digest not in keep:
                freed += self.size(cid) or 0
                self.delete(cid)
        return freed

    def gc(self) -> tuple[int, int]:
        """Delete every block not reachable from a pin; returns (blocks, bytes) freed.

        Not safe to run while a fetch into this store is in progress (its blocks are
        not pinned until it completes); the CLI runs it on demand only.
        """
        keep: set[str] = set()
        for pin in self.pins():
            keep.update(c.digest.hex() for c in self.walk(parse_cid(pin.cid), missing_ok=True))
        freed = freed_bytes = 0
        for hexd in list(self.digests()):
            if hexd not in keep:
                path = self._blocks / hexd[:2] / hexd
                try:
                    freed_bytes += path.stat().st_size
                    path.unlink()
                    freed += 1
                except FileNotFoundError:
                    pass
        return freed, freed_bytes


def _pin_dict(pin: Pin) -> dict[str, object]:
    return {"cid": pin.cid, "name": pin.name, "size": pin.size, "pinned_at": pin.pinned_at}
