"""peft LoRA adapters (safetensors) as GGUF LoRA files, for the llama.cpp engine.

``node train`` and the ``merge`` strategy write peft adapters; llama.cpp reads LoRA only as GGUF
(``general.type = adapter``).  The conversion follows llama.cpp's ``convert_lora_to_gguf.py``:

* every ``<module>.lora_A.weight`` ([r, in]) / ``lora_B.weight`` ([out, r]) pair becomes
  ``<gguf tensor>.lora_a`` / ``.lora_b`` under the base's tensor names (gguf's TensorNameMap);
* the scale is peft's ``lora_alpha / r``: llama.cpp multiplies by ``adapter.lora.alpha / r`` (r
  read from the tensors), so the file carries ``lora_alpha`` (rsLoRA: ``alpha * sqrt(r)``);
* a base whose GGUF conversion permuted the q / k projections for its RoPE layout (the ``llama``
  architecture: SmolLM2) gets the same row permutation on ``lora_b`` of q and k, or the adapter
  would be added to the wrong rows.

Adapters that are not plain LoRA on the base's linear layers (DoRA, per-module ranks or alphas,
``modules_to_save``, bias training) are refused with a clear error instead of served wrong.

The GGUF is written once per (adapter weights, base) under ``<cache root>/lora/`` (atomic rename,
file lock), so a restart or a second node with the same adapter reuses it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ...model.loader import ModelLoadError, check_adapter_dir

if TYPE_CHECKING:
    from .model import LlamaExpert

MAX_LIVE = 4  # adapters added while serving, held at once (as live_adapters.py on the torch engine)
# Architectures whose HF -> GGUF conversion permutes q_proj / k_proj rows (convert_hf_to_gguf.py).
_PERMUTED_QK = {"llama"}
_SUFFIXES = (".lora_A.weight", ".lora_B.weight")


class LoraConversionError(ModelLoadError):
    """The peft adapter cannot be expressed as a GGUF LoRA of this base."""


def base_meta(expert: LlamaExpert) -> dict[str, Any]:
    """What the conversion needs from the base: architecture, heads, layers (from the GGUF's metadata)."""
    import ctypes

    import llama_cpp

    def meta(key: str) -> str:
        buffer = ctypes.create_string_buffer(256)
        n = llama_cpp.llama_model_meta_val_str(expert.model, key.encode(), buffer, len(buffer))
        return buffer.value.decode() if n >= 0 else ""

    arch = meta("general.architecture")
    return {
        "arch": arch,
        "n_head": int(meta(f"{arch}.attention.head_count") or 0),
        "n_head_kv": int(meta(f"{arch}.attention.head_count_kv") or meta(f"{arch}.attention.head_count") or 0),
        "n_layer": int(meta(f"{arch}.block_count") or 0),
    }


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """convert_hf_to_gguf.py's ``permute`` of rows (interleaved -> halved rotary pairs)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _adapter_config(path: Path) -> dict[str, Any]:
    config = json.loads((path / "adapter_config.json").read_text())
    if config.get("peft_type", "LORA") != "LORA":
        raise LoraConversionError(f"{path}: peft_type {config.get('peft_type')!r} is not LORA")
    for key in ("use_dora", "modules_to_save", "rank_pattern", "alpha_pattern"):
        if config.get(key):
            raise LoraConversionError(f"{path}: {key} is not supported by the llama.cpp engine's LoRA")
    if config.get("bias", "none") != "none":
        raise LoraConversionError(f"{path}: trained biases are not supported by the llama.cpp engine's LoRA")
    return config


def convert(path: Path, out: Path, meta: dict[str, Any]) -> None:
    """Write the GGUF LoRA of peft adapter ``path`` for a base described by ``meta`` to ``out``."""
    import gguf
    from safetensors.numpy import load_file

    config = _adapter_config(path)
    arch_name = meta["arch"]
    arch = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}.get(arch_name)
    if arch is None:
        raise LoraConversionError(f"gguf knows no architecture {arch_name!r}")
    names = gguf.get_tensor_name_map(arch, meta["n_layer"])
    tensors = load_file(str(path / "adapter_model.safetensors"))
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        suffix = next((s for s in _SUFFIXES if key.endswith(s)), None)
        if suffix is None:
            raise LoraConversionError(f"{path}: tensor {key!r} is not a LoRA A/B matrix")
        module = key[: -len(suffix)].removeprefix("base_model.model.")
        pairs.setdefault(module, {})["a" if "lora_A" in suffix else "b"] = value.astype(np.float32)
    if not pairs:
        raise LoraConversionError(f"{path}: the adapter holds no LoRA tensors")
    rank = None
    writer = gguf.GGUFWriter(str(out), arch_name)
    writer.add_string("general.type", "adapter")
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    for module, pair in sorted(pairs.items()):
        if set(pair) != {"a", "b"}:
            raise LoraConversionError(f"{path}: {module} lacks its lora_A or lora_B")
        target = names.get_name(module + ".weight", try_suffixes=(".weight",))
        if target is None:
            raise LoraConversionError(f"{path}: {module} has no counterpart in a {arch_name} GGUF")
        a, b = pair["a"], pair["b"]
        rank = a.shape[0]
        if arch_name in _PERMUTED_QK and module.endswith(("q_proj", "k_proj")):
            heads = meta["n_head"] if module.endswith("q_proj") else meta["n_head_kv"]
            b = _permute(b, heads)
        writer.add_tensor(f"{target}.lora_a", np.ascontiguousarray(a))
        writer.add_tensor(f"{target}.lora_b", np.ascontiguousarray(b))
    alpha = float(config.get("lora_alpha") or rank or 1)
    if config.get("use_rslora"):
        alpha *= math.sqrt(float(rank or 1))  # llama.cpp divides by r; rsLoRA divides by sqrt(r)
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def ensure_gguf_lora(expert: LlamaExpert, name: str, path: Path) -> Path:
    """The cached GGUF LoRA of adapter ``path`` on ``expert``'s base, converted on first use."""
    from filelock import FileLock

    digest = check_adapter_dir(name, path)
    root = (expert.cache_root or Path(tempfile.gettempdir())) / "lora"
    target = root / f"{digest[:16]}-{expert.sha256[:16]}.gguf"
    if target.is_file():
        return target
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(str(root / f"{target.name}.lock")):
        if target.is_file():
            return target
        fd, staging = tempfile.mkstemp(prefix=f".{target.name}-", dir=root)
        os.close(fd)
        try:
            convert(path, Path(staging), base_meta(expert))
            os.replace(staging, target)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise
    return target


def load_gguf_lora(expert: LlamaExpert, name: str, path: Path) -> Any:
    """A llama.cpp LoRA handle for peft adapter ``path`` (converted and cached first)."""
    import llama_cpp

    gguf_path = ensure_gguf_lora(expert, name, path)
    handle = llama_cpp.llama_adapter_lora_init(expert.model, str(gguf_path).encode())
    if not handle:
        raise LoraConversionError(f"adapter {name!r}: llama.cpp refused {gguf_path} (does it fit the base?)")
    return handle


def attach(worker: Any, name: str, path: Path, *, evictable: tuple[str, ...]) -> list[str]:
    """Serve adapter ``name`` from now on (worker thread); the evicted names (see live_adapters.py)."""
    expert = worker.expert
    if name in expert.adapters:
        return []
    digest = check_adapter_dir(name, path)
    worker.load_lora(name, path)
    expert.adapters[name] = digest
    expert.adapter_paths[name] = path
    evicted: list[str] = []
    excess = len(evictable) + 1 - MAX_LIVE
    if excess > 0:
        busy = worker.adapters_in_use()
        for old in evictable:
            if len(evicted) >= excess:
                break
            if old in busy or old not in expert.adapters:
                continue
            worker.free_lora(old)
            del expert.adapters[old]
            expert.adapter_paths.pop(old, None)
            evicted.append(old)
    return evicted
