"""Write a UnixFS DAG from the block store back to files, streaming.

The destination must not exist: an export never deletes or overwrites what is
there (``fetch -o DIR`` once replaced a user's directory).  The file or directory
is built under a temp name next to the destination and renamed when complete
(files size-checked), so a reader never sees a half-written weights file and a
stopped export leaves no partial multi-GB file behind.
Directory entry names were validated when the block was read (no ``/``, ``\\``,
``..``), so a hostile DAG cannot write outside ``dest``.

A DAG can link one block many times (issue 12: 3 blocks, 1.19 MB, expanding to
1.85 TiB), so what the blocks weigh says nothing about what the export writes.
Before writing, the declared content size must fit the cap (a quota,
node/storage/quota.py) and the free disk (:func:`node.storage.fetch.check_room`),
and large content may not expand its distinct blocks more than
:data:`MAX_EXPANSION` times (:func:`check_expansion`, issue 22); while writing,
a file that grows past the size its root declares is cut off at once, not
compared at the end.

Synchronous: call through ``trio.to_thread.run_sync``.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

from protocol.cid import CID
from protocol.errors import ProtocolError
from protocol.unixfs import NodeView, read_block

from ..atomic import staged_directory
from .blockstore import BlockStore, MissingBlock, StorageError
from .fetch import MAX_DAG_BYTES, DagTooLarge, check_room
from .importer import MAX_DEPTH

# Content over EXPANSION_FLOOR bytes may expand its distinct blocks at most MAX_EXPANSION times.
MAX_EXPANSION = 16.0
EXPANSION_FLOOR = 256 * 1024 * 1024


def _view(store: BlockStore, cid: CID) -> NodeView:
    try:
        return read_block(cid, store.require(cid))
    except ProtocolError as exc:
        raise StorageError(f"block {cid} cannot be exported: {exc}") from None


def export(store: BlockStore, root: CID, dest: str | os.PathLike[str], *, cap: int = MAX_DAG_BYTES,
           cap_name: str | None = None, max_expansion: float | None = MAX_EXPANSION) -> Path:
    """Write the file or directory at ``root`` to ``dest``, which must not exist; returns ``dest``.

    Raises :class:`StorageError` if ``dest`` exists (nothing is written then), and
    :class:`~node.storage.fetch.DagTooLarge` if the content declares more than ``cap`` (a quota,
    named ``cap_name``) or the free disk, or expands its distinct blocks more than
    ``max_expansion`` times (:func:`check_expansion`; None: no such check).
    """
    dest = Path(dest)
    if dest.exists() or dest.is_symlink():
        raise StorageError(f"{dest} already exists; not overwriting it")
    view = _view(store, root)
    declared = declared_size(store, view)
    check_room(declared, dest.parent, what="content", cap=cap, cap_name=cap_name)
    check_expansion(store, root, declared, max_expansion)
    if view.kind != "directory":
        _export_file(store, root, view, dest)
        return dest
    try:
        # The umask's mode, as the final directory should have; refused if dest appeared meanwhile.
        with staged_directory(dest, overwrite=False) as staging:
            _export_dir(store, view, staging, 0)
    except FileExistsError:
        raise StorageError(f"{dest} already exists; not overwriting it") from None
    return dest


def check_expansion(store: BlockStore, root: CID, declared: int, max_expansion: float | None) -> None:
    """Refuse content that declares over :data:`EXPANSION_FLOOR` bytes and more than ``max_expansion``
    times the bytes of its distinct blocks: one leaf repeated (a 3 GiB file from 1 MiB of blocks,
    issue 22).  Real weights, datasets and archives do not repeat whole blocks at that scale."""
    if max_expansion is None or declared <= EXPANSION_FLOOR:
        return
    distinct = store.dag_size(root)
    if declared > max_expansion * max(1, distinct):
        raise DagTooLarge(f"the content declares {declared:,} bytes from only {distinct:,} bytes of distinct "
                          f"blocks ({declared / max(1, distinct):,.0f}x, over the {max_expansion:g}x expansion limit: "
                          "one block repeated; storage.max_expansion; node fetch --max-expansion)")


def content_size(store: BlockStore, root: CID) -> int:
    """Bytes an export of ``root`` writes, as its file roots declare them."""
    return declared_size(store, _view(store, root))


def declared_size(store: BlockStore, view: NodeView, depth: int = 0) -> int:
    """Bytes the export of ``view`` will write, as its file roots declare them."""
    if view.kind != "directory":
        if view.filesize is None:
            raise StorageError("a file node declares no size")
        return view.filesize
    if depth > MAX_DEPTH:
        raise StorageError("directory DAG nested too deep")
    return sum(declared_size(store, _view(store, child), depth + 1) for _, child in view.links)


def _export_dir(store: BlockStore, view: NodeView, dest: Path, depth: int) -> None:
    if depth > MAX_DEPTH:
        raise StorageError("directory DAG nested too deep")
    dest.mkdir(parents=True, exist_ok=True)
    for name, child in view.links:
        child_view = _view(store, child)
        if child_view.kind == "directory":
            _export_dir(store, child_view, dest / name, depth + 1)
        else:
            _export_file(store, child, child_view, dest / name)


def _partial_name(dest: Path) -> Path:
    """A hidden temp name next to ``dest`` (same filesystem, so the final rename is atomic)."""
    return dest.with_name(f".{dest.name}.partial-{secrets.token_hex(4)}")


def iter_file(store: BlockStore, root: CID, view: NodeView | None = None):
    """Yield the file's bytes in order, one block's worth at a time."""
    stack: list[tuple[CID, NodeView | None]] = [(root, view)]
    while stack:
        cid, v = stack.pop()
        v = v or _view(store, cid)
        if v.kind == "directory":
            raise StorageError(f"{cid} is a directory inside a file DAG")
        if v.data:
            yield v.data
        stack.extend((c, None) for _, c in reversed(v.links))


def _export_file(store: BlockStore, root: CID, view: NodeView, dest: Path) -> None:
    tmp = _partial_name(dest)
    written = 0
    try:
        with open(tmp, "xb") as fh:
            for piece in iter_file(store, root, view):
                written += len(piece)
                if view.filesize is not None and written > view.filesize:
                    raise StorageError(f"{root}: the DAG holds more than the {view.filesize:,} bytes it declares")
                fh.write(piece)
        if view.filesize is not None and written != view.filesize:
            raise StorageError(f"{root}: wrote {written} bytes but the DAG declares {view.filesize}")
        os.replace(tmp, dest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


__all__ = ["MissingBlock", "export", "iter_file"]
