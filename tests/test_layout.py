"""The layout of the tree, checked as TigerBeetle's `tidy` and asyncpg's source tests do.

Each rule is a function of a checkout's root that returns what breaks it (empty: it holds), so
the same rules run on this checkout and, in the `planted` tests below, on small trees that
break one rule each: a rule that stopped finding anything would fail there.

The rules (docs/design.md, "Layout"):
- the pure ledger (core/ outside core/store and core/audit; core/flows too) imports no
  database driver, gRPC, protobuf, subprocess or os-level process API; nothing in core/
  imports shards/, bench/, tests/ or the generated API;
- each room imports only the rooms below it (LAYERS): the gateway never imports the node, the
  cross-shard protocol neither, and no product code imports bench/ or tests/;
- the pure ledger and the security room import no third-party package but those THIRD_PARTY
  lists (the security boundary stays small enough to review: TLS, X.509, JWT, its counters);
- no import cycle between hand-written modules;
- no test module imports another test module, nor a private name from another module;
- no hand-written function is longer than FUNCTION_LINES_MAX lines unless a comment directly
  above it says why (`# Why long: ...`);
- gen/ is what scripts/gen_proto.sh makes from proto/ today;
- the runtime package lists every package of core/ and shards/, and not bench/ or tests/.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT

HAND_WRITTEN = ("core", "shards", "client", "examples", "bench", "tests")
FUNCTION_LINES_MAX = 70
WHY_LONG = "# Why long:"

# What the pure ledger may not import (the top-level name of the import).
PURE_FORBIDDEN = frozenset(
    {
        "asyncpg",
        "grpc",
        "grpc_health",
        "grpc_reflection",
        "google",
        "tally",
        "subprocess",
        "signal",
        "fcntl",
        "pwd",
        "os",
        "socket",
        "multiprocessing",
        "threading",
        "shards",
        "bench",
        "tests",
    }
)
# What no module of core/ may import, pure or not.
CORE_FORBIDDEN = frozenset(
    {
        "grpc",
        "grpc_health",
        "grpc_reflection",
        "google",
        "tally",
        "subprocess",
        "signal",
        "fcntl",
        "pwd",
        "multiprocessing",
        "shards",
        "bench",
        "tests",
    }
)

# Each room of the product and the rooms it may import besides its own. A module belongs to
# the room that is the longest prefix of its name. Lower rooms come first.
LAYERS: dict[str, frozenset[str]] = {
    "core": frozenset(),
    "core.store": frozenset({"core"}),
    "core.audit": frozenset({"core", "core.store"}),
    # The cash-flow profile engine of in-loan monitoring: pure, like the ledger below it.
    "core.flows": frozenset({"core"}),
    "shards.failpoints": frozenset(),
    "shards.rpc": frozenset({"core", "core.store"}),
    # TLS, the CA, tokens, the guard: it decides nothing itself (core.authority does).
    "shards.security": frozenset({"core"}),
    "shards.control": frozenset({"core", "core.store", "shards.rpc"}),
    "shards.crossshard": frozenset(
        {"core", "core.store", "shards.rpc", "shards.failpoints", "shards.security"}
    ),
    "shards.node": frozenset(
        {
            "core",
            "core.store",
            "shards.rpc",
            "shards.failpoints",
            "shards.security",
            "shards.control",
            "shards.crossshard",
        }
    ),
    "shards.gateway": frozenset(
        {
            "core",
            "shards.rpc",
            "shards.failpoints",
            "shards.security",
            "shards.control",
            "shards.crossshard",
        }
    ),
    "shards.audit": frozenset(
        {"core", "core.store", "core.audit", "shards.rpc", "shards.security"}
    ),
    # The change stream's relay: a client of the ledger's API and of the broker.
    "shards.relay": frozenset({"core", "shards.rpc", "shards.security"}),
    # The monitor: a consumer of the broker, the flow engine, a server of its own API.
    "shards.monitor": frozenset({"core", "core.flows", "shards.rpc", "shards.security"}),
    # core.flows: `tally up --stream` checks the monitor's rules file before starting anything.
    "shards.local": frozenset(
        {"core", "core.store", "core.flows", "shards.rpc", "shards.security", "shards.control"}
    ),
    "shards.cli": frozenset(
        {
            "core",
            "core.store",
            "core.audit",
            "shards.rpc",
            "shards.security",
            "shards.control",
            "shards.node",
            "shards.gateway",
            "shards.audit",
            "shards.local",
            "shards.relay",
            "shards.monitor",
            "shards.failpoints",
        }
    ),
    "shards": frozenset(),
    # The client library for products (installed as tally.client): it stands alone, on the
    # wire API and gRPC only, so a product's process carries no ledger code.
    "client": frozenset(),
}
# Rooms outside the product: they may import the product, never the other way round.
OUTSIDE = {
    "bench": frozenset({"core", "shards"}),
    # What a product would write: on tally.client alone, nothing of the ledger's own code.
    "examples": frozenset(),
    "tests": frozenset({"core", "shards", "bench", "examples"}),
}
# Rooms held to a list of third-party packages (top-level names), besides the standard library
# and the rooms LAYERS lets them import. The generated API (`tally`) counts as third-party.
THIRD_PARTY: dict[str, frozenset[str]] = {
    "core": frozenset({"cryptography"}),  # core.signing's Ed25519
    "core.flows": frozenset(),
    "shards.security": frozenset({"grpc", "cryptography", "jwt", "prometheus_client"}),
    "client": frozenset({"grpc", "tally"}),
}
PRODUCT = frozenset({"core", "shards", "client"})


# ---- reading the tree ----


def modules(root: Path, folders: tuple[str, ...] = HAND_WRITTEN) -> Iterator[tuple[str, Path]]:
    """(dotted name, path) of every Python module under the given top-level folders."""
    for folder in folders:
        for path in sorted((root / folder).rglob("*.py")):
            if "baselines" in path.parts or "__pycache__" in path.parts:
                continue
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            yield ".".join(parts), path


def imports(path: Path, name: str) -> Iterator[tuple[int, str, tuple[str, ...]]]:
    """(line, imported module, names) of every import in a module, at any depth (an import
    inside a function still makes a dependency); relative imports resolved against `name`."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base, tuple(alias.name for alias in node.names)


