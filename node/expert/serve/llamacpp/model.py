"""Loading a GGUF base for the llama.cpp engine: the model, its HF tokenizer, what to announce.

The weights stay as the file has them (4-bit blocks, memory-mapped): no fp32 conversion, so a
new model starts in seconds and the process holds about the file plus the KV cache.

Prompts are rendered and tokenized with the model's HF tokenizer (the same PromptBuilder and
chat template as the torch engine, so both engines see the same token ids; the conformance
suite checks that llama.cpp's own tokenizer agrees).  transformers builds that tokenizer from
the GGUF's metadata, which costs seconds for a 151k vocabulary, so it is built once and kept in
``<cache root>/tokenizers/<sha256[:16]>/``; a cache entry of the torch engine's conversion
(``models/<sha256[:16]>/``) holds the same tokenizer and is used when present.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ....logs import event, get_logger
from ...model.loader import ModelLoadError, tokenizer_fingerprint
from ...model.model_cache import content_ids, entry_dir, is_cached

log = get_logger("expert.llamacpp")

_TOKENIZER_MARKER = "mosaic-tokenizer.json"
_backend_lock = threading.Lock()
_backend_ready = False


@dataclass
class LlamaExpert:
    """A GGUF model loaded by llama.cpp, described like a torch ``LoadedExpert`` for the trio side."""

    model: Any  # llama_model_p (owned; freed by close())
    path: Path  # the GGUF file
    tokenizer: Any  # the HF tokenizer (prompts, chat template, detokenization)
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
            llama_cpp.llama_model_free(self.model)
            self.model = None


def import_llama_cpp() -> Any:
    """``llama_cpp``, with its OpenMP threads waiting passively unless the user chose a policy.

    llama.cpp's kernels run on libgomp (its own copy, not torch's), which reads the policy once,
    when the library loads.  Spinning waits made decoding 3x slower on a loaded 2-core box
    (measured: 4.8 against 13.6 tok/s, SmolLM2, load average 13), as they did for torch (threads.py).
    """
    if "llama_cpp" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import llama_cpp

    return llama_cpp


def _init_backend() -> None:
    """llama.cpp's global init, once per process, with its chatty log routed to ours (warnings up)."""
    global _backend_ready
    with _backend_lock:
        if _backend_ready:
            return
        llama_cpp = import_llama_cpp()

        llama_cpp.llama_backend_init()
        llama_cpp.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
        _backend_ready = True


def _log_callback(level: int, text: bytes, _user: Any) -> None:
    # GGML_LOG_LEVEL_WARN = 3, ERROR = 4: the rest (model metadata dumps) is noise.
    if level in (3, 4):
        message = text.decode("utf-8", "replace").strip()
        if message:
            event(log, "llama_cpp_log", level=30 if level == 3 else 40, message=message[:300])


def _make_log_callback() -> Any:
    import llama_cpp

    return llama_cpp.llama_log_callback(_log_callback)


_LOG_CALLBACK: Any = None


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


def load_tokenizer(gguf: Path, digest: str, cache_root: Path) -> Any:
    """The HF tokenizer of ``gguf``, built once into the cache (see the module docstring)."""
    from filelock import FileLock
    from transformers import AutoTokenizer

    converted = entry_dir(cache_root, digest)
    if is_cached(converted, digest):
        return AutoTokenizer.from_pretrained(converted, local_files_only=True)
    target = cache_root / "tokenizers" / digest[:16]
    if not _tokenizer_cached(target, digest):
        target.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(target.parent / f"{target.name}.lock")):
            if not _tokenizer_cached(target, digest):
                staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
                try:
                    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                              local_files_only=True)
                    tokenizer.save_pretrained(staging)
                    (staging / _TOKENIZER_MARKER).write_text(json.dumps({"sha256": digest}))
                    if target.exists():
                        shutil.rmtree(target)
                    os.replace(staging, target)
                except BaseException:
                    shutil.rmtree(staging, ignore_errors=True)
                    raise
    return AutoTokenizer.from_pretrained(target, local_files_only=True)


def _tokenizer_cached(directory: Path, digest: str) -> bool:
    try:
        return json.loads((directory / _TOKENIZER_MARKER).read_text()).get("sha256") == digest
    except (OSError, ValueError, AttributeError):
        return False


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
    global _LOG_CALLBACK
    llama_cpp = import_llama_cpp()

    from ....config import default_cache_dir
    from ...model.loader import check_adapter_dir

    if _LOG_CALLBACK is None:
        _LOG_CALLBACK = _make_log_callback()
    _init_backend()
    root = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    gguf, model_id, digest, cid = resolve_gguf(model, root)
    event(log, "expert_loading", model=model_id, path=gguf, engine="llama.cpp")
    try:
        tokenizer = load_tokenizer(gguf, digest, root)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot read the tokenizer of {gguf}: {exc}") from None
    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = 0
    handle = llama_cpp.llama_model_load_from_file(str(gguf).encode(), params)
    if not handle:
        raise ModelLoadError(f"llama.cpp cannot load {gguf}")
    vocab = llama_cpp.llama_model_get_vocab(handle)
    n_vocab = int(llama_cpp.llama_vocab_n_tokens(vocab))
    context = min(int(llama_cpp.llama_model_n_ctx_train(handle)) or 2048, DEFAULT_KV_TOKENS)
    if max_context:
        context = min(context, max_context)
    if tokenizer.pad_token_id is None:
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
