"""One content-addressed model cache per user, shared by every local node (issue 11, item 5)."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import platformdirs

from node.config import NodeConfig, default_cache_dir, load_config
from node.expert.model.model_cache import ensure_entry, entry_dir, is_cached

DIGEST = "ab" * 32


def test_cache_dir_is_per_user_not_per_data_dir(monkeypatch):
    monkeypatch.delenv("MOSAIC_CACHE_DIR", raising=False)
    assert default_cache_dir() == Path(platformdirs.user_cache_dir("mosaic"))
    one, two = NodeConfig(data_dir="/tmp/node1"), NodeConfig(data_dir="/tmp/node2")
    assert one.cache_path == two.cache_path == default_cache_dir()


def test_cache_dir_is_overridable_by_env_and_config(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("MOSAIC_CACHE_DIR", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    assert load_config(env={"MOSAIC_CACHE_DIR": str(tmp_path / "cfg")}).cache_path == tmp_path / "cfg"
    config_file = tmp_path / "node.toml"
    config_file.write_text(f'cache_dir = "{tmp_path / "toml"}"\n')
    assert load_config(config_file, env={}).cache_path == tmp_path / "toml"


def _slow_build(out: Path) -> None:
    """Stands in for a GGUF conversion: slow, and leaves a trace of every call."""
    calls = out.parent.parent / "calls"
    with open(calls, "a") as fh:
        fh.write("x")
    time.sleep(1.0)
    (out / "model.safetensors").write_bytes(b"weights")


def _start(root: str, results) -> None:
    results.put(str(ensure_entry(Path(root), DIGEST, _slow_build, source="test")))


def test_concurrent_first_starts_build_the_entry_once(tmp_path: Path):
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_start, args=(str(tmp_path), results)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    paths = {results.get(timeout=5) for _ in procs}
    assert paths == {str(entry_dir(tmp_path, DIGEST))}
    assert (tmp_path / "calls").read_text() == "x"  # one build, the others waited and reused it
    assert is_cached(entry_dir(tmp_path, DIGEST), DIGEST)
    # No staging directory is left behind.
    assert sorted(p.name for p in (tmp_path / "models").iterdir() if not p.name.endswith(".lock")) == [DIGEST[:16]]


def test_a_crashed_build_leaves_nothing_a_later_start_would_trust(tmp_path: Path):
    def broken(out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed mid-way")

    try:
        ensure_entry(tmp_path, DIGEST, broken, source="test")
    except RuntimeError:
        pass
    assert not is_cached(entry_dir(tmp_path, DIGEST), DIGEST)
    assert ensure_entry(tmp_path, DIGEST, _slow_build, source="test") == entry_dir(tmp_path, DIGEST)
