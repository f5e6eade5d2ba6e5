"""On-disk block store: import/export round trips, Kubo CIDs, pins, GC, rejection of bad blocks."""

from __future__ import annotations

import random
import resource
from pathlib import Path

import aleph_cid
import pytest

from node.storage.blockstore import BlockMismatch, BlockStore, MissingBlock
from node.storage.exporter import export
from node.storage.importer import import_path
from protocol.cid import RAW, cid_for_block
from protocol.unixfs import CHUNK_SIZE, AddOptions


def _write(path: Path, n: int, seed: int = 0) -> bytes:
    data = random.Random(seed).randbytes(n)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def _tree(root: Path) -> None:
    _write(root / "adapter_model.safetensors", 3 * CHUNK_SIZE + 7, 1)
    _write(root / "adapter_config.json", 40, 2)
    _write(root / "nested" / "tokenizer.json", 1000, 3)


@pytest.mark.parametrize("version", [0, 1])
def test_import_matches_kubo_and_exports_identical_tree(tmp_path: Path, version: int) -> None:
    src = tmp_path / "adapter"
    _tree(src)
    store = BlockStore(tmp_path / "store")
    root = import_path(store, src, AddOptions(cid_version=version))
    assert str(root.cid) == aleph_cid.hash_folder(str(src), cid_version=version)
    out = export(store, root.cid, tmp_path / "out")
    for f in src.rglob("*"):
        if f.is_file():
            assert (out / f.relative_to(src)).read_bytes() == f.read_bytes()
    assert sorted(p.name for p in out.rglob("*")) == sorted(p.name for p in src.rglob("*"))


def test_import_skips_hidden_and_keeps_empty_dirs(tmp_path: Path) -> None:
    src = tmp_path / "m"
    _write(src / "a.bin", 10)
    _write(src / ".git" / "HEAD", 10)
    (src / "empty").mkdir()
    store = BlockStore(tmp_path / "s")
    root = import_path(store, src)
    out = export(store, root.cid, tmp_path / "out")
    assert (out / "empty").is_dir() and not (out / ".git").exists()


def test_single_file_round_trip_and_persistence(tmp_path: Path) -> None:
    data = _write(tmp_path / "w.safetensors", 2 * CHUNK_SIZE + 5)
    root = import_path(BlockStore(tmp_path / "s"), tmp_path / "w.safetensors")
    reopened = BlockStore(tmp_path / "s")  # a new process would see the same blocks
    assert reopened.missing(root.cid) == []
    export(reopened, root.cid, tmp_path / "copy")
    assert (tmp_path / "copy").read_bytes() == data


def test_put_rejects_bytes_that_do_not_match_cid(tmp_path: Path) -> None:
    store = BlockStore(tmp_path)
    cid = cid_for_block(b"good", codec=RAW)
    with pytest.raises(BlockMismatch):
        store.put(cid, b"evil")
    assert not store.has(cid)
    assert store.put(cid, b"good") and not store.put(cid, b"good")


def test_export_of_incomplete_dag_raises_missing_block(tmp_path: Path) -> None:
    _write(tmp_path / "f", 3 * CHUNK_SIZE)
    store = BlockStore(tmp_path / "s")
    root = import_path(store, tmp_path / "f")
    leaf = store.missing(root.cid) or list(store.walk(root.cid))[2]
    store.delete(leaf)
    assert store.missing(root.cid) == [leaf]
    with pytest.raises(MissingBlock):
        export(store, root.cid, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(MissingBlock):
        store.pin(root.cid)


def test_pin_unpin_and_gc(tmp_path: Path) -> None:
    store = BlockStore(tmp_path / "s")
    keep = import_path(store, (_write(tmp_path / "keep", CHUNK_SIZE * 2, 1), tmp_path / "keep")[1])
    drop = import_path(store, (_write(tmp_path / "drop", CHUNK_SIZE * 2, 2), tmp_path / "drop")[1])
    pin = store.pin(keep.cid, "keep")
    assert pin.size == keep.tsize
    assert [p.cid for p in store.pins()] == [str(keep.cid)]
    freed, freed_bytes = store.gc()
    assert freed == 3 and freed_bytes == drop.tsize
    assert store.missing(keep.cid) == [] and store.missing(drop.cid) == [drop.cid]
    assert store.unpin(keep.cid) and not store.unpin(keep.cid)
    assert store.gc()[0] == 3 and not store.has(keep.cid)


@pytest.mark.slow
def test_import_and_export_of_large_file_keep_memory_flat(tmp_path: Path) -> None:
    size = 96 * 1024 * 1024
    with open(tmp_path / "big", "wb") as fh:
        rng = random.Random(5)
        for _ in range(size // (1 << 20)):
            fh.write(rng.randbytes(1 << 20))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    store = BlockStore(tmp_path / "s")
    root = import_path(store, tmp_path / "big")
    export(store, root.cid, tmp_path / "copy")
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mib < 48, f"RSS grew {grown_mib:.0f} MiB for a {size >> 20} MiB file"
    assert (tmp_path / "copy").stat().st_size == size
    hasher = aleph_cid.CidHasher.for_ipfs_v1_raw_leaves()
    with open(tmp_path / "copy", "rb") as fh:
        while piece := fh.read(1 << 20):
            hasher.update(piece)
    assert hasher.finalize() == str(root.cid)
