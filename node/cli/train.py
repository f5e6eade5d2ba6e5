"""`python -m node train --data FILE --name NAME`: fine-tune a LoRA adapter on your own data.

``--data`` is JSONL (``{"input","output"}`` or ``{"messages": [...]}``) or a task file of
``shared/data/tasks`` with ``--split dev``.  A held-out slice is scored before and after
training; the adapter (safetensors) and its model card go to ``--out`` (default
``./adapters/NAME``).  Checkpoints every ``--checkpoint-every`` steps in
``<data dir>/training/NAME``; Ctrl-C saves one, ``--resume`` continues.  ``--publish``
adds the adapter to the node's block store, has the node running on ``--data-dir``
(if any) provide it, and prints its CID, which ``python -m node start --adapter NAME=CID``
serves on any node.
"""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    from node.training.loop import TrainSettings

    from .choices import CATALOG_KEYS

    d = TrainSettings()
    p = sub.add_parser("train", help="fine-tune a LoRA adapter on your data (and publish it)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, metavar="FILE", help="JSONL pairs/chats or a task file")
    p.add_argument("--split", default="dev", help="task files: the split to train on (default dev)")
    p.add_argument("--name", required=True, help="adapter name (what --adapter NAME=... serves it as)")
    p.add_argument("--description", default="", help="what the adapter is good at, in a sentence")
    p.add_argument("--tags", default="", help="comma-separated tags, e.g. math,arithmetic")
    p.add_argument("--model", default=None, help="base: " + ", ".join(CATALOG_KEYS)
                   + " (default qwen2.5-1.5b, what a node serves; smollm2-135m trains in a fraction of the memory)"
                   ", a GGUF file or an HF dir")
    p.add_argument("--out", default=None, metavar="DIR", help="adapter output directory (default ./adapters/NAME)")
    p.add_argument(
        "--data-dir",
        help="node data dir: checkpoints, block store (default ~/.mosaic); models are cached in "
        "$MOSAIC_CACHE_DIR or the user cache dir",
    )
    p.add_argument("--rank", type=int, default=d.rank, help=f"LoRA rank (default {d.rank})")
    p.add_argument("--alpha", type=int, default=d.alpha, help=f"LoRA alpha (default {d.alpha})")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"examples per step (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    p.add_argument("--max-length", type=int, default=d.max_length, help=f"tokens per example (default {d.max_length})")
    p.add_argument("--target-modules", default=",".join(d.target_modules), help="layers LoRA adapts")
    p.add_argument("--lora-layers", type=int, default=d.lora_layers, metavar="N",
                   help="LoRA on the top N layers only (default 0: all); cheaper steps, no backward below them")
    p.add_argument("--precision", choices=["fp32", "bf16"], default=d.precision,
                   help="bf16: matmuls under autocast (~2x faster on AVX512-BF16/AMX CPUs); default fp32")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint of NAME")
    p.add_argument("--heldout", type=int, default=20, help="examples scored before/after, not trained on (0: none)")
    p.add_argument("--eval-split", default=None, help="task files: score on this split's first --heldout items "
                   "(e.g. test) instead of a random slice; the training split itself (dev) holds "
                   "its first --heldout items out of training")
    p.add_argument("--no-scoring", action="store_true", help="hold the --heldout items out but do not score "
                   "them before/after (score them later, e.g. with node eval on the llama.cpp engine)")
    p.add_argument("--eval-max-tokens", type=int, default=None, help="reply length when scoring")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--publish", action="store_true", help="add the adapter to the block store and print its CID")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (default: shown on a terminal)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from node.config import load_config
    from node.expert.model.loader import ModelLoadError
    from node.training import (
        DataError,
        ResumeError,
        TrainJob,
        TrainSettings,
        train_adapter,
    )

    config = load_config(None)
    if args.data_dir:
        config.data_dir = args.data_dir
    try:
        settings = TrainSettings(
            rank=args.rank, alpha=args.alpha, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
            max_length=args.max_length, seed=args.seed, checkpoint_every=args.checkpoint_every,
            lora_layers=args.lora_layers, precision=args.precision,
            warmup_steps=min(TrainSettings.warmup_steps, max(1, args.steps // 10)),
            target_modules=tuple(m.strip() for m in args.target_modules.split(",") if m.strip()),
        ).check()
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    job = TrainJob(
        data=Path(args.data), out_dir=Path(args.out or f"adapters/{args.name}"), data_dir=config.data_path,
        name=args.name, description=args.description, tags=tuple(t.strip() for t in args.tags.split(",") if t.strip()),
        model=args.model, split=args.split, settings=settings, heldout=args.heldout, eval_split=args.eval_split,
        eval_max_tokens=args.eval_max_tokens, resume=args.resume, cache_dir=config.cache_path,
        score=not args.no_scoring,
    )
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    from node import logs

    # Progress lines on a terminal only: a pipe or a log file gets the result lines alone.
    progress = logs.progress_wanted(quiet=args.no_progress)
    logs.show_progress(progress)
    try:
        card = train_adapter(job, progress=progress)
    except KeyboardInterrupt:
        print(f"\ninterrupted: checkpoint saved in {job.checkpoints}; rerun with --resume", file=sys.stderr)
        return 130
    except (DataError, ResumeError, ModelLoadError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    scores = card["scores"]
    b, a = scores["before"], scores["after"]
    if b is None or a is None:
        print(f"held out, not scored: {scores['split']}")
    else:
        print(f"held-out ({scores['split']}): accuracy {b['accuracy']:.3f} -> {a['accuracy']:.3f}, "
              f"loss {b['loss']:.3f} -> {a['loss']:.3f}")
    print(f"adapter written to {job.out_dir}")
    if args.publish:
        from node.storage import BlockStore, StorageError
        from node.storage.importer import import_path

        store = BlockStore.for_data_dir(config.data_path)
        try:
            entry = import_path(store, job.out_dir)
            store.pin(entry.cid, args.name)
        except (OSError, StorageError) as exc:
            print(f"error: publishing: {exc}", file=sys.stderr)
            return 1
        print(f"published {entry.cid}")
        code = _provide(config.data_path, str(entry.cid))
        if code:
            return code
        print(f"serve it: python -m node start --adapter {args.name}={entry.cid}")
    return 0


def _provide(data_dir, cid: str) -> int:
    """Make the published adapter fetchable: the node running on the data dir provides it now
    (blocks in its store are not announced until it is told, so other nodes found no provider);
    without a running node, the next `start` on the data dir provides every pin."""
    from node.local_node import running_node

    from .publish import tell_running_node

    running = running_node(data_dir)
    if running is not None:
        return tell_running_node(running, "provide", cid)
    print(f"note: no node runs on {data_dir}; other nodes can fetch {cid} once one does "
          f"(python -m node start --data-dir {data_dir})", file=sys.stderr)
    return 0
