"""Golden tests: our UnixFS DAGs give the same CIDs as Kubo's ``ipfs add``.

References (research/ipfs.md E): PyPI ``aleph-cid`` (matches Kubo on CIDv0 and js-ipfs
on CIDv1 + raw leaves) and Debian ``ipfs-cid`` (``/usr/bin/ipfs_cid``, CIDv0 only) as a
second opinion.  The sizes are the edge cases that caught py-libp2p's two layout bugs:
exactly one chunk, a partial second level (175 leaves) and a partial third (349).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
from pathlib import Path

import aleph_cid
import pytest

from protocol.cid import cid_from_bytes, parse_cid
from protocol.errors import DecodeError
from protocol.unixfs import (
    CHUNK_SIZE,
    AddOptions,
    Entry,
    FileBuilder,
    build_directory,
    build_file,
    child_cids,
    read_block,
)

KiB = 1024
SIZES = {
    "empty": 0,
    "one-byte": 1,
    "exactly-256KiB": CHUNK_SIZE,
    "1MB": 1_000_000,
    "175-chunks": 174 * CHUNK_SIZE + 1,
    "349-chunks": 348 * CHUNK_SIZE + 1,
}
IPFS_CID_BIN = "/usr/bin/ipfs_cid"


def _data(n: int) -> bytes:
    return random.Random(n).randbytes(n)


def _aleph_v1(data: bytes) -> str:
    hasher = aleph_cid.CidHasher.for_ipfs_v1_raw_leaves()
    hasher.update(data)
    return hasher.finalize()


@pytest.mark.parametrize("name", list(SIZES))
def test_file_cid_v1_raw_leaves_matches_kubo(name: str) -> None:
    data = _data(SIZES[name])
    _, root = build_file(data, AddOptions(cid_version=1))
    assert str(root.cid) == _aleph_v1(data)
    assert root.filesize == len(data)


@pytest.mark.parametrize("name", list(SIZES))
def test_file_cid_v0_matches_kubo(name: str) -> None:
    data = _data(SIZES[name])
    _, root = build_file(data, AddOptions(cid_version=0))
    assert str(root.cid) == aleph_cid.compute_cid(data)


@pytest.mark.skipif(not os.path.exists(IPFS_CID_BIN), reason="Debian ipfs-cid not installed (apt-get install ipfs-cid)")
@pytest.mark.parametrize("name", list(SIZES))
def test_file_cid_v0_matches_debian_ipfs_cid(name: str, tmp_path: Path) -> None:
    data = _data(SIZES[name])
    path = tmp_path / name
    path.write_bytes(data)
    out = subprocess.run([IPFS_CID_BIN, str(path)], capture_output=True, text=True, timeout=60, check=True)
    expected = json.loads(out.stdout.strip().splitlines()[0])["CIDv0"]
    _, root = build_file(data, AddOptions(cid_version=0))
    assert str(root.cid) == expected


def test_streaming_in_odd_pieces_gives_same_blocks_as_whole() -> None:
    data = _data(3 * CHUNK_SIZE + 12345)
    whole_blocks, whole_root = build_file(data, AddOptions())
    builder = FileBuilder(AddOptions())
    blocks, pos, rng = [], 0, random.Random(7)
    while pos < len(data):
        step = rng.randint(1, 200_000)
        blocks += builder.write(data[pos : pos + step])
        pos += step
    tail, root = builder.finish()
    assert root == whole_root
    assert blocks + tail == whole_blocks


def test_streaming_emits_leaves_before_finish() -> None:
    builder = FileBuilder(AddOptions())
    first = builder.write(b"x" * (2 * CHUNK_SIZE))
    assert [len(b.data) for b in first] == [CHUNK_SIZE, CHUNK_SIZE]


def test_every_block_hashes_to_its_cid_and_is_reachable() -> None:
    data = _data(174 * CHUNK_SIZE + 1)
    blocks, root = build_file(data, AddOptions(cid_version=1))
    by_cid = {b.cid: b.data for b in blocks}
    assert all(cid.verify(raw) for cid, raw in by_cid.items())
    seen, stack, out = set(), [root.cid], bytearray()
    while stack:
        cid = stack.pop()
        seen.add(cid)
        view = read_block(cid, by_cid[cid])
        out += view.data
        stack.extend(reversed([c for _, c in view.links]))
    assert seen == set(by_cid)
    assert bytes(out) == data


def _mktree(root: Path) -> None:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "adapter_model.safetensors").write_bytes(_data(300_000))
    (root / "adapter_config.json").write_text('{"r": 8}\n')
    (root / "sub" / "a.txt").write_text("hello\n")
    (root / "sub" / "deeper" / "b.bin").write_bytes(_data(5))
    (root / "Zeta upper-case and spaces").write_bytes(b"")


def _import_tree(path: Path, options: AddOptions) -> Entry:
    if path.is_dir():
        return build_directory({p.name: _import_tree(p, options) for p in path.iterdir()}, options)[1]
    return build_file(path.read_bytes(), options)[1]


@pytest.mark.parametrize("version", [0, 1])
def test_directory_cid_matches_kubo(tmp_path: Path, version: int) -> None:
    _mktree(tmp_path)
    assert str(_import_tree(tmp_path, AddOptions(cid_version=version)).cid) == aleph_cid.hash_folder(
        str(tmp_path), cid_version=version
    )


def test_cid_text_round_trip() -> None:
    for version in (0, 1):
        _, root = build_file(b"hello-ipfs\n", AddOptions(cid_version=version))
        assert parse_cid(str(root.cid)) == root.cid
        assert cid_from_bytes(root.cid.to_bytes()) == root.cid
    _, root = build_file(b"hello-ipfs\n", AddOptions(cid_version=0))
    assert str(root.cid) == "QmQGwJT9mMV7biCCZWme1kdiS9Cfq7y294TZHRZfktmGUo"
    _, root = build_file(b"hello-ipfs\n", AddOptions(cid_version=1))
    assert str(root.cid) == "bafkreiclfocjc7eo2ibxrinxksyiicrd54wp2zqdv4tozrajenea6rn744"


@pytest.mark.parametrize("bad", ["", "Qm" + "1" * 44, "bafy!!!", "x123", "b" + "a" * 200])
def test_bad_cid_text_raises_decode_error(bad: str) -> None:
    with pytest.raises(DecodeError):
        parse_cid(bad)


def test_hostile_block_raises_decode_error() -> None:
    cid = build_file(b"x" * (CHUNK_SIZE + 1), AddOptions(cid_version=0))[1].cid
    for junk in (b"\xff\xff\xff", b"\x12\x05ab", b"\x0a\x02\x08\x07", os.urandom(64)):
        with pytest.raises(DecodeError):
            read_block(cid, junk)
        try:
            child_cids(cid, junk)
        except DecodeError:
            pass

