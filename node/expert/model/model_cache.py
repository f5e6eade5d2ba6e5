"""The per-user model cache: converted models stored once, by content hash, for every local node.

transformers can load GGUF directly but dequantizes on every load (~18 s for
SmolLM2-135M on 2 cores, measured) and refuses to ``save_pretrained`` a model
that still carries its ``quantization_config``.  We dequantize once, rebuild a
plain model from the config without that key, and save it with the tokenizer
to ``<cache root>/models/<sha256[:16]>/``; later starts load that in ~0.3 s.

The cache root is per user, not per data dir (:func:`node.config.default_cache_dir`:
``$MOSAIC_CACHE_DIR`` or the platform cache dir): before, every data dir converted
again (24-160 s) and kept its own 517 MB copy.  Several nodes may start at once on
a cold cache: :func:`ensure_entry` builds an entry under a per-entry file lock
(``<digest>.lock``, released by the OS if the process dies), so one builds and the
others wait and reuse it (three concurrent first starts converted three times and
took 183 s).  An entry is built in a staging directory and renamed into place,
with a ``mosaic-source.json`` marker holding the full hash, so a crash mid-way
never leaves a half-written entry that a later start would trust.

Other model producers (e.g. a model catalog) use :func:`ensure_entry` with their
own ``build`` function to get the same locking and atomicity.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

from ...atomic import staged_directory, staging_prefix
from ...logs import event, get_logger, stage

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


def entry_dir(cache_root: Path, digest: str) -> Path:
    """Where the entry for content hash ``digest`` lives (it may not exist yet)."""
    return cache_root / "models" / digest[:16]


def is_cached(directory: Path, digest: str) -> bool:
    """True when ``directory`` is a complete entry for ``digest`` (marker written last)."""
    try:
        marker = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("sha256") == digest and any(directory.glob("*.safetensors"))


def ensure_entry(cache_root: Path, digest: str, build: Callable[[Path], None], *, source: str) -> Path:
    """Return the complete entry for ``digest``, calling ``build(staging_dir)`` first if needed.

    ``build`` writes the model (``*.safetensors`` plus config/tokenizer files) into
    the empty directory it is given.  Blocking: call from a worker thread.  Safe
    across processes: the first caller builds, concurrent callers wait for it.
    """
    target = entry_dir(cache_root, digest)
    if is_cached(target, digest):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f"{target.name}.lock")):
        if is_cached(target, digest):  # another process built it while we waited
            event(log, "model_cache_hit_after_wait", target=target)
            return target
        # Staging dirs of a build that was killed (Ctrl-C, OOM) are garbage now: we hold the lock.
        for stale in target.parent.glob(staging_prefix(target) + "*"):
            shutil.rmtree(stale, ignore_errors=True)
        event(log, "model_cache_build_start", source=source, sha256=digest[:16], target=target)
        # A stale or partial directory at ``target`` (from an older run) is replaced.
        with staged_directory(target, overwrite=True, private=True) as staging:
            build(staging)
            (staging / MARKER).write_text(json.dumps({"sha256": digest, "source": source}))
    event(log, "model_cache_build_done", target=target)
    return target


def ensure_converted(gguf: Path, digest: str, cache_root: Path) -> Path:
    """Return the cached HF directory for ``gguf``, converting it first if needed (blocking)."""
    return ensure_entry(cache_root, digest, lambda out: _convert(gguf, out), source=gguf.name)


def _convert(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` into a plain HF directory (safetensors).

    The plain model is created on the ``meta`` device and *takes* the dequantized
    tensors (``assign=True``) instead of copying them: the copy doubled the peak, and
    converting Qwen2.5-1.5B that way reached 13.4 GB RSS and was OOM-killed here.
    """
    import gc

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = {"gguf_file": gguf.name, "local_files_only": True}
    # 16-40 s with nothing else to show: a progress line on a terminal (node.logs.stage).
    with stage(f"converting {gguf.name} (once)", total=3) as progress:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
        progress.advance("dequantized")
        config = quantized.config
        # save_pretrained refuses models that still carry a GGUF quantization_config.
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        with torch.device("meta"):
            plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(quantized.state_dict(), strict=True, assign=True)
        del quantized
        gc.collect()
        plain.tie_weights()
        progress.advance("rebuilt")
        plain.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        progress.advance("written")
