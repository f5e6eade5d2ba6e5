"""The layering of STYLE.md / DESIGN.md, checked on the source: imports flow one way.

    cli -> services -> api -> eval (the harness) -> coordinator -> app, training, control
        -> expert (remote -> serve -> model) -> expert.errors, storage, registry, activity -> net
        -> config, logs, metrics, atomic, evaluation (tasks + scoring, pure) -> protocol

Rules (every ``import`` and ``from ... import`` of every module, read with ``ast``,
including imports inside functions):

* ``protocol`` imports nothing of ``node`` and no I/O library (sans-IO);
* ``node.net`` imports nothing above it (no expert, storage, coordinator, api, ...),
  not even for type checking;
* coordinator strategies and the coordinator's pure parts import no transport
  (no libp2p, no ``node.net``, no expert client, no HTTP);
* every other runtime import goes down the ranks above.  Imports under
  ``if TYPE_CHECKING:`` may name ``node.app`` (the ``Node`` type services receive)
  or ``node.config``: they never run;
* no import circle between two modules (any import counts, one for type checking too);
* no ``_private`` name of one module used in another (``from m import _x``, ``m._x``, or
  ``obj._x`` where ``_x`` is not defined in the module using it);
* ``node/expert`` holds ``errors.py`` and its three rooms (model < serve < remote), nothing flat.
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
    "node.registry": 3, "node.storage": 3, "node.activity": 3, "node.expert.errors": 3,
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
    name: str = ""  # `from target import name` where name is not a module (a function, class, ...)


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
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if is_module(sub):
                    found.append(Import(module, sub, type_only, node.lineno))
                else:
                    found.append(Import(module, target, type_only, node.lineno, alias.name))
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


# ------------------------------------------------------------------------------- circles


def existing_module(name: str) -> str | None:
    """``name`` or the nearest package above it that is a module of the project."""
    parts = name.split(".")
    while parts:
        if is_module(".".join(parts)):
            return ".".join(parts)
        parts.pop()
    return None


def import_graph(imports: list[Import]) -> dict[str, dict[str, int]]:
    """Module -> {project module it imports: line}, over every import: a late one inside a
    function, and one under ``if TYPE_CHECKING:`` too (it never runs, but two modules that name
    each other's types still cannot be read, tested or moved apart)."""
    graph: dict[str, dict[str, int]] = {}
    for imp in imports:
        if imp.target.split(".")[0] not in ("node", "protocol"):
            continue
        target = existing_module(imp.target)
        if target and target != imp.module:
            graph.setdefault(imp.module, {}).setdefault(target, imp.line)
    return graph


def circles(graph: dict[str, dict[str, int]]) -> list[str]:
    """Each import circle (a strongly connected group of modules), as one readable cycle through
    it with the line of each import: ``a:12 -> b:3 -> a``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def connect(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    out = []
    for group in sorted(groups, key=min):
        start = min(group)
        paths = {start: [start]}
        queue = [start]
        cycle: list[str] = []
        while queue and not cycle:  # the shortest way back to start, within the group
            v = queue.pop(0)
            for w in sorted(graph.get(v, {})):
                if w == start:
                    cycle = paths[v]
                    break
                if w in group and w not in paths:
                    paths[w] = [*paths[v], w]
                    queue.append(w)
        hops = [f"{a}:{graph[a][b]}" for a, b in zip(cycle, [*cycle[1:], start])]
        more = f" (the circle holds {len(group)} modules: {', '.join(sorted(group))})" if len(group) > len(cycle) else ""
        out.append(" -> ".join([*hops, start]) + more)
    return out


def test_no_import_circles():
    found = circles(import_graph(project_imports()))
    assert not found, "import circles (module:line of each import):\n" + "\n".join(found)


# ------------------------------------------------------------------------- private names


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


# Private members of third-party objects the project has to use (no public way exists).
FOREIGN_PRIVATE = {
    # py-libp2p's KadDHT asks one peer for a value only through its value store's private method.
    ("node.net.dht", "_get_from_peer"),
}


def private_imports(source: str, module: str, is_package: bool = False) -> list[str]:
    """Every ``_private`` name that ``module`` takes from another module of the project:
    ``from m import _x``; ``m._x`` through a module it imported whole; ``obj._x`` where ``_x``
    is not a name ``module`` defines itself (a private member of another module's class)."""
    ours = ("node", "protocol")
    problems = [f"{module}:{imp.line} imports {imp.name} from {imp.target}"
                for imp in imports_of(source, module, is_package)
                if is_private(imp.name) and imp.target.split(".")[0] in ours and imp.target != module]
    package = module if is_package else module.rpartition(".")[0]
    bound: dict[str, str] = {}  # a local name -> the module it is
    own: set[str] = set()  # every name this module defines: functions, classes, attributes, variables
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                bound[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                if is_module(f"{target}.{alias.name}") or target.split(".")[0] not in ours:
                    bound[alias.asname or alias.name] = f"{target}.{alias.name}"
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            own.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            own.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            own.add(node.id)
        elif isinstance(node, ast.arg):
            own.add(node.arg)
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Attribute) and is_private(node.attr)):
            continue
        dotted = ast.unparse(node.value)
        head, _, rest = dotted.partition(".")
        if head in bound and all(part.isidentifier() for part in dotted.split(".")):
            owner = ".".join(filter(None, [bound[head], rest]))
            if owner.split(".")[0] not in ours:
                continue  # argparse._SubParsersAction, os._exit: not the project's
            if is_module(owner):
                if owner != module:
                    problems.append(f"{module}:{node.lineno} uses {owner}.{node.attr}")
                continue
        if dotted in ("self", "cls") or node.attr in own or (module, node.attr) in FOREIGN_PRIVATE:
            continue
        problems.append(f"{module}:{node.lineno} uses {dotted}.{node.attr}, a private member defined elsewhere")
    return problems


def test_no_private_name_crosses_a_module():
    problems = []
    for path in sorted([*ROOT.glob("protocol/**/*.py"), *ROOT.glob("node/**/*.py")]):
        problems += private_imports(path.read_text(), module_name(path), path.name == "__init__.py")
    assert not problems, "private names taken from another module (make them public where they belong):\n" + \
        "\n".join(problems)


def test_the_expert_is_split_into_ranked_rooms():
    """node/expert holds its errors and three rooms; no flat module grows back beside them."""
    flat = sorted(p.name for p in (ROOT / "node/expert").glob("*.py"))
    assert flat == ["__init__.py", "errors.py"]
    rooms = sorted(p.name for p in (ROOT / "node/expert").iterdir() if (p / "__init__.py").is_file())
    assert rooms == ["model", "remote", "serve"]
    assert RANKS["node.expert.errors"] < RANKS["node.expert.model"] < RANKS["node.expert.serve"] \
        < RANKS["node.expert.remote"] < RANKS["node.coordinator"] < RANKS["node.eval"]


def test_a_circle_is_reported_with_its_lines():
    graph = {"a": {"b": 1}, "b": {"c": 2, "d": 5}, "c": {"a": 3}, "d": {}, "e": {"a": 4}}
    assert circles(graph) == ["a:1 -> b:2 -> c:3 -> a"]
    assert circles({"a": {"b": 1}, "b": {"c": 2}}) == []
    assert circles({"a": {"b": 1, "c": 2}, "b": {"a": 3}, "c": {"a": 4}}) == [
        "a:1 -> b:3 -> a (the circle holds 3 modules: a, b, c)"]


@pytest.mark.parametrize(("sources", "found"), [
    # a late import in a function runs too: it closes the circle
    ({"node.expert.model.loader": "def f():\n    from . import catalog\n",
      "node.expert.model.catalog": "from .loader import ModelLoadError\n"}, True),
    ({"protocol.messages": "from .codec import encode\n", "protocol.codec": "import protocol.messages\n"}, True),
    # an import for type checking only counts too
    ({"node.expert.serve.local": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .sessions import S\n",
      "node.expert.serve.sessions": "from .local import LocalExpert\n"}, True),
    ({"node.expert.serve.local": "from .jobs import Job\n", "node.expert.serve.sessions": "from .local import X\n",
      "node.expert.serve.jobs": "import trio\n"}, False),
])
def test_circles_are_found_in_source(sources, found):
    imports = [imp for module, source in sources.items() for imp in imports_of(source, module)]
    assert bool(circles(import_graph(imports))) == found


@pytest.mark.parametrize(("module", "source", "reported"), [
    ("node.net.conncap", "from .streams import _remote_ip", True),
    ("node.net.conncap", "from . import streams\nstreams._subnet(1)", True),
    ("node.cli.start", "import node.net.streams\nnode.net.streams._exempt(1)", True),
    ("node.cli.start", "import node.net.streams as s\ns._exempt(1)", True),
    ("node.expert.serve.sessions", "def f(local):\n    return local._one(1)", True),  # another class's private
    ("node.coordinator.session_port", "async def f(pool):\n    await pool._transport.open()", True),
    ("node.coordinator.session_port", "class S:\n    def _end(self): ...\ndef f(s):\n    s._end()", False),
    ("node.cli.start", "import os\nimport argparse\nos._exit(1)\nx: argparse._SubParsersAction", False),
    ("node.net.conncap", "from .streams import remote_ip\nfrom __future__ import annotations", False),
    ("node.net.conncap", "import trio\ntrio._core", False),  # not ours
    ("node.net.streams", "def _x(): ...\n_x()", False),
])
def test_a_private_import_is_reported(module, source, reported):
    assert bool(private_imports(source, module)) == reported


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
    ("node.api.service", "from .app import MosaicApi\nfrom node.coordinator.service import QueryService"),
    ("node.coordinator.strategies.vote", "import trio\nfrom ..pool import Pool\nfrom protocol import QueryRequest"),
])
def test_an_allowed_import_is_not_reported(module, source):
    assert [p for imp in imports_of(source, module) for p in violations(imp)] == []
