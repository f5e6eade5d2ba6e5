"""Loading a GGUF base for the llama.cpp engine: the model, its tokenizer, what to announce.

The weights stay as the file has them (4-bit blocks, memory-mapped): no fp32 conversion, so a
new model starts in seconds and the process holds about the file plus the KV cache.

Prompts are rendered and tokenized by :class:`GgufTokenizer`, over llama.cpp's own vocab and
the GGUF's chat template: the same ids and renders as the torch engine's transformers tokenizer
(checked in ``tests/engine/test_gguf_tokenizer.py``), without importing transformers or torch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ....logs import event, get_logger
from ...model.loader import ModelLoadError, tokenizer_fingerprint
from ...model.model_cache import content_ids
from .backend import import_llama_cpp, init_backend
from .tokenizer import GgufTokenizer

log = get_logger("expert.llamacpp")


@dataclass
class LlamaExpert:
    """A GGUF model loaded by llama.cpp, described like a torch ``LoadedExpert`` for the trio side."""

    model: Any  # llama_model_p (owned; freed by close())
    path: Path  # the GGUF file
    tokenizer: GgufTokenizer  # prompts, chat template, detokenization
    model_id: str
    sha256: str
    max_context: int
    tokenizer_id: str
    quantization: str  # the file's type, e.g. "Q4_1", "Q4_K_M"
    n_vocab: int
    eos_ids: frozenset[int]
    adapters: dict[str, str] = field(default_factory=dict)  # name -> sha256 of the peft weights
    adapter_paths: dict[str, Path] = field(default_factory=dict)  # name -> peft safetensors dir
    cid: str | None = None
    cache_root: Path | None = None  # where converted GGUF LoRAs are kept
    engine: str = "llama.cpp"
    device: str = "cpu"
    dtype: str = ""

    @property
    def content_id(self) -> str:
        return self.cid or self.sha256

    @property
    def has_adapters(self) -> bool:
        return bool(self.adapters)

    def close(self) -> None:
        import llama_cpp

        if self.model is not None:
            self.tokenizer.detach()
            llama_cpp.llama_model_free(self.model)
            self.model = None




def resolve_gguf(model: str | None, cache_root: Path) -> tuple[Path, str, str, str]:
    """``--model`` -> ``(gguf path, model id, sha256, cid)``: the embedded default, a catalog key or a file."""
    from ...model import catalog

    if model is None:
        model = catalog.default_key()
    entry = catalog.lookup(model)
    path = Path(model).expanduser()
    if entry is not None and not path.exists():
        gguf, digest, cid = catalog.ensure_gguf(entry, cache_root)
        return gguf, entry.model_id, digest, cid
    if path.is_file() and path.suffix.lower() == ".gguf":
        digest, cid = content_ids(path)
        return path, gguf_model_id(path), digest, cid
    raise ModelLoadError(f"--model {model!r}: the llama.cpp engine serves GGUF files (a catalog key, "
                         "the default or a .gguf path); use --engine torch for an HF directory")


def gguf_model_id(path: Path) -> str:
    """``SmolLM2-135M-Instruct.Q4_1.gguf`` -> ``SmolLM2-135M-Instruct`` (as the torch loader names it)."""
    head, dot, tail = path.stem.rpartition(".")
    return head if dot and tail[:1] in ("Q", "q", "F", "f", "I", "i") else path.stem


def quantization_name(ftype: int) -> str:
    import llama_cpp

    for name in dir(llama_cpp):
        if name.startswith("LLAMA_FTYPE_") and getattr(llama_cpp, name) == ftype and name != "LLAMA_FTYPE_GUESSED":
            return name.removeprefix("LLAMA_FTYPE_").removeprefix("MOSTLY_").removeprefix("ALL_")
    return f"ftype{ftype}"


# The KV cache all sequences of one expert share (tokens).  It is allocated (and cleared, so
# resident) when the worker starts: ~190 MB for SmolLM2-135M, ~230 MB for Qwen2.5-1.5B in f16.
DEFAULT_KV_TOKENS = 8192


def load_llama_expert(
    model: str | None = None,
    adapters: dict[str, str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    max_context: int | None = None,
) -> LlamaExpert:
    """Load a GGUF base for the llama.cpp engine (blocking: call from a worker thread)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    llama_cpp = import_llama_cpp()

    from ....config import default_cache_dir
    from ...model.loader import check_adapter_dir

    init_backend()
    root = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    gguf, model_id, digest, cid = resolve_gguf(model, root)
    event(log, "expert_loading", model=model_id, path=gguf, engine="llama.cpp")
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = 0
    # Read the weights into memory instead of mapping the file.  On x86 CPUs llama.cpp repacks
    # Q4_0/Q4_K/IQ4_NL/Q8_0 blocks into interleaved copies for its faster kernels; with the file
    # mapped, the pages read to make those copies stay resident too, so the weights counted twice
    # (measured, Qwen2.5-1.5B Q4_K_M with an 8192-token KV: 2098 MiB RSS mapped, 1503 MiB read;
    # mapped without the repacked copies: 1500 MiB but the slower kernels).
    params.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE
    handle = llama_cpp.llama_model_load_from_file(str(gguf).encode(), params)
    if not handle:
        raise ModelLoadError(f"llama.cpp cannot load {gguf}")
    tokenizer = GgufTokenizer(handle)
    vocab = llama_cpp.llama_model_get_vocab(handle)
    n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
    context = min(int(llama_cpp.llama_model_n_ctx_train(handle)) or 2048, DEFAULT_KV_TOKENS)
    if max_context:
        context = min(context, max_context)
    if tokenizer.pad_token_id is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    eos = {int(t) for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)}
    if tokenizer.eos_token_id is not None:
        eos.add(int(tokenizer.eos_token_id))
    expert = LlamaExpert(
        model=handle, path=gguf, tokenizer=tokenizer, model_id=model_id, sha256=digest, cid=cid,
        max_context=context, tokenizer_id=tokenizer_fingerprint(tokenizer),
        quantization=quantization_name(int(llama_cpp.llama_model_ftype(handle))), n_vocab=n_vocab,
        eos_ids=frozenset(eos), cache_root=root,
    )
    expert.dtype = expert.quantization
    for name, adapter_path in (adapters or {}).items():
        path = Path(adapter_path).expanduser()
        expert.adapters[name] = check_adapter_dir(name, path)
        expert.adapter_paths[name] = path
    return expert
