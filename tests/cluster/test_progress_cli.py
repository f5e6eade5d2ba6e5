"""Long steps show progress on a terminal and stay quiet in a pipe (issue 21, item 9).

The first start's model conversion took 16-40 s without a line; a terminal now sees a
progress line whose elapsed time ticks.  A pipe or a log file gets no bar.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from tests.cluster.harness import REPO_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess, pytest.mark.timeout(300)]


def _on_a_terminal(args: list[str], env: dict[str, str], timeout: float) -> tuple[int, str]:
    """Run ``args`` with stdout and stderr on a pseudo-terminal; ``(exit code, what it showed)``."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 120, 0, 0))  # a 120-column window
    proc = subprocess.Popen(args, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=terminal, stderr=terminal,
                            env=env, close_fds=True)
    os.close(terminal)
    shown = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([controller], [], [], 0.5)
            if ready:
                try:
                    chunk = os.read(controller, 65536)
                except OSError:  # the child closed the terminal
                    break
                if not chunk:
                    break
                shown += chunk
            elif proc.poll() is not None:
                break
        return proc.wait(30), shown.decode(errors="replace")
    finally:
        os.close(controller)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_model_conversion_shows_progress_on_a_terminal_and_not_in_a_pipe(tmp_path: Path) -> None:
    prepare = [sys.executable, "-m", "node", "models", "prepare", "smollm2-135m"]
    env = dict(os.environ, MOSAIC_CACHE_DIR=str(tmp_path / "cold-1"), PYTHONUNBUFFERED="1")
    # The same conversion into a pipe, at the same time (two cold caches: each converts; the two
    # cores convert both in the time of one).
    piped = subprocess.Popen(prepare, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(env, MOSAIC_CACHE_DIR=str(tmp_path / "cold-2")))
    try:
        code, shown = _on_a_terminal(prepare, env, timeout=240)
        out, err = piped.communicate(timeout=240)
    finally:
        if piped.poll() is None:
            piped.kill()
            piped.wait()
    assert code == 0, shown[-3000:]
    assert "converting" in shown and "3/3" in shown, shown[-3000:]
    # The line was redrawn while the conversion ran (the elapsed time ticks), not printed once at the end.
    assert shown.count("converting") >= 4, shown[-3000:]
    assert piped.returncode == 0, err[-3000:]
    assert "converted to" in out
    assert "converting" not in err and "\r" not in err, err[-2000:]
