"""The model catalog: parts joined once and checked against the pinned sha256; a mismatch is refused.

The join/verify tests use a fake chunk set (three small files), so they run anywhere;
the ones that look at the real packages skip when those are not installed (CI installs
only the default model).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import pytest

from node.expert.model import catalog
from node.expert.model.catalog import CatalogModel, ChecksumMismatch, NotInstalled, Part


def fake_parts(tmp_path: Path) -> tuple[list[Path], bytes]:
    chunks = [b"GGUF" + bytes(range(256)) * 40, b"second chunk " * 500, b"tail"]
    paths = []
    for i, chunk in enumerate(chunks):
        path = tmp_path / f"part{i:02d}.bin"
        path.write_bytes(chunk)
        paths.append(path)
    return paths, b"".join(chunks)


def fake_model(whole: bytes, *, sha256: str | None = None) -> CatalogModel:
    return CatalogModel(key="fake-model", model_id="Fake", sha256=sha256 or hashlib.sha256(whole).hexdigest(),
                        size=len(whole), license="none", chat=False,
                        parts=tuple(Part(f"fake-part{i}", "1.0", f"fake/part{i:02d}.bin") for i in range(3)))


@pytest.fixture
def installed(monkeypatch, tmp_path):
    """Make the fake parts 'installed': locate_part resolves them to files in tmp_path."""
    paths, whole = fake_parts(tmp_path)
    by_package = {f"fake-part{i}": p for i, p in enumerate(paths)}
    monkeypatch.setattr(catalog, "locate_part", lambda part: by_package[part.package])
    return paths, whole


def test_parts_are_joined_once_and_verified(installed, tmp_path):
    from node.expert.model.model_cache import content_ids

    _, whole = installed
    model = fake_model(whole)
    data_dir = tmp_path / "data"
    path, digest, cid = catalog.ensure_gguf(model, data_dir)
    assert path == catalog.joined_path(model, data_dir) and path.read_bytes() == whole
    assert (digest, cid) == content_ids(path)  # the CID a peer computes for the same bytes
    assert catalog.state(model, data_dir) == "joined"
    mtime = path.stat().st_mtime_ns
    assert catalog.ensure_gguf(model, data_dir) == (path, digest, cid)
    assert path.stat().st_mtime_ns == mtime  # not joined again


def test_a_chunk_set_whose_hash_mismatches_is_refused(installed, tmp_path):
    _, whole = installed
    model = fake_model(whole, sha256="0" * 64)
    data_dir = tmp_path / "data"
    with pytest.raises(ChecksumMismatch, match="refusing to load it"):
        catalog.ensure_gguf(model, data_dir)
    assert not catalog.joined_path(model, data_dir).exists()
    assert [p.name for p in (data_dir / "gguf").iterdir() if not p.name.endswith(".lock")] == []  # no temp file


def test_a_tampered_part_is_refused_after_a_good_join(installed, tmp_path):
    paths, whole = installed
    model = fake_model(whole)
    data_dir = tmp_path / "data"
    path, _, _ = catalog.ensure_gguf(model, data_dir)
    path.write_bytes(whole[:-1] + b"X")  # same size, different bytes
    sidecar = path.parent / (path.name + ".verified.json")
    meta = json.loads(sidecar.read_text())
    sidecar.write_text(json.dumps({**meta, "size": 1}))  # stale sidecar: size no longer matches
    paths[1].write_bytes(paths[1].read_bytes()[:-1] + b"!")  # and the installed part is tampered with
    with pytest.raises(ChecksumMismatch):
        catalog.ensure_gguf(model, data_dir)


def test_load_expert_refuses_a_catalog_model_with_a_bad_hash(installed, tmp_path, monkeypatch):
    from node.expert.model.loader import ModelLoadError, load_expert

    _, whole = installed
    monkeypatch.setitem(catalog.CATALOG, "fake-model", fake_model(whole, sha256="f" * 64))
    with pytest.raises(ModelLoadError, match="the catalog pins ffffffffffffffff"):
        load_expert("fake-model", cache_dir=tmp_path / "data", device="cpu")


def test_a_missing_package_says_how_to_install_it(tmp_path):
    model = replace(fake_model(b"x"), parts=(Part("surely-not-installed-pkg", "1.0", "x/y.bin"),))
    with pytest.raises(NotInstalled, match="python -m node models pull fake-model"):
        catalog.ensure_gguf(model, tmp_path)
    assert catalog.state(model, tmp_path) == "not installed"


def test_catalog_pins_versions_and_installs_without_deps():
    assert set(catalog.CATALOG) == {"smollm2-135m", "gemma3-270m", "qwen2.5-0.5b", "qwen2.5-1.5b"}
    for model in catalog.CATALOG.values():
        assert len(model.sha256) == 64 and all(p.version for p in model.parts)
        command = catalog.pip_install_command(model)
        assert "--no-deps" in command and all("==" in pkg for pkg in command[5:])
    assert len(catalog.CATALOG["qwen2.5-1.5b"].parts) == 22


@pytest.mark.parametrize("key", sorted(catalog.CATALOG))
def test_installed_parts_add_up_to_the_pinned_size(key):
    model = catalog.CATALOG[key]
    try:
        paths = catalog.part_paths(model)
    except NotInstalled:
        pytest.skip(f"{key} is not installed (python -m node models pull {key})")
    assert sum(p.stat().st_size for p in paths) == model.size


def test_models_command_lists_the_catalog(capsys, tmp_path):
    from node.cli import main

    assert main(["models", "--json", "--cache-dir", str(tmp_path)]) == 0
    rows = {r["key"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["smollm2-135m"]["default"] and rows["smollm2-135m"]["state"] in ("installed", "converted")
    assert rows["gemma3-270m"]["license"] == "Gemma Terms of Use"
    assert main(["models", "pull", "nope", "--cache-dir", str(tmp_path)]) == 2


def test_the_default_is_qwen_and_the_tests_pin_smollm2(monkeypatch, capsys, tmp_path):
    from node.cli import main
    from node.expert.model.loader import ModelLoadError

    assert catalog.default_key() == "smollm2-135m"  # tests/conftest.py: the suite's light model
    monkeypatch.delenv(catalog.DEFAULT_MODEL_ENV)
    assert catalog.DEFAULT_KEY == catalog.default_key() == "qwen2.5-1.5b"  # the README's node
    assert main(["models", "--json", "--cache-dir", str(tmp_path)]) == 0
    assert [r["key"] for r in json.loads(capsys.readouterr().out) if r["default"]] == ["qwen2.5-1.5b"]
    monkeypatch.setenv(catalog.DEFAULT_MODEL_ENV, "gpt-5")
    with pytest.raises(ModelLoadError, match="MOSAIC_DEFAULT_MODEL='gpt-5' is not a catalog model"):
        catalog.default_key()