def first_party_targets(known: set[str], module: str, names: tuple[str, ...]) -> Iterator[str]:
    """The hand-written modules an import statement loads: `from a import b` loads a.b when
    that is a module, else a."""
    loaded = False
    for imported in names:
        if f"{module}.{imported}" in known:
            loaded = True
            yield f"{module}.{imported}"
    if not loaded and module in known:
        yield module


def room_of(name: str, rooms: dict[str, frozenset[str]]) -> str | None:
    best = None
    for room in rooms:
        if (name == room or name.startswith(room + ".")) and (
            best is None or len(room) > len(best)
        ):
            best = room
    return best


# Rooms of core/ held to the pure ledger's rules (PURE_FORBIDDEN) besides core itself.
PURE_ROOMS = frozenset({"core", "core.flows"})


def is_pure_core(name: str) -> bool:
    return room_of(name, LAYERS) in PURE_ROOMS


# ---- the rules ----


def core_import_problems(root: Path) -> list[str]:
    problems = []
    for name, path in modules(root, ("core",)):
        forbidden = PURE_FORBIDDEN if is_pure_core(name) else CORE_FORBIDDEN
        for line, module, _ in imports(path, name):
            if module.split(".")[0] in forbidden:
                kind = "the pure ledger" if is_pure_core(name) else "core"
                problems.append(f"{path.relative_to(root)}:{line}: {kind} imports {module}")
    return problems


def layer_problems(root: Path) -> list[str]:
    everything = {**LAYERS, **OUTSIDE}
    known = {name for name, _ in modules(root)}
    problems = []
    for name, path in modules(root):
        room = room_of(name, everything)
        if room is None:
            continue
        allowed = everything[room] | {room}
        for line, module, names in imports(path, name):
            for target in first_party_targets(known, module, names):
                to = room_of(target, everything)
                if to is None or to in allowed:
                    continue
                if OUTSIDE.get(room) and room_of(target, LAYERS) is not None:
                    continue  # bench and tests may use any room of the product (not examples)
                where = f"{path.relative_to(root)}:{line}"
                problems.append(f"{where}: {name} ({room}) imports {target} ({to})")
    return problems


def third_party_problems(root: Path) -> list[str]:
    problems = []
    for name, path in modules(root, tuple(PRODUCT)):
        room = room_of(name, LAYERS)
        if room not in THIRD_PARTY:
            continue
        for line, module, _ in imports(path, name):
            top = module.split(".")[0]
            if top in sys.stdlib_module_names or top in PRODUCT or top in THIRD_PARTY[room]:
                continue
            problems.append(f"{path.relative_to(root)}:{line}: {name} ({room}) imports {module}")
    return problems


def import_graph(root: Path) -> dict[str, set[str]]:
    found = dict(modules(root))
    known = set(found)
    graph: dict[str, set[str]] = {name: set() for name in found}
    for name, path in found.items():
        for _, module, names in imports(path, name):
            graph[name].update(t for t in first_party_targets(known, module, names) if t != name)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def cycle_problems(root: Path) -> list[str]:
    return [" <-> ".join(component) for component in cycles(import_graph(root))]


