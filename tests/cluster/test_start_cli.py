"""`python -m node start` as a newcomer meets it: ports in use, two nodes on one machine,
one data dir per node, Ctrl-C during the model load (issue 11, items 1, 2, 6, 9)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.cluster.harness import LISTEN_LINE, REPO_ROOT, _read_line, start_process

pytestmark = [pytest.mark.timeout(120), pytest.mark.multiprocess]


def _held_port(*, reuseport: bool) -> socket.socket:
    """A listening socket on 127.0.0.1 (with SO_REUSEPORT, like py-libp2p's listener)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuseport:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def _start(tmp_path: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node", "start", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def _one_clear_error(out: subprocess.CompletedProcess[str]) -> str:
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, out.stderr[-3000:]
    assert "Traceback" not in out.stderr and "ExceptionGroup" not in out.stderr
    return errors[0]


def test_start_refuses_a_libp2p_port_in_use(tmp_path: Path) -> None:
    with _held_port(reuseport=True) as held:
        port = held.getsockname()[1]
        out = _start(tmp_path, "--listen", f"/ip4/127.0.0.1/tcp/{port}", "--no-expert", "--no-http",
                     "--data-dir", str(tmp_path / "d"))
    assert out.returncode == 4
    assert f"port {port}" in _one_clear_error(out) and "in use" in out.stderr


def test_http_port_in_use_is_refused_before_the_model_loads(tmp_path: Path) -> None:
    with _held_port(reuseport=False) as held:
        port = held.getsockname()[1]
        started = time.monotonic()
        out = _start(tmp_path, "--http", f"127.0.0.1:{port}", "--listen", "/ip4/127.0.0.1/tcp/0",
                     "--data-dir", str(tmp_path / "d"))
    assert out.returncode == 4
    assert f"127.0.0.1:{port}" in _one_clear_error(out) and "--http" in out.stderr
    assert "expert_loading" not in out.stderr and "model_cache" not in out.stderr
    assert time.monotonic() - started < 30


def test_a_second_node_on_the_same_data_dir_is_refused(tmp_path: Path) -> None:
    first = start_process(tmp_path, 0)
    try:
        out = _start(tmp_path, "--listen", "/ip4/127.0.0.1/tcp/0", "--no-expert", "--no-http",
                     "--data-dir", str(first.data_dir))
        assert out.returncode == 4
        line = _one_clear_error(out)
        assert str(first.data_dir) in line and f"pid {first.process.pid}" in line and "--data-dir" in line
    finally:
        assert first.stop() == 0


def test_readme_second_node_uses_the_next_free_ports(tmp_path: Path) -> None:
    """The README's commands verbatim: default ports, only --data-dir and --bootstrap differ."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    procs = []
    try:
        lines, urls = [], []
        for index in range(2):
            args = [sys.executable, "-m", "node", "start", "--no-expert", "--data-dir", str(tmp_path / f"node{index}")]
            if lines:
                args += ["--bootstrap", lines[0].group(2)]
            proc = subprocess.Popen(args, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True, env=env,
                                    stderr=(tmp_path / f"node{index}.log").open("w"))
            procs.append(proc)
            match = LISTEN_LINE.match(_read_line(proc, 60).strip())
            assert match, (tmp_path / f"node{index}.log").read_text()[-3000:]
            lines.append(match)
            http = _read_line(proc, 10).strip()
            while http.startswith("also listening on"):
                http = _read_line(proc, 10).strip()
            assert http.startswith("HTTP API on http://127.0.0.1:"), http
            urls.append(http.split()[3])
        ports = [m.group(2).split("/tcp/")[1].split("/")[0] for m in lines]
        assert ports[0] != ports[1] and urls[0] != urls[1]
        # The second node was told which ports it took instead of the defaults.
        log = (tmp_path / "node1.log").read_text()
        assert "in use" in log and "instead" in log
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            assert proc.wait(20) == 0


def test_ctrl_c_during_the_model_load_stops_at_once(tmp_path: Path) -> None:
    # A cold model cache on the torch engine: its fp32 conversion alone takes 20+ s, the whole load
    # longer (the llama.cpp engine, the default, reads the GGUF in about a second: no window to hit).
    env = dict(os.environ, PYTHONUNBUFFERED="1", MOSAIC_CACHE_DIR=str(tmp_path / "cold-cache"))
    log = tmp_path / "node.log"
    proc = subprocess.Popen([sys.executable, "-m", "node", "start", "--listen", "/ip4/127.0.0.1/tcp/0", "--no-http",
                             "--engine", "torch", "--data-dir", str(tmp_path / "d")], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=log.open("w"), text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while "model_cache_build_start" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        interrupted = time.monotonic()
        code = proc.wait(30)
        assert time.monotonic() - interrupted < 5, log.read_text()[-2000:]
        assert code == 0
        assert "Traceback" not in log.read_text()
        assert "event=shutdown" in log.read_text() and "during start-up" in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
