"""`python -m node fetch` as a newcomer meets it: -o never deletes what the user made,
every failure is one `error:` line, a fetch-only client leaves no trace in the network
(issue 11, items 7, 8, 17)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from protocol import Identity
from tests.cluster.harness import REPO_ROOT, start_process

pytestmark = [pytest.mark.timeout(150), pytest.mark.multiprocess]

MISSING_CID = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"  # a raw-leaf CID nobody here has


def _node(*args: str, cwd: Path = REPO_ROOT, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    # cwd may be a scratch dir (-o .): the repo must stay importable.
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, "-m", "node", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=env)


def _clean_error(out: subprocess.CompletedProcess[str]) -> None:
    assert out.returncode != 0
    assert any(line.startswith("error: ") for line in out.stderr.splitlines()), out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "ExceptionGroup" not in out.stderr, out.stderr[-3000:]


def test_fetch_output_paths_never_delete_user_files_and_failures_are_clean(tmp_path: Path) -> None:
    src = tmp_path / "weights.bin"
    src.write_bytes(b"0123456789" * 100_000)
    # Pinned into the data dir of test node 0 before it starts (start_process keeps the store).
    published = _node("publish", str(src), "--offline", "--data-dir", str(tmp_path / "node-0"))
    assert published.returncode == 0, published.stderr
    cid = published.stdout.strip()
    provider = start_process(tmp_path, 0)
    try:
        fetch = ["fetch", cid, "--peer", provider.multiaddr, "--no-progress", "--data-dir", str(tmp_path / "client")]

        # -o an existing directory: the file goes inside it; nothing there is touched.
        existing = tmp_path / "mine"
        existing.mkdir()
        (existing / "keep.txt").write_text("precious")
        out = _node(*fetch, "-o", str(existing))
        assert out.returncode == 0, out.stderr[-2000:]
        assert (existing / "keep.txt").read_text() == "precious"
        assert (existing / cid).read_bytes() == src.read_bytes()

        # -o . : written as ./<CID>, the working directory is otherwise untouched.
        work = tmp_path / "work"
        work.mkdir()
        (work / "notes.md").write_text("mine")
        out = _node(*fetch, "-o", ".", cwd=work)
        assert out.returncode == 0, out.stderr[-2000:]
        assert sorted(p.name for p in work.iterdir()) == sorted(["notes.md", cid])
        assert (work / "notes.md").read_text() == "mine"

        # -o an existing file: refused before anything is fetched, the file intact.
        taken = tmp_path / "taken.bin"
        taken.write_text("do not overwrite")
        out = _node(*fetch, "-o", str(taken))
        _clean_error(out)
        assert out.returncode == 2 and "exists" in out.stderr and taken.read_text() == "do not overwrite"
        assert not any(p.name.startswith(".taken") for p in tmp_path.iterdir())  # no partial file left

        # A CID the provider does not have: one error line, no traceback (was an ExceptionGroup).
        out = _node("fetch", MISSING_CID, "--peer", provider.multiaddr, "--no-progress",
                    "--data-dir", str(tmp_path / "client"), "-o", str(tmp_path / "missing"))
        _clean_error(out)
        assert out.returncode == 1 and not (tmp_path / "missing").exists()

        # No peer at all to ask: said at once.
        out = _node("fetch", MISSING_CID, "--no-progress", "--data-dir", str(tmp_path / "client"), timeout=30)
        _clean_error(out)
        assert "--peer" in out.stderr

        # An unreachable bootstrap peer: one error line naming it.
        dead = f"/ip4/127.0.0.1/tcp/1/p2p/{Identity.generate().peer_id}"
        out = _node("fetch", MISSING_CID, "--bootstrap", dead, "--no-progress", "--data-dir", str(tmp_path / "client"))
        _clean_error(out)
        assert out.returncode == 3 and dead in out.stderr

        # The fetch clients left no trace: the provider still sees only itself.
        status = _node("status", "--peer", provider.multiaddr, "--json")
        assert status.returncode == 0, status.stderr
        assert [p["peer_id"] for p in json.loads(status.stdout)["peers"]] == [provider.peer_id]
    finally:
        assert provider.stop() == 0
