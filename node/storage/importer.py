"""Streaming import of files and directories into the block store.

Produces the same root CID as ``ipfs add -r`` (``--cid-version=1`` by default, or
plain ``ipfs add`` with ``AddOptions(cid_version=0)``), reading 1 MiB at a time, so
memory stays flat whatever the file size.  Kubo conventions kept on purpose:

- hidden entries (names starting with ``.``) are skipped, as ``ipfs add -r`` does
  without ``--hidden``;
- symlinks are followed (``--dereference-symlinks``): Hugging Face snapshot dirs are
  symlinks into a blob store, and the weights are what we want to share;
- empty directories are kept.

Synchronous: call it through ``trio.to_thread.run_sync`` from async code.
"""

from __future__ import annotations

import os
from pathlib import Path

from protocol.unixfs import AddOptions, Entry, FileBuilder, build_directory

from .blockstore import BlockStore, StorageError

READ_SIZE = 1024 * 1024
MAX_DEPTH = 32


def import_file(store: BlockStore, path: Path, options: AddOptions = AddOptions()) -> Entry:
    builder = FileBuilder(options)
    with open(path, "rb") as fh:
        while piece := fh.read(READ_SIZE):
            for block in builder.write(piece):
                store.put(block.cid, block.data, verify=False)
    blocks, root = builder.finish()
    for block in blocks:
        store.put(block.cid, block.data, verify=False)
    return root


def import_path(store: BlockStore, path: str | os.PathLike[str], options: AddOptions = AddOptions()) -> Entry:
    """Import a file or a directory tree; returns the root entry (CID, sizes)."""
    return _import(store, Path(path), options, 0)


def _import(store: BlockStore, path: Path, options: AddOptions, depth: int) -> Entry:
    if depth > MAX_DEPTH:
        raise StorageError(f"{path}: directory nesting deeper than {MAX_DEPTH} (symlink loop?)")
    if path.is_dir():
        entries = {
            child.name: _import(store, child, options, depth + 1)
            for child in sorted(path.iterdir())
            if not child.name.startswith(".")
        }
        block, entry = build_directory(entries, options)
        store.put(block.cid, block.data, verify=False)
        return entry
    if path.is_file():
        return import_file(store, path, options)
    raise StorageError(f"{path}: not a regular file or directory")
