"""GGUF -> plain safetensors HF directory, converted once and cached by content hash.

transformers can load GGUF directly but dequantizes on every load (~18 s for
SmolLM2-135M on 2 cores, measured) and refuses to ``save_pretrained`` a model
that still carries its ``quantization_config``.  We dequantize once, rebuild a
plain model from the config without that key, and save it with the tokenizer
to ``<data_dir>/models/<sha256[:16]>/``; later starts load that in ~0.3 s.

The directory is written under a temporary name and renamed into place, with
a ``mosaic-source.json`` marker holding the full hash, so a crash mid-way
never leaves a half-written cache that a later start would trust.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from ..logs import event, get_logger

log = get_logger("expert.cache")

MARKER = "mosaic-source.json"
_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def content_ids(path: str | os.PathLike[str]) -> tuple[str, str]:
    """``(sha256 hex, UnixFS CIDv1)`` of a file in one read.

    The CID is what ``ipfs add --cid-version=1`` (and our storage) gives the
    same file, so a peer that sees it in a capability record can fetch the
    exact weights; the sha256 names the conversion cache.
    """
    from protocol.unixfs import FileBuilder

    digest = hashlib.sha256()
    builder = FileBuilder()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            builder.write(chunk)  # blocks are dropped: only the root CID is kept
    _, root = builder.finish()
    return digest.hexdigest(), str(root.cid)


def cache_dir_for(digest: str, data_dir: Path) -> Path:
    return data_dir / "models" / digest[:16]


def is_cached(directory: Path, digest: str) -> bool:
    try:
        marker = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("sha256") == digest and any(directory.glob("*.safetensors"))


def ensure_converted(gguf: Path, digest: str, data_dir: Path) -> Path:
    """Return the cached HF directory for ``gguf``, converting it first if needed (blocking)."""
    target = cache_dir_for(digest, data_dir)
    if is_cached(target, digest):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    event(log, "gguf_convert_start", gguf=gguf.name, sha256=digest[:16], target=target)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        _convert(gguf, staging)
        (staging / MARKER).write_text(json.dumps({"sha256": digest, "source": gguf.name}))
        if target.exists():  # a stale or partial directory from an older run
            shutil.rmtree(target)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    event(log, "gguf_convert_done", target=target)
    return target


def _convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf.name, "local_files_only": True}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    config = quantized.config
    # save_pretrained refuses models that still carry a GGUF quantization_config.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.tie_weights()
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
