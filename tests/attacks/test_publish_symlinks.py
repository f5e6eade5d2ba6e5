"""Attack 5 (issue 12): ``publish`` followed symlinks out of the published folder.

A folder holding a link to ``/etc/passwd`` published that file, and anyone who
fetched the CID got it.  Now a link leaving the folder is refused (the command
names it and exits 1, nothing is stored), links inside the folder still work,
and ``--follow-links`` copies external targets in on purpose.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from node.storage.blockstore import BlockStore
from node.storage.exporter import export
from node.storage.importer import LinkOutsideFolder, import_path
from protocol.cid import parse_cid
from tests.cluster.harness import REPO_ROOT

SECRET = b"root:x:0:0:secret-of-the-publisher\n"


def _folder(tmp_path: Path) -> Path:
    secret = tmp_path / "outside" / "passwd"
    secret.parent.mkdir()
    secret.write_bytes(SECRET)
    folder = tmp_path / "adapter"
    (folder / "sub").mkdir(parents=True)
    (folder / "weights.safetensors").write_bytes(b"w" * 1000)
    (folder / "sub" / "alias.safetensors").symlink_to("../weights.safetensors")  # stays inside: fine
    (folder / "sub" / "passwd").symlink_to(secret)  # leaves the folder
    return folder


def _publish(tmp_path: Path, folder: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node", "publish", "--offline", "--data-dir", str(tmp_path / "data"),
                           *extra, str(folder)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))


def _store_holds(path: Path, needle: bytes) -> bool:
    return any(needle in f.read_bytes() for f in path.rglob("*") if f.is_file())


def test_publish_refuses_links_leaving_the_folder(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    done = _publish(tmp_path, folder)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "passwd" in done.stderr and "outside the published folder" in done.stderr
    assert not _store_holds(tmp_path / "data", SECRET)


def test_follow_links_copies_the_target_on_purpose(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    done = _publish(tmp_path, folder, "--follow-links")
    assert done.returncode == 0, done.stderr
    out = export(BlockStore(tmp_path / "data" / "ipfs"), parse_cid(done.stdout.strip()), tmp_path / "out")
    assert (out / "sub" / "passwd").read_bytes() == SECRET
    assert (out / "sub" / "alias.safetensors").read_bytes() == b"w" * 1000


def test_links_inside_the_folder_still_import(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    (folder / "sub" / "passwd").unlink()
    entry = import_path(BlockStore(tmp_path / "store"), folder)
    assert entry.filesize == 2000
    (folder / "escape").symlink_to(tmp_path / "outside")  # a directory link leaving the folder
    try:
        import_path(BlockStore(tmp_path / "store2"), folder)
    except LinkOutsideFolder as exc:
        assert "escape" in str(exc)
    else:
        raise AssertionError("a directory link leaving the folder was followed")