def is_test_module(name: str) -> bool:
    return name.startswith("tests.") and name.rpartition(".")[2].startswith("test_")


def cross_test_import_problems(root: Path) -> list[str]:
    known = {name for name, _ in modules(root, ("tests",))}
    problems = []
    for name, path in modules(root, ("tests",)):
        if not (is_test_module(name) or name.endswith("conftest")):
            continue
        for line, module, names in imports(path, name):
            where = f"{path.relative_to(root)}:{line}"
            for target in first_party_targets(known, module, names):
                if is_test_module(target):
                    problems.append(f"{where}: {name} imports the test module {target}")
            if module in known and module != name:
                private = [n for n in names if n.startswith("_") and f"{module}.{n}" not in known]
                if private:
                    problems.append(f"{where}: {name} imports private {module}.{private}")
    return problems


def _comments_above(lines: list[str], line: int) -> list[str]:
    """The block of comment lines directly above (1-based) line."""
    block = []
    above = line - 2
    while above >= 0 and lines[above].strip().startswith("#"):
        block.append(lines[above].strip())
        above -= 1
    return block


def long_function_problems(root: Path) -> list[str]:
    problems = []
    for _, path in modules(root):
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines), str(path))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            top = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            if length > FUNCTION_LINES_MAX and not any(
                comment.startswith(WHY_LONG) for comment in _comments_above(lines, top)
            ):
                problems.append(
                    f"{path.relative_to(root)}:{node.lineno}: {node.name} is {length} lines "
                    f"(> {FUNCTION_LINES_MAX}) and no '{WHY_LONG}' comment above it says why"
                )
    return problems


def generated_problems(root: Path) -> list[str]:
    """Regenerates the code of proto/ as scripts/gen_proto.sh does and diffs it with gen/."""
    with tempfile.TemporaryDirectory() as scratch:
        protos = sorted(str(p.relative_to(root)) for p in (root / "proto").rglob("*.proto"))
        subprocess.run(
            [
                sys.executable,
                "-m",
                "grpc_tools.protoc",
                "-I",
                "proto",
                f"--python_out={scratch}",
                f"--pyi_out={scratch}",
                f"--grpc_python_out={scratch}",
                *protos,
            ],
            cwd=root,
            check=True,
            timeout=120,
        )
        made = {p.relative_to(scratch): p.read_bytes() for p in Path(scratch).rglob("*_pb2*")}
    kept = {
        p.relative_to(root / "gen"): p.read_bytes()
        for p in (root / "gen").rglob("*_pb2*")
        if "__pycache__" not in p.parts  # bytecode (`make pytest` compiles the tree first)
    }
    problems = [
        f"gen/{name} is not what proto/ makes" for name in made if kept.get(name) != made[name]
    ]
    problems += [f"gen/{name} is made by no .proto file" for name in kept if name not in made]
    outside = [p for folder in HAND_WRITTEN for p in (root / folder).rglob("*_pb2*.py")]
    problems += [f"{p.relative_to(root)}: generated code outside gen/" for p in outside]
    return problems


def packaging_problems(root: Path) -> list[str]:
    project = tomllib.loads((root / "pyproject.toml").read_text())
    listed = set(project["tool"]["setuptools"]["packages"])
    wanted = {
        name for name, path in modules(root, ("core", "shards")) if path.name == "__init__.py"
    } | {"tally", "tally.v1"}
    if (root / "client" / "__init__.py").exists():
        wanted.add("tally.client")  # client/ is installed as tally.client
    problems = [f"pyproject.toml does not ship the package {n}" for n in sorted(wanted - listed)]
    problems += [
        f"pyproject.toml ships {n}, which is not a runtime package" for n in sorted(listed - wanted)
    ]
    return problems


RULES = {
    "core imports": core_import_problems,
    "layers": layer_problems,
    "third-party imports": third_party_problems,
    "cycles": cycle_problems,
    "test imports": cross_test_import_problems,
    "long functions": long_function_problems,
    "generated code": generated_problems,
    "packaging": packaging_problems,
}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_the_tree_keeps_the_rule(rule: str) -> None:
    assert RULES[rule](REPO_ROOT) == []


# ---- each rule finds what breaks it ----


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


