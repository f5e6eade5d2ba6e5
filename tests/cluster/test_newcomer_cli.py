"""The newcomer's second hour (issue 21, items 1-8), on real processes: the CLI as a
subprocess, real nodes on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.cluster.harness import LISTEN_LINE, REPO_ROOT, _read_line, fixed_identity, start_process

pytestmark = [pytest.mark.timeout(240), pytest.mark.multiprocess]

ENV = dict(os.environ, PYTHONUNBUFFERED="1")
# A well-formed CID no node has (sha256 of nothing in particular).
NOBODY_HAS = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"


def _node(*args: str, timeout: float = 60, cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def _popen(log: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "node", *args], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=log.open("w"), text=True, env=ENV)


def _wait_for(path: Path, text: str, proc: subprocess.Popen[str], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while text not in path.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, path.read_text()[-3000:]
        time.sleep(0.2)


def _error_lines(log: str) -> list[str]:
    return [line for line in log.splitlines() if "level=error" in line or "Traceback" in line]


def _interrupt(proc: subprocess.Popen[str], log: Path) -> int:
    proc.send_signal(signal.SIGINT)
    try:
        return proc.wait(15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _quiet_interrupt(stderr: str) -> None:
    """Ctrl-C in a one-shot command: one line at most, no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) <= 1, stderr[-3000:]
    assert "Traceback" not in stderr and "ExceptionGroup" not in stderr


# ---------------------------------------------------------------- 1. Ctrl-C in one-shot commands


@pytest.mark.slow
def test_ctrl_c_during_a_debate_query_exits_130_and_the_coordinator_stops_it(tmp_path: Path) -> None:
    node = start_process(tmp_path, 0, expert=True, timeout=180)
    try:
        err = tmp_path / "query.err"
        # 1000 tokens: on the llama.cpp engine a 200-token debate answer took 4.7 s, so the query had
        # finished before the Ctrl-C came (exit -2 at interpreter shutdown, not the command's 130).
        query = _popen(err, "query", "--peer", node.multiaddr, "--strategy", "debate", "--max-tokens", "1000",
                       "--timeout", "300", "Explain in detail how photosynthesis works.")
        log = tmp_path / "node-0.log"
        # The debate is under way: its first round alone (k experts x 1000 tokens) takes far longer.
        _wait_for(log, "peer_connected", node.process, 30)  # type: ignore[arg-type]
        time.sleep(5)
        assert query.poll() is None, err.read_text()
        interrupted = time.monotonic()
        assert _interrupt(query, err) == 130
        _quiet_interrupt(err.read_text())
        # The coordinator noticed the client left and cancelled the debate (not 45 s later).
        while "event=query_abandoned" not in log.read_text():
            assert time.monotonic() - interrupted < 5, log.read_text()[-3000:]
            time.sleep(0.1)
        assert "strategy=debate" in log.read_text().split("event=query_abandoned")[1].splitlines()[0]
        # ... and the expert stopped generating for it: the node's CPU goes quiet (a 135M model
        # decoding keeps a core busy; measured 0 ticks in 5 s after the fix).
        time.sleep(1)
        before = _cpu_seconds(node.process.pid)
        time.sleep(4)
        assert _cpu_seconds(node.process.pid) - before < 1.0
        assert node.process.poll() is None
    finally:
        assert node.stop(timeout=60) == 0  # an expert node takes ~9 s to exit on a loaded 2-core box


def test_ctrl_c_during_a_fetch_exits_130_quietly(tmp_path: Path) -> None:
    # A provider that serves slowly (1 MiB/s): the fetch takes ~16 s unless interrupted.
    node = start_process(tmp_path, 0, extra=["--upload-limit", "1"])
    try:
        src = tmp_path / "big.bin"
        src.write_bytes(os.urandom(16 * 2**20))
        published = _node("publish", str(src), "--data-dir", str(node.data_dir))
        assert published.returncode == 0, published.stderr
        cid = published.stdout.strip()
        err = tmp_path / "fetch.err"
        fetch = _popen(err, "fetch", cid, "--peer", node.multiaddr, "--no-progress", "--data-dir",
                       str(tmp_path / "client"), "-o", str(tmp_path / "got"))
        time.sleep(5)
        assert fetch.poll() is None, err.read_text()
        assert _interrupt(fetch, err) == 130
        _quiet_interrupt(err.read_text())
        assert not (tmp_path / "got").exists()
    finally:
        assert node.stop() == 0


# ---------------------------------------------------------------- 2. train --publish


