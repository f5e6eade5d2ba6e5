"""A node serving on llama.cpp answers without importing torch, transformers or peft.

The node runs as a user starts it (``python -m node start --engine llama.cpp``), in its own
process, with an import hook in front that records every import of those packages (with the
stack that asked for it) to a file.  The node must list its expert, answer a chat completion
through its HTTP API, and record nothing.  Semantic routing (MiniLM) and training still use
transformers and torch, on first use only: a query to the expert by name uses neither.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.timeout(180), pytest.mark.multiprocess]

# Runs ``python -m node`` behind a meta-path hook that writes down who imports the heavy stack.
_LAUNCH = """
import runpy, sys, traceback
WATCHED = {"torch", "transformers", "peft"}
LOG = sys.argv.pop(1)
class Watch:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in WATCHED and name not in sys.modules:
            with open(LOG, "a") as f:
                f.write(f"== {name}\\n" + "".join(traceback.format_stack(limit=25)))
        return None
sys.meta_path.insert(0, Watch())
sys.argv[0] = "node"
runpy.run_module("node", run_name="__main__", alter_sys=True)
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_llama_cpp_node_serves_without_torch(tmp_path: Path) -> None:
    imports = tmp_path / "heavy-imports.log"
    port = _free_port()
    args = [sys.executable, "-c", _LAUNCH, str(imports), "start", "--engine", "llama.cpp", "--threads", "2",
            "--data-dir", str(tmp_path / "data"), "--listen", "/ip4/127.0.0.1/tcp/0", "--http", f"127.0.0.1:{port}",
            "--name", "lean"]
    log = (tmp_path / "node.log").open("w")
    node = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=log,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        listed: list[dict] = []
        while time.monotonic() < deadline and not listed:
            assert node.poll() is None, (tmp_path / "node.log").read_text()[-3000:]
            try:
                listed = [m for m in httpx.get(f"{base}/v1/models", timeout=2).json()["data"] if m["id"] == "lean"]
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            if not listed:
                time.sleep(0.2)
        assert listed, "the node did not list its expert in 90 s"
        assert listed[0]["mosaic"]["base_model"] == "SmolLM2-135M-Instruct"
        reply = httpx.post(f"{base}/v1/chat/completions", timeout=120, json={
            "model": "lean", "messages": [{"role": "user", "content": "What is the capital of France?"}],
            "max_tokens": 12, "temperature": 0}).json()
        text = reply["choices"][0]["message"]["content"]
        assert reply["usage"]["completion_tokens"] > 0 and text.strip(), reply
        assert "torch" not in Path(f"/proc/{node.pid}/maps").read_text()  # no libtorch mapped either
    finally:
        node.terminate()
        try:
            node.wait(30)
        except subprocess.TimeoutExpired:
            node.kill()
        log.close()
    assert not imports.exists(), imports.read_text()[-4000:]
