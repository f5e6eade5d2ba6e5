"""Hypothesis fuzzing of every decoder a remote peer can reach in storage: only typed errors."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.cid import CID, DAG_PB, RAW, cid_from_bytes, parse_cid
from protocol.dagpb import PBLink, PBNode, UnixFSData, decode_node, decode_unixfs, encode_node, encode_unixfs
from protocol.errors import ProtocolError
from protocol.unixfs import read_block

FUZZ = settings(max_examples=300, deadline=None)


@FUZZ
@given(st.binary(max_size=2048))
def test_dagpb_and_unixfs_decoders_raise_only_protocol_errors(data: bytes) -> None:
    for decoder in (decode_node, decode_unixfs, cid_from_bytes):
        try:
            decoder(data)
        except ProtocolError:
            pass
    for codec in (RAW, DAG_PB):
        try:
            read_block(CID(1, codec, b"\x00" * 32), data)
        except ProtocolError:
            pass


@FUZZ
@given(st.text(max_size=200))
def test_parse_cid_raises_only_protocol_errors(text: str) -> None:
    try:
        parse_cid(text)
    except ProtocolError:
        pass


@FUZZ
@given(st.binary(max_size=4096))
def test_block_request_decoder_raises_only_protocol_errors(data: bytes) -> None:
    from node.storage.blocks_protocol import decode_request

    try:
        decode_request(data)
    except ProtocolError:
        pass


links = st.builds(PBLink, st.binary(min_size=1, max_size=40), st.text(max_size=20), st.integers(0, 2**63 - 1))


@FUZZ
@given(st.lists(links, max_size=10), st.one_of(st.none(), st.binary(max_size=100)))
def test_dagpb_round_trip(link_list: list[PBLink], data: bytes | None) -> None:
    node = PBNode(tuple(link_list), data)
    assert decode_node(encode_node(node)) == node


@FUZZ
@given(st.integers(0, 5), st.one_of(st.none(), st.binary(max_size=50)), st.one_of(st.none(), st.integers(0, 2**63 - 1)),
       st.lists(st.integers(0, 2**40), max_size=10))
def test_unixfs_round_trip(type_: int, data: bytes | None, filesize: int | None, sizes: list[int]) -> None:
    msg = UnixFSData(type_, data, filesize, tuple(sizes))
    assert decode_unixfs(encode_unixfs(msg)) == msg
