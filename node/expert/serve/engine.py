"""The engine seam: what the infer service and the trio side need from whatever runs the model.

Two engines serve an expert:

* ``torch`` (:mod:`node.expert.serve.torch_engine`): transformers + peft on CPU or GPU, the
  engine that training and merging use too;
* ``llama.cpp`` (:mod:`node.expert.serve.llamacpp`): the catalog GGUF as it is (4-bit blocks,
  SIMD kernels), continuous batching through llama.cpp's low-level batch API.  On a CPU it
  decodes 5-9x faster than the torch engine on the same file (research/engines.md).

Both are *workers*: one thread that owns the model and takes :class:`~node.expert.jobs.Job`
objects (generation with cancel, score, next-token, session operations); results go out
through each job's non-blocking ``emit``.  The queue, ``Queued`` reports, cancel and deadline
semantics are the same code for both (the llama.cpp worker extends the torch one's queue and
overrides only the model steps), so the trio side (local.py, service.py, sessions.py) cannot
tell them apart.  The model description (``expert``) carries the tokenizer and chat template
(PromptBuilder renders prompts for both: transformers' tokenizer on torch, the GGUF's own vocab
and template on llama.cpp, which give the same ids: llamacpp/tokenizer.py).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

ENGINES = ("auto", "llama.cpp", "torch")


class Engine(Protocol):
    """The inference worker of one expert (see the module docstring)."""

    name: str  # "torch" or "llama.cpp": announced in the capability record
    expert: Any  # LoadedExpert / LlamaExpert: model_id, content_id, adapters, tokenizer, max_context ...
    steps: int
    busy_rejections: int

    @property
    def quantization(self) -> str: ...  # e.g. "Q4_1", "float32", "bfloat16"

    @property
    def queue_depth(self) -> int: ...

    @property
    def active(self) -> int: ...

    def load(self) -> float: ...

    def start(self) -> None: ...

    def stop(self, timeout: float | None = 30.0) -> None: ...

    def submit(self, job: Any) -> None: ...

    def between_steps(self, change: Callable[[], Any]) -> Future[Any]: ...

    def adapters_in_use(self) -> set[str]: ...

    def attach_adapter(self, name: str, path: Path, *, evictable: tuple[str, ...]) -> list[str]:
        """Serve LoRA adapter ``name`` from ``path`` (worker thread, via between_steps); evicted names."""
        ...


class EngineUnavailable(RuntimeError):
    """The engine asked for cannot run here (package missing, model kind it cannot load)."""


def llama_cpp_installed() -> bool:
    return importlib.util.find_spec("llama_cpp") is not None


def is_gguf_base(model: str | None) -> bool:
    """The base is a GGUF file: the embedded default, a catalog key, or a ``.gguf`` path."""
    if model is None:
        return True
    path = Path(model).expanduser()
    if path.exists():
        return path.is_file() and path.suffix.lower() == ".gguf"
    from ..model.catalog import lookup

    return lookup(model) is not None


def gpu_present() -> bool:
    """An NVIDIA GPU is visible (checked without importing torch: device nodes, the driver's files)."""
    return os.path.exists("/dev/nvidia0") or os.path.exists("/proc/driver/nvidia/version")


def choose_engine(requested: str, model: str | None, device: str) -> str:
    """``auto`` -> llama.cpp for a GGUF base on a CPU (with llama-cpp-python installed), else torch.

    An explicit ``llama.cpp`` that cannot work is an error, not a silent fallback.
    """
    if requested not in ENGINES:
        raise EngineUnavailable(f"--engine {requested!r}: expected one of {', '.join(ENGINES)}")
    on_cpu = device == "cpu" or (device == "auto" and not gpu_present())
    if requested == "torch":
        return "torch"
    if requested == "llama.cpp":
        if not llama_cpp_installed():
            raise EngineUnavailable("--engine llama.cpp needs llama-cpp-python (scripts/install.sh builds it)")
        if not is_gguf_base(model):
            raise EngineUnavailable(f"--engine llama.cpp serves GGUF bases only; {model!r} is not one")
        if not on_cpu:
            raise EngineUnavailable(f"--engine llama.cpp runs on the CPU here; --device {device} needs torch")
        return "llama.cpp"
    return "llama.cpp" if on_cpu and is_gguf_base(model) and llama_cpp_installed() else "torch"


def engine_for(expert: Any) -> str:
    """Which engine serves an already-loaded expert (tests and benchmarks pass one in)."""
    return str(getattr(expert, "engine", "torch"))


def make_worker(expert: Any, **options: Any) -> Engine:
    """The worker of the engine that loaded ``expert``."""
    if engine_for(expert) == "llama.cpp":
        from .llamacpp.worker import LlamaWorker

        return LlamaWorker(expert, **options)
    from .torch_engine import TorchEngine

    options.pop("max_sessions", None)  # the torch engine's sessions are separate caches, bounded by the trio side
    return TorchEngine(expert, **options)
