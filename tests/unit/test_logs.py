"""Logging setup (issue 11, item 11): third-party noise is quiet by default and returns with debug.

Runs in a fresh interpreter, in the order ``node start`` uses: ``logs.setup``
first, then the imports that pull in py-libp2p (whose import resets the
"libp2p" logger: libp2p/utils/logging.py), then log lines from everyone.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import logging, sys
from node import logs
logs.setup(sys.argv[1])
import libp2p, multiaddr  # what `node start` imports after setup
from libp2p.kad_dht import kad_dht  # its module logger wrote most of the noise
from libp2p.network import auto_connector  # sets its own logger to INFO on import
auto_connector.logger.info("AUTO_CONNECTOR_STATE: num_connections=0")
logging.getLogger(kad_dht.__name__).warning("Failed to read DHT message from stream: ")
logging.getLogger("libp2p.network.swarm").error("swarm error")
logging.getLogger("multiaddr.codecs").warning("codec noise")
logging.getLogger("zeroconf").warning("mdns noise")
logs.event(logs.get_logger("node"), "ours", value=1)
logs.event(logs.get_logger("node"), "ours_debug", level=logging.DEBUG)
"""


def run(level: str) -> list[str]:
    done = subprocess.run([sys.executable, "-c", SCRIPT, level], cwd=REPO_ROOT, capture_output=True, text=True, check=False,
                          timeout=120, env={"PYTHONPATH": str(REPO_ROOT), "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stderr.splitlines()


def test_third_party_loggers_are_quiet_by_default():
    lines = run("info")
    assert [line for line in lines if "event=ours" in line], lines
    # py-libp2p's errors stay visible; its warnings and multiaddr's / zeroconf's do not.
    assert [line for line in lines if "event=ours" not in line] == [
        line for line in lines if "logger=libp2p.network.swarm" in line and "swarm error" in line], lines
    assert len(lines) == 2 and all(line.startswith("ts=") for line in lines), lines  # nothing unformatted


@pytest.mark.parametrize("level", ["debug"])
def test_debug_brings_third_party_warnings_back_as_single_lines(level):
    lines = run(level)
    text = "\n".join(lines)
    assert "AUTO_CONNECTOR_STATE" not in text  # an info line: third-party info stays out even in debug
    for needle in ("Failed to read DHT message", "swarm error", "codec noise", "mdns noise", "event=ours_debug"):
        assert needle in text, text
    assert all(line.startswith("ts=") for line in lines), text  # formatted like ours, one line each
