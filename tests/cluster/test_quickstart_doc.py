"""docs/quickstart.md runs as written: every ``sh`` block, in order, in one bash process.

Only the first block's variables change (a temp dir, free loopback ports, this
interpreter), through the environment the doc documents.  Nodes are real
``python -m node start`` processes on 127.0.0.1; whatever the script leaves
behind is killed with its process group.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster.harness import REPO_ROOT

DOC = REPO_ROOT / "docs" / "quickstart.md"
BLOCK = re.compile(r"^```sh\n(.*?)^```$", re.S | re.M)

# Two model loads and one query per strategy (eleven, several expert calls each) on a shared 2-core
# box: ~5 min under load, far past the default 120 s cap.
pytestmark = [pytest.mark.slow, pytest.mark.multiprocess, pytest.mark.timeout(660)]


def shell_blocks(text: str) -> list[str]:
    return BLOCK.findall(text)


def free_port_run(count: int) -> int:
    """A first port such that ``count`` consecutive loopback ports are free (now)."""
    for _ in range(200):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + count > 65535:
            continue
        sockets = []
        try:
            for port in range(base, base + count):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no run of free ports")


def test_doc_has_the_sections_the_test_relies_on():
    blocks = shell_blocks(DOC.read_text())
    assert len(blocks) >= 8
    assert "QS_DIR" in blocks[0] and "P2P_PORT" in blocks[0] and "HTTP_PORT" in blocks[0] and "PY=" in blocks[0]
    assert blocks[-1].strip().startswith("kill")


@pytest.mark.skipif(shutil.which("curl") is None, reason="the quickstart uses curl")
def test_every_shell_command_of_the_quickstart_runs(tmp_path, base_expert):
    # base_expert: what the default engine prepares once for the embedded model is already in the
    # test cache ($MOSAIC_CACHE_DIR), which the nodes inherit, so they start in seconds.
    script = tmp_path / "quickstart.sh"
    script.write_text("set -euo pipefail\n" + "\n".join(shell_blocks(DOC.read_text())))
    env = dict(os.environ, QS_DIR=str(tmp_path / "qs"), P2P_PORT=str(free_port_run(3)),
               HTTP_PORT=str(free_port_run(2)), PY=sys.executable, HOME=str(tmp_path / "home"),
               PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    process = subprocess.Popen(["bash", str(script)], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=600)
        print(output)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail("quickstart timed out:\n" + output[-4000:] + _logs(tmp_path / "qs"))
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # nodes the script left running, if it failed midway
        except ProcessLookupError:
            pass
    assert process.returncode == 0, output[-4000:] + _logs(tmp_path / "qs")

    strategies = re.search(r"^strategies to try: (.+)$", output, re.M)
    assert strategies, output
    for model in strategies.group(1).split():
        section = output.split(f"== {model}\n", 1)[1]
        assert "served by" in section.split("==", 1)[0], section[:500]
    assert "mosaic_requests_total" in output and "node 1 is /ip4/127.0.0.1/tcp/" in output
    assert '"served_by"' in output  # the CLI's --json result of the routed query


def _logs(qs_dir: Path) -> str:
    return "".join(f"\n--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(qs_dir.glob("node*.log")))
