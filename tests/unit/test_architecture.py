"""The layering of STYLE.md / DESIGN.md, checked on the source: imports flow one way.

    cli -> services -> api -> eval (the harness) -> coordinator -> app, training, control
        -> expert (remote -> serve -> model) -> expert.errors, storage, registry, activity -> net
        -> config, logs, metrics, evaluation (tasks + scoring, pure) -> protocol

Rules (every ``import`` and ``from ... import`` of every module, read with ``ast``,
including imports inside functions):

* ``protocol`` imports nothing of ``node`` and no I/O library (sans-IO);
* ``node.net`` imports nothing above it (no expert, storage, coordinator, api, ...),
  not even for type checking;
* coordinator strategies and the coordinator's pure parts import no transport
  (no libp2p, no ``node.net``, no expert client, no HTTP);
* every other runtime import goes down the ranks above.  Imports under
  ``if TYPE_CHECKING:`` may name ``node.app`` (the ``Node`` type services receive)
  or ``node.config``: they never run.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# Rank of each top-level unit: a runtime import must point to a strictly lower rank
# (or stay inside its own unit).  Units on one rank do not import each other,
# except the pairs in SIDEWAYS.
RANKS = {
    "protocol": 0,
    # Evaluation's pure part: task files and scoring (an expert's self-evaluation, training and
    # reputation score with them).
    "node.config": 1, "node.logs": 1, "node.metrics": 1, "node.local_node": 1, "node.evaluation": 1,
    "node.atomic": 1,  # a directory written whole or not at all (cache, adapters, checkpoints, exports)
    "node.net": 2,
    "node.registry": 3, "node.nat": 3, "node.storage": 3, "node.activity": 3, "node.expert.errors": 3,
    # The expert's rooms: provisioning (an expert given a model or adapter CID fetches it through
    # storage), serving, and the client side that asks a (possibly remote) expert.
    "node.expert.model": 4,
    "node.expert.serve": 5,
    "node.expert.remote": 6, "node.expert": 6,  # node/expert/__init__.py only re-exports
    # Training (LoRA on an expert's base), the node's local control socket.
    "node.app": 7, "node.training": 7, "node.control": 7,
    "node.coordinator": 8,
    # The eval harness asks the network like any client (HTTP, or libp2p through the coordinator).
    "node.eval": 9,
    "node.api": 10,
    "node.services": 11,
    "node.cli": 12,
    "node.__main__": 13,
    "node": 13,  # node/__init__.py only
}
SIDEWAYS: set[tuple[str, str]] = set()
TYPE_ONLY_OK = {"node.app", "node.config"}
IO_LIBRARIES = {"trio", "libp2p", "torch", "transformers", "peft", "hypercorn", "httpx", "socket", "multiaddr",
                "prometheus_client"}
TRANSPORT = {"libp2p", "hypercorn", "httpx", "socket", "node.net", "node.expert", "node.storage", "node.api",
             "node.app", "node.cli"}
# The coordinator's pure modules (DESIGN.md): strategies decide, the pool does the I/O.
PURE_COORDINATOR = ("routing", "aggregate", "fusion", "prompts", "quorum")


@dataclass(frozen=True)
class Import:
    module: str  # importing module, e.g. node.net.host
    target: str  # imported module, absolute
    type_only: bool  # under `if TYPE_CHECKING:`
    line: int


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(source: str, module: str, is_package: bool = False) -> list[Import]:
    """Every import in ``source``, relative ones resolved against ``module``."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, type_only: bool) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, type_only)
            return
        if isinstance(node, ast.Import):
            found.extend(Import(module, alias.name, type_only, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from node import logs`, `from . import sse`: the names may be submodules.
            subs = [f"{target}.{alias.name}" for alias in node.names if is_module(f"{target}.{alias.name}")]
            found.extend(Import(module, t, type_only, node.lineno) for t in subs or [target])
        for child in ast.iter_child_nodes(node):
            visit(child, type_only)

    visit(ast.parse(source), False)
    return found


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def unit(name: str) -> str:
    """The ranked unit of a module: the longest key of RANKS it is in (``node.net``, ``protocol``, ...),
    else its first two components (which then have no rank)."""
    parts = name.split(".")
    for end in range(len(parts), 1 if parts[0] == "node" and len(parts) > 1 else 0, -1):
        if ".".join(parts[:end]) in RANKS:
            return ".".join(parts[:end])
    return ".".join(parts[:2])


def within(target: str, prefix: str) -> bool:
    return target == prefix or target.startswith(prefix + ".")


def violations(imp: Import) -> list[str]:
    """What ``imp`` breaks, as readable sentences (empty: fine)."""
    src, dst = unit(imp.module), imp.target
    where = f"{imp.module}:{imp.line} imports {dst}"
    problems = []
    ours = dst.split(".")[0] in ("node", "protocol")
    if src == "protocol":
        if within(dst, "node"):
            problems.append(f"{where}: protocol/ must not import node/")
        if dst.split(".")[0] in IO_LIBRARIES:
            problems.append(f"{where}: protocol/ is sans-IO")
    if src == "node.net" and ours and unit(dst) not in ("node.net", "protocol", "node.config", "node.logs",
                                                        "node.metrics"):
        problems.append(f"{where}: node.net must not import the layers above it")
    if is_pure_coordinator(imp.module) and any(within(dst, t) for t in TRANSPORT):
        problems.append(f"{where}: strategies and pure coordinator modules import no transport")
    if ours and unit(dst) != src and not problems:
        if imp.type_only and unit(dst) in TYPE_ONLY_OK:
            return []
        if (src, unit(dst)) in SIDEWAYS:
            return []
        if unit(dst) not in RANKS or src not in RANKS:
            problems.append(f"{where}: {unit(dst) if unit(dst) not in RANKS else src} has no rank in "
                            "tests/unit/test_architecture.py (add it where it belongs)")
        elif RANKS[unit(dst)] >= RANKS[src]:
            problems.append(f"{where}: {src} (rank {RANKS[src]}) may only import lower layers, "
                            f"not {unit(dst)} (rank {RANKS[unit(dst)]})")
    return problems


def is_pure_coordinator(module: str) -> bool:
    return within(module, "node.coordinator.strategies") or module in {
        f"node.coordinator.{name}" for name in PURE_COORDINATOR}


def project_imports() -> list[Import]:
    out = []
    for path in sorted([*ROOT.glob("protocol/**/*.py"), *ROOT.glob("node/**/*.py")]):
        out.extend(imports_of(path.read_text(), module_name(path), path.name == "__init__.py"))
    return out


def test_the_project_keeps_its_layering():
    problems = [p for imp in project_imports() for p in violations(imp)]
    assert not problems, "\n".join(problems)


def test_the_rules_cover_the_coordinators_pure_parts():
    pure = [m for m in {module_name(p) for p in ROOT.glob("node/coordinator/**/*.py")} if is_pure_coordinator(m)]
    assert "node.coordinator.routing" in pure


@pytest.mark.parametrize(("module", "source", "broken"), [
    ("protocol.messages", "from node.config import NodeConfig", "protocol/ must not import node/"),
    ("protocol.framing", "def f():\n    import trio\n", "sans-IO"),
    ("node.net.gossip", "from node.expert import ExpertService", "node.net must not import"),
    ("node.net.gossip", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from node.storage import BlockStore\n",
     "node.net must not import"),
    ("node.net.host", "from ..coordinator import Coordinator", "node.net must not import"),
    ("node.coordinator.strategies.vote", "from node.net.streams import open_stream", "no transport"),
    ("node.coordinator.strategies.vote", "import libp2p", "no transport"),
    ("node.coordinator.routing", "from node.expert.remote.client import generate", "no transport"),
    ("node.registry", "from node.coordinator import Coordinator", "may only import lower layers"),
    ("node.storage.fetch", "from node.expert.model import loader", "may only import lower layers"),
    ("node.expert.model.loader", "from ..serve.batcher import InferenceWorker", "may only import lower layers"),
    ("node.expert.serve.local", "from node.expert.remote.client import generate", "may only import lower layers"),
    ("node.expert.errors", "from .serve.jobs import Job", "may only import lower layers"),
    ("node.expert.serve.service", "from node.api import app", "may only import lower layers"),
    ("node.evaluation.scoring", "from node.eval.client import ask_http", "may only import lower layers"),
    ("node.evaluation.tasks", "from node.coordinator.client import ask", "may only import lower layers"),
    ("node.coordinator.executor", "from node.newthing import x", "has no rank"),
])
def test_a_broken_import_is_reported(module, source, broken):
    problems = [p for imp in imports_of(source, module) for p in violations(imp)]
    assert any(broken in p for p in problems), problems


@pytest.mark.parametrize(("module", "source"), [
    ("node.coordinator.service", "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from node.app import Node\n"),
    ("node.expert.model.content", "from node.storage import ensure_local"),
    ("node.expert.remote.client", "from ..serve.local import LocalExpert"),
    ("node.eval.runner", "from node.coordinator.client import ask"),
    ("node.expert.serve.self_eval", "from node.evaluation import load_tasks, score"),
    ("node.api.service", "from .app import MosaicApi\nfrom node.coordinator.service import coordinator_for"),
    ("node.coordinator.strategies.vote", "import trio\nfrom ..pool import Pool\nfrom protocol import QueryRequest"),
])
def test_an_allowed_import_is_not_reported(module, source):
    assert [p for imp in imports_of(source, module) for p in violations(imp)] == []
