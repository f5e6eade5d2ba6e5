"""A directory that appears whole or not at all: build it beside its place, then rename it in.

The model cache, adapters saved with their card, training checkpoints and exported content
all write this way, so a crash (Ctrl-C, OOM) never leaves a half-written directory where a
reader would take it for a complete one.
"""

from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def staging_prefix(target: Path) -> str:
    """Names of ``target``'s staging directories start with this (a killed build leaves them)."""
    return f".{target.name}-"


@contextmanager
def staged_directory(target: Path, *, overwrite: bool, private: bool = False) -> Iterator[Path]:
    """Yield an empty staging directory beside ``target``; when the body returns, rename it to
    ``target``; when it raises, remove it.

    ``overwrite``: an existing ``target`` is replaced (moved aside, then removed, so the rename
    never meets a full directory); without it an existing ``target`` raises ``FileExistsError``
    and nothing changes.  ``private``: the directory is created 0700 instead of the umask's mode.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.with_name(staging_prefix(target) + secrets.token_hex(4))
    staging.mkdir(mode=0o700 if private else 0o777)
    try:
        yield staging
        if not (target.exists() or target.is_symlink()):
            os.replace(staging, target)
        elif not overwrite:
            raise FileExistsError(f"{target} already exists; not overwriting it")
        else:
            old = target.with_name(staging_prefix(target) + "old-" + secrets.token_hex(4))
            os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
