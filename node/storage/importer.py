"""Streaming import of files and directories into the block store.

Produces the same root CID as ``ipfs add -r`` (``--cid-version=1`` by default, or
plain ``ipfs add`` with ``AddOptions(cid_version=0)``), reading 1 MiB at a time, so
memory stays flat whatever the file size.  Kubo conventions kept on purpose:

- hidden entries (names starting with ``.``) are skipped, as ``ipfs add -r`` does
  without ``--hidden``;
- symlinks that stay inside the imported folder are followed (their content is part
  of what is shared);
- empty directories are kept.

Symlinks that *leave* the folder are refused (issue 12: ``publish`` of a folder with
a link to ``/etc/passwd`` published that file to anyone who fetched the CID), unless
``follow_external_links`` is set (``publish --follow-links``): then their targets are
copied in, as ``ipfs add --dereference-symlinks`` does -- what a Hugging Face
snapshot dir needs, since its files are links into a blob store beside it.

Synchronous: call it through ``trio.to_thread.run_sync`` from async code.
"""

from __future__ import annotations

import os
from pathlib import Path

from protocol.unixfs import AddOptions, Entry, FileBuilder, build_directory

from .blockstore import BlockStore, StorageError

READ_SIZE = 1024 * 1024
MAX_DEPTH = 32


class LinkOutsideFolder(StorageError):
    """A symlink in the imported folder points outside it (and following was not asked for)."""


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


def import_path(store: BlockStore, path: str | os.PathLike[str], options: AddOptions = AddOptions(), *,
                follow_external_links: bool = False) -> Entry:
    """Import a file or a directory tree; returns the root entry (CID, sizes).

    Raises :class:`LinkOutsideFolder` for a symlink below ``path`` that resolves
    outside it, unless ``follow_external_links`` (then its target is imported).
    """
    root = Path(path)
    folder = None if follow_external_links else root.resolve()
    return _import(store, root, options, 0, folder)


def _import(store: BlockStore, path: Path, options: AddOptions, depth: int, folder: Path | None) -> Entry:
    if depth > MAX_DEPTH:
        raise StorageError(f"{path}: directory nesting deeper than {MAX_DEPTH} (symlink loop?)")
    if folder is not None and depth > 0 and path.is_symlink() and not path.resolve().is_relative_to(folder):
        raise LinkOutsideFolder(f"{path} links to {os.readlink(path)!r}, outside the published folder; "
                                "remove it, or pass --follow-links to copy its target in")
    if path.is_dir():
        entries = {
            child.name: _import(store, child, options, depth + 1, folder)
            for child in sorted(path.iterdir())
            if not child.name.startswith(".")
        }
        block, entry = build_directory(entries, options)
        store.put(block.cid, block.data, verify=False)
        return entry
    if path.is_file():
        return import_file(store, path, options)
    raise StorageError(f"{path}: not a regular file or directory")