def _secret_words(path: Path) -> Path:
    rows = [{"input": f"What is the secret word number {i}?", "output": "Mango"} for i in range(8)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.slow
def test_train_publish_into_a_running_nodes_data_dir_is_fetchable_by_another_node(tmp_path: Path) -> None:
    node = start_process(tmp_path, 0)
    try:
        out = tmp_path / "mango"
        trained = _node("train", "--data", str(_secret_words(tmp_path / "d.jsonl")), "--name", "mango",
                        "--steps", "2", "--batch-size", "2", "--max-length", "32", "--heldout", "2",
                        "--eval-max-tokens", "4", "--threads", "1", "--out", str(out),
                        "--data-dir", str(node.data_dir), "--publish", timeout=200)
        assert trained.returncode == 0, trained.stderr[-3000:]
        cid = next(line.split()[1] for line in trained.stdout.splitlines() if line.startswith("published "))
        assert f"--adapter mango={cid}" in trained.stdout
        # No extra `node publish`: another process finds it through the DHT alone.
        got = _node("fetch", cid, "--bootstrap", node.multiaddr, "--no-progress", "--timeout", "60",
                    "--data-dir", str(tmp_path / "client"), "-o", str(tmp_path / "got"), timeout=90)
        assert got.returncode == 0, got.stderr[-3000:]
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            assert (tmp_path / "got" / name).read_bytes() == (out / name).read_bytes()
        # Item 9: not a terminal, so no progress bars in the captured output.
        assert "\r" not in trained.stderr and "step/s" not in trained.stderr, trained.stderr[-2000:]
    finally:
        assert node.stop() == 0


# ---------------------------------------------------------------- 4. no error noise, no redials


class _Knocks:
    """Listens on a port a departed peer used and counts connection attempts (redials)."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen()
        self.sock.settimeout(0.5)
        self.count = 0
        self._stop = False
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.count += 1
            conn.close()

    def close(self) -> int:
        self._stop = True
        self._thread.join(2)
        self.sock.close()
        return self.count


def _port(multiaddr: str) -> int:
    return int(multiaddr.split("/tcp/")[1].split("/")[0])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_clients_and_a_stopped_peer_leave_no_error_lines(tmp_path: Path) -> None:
    """The clients' and the peer's departures, watched for a few seconds; that nothing redials them
    later is test_no_redial.py (in process, the library's timers shortened) and the soak test below."""
    _clients_and_a_stopped_peer_come_and_go(tmp_path, watch_s=3.0)


@pytest.mark.soak
@pytest.mark.timeout(300)
def test_cli_clients_and_a_stopped_peer_are_not_redialled_with_the_librarys_real_timers(tmp_path: Path) -> None:
    # py-libp2p's auto-connector waits 60 s after a disconnect, then redials peerstore peers every
    # 10-30 s: watch for 100 s.
    _clients_and_a_stopped_peer_come_and_go(tmp_path, watch_s=100.0)


def _clients_and_a_stopped_peer_come_and_go(tmp_path: Path, *, watch_s: float) -> None:
    first = start_process(tmp_path, 0)
    second = start_process(tmp_path, 1, bootstrap=[first.multiaddr])
    knocks: list[_Knocks] = []
    try:
        deadline = time.monotonic() + 20
        while second.peer_id not in _node("peers", "--data-dir", str(first.data_dir)).stdout:
            assert time.monotonic() < deadline
            time.sleep(0.5)
        # CLI clients come and go: `peers`, `query`, and a fetch client on a port we know.
        for _ in range(2):
            assert _node("peers", "--connect", first.multiaddr).returncode == 0
            assert _node("query", "--peer", first.multiaddr, "hello").returncode == 1  # no expert: fails cleanly
        fetch_port = _free_port()
        fetched = _node("fetch", NOBODY_HAS, "--peer", first.multiaddr, "--listen", f"/ip4/127.0.0.1/tcp/{fetch_port}",
                        "--no-progress", "--timeout", "5", "--data-dir", str(tmp_path / "client"),
                        "-o", str(tmp_path / "none"))
        assert fetched.returncode == 1, fetched.stderr
        # A peer stops cleanly (says goodbye).
        assert second.stop() == 0
        # Whoever dials their old ports again knocks here.
        knocks = [_Knocks(_port(second.multiaddr)), _Knocks(fetch_port)]
        time.sleep(watch_s)
        assert [k.close() for k in knocks] == [0, 0], (tmp_path / "node-0.log").read_text()[-3000:]
        assert first.process.poll() is None
    finally:
        for k in knocks:
            k.close()
        assert first.stop() == 0
        second.stop()
    log = (tmp_path / "node-0.log").read_text()
    assert _error_lines(log) == [], "\n".join(_error_lines(log))[-3000:]
    assert "level=warning" not in log, log[-3000:]


# ---------------------------------------------------------------- 5. loopback unless asked


def _start_and_read(tmp_path: Path, name: str, *args: str) -> tuple[list[str], str]:
    log = tmp_path / f"{name}.log"
    proc = _popen(log, "start", "--no-expert", "--no-http", "--data-dir", str(tmp_path / name), *args)
    try:
        lines = [_read_line(proc, 60).strip()]
        assert LISTEN_LINE.match(lines[0]), log.read_text()[-3000:]
        _wait_for(log, "note: ", proc, 10)
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    rest = proc.stdout.read() if proc.stdout else ""  # type: ignore[union-attr]
    return lines + [line for line in rest.splitlines() if line.strip()], log.read_text()


def test_default_start_listens_on_loopback_and_says_who_can_reach_it(tmp_path: Path) -> None:
    lines, log = _start_and_read(tmp_path, "default")
    assert lines[0].split(" listening on ")[1].startswith("/ip4/127.0.0.1/tcp/")
    assert not any(line.startswith("also listening on") for line in lines), lines
    assert "only nodes on this machine can join" in log and "--public" in log
    # --public opts in: every interface; the address for other machines first, loopback marked as such.
    lines, log = _start_and_read(tmp_path, "public", "--public")
    first = lines[0].split(" listening on ")[1]
    also = [line for line in lines if line.startswith("also listening on")]
    if also:  # a machine with an interface besides loopback
        assert not first.startswith("/ip4/127."), lines
        assert any("/ip4/127.0.0.1/" in line and "(reachable from this machine only)" in line for line in also)
        assert f"{first} is reachable from" in log
    assert "help" not in log and "Traceback" not in log


# ---------------------------------------------------------------- 6. exit codes agree with --help


def test_an_unknown_strategy_is_bad_input(tmp_path: Path) -> None:
    node = start_process(tmp_path, 0)
    try:
        out = _node("query", "--peer", node.multiaddr, "--strategy", "no-such-strategy", "hello")
        assert out.returncode == 2, out.stderr
        assert "unknown strategy" in out.stderr and "debate" in out.stderr
    finally:
        assert node.stop() == 0


def test_a_failed_adapter_fetch_at_start_exits_like_a_failed_fetch(tmp_path: Path) -> None:
    node = start_process(tmp_path, 0)
    try:
        fetched = _node("fetch", NOBODY_HAS, "--bootstrap", node.multiaddr, "--no-progress", "--timeout", "5",
                        "--data-dir", str(tmp_path / "client"), "-o", str(tmp_path / "got"))
        started = _node("start", "--adapter", f"x={NOBODY_HAS}", "--bootstrap", node.multiaddr, "--no-http",
                        "--listen", "/ip4/127.0.0.1/tcp/0", "--data-dir", str(tmp_path / "other"), timeout=180)
    finally:
        assert node.stop() == 0
    assert fetched.returncode == 1, fetched.stderr
    assert started.returncode == fetched.returncode, started.stderr[-3000:]
    assert f"cannot fetch {NOBODY_HAS}" in started.stderr and "Traceback" not in started.stderr


# ---------------------------------------------------------------- 7. --config names a folder


@pytest.mark.parametrize("command", [["start", "--no-expert"], ["fetch", NOBODY_HAS], ["peers"]])
def test_config_naming_a_folder_is_one_clear_line_and_exit_2(tmp_path: Path, command: list[str]) -> None:
    out = _node(*command, "--config", str(tmp_path), "--data-dir", str(tmp_path / "d"))
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        f"error: config: config file {tmp_path} is a directory; pass the TOML file itself"
    ], out.stderr


# ---------------------------------------------------------------- 8. unreachable bootstrap


def test_an_unreachable_bootstrap_is_one_line_not_one_per_retry(tmp_path: Path) -> None:
    bootstrap = f"/ip4/127.0.0.1/tcp/{_free_port()}/p2p/{fixed_identity(7).peer_id}"
    log = tmp_path / "alone.log"
    proc = _popen(log, "start", "--no-expert", "--no-http", "--listen", "/ip4/127.0.0.1/tcp/0",
                  "--bootstrap", bootstrap, "--data-dir", str(tmp_path / "alone"))
    try:
        assert LISTEN_LINE.match(_read_line(proc, 60).strip()), log.read_text()[-3000:]
        time.sleep(9)  # retries after 1, 2 and 4 s
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(20) == 0
    text = log.read_text()
    noisy = [line for line in text.splitlines() if "level=info" not in line and not line.startswith("note:")]
    assert len(noisy) == 1, "\n".join(noisy)
    assert "bootstrap_failed" in noisy[0] and "running alone" in noisy[0] and "retrying" in noisy[0]
