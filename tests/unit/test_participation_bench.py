"""benchmarks/participation.py: the contributor team built from adapter cards (pure parts)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "participation_bench", Path(__file__).resolve().parents[2] / "benchmarks" / "participation.py")
assert _SPEC is not None and _SPEC.loader is not None
bench = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = bench  # dataclasses look their module up
_SPEC.loader.exec_module(bench)


def _card(root: Path, name: str, base: str, kind: str, tags: list[str]) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "mosaic-card.json").write_text(json.dumps({
        "name": name, "description": f"{name} things", "tags": tags, "kind": "lora",
        "base": {"model": base, "model_id": base.upper()}, "data": {"kind": kind}}))
    return folder


def test_each_card_becomes_a_contributor_expert_serving_its_adapter(tmp_path):
    gsm = _card(tmp_path, "gsm8k", "smollm2-135m", "task:gsm8k/dev", ["math", "gsm8k"])
    poems = _card(tmp_path, "poems", "qwen2.5-0.5b", "pairs", ["poetry"])
    specs = bench.contributor_experts(tmp_path, {"qwen2.5-0.5b": "/models/qwen.gguf"})
    assert [s.name for s in specs] == ["c-gsm8k", "c-poems"]
    math, poet = specs
    assert math.model is None  # the embedded SmolLM2, no catalog join
    assert math.adapters == [f"gsm8k={gsm.resolve()}"] and math.own_task == "gsm8k" and not math.ask_base
    assert math.tags == "math,gsm8k"  # the trained task is a tag once
    assert "gsm8k things" in math.description and "task:gsm8k/dev" in math.description
    assert poet.model == "/models/qwen.gguf" and poet.own_task is None and poet.tags == "poetry"
    assert poet.adapters == [f"poems={poems.resolve()}"]


def test_a_folder_without_cards_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no \\*/mosaic-card.json"):
        bench.contributor_experts(tmp_path, {})


def test_expert_option_parses_name_model_adapters_and_tags():
    spec = bench.parse_expert("mine=/m.gguf+a=/x+b=/y@math,code")
    assert (spec.name, spec.model, spec.adapters, spec.tags) == ("mine", "/m.gguf", ["a=/x", "b=/y"], "math,code")
    assert bench.parse_expert("qwen-coder=/q.gguf").tags == bench.CATALOG_EXPERTS["qwen-coder"][2]
    with pytest.raises(SystemExit):
        bench.parse_expert("nomodel")
