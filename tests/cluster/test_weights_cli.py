"""The storage CLI across OS processes: `publish` serves, `fetch --peer` downloads, `pin`/`ls`/`gc`."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.harness import REPO_ROOT, _read_line

pytestmark = [pytest.mark.multiprocess, pytest.mark.timeout(90)]


def _node(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def test_publish_then_fetch_from_another_process(tmp_path: Path) -> None:
    src = tmp_path / "adapter"
    src.mkdir()
    (src / "adapter_model.safetensors").write_bytes(random.Random(1).randbytes(3_000_000))
    (src / "adapter_config.json").write_text('{"r": 8}\n')
    publisher = subprocess.Popen(
        [sys.executable, "-m", "node", "publish", str(src), "--data-dir", str(tmp_path / "a"),
         "--listen", "/ip4/127.0.0.1/tcp/0"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=(tmp_path / "publisher.log").open("w"), text=True,
    )
    try:
        cid = _read_line(publisher, 30).strip()
        providing = _read_line(publisher, 30).split()
        assert cid and providing[:2] == ["providing", cid], (tmp_path / "publisher.log").read_text()[-2000:]
        multiaddr = providing[3]

        out = tmp_path / "fetched"
        result = _node("fetch", cid, "-o", str(out), "--peer", multiaddr, "--data-dir", str(tmp_path / "b"),
                       "--listen", "/ip4/127.0.0.1/tcp/0", "--no-progress")
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"fetched {cid}" in result.stdout
        for name in ("adapter_model.safetensors", "adapter_config.json"):
            assert (out / name).read_bytes() == (src / name).read_bytes()

        # The fetch pinned it: `ls` lists it, `gc` keeps it; after `unpin`, `gc` frees it.
        assert cid in _node("ls", "--data-dir", str(tmp_path / "b")).stdout
        assert _node("gc", "--data-dir", str(tmp_path / "b")).stdout.startswith("removed 0 blocks")
        assert _node("unpin", cid, "--data-dir", str(tmp_path / "b")).returncode == 0
        assert not _node("gc", "--data-dir", str(tmp_path / "b")).stdout.startswith("removed 0 blocks")
        assert _node("pin", cid, "--data-dir", str(tmp_path / "b")).returncode == 1  # no longer local
    finally:
        publisher.kill()
        publisher.wait()


def test_fetch_of_malformed_cid_is_a_clean_error(tmp_path: Path) -> None:
    result = _node("fetch", "not-a-cid", "--data-dir", str(tmp_path))
    assert result.returncode == 2 and "error:" in result.stderr and "Traceback" not in result.stderr
