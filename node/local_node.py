"""The node running on a data dir: its lock, its address file, and how local commands reach it.

One data dir, one running node.  ``start`` (and ``publish`` when it serves) takes
an exclusive lock on ``<data dir>/node.lock`` for its whole life; the OS drops it
when the process dies, so a crash never leaves a stale lock.  Before, a second
process on the same data dir started a second host with the *same identity* and
replaced the first node's record network-wide for minutes.

While it runs, the node describes itself in ``<data dir>/node.json`` (mode 0600):
pid, peer id, multiaddrs, HTTP URL and a loopback control endpoint with a random
token.  ``peers`` and ``status`` use it to find the local node without a
multiaddr; ``publish`` and ``pin`` use the control endpoint to make the running
node provide what they pinned (see :mod:`node.control`).
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import asdict, dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

LOCK_FILE = "node.lock"
INFO_FILE = "node.json"
CONTROL_TIMEOUT = 10.0
MAX_CONTROL_LINE = 4096
# How long `self-eval` waits for the node (every task x every adapter, on the node's own worker).
SELF_EVAL_TIMEOUT = 3600.0
MAX_CONTROL_REPLY = 64 * 1024  # a self-evaluation answers with up to 16 scores


class DataDirBusy(Exception):
    """Another process runs a node on this data dir."""

    def __init__(self, data_dir: Path, holder: RunningNode | None) -> None:
        self.data_dir = data_dir
        self.holder = holder
        who = f"a running node (pid {holder.pid}, peer {holder.peer_id})" if holder else "another process"
        super().__init__(f"data dir {data_dir} is in use by {who}; stop it or pass --data-dir DIR")


class ControlError(Exception):
    """The running node could not be asked, or refused the request."""


@dataclass(frozen=True)
class RunningNode:
    """What ``<data dir>/node.json`` says about the node holding the lock."""

    pid: int
    peer_id: str
    command: str  # "start" or "publish"
    multiaddrs: list[str] = field(default_factory=list)
    http_url: str | None = None
    control: str | None = None  # "127.0.0.1:PORT" of the control endpoint
    token: str = ""

    @classmethod
    def from_json(cls, text: str) -> RunningNode:
        data = json.loads(text)
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


class DataDirLock:
    """The exclusive lock of one data dir (non-blocking: a held lock is an error, not a wait)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = Path(data_dir).expanduser()
        self._lock = FileLock(str(self.data_dir / LOCK_FILE))

    def acquire(self) -> None:
        """Take the lock or raise :class:`DataDirBusy` naming the holder."""
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            raise DataDirBusy(self.data_dir, _read_info(self.data_dir)) from None
        # A node.json left by a node that was killed describes no one now.
        (self.data_dir / INFO_FILE).unlink(missing_ok=True)

    def describe(self, info: RunningNode) -> None:
        """Write ``node.json`` atomically (0600: it holds the control token)."""
        path = self.data_dir / INFO_FILE
        tmp = path.with_name(f".{INFO_FILE}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(asdict(info), fh)
        os.replace(tmp, path)

    def release(self) -> None:
        if self._lock.is_locked:
            (self.data_dir / INFO_FILE).unlink(missing_ok=True)
            self._lock.release()

    def __enter__(self) -> DataDirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_info(data_dir: Path) -> RunningNode | None:
    try:
        return RunningNode.from_json((data_dir / INFO_FILE).read_text())
    except (OSError, ValueError, TypeError, KeyError):
        return None


def running_node(data_dir: str | os.PathLike[str]) -> RunningNode | None:
    """The node running on ``data_dir``, or None (no lock holder, or it is still starting)."""
    directory = Path(data_dir).expanduser()
    if not (directory / LOCK_FILE).exists():
        return None
    probe = FileLock(str(directory / LOCK_FILE))
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return _read_info(directory)  # held: someone runs (None while it is starting up)
    probe.release()
    return None


def ask(node: RunningNode, op: str, *, timeout: float = CONTROL_TIMEOUT, **fields: object) -> dict[str, object]:
    """Send one control request (``provide``, ``unprovide``, ``self_eval``) to the running node; blocking."""
    if not node.control:
        raise ControlError(f"the node (pid {node.pid}) has no control endpoint")
    host, _, port = node.control.rpartition(":")
    request = json.dumps({"token": node.token, "op": op, **fields}).encode() + b"\n"
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as sock:
            sock.sendall(request)
            reply = sock.makefile("rb").readline(MAX_CONTROL_REPLY)
    except OSError as exc:
        raise ControlError(f"cannot reach the running node (pid {node.pid}) at {node.control}: {exc}") from None
    try:
        answer = json.loads(reply)
    except ValueError:
        raise ControlError(f"the running node (pid {node.pid}) sent no valid answer") from None
    if not answer.get("ok"):
        raise ControlError(f"the running node refused {op}: {answer.get('error', 'no reason given')}")
    return answer
