"""Which engine serves an expert (--engine auto|llama.cpp|torch), and the record fields that say so."""

from __future__ import annotations

import argparse

import msgspec
import pytest

from node.cli import build_parser
from node.cli.start import build_config
from node.config import ConfigError, NodeConfig
from node.expert.serve.engine import EngineUnavailable, choose_engine, llama_cpp_installed
from protocol import CapabilityRecord
from protocol.codec import decode, encode

needs_llama = pytest.mark.skipif(not llama_cpp_installed(), reason="llama-cpp-python is not installed")


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["start", *argv])


@needs_llama
def test_auto_serves_gguf_bases_on_a_cpu_with_llama_cpp(tmp_path):
    gguf = tmp_path / "m.Q4_0.gguf"
    gguf.write_bytes(b"GGUF")
    assert choose_engine("auto", None, "cpu") == "llama.cpp"  # the embedded default
    assert choose_engine("auto", "smollm2-135m", "cpu") == "llama.cpp"  # a catalog key
    assert choose_engine("auto", str(gguf), "cpu") == "llama.cpp"
    assert choose_engine("auto", str(tmp_path), "cpu") == "torch"  # an HF directory
    assert choose_engine("auto", None, "cuda") == "torch"  # a GPU
    assert choose_engine("torch", None, "cpu") == "torch"


@needs_llama
def test_an_explicit_llama_cpp_that_cannot_work_is_an_error(tmp_path):
    with pytest.raises(EngineUnavailable, match="GGUF"):
        choose_engine("llama.cpp", str(tmp_path), "cpu")
    with pytest.raises(EngineUnavailable, match="CPU"):
        choose_engine("llama.cpp", None, "cuda:0")
    with pytest.raises(EngineUnavailable, match="expected one of"):
        choose_engine("vllm", None, "cpu")


def test_engine_flag_and_config_key():
    assert build_config(_args("--engine", "torch"), env={}).expert.engine == "torch"
    assert build_config(_args(), env={}).expert.engine == "auto"  # llama.cpp for GGUF bases on a CPU
    assert build_config(_args(), env={"MOSAIC_EXPERT__ENGINE": "torch"}).expert.engine == "torch"
    assert build_config(_args("--engine", "llama.cpp"), env={}).expert.engine == "llama.cpp"
    config = NodeConfig()
    config.expert.engine = "tensorrt"
    with pytest.raises(ConfigError, match="expert.engine"):
        config.validate()


def test_record_says_engine_and_quantization_and_old_records_still_decode():
    record = CapabilityRecord(peer_id="p", name="n", seq=1, issued_at=1.0, ttl=30.0, engine="llama.cpp",
                              quantization="Q4_1")
    again = decode(encode(record), CapabilityRecord)
    assert (again.engine, again.quantization) == ("llama.cpp", "Q4_1")

    class OldRecord(msgspec.Struct, kw_only=True, tag="cap", tag_field="t"):  # a node from before the fields
        v: int = 1
        peer_id: str
        name: str
        seq: int
        issued_at: float
        ttl: float

    old_bytes = msgspec.msgpack.encode(OldRecord(peer_id="p", name="n", seq=1, issued_at=1.0, ttl=30.0))
    assert msgspec.msgpack.decode(old_bytes, type=CapabilityRecord).engine == ""  # new node reads old record
    assert msgspec.msgpack.decode(encode(record), type=OldRecord).name == "n"  # old node reads new record