_CLEAN = {
    "core/__init__.py": "",
    "core/model.py": "import enum\n",
    "core/store/__init__.py": "",
    "core/store/shard.py": "import asyncpg\nfrom core import model\n",
    "shards/__init__.py": "",
    "shards/rpc/__init__.py": "",
    "shards/rpc/convert.py": "from core import model\n",
    "shards/node/__init__.py": "",
    "shards/node/writer.py": "from core.store import shard\n",
    "shards/gateway/__init__.py": "",
    "shards/gateway/server.py": "from shards.rpc import convert\n",
    "shards/security/__init__.py": "",
    "shards/security/guard.py": "import grpc\nimport jwt\nfrom core import model\n",
    "tests/__init__.py": "",
    "tests/support/__init__.py": "",
    "tests/support/helpers.py": "def build(): ...\n",
    "tests/test_a.py": "from tests.support.helpers import build\n",
}

_PLANTED = {
    "core imports": {"core/model.py": "import grpc\n"},
    "layers": {"shards/gateway/server.py": "from shards.node import writer\n"},
    "third-party imports": {"shards/security/guard.py": "import grpc\nimport asyncpg\n"},
    "cycles": {
        "shards/rpc/convert.py": "from shards.rpc import metrics\n",
        "shards/rpc/metrics.py": "def f():\n    from shards.rpc import convert\n",
    },
    "test imports": {"tests/test_b.py": "from tests.test_a import build\n"},
    "long functions": {"core/model.py": "def f():\n" + "    x = 1\n" * 80},
}


# Planted breaks that rightly break a second rule too: the cycle runs against the layers, and
# gRPC in the pure ledger is a third-party package it may not import.
_ALSO_BROKEN = {("cycles", "layers"), ("core imports", "third-party imports")}


def test_a_clean_tree_breaks_no_rule(tmp_path: Path) -> None:
    root = _tree(tmp_path, _CLEAN)
    for rule in _PLANTED:
        assert RULES[rule](root) == [], rule


@pytest.mark.parametrize("rule", sorted(_PLANTED))
def test_each_rule_finds_a_planted_break(tmp_path: Path, rule: str) -> None:
    root = _tree(tmp_path, {**_CLEAN, **_PLANTED[rule]})
    assert RULES[rule](root) != []
    others = {name: check for name, check in RULES.items() if name in _PLANTED and name != rule}
    for name, check in others.items():
        if (rule, name) in _ALSO_BROKEN:
            continue
        assert check(root) == [], name


def test_private_names_and_the_pure_core_are_caught(tmp_path: Path) -> None:
    private = {"tests/test_b.py": "from tests.support.helpers import _secret\n"}
    assert cross_test_import_problems(_tree(tmp_path / "a", {**_CLEAN, **private}))
    pure = {"core/model.py": "import os\n"}
    assert core_import_problems(_tree(tmp_path / "b", {**_CLEAN, **pure}))
    flows = {"core/flows/__init__.py": "", "core/flows/engine.py": "import os\n"}
    assert core_import_problems(_tree(tmp_path / "e", {**_CLEAN, **flows}))
    flows_third = {"core/flows/__init__.py": "", "core/flows/engine.py": "import cryptography\n"}
    assert third_party_problems(_tree(tmp_path / "f", {**_CLEAN, **flows_third}))
    store_may = {"core/store/shard.py": "import os\nimport asyncpg\n"}
    assert core_import_problems(_tree(tmp_path / "c", {**_CLEAN, **store_may})) == []
    commented = {"core/model.py": "# Why long: a table.\ndef f():\n" + "    x = 1\n" * 80}
    assert long_function_problems(_tree(tmp_path / "d", {**_CLEAN, **commented})) == []


def test_generated_code_drift_is_caught(tmp_path: Path) -> None:
    root = _tree(tmp_path, {})
    for folder in ("proto", "gen"):
        subprocess.run(["cp", "-r", str(REPO_ROOT / folder), str(root / folder)], check=True)
    assert generated_problems(root) == []
    stub = next((root / "gen").rglob("ledger_pb2.py"))
    stub.write_text(stub.read_text() + "# edited by hand\n")
    assert generated_problems(root) == [
        f"gen/{stub.relative_to(root / 'gen')} is not what proto/ makes"
    ]


def test_packaging_lists_every_package(tmp_path: Path) -> None:
    root = _tree(tmp_path, _CLEAN)
    (root / "pyproject.toml").write_text(
        '[tool.setuptools]\npackages = ["core", "core.store", "shards", "shards.rpc", '
        '"shards.node", "shards.security", "tally", "tally.v1", "bench"]\n'
    )
    assert packaging_problems(root) == [
        "pyproject.toml does not ship the package shards.gateway",
        "pyproject.toml ships bench, which is not a runtime package",
    ]
