"""The import graph is a contract: three layers, independent features, no cycle.

The layers are described in the package docstring of ``buttress/__init__.py``; this
module holds the map every module must be placed in, and checks the graph against it:

- every module of the package belongs to a layer (a new module must be placed here);
- no module imports from a layer above its own;
- a feature imports no other feature, except along the one-way dependencies listed in
  :data:`FEATURE_DEPENDENCIES`;
- the graph has no cycle;
- a module imported inside a function is one that needs an optional dependency (redis,
  prometheus-client...), never one imported late to dodge a cycle;
- the description names every entry of the map and every dependency between features.

Every import statement counts, wherever it is: at the top, inside a function, or under
``if TYPE_CHECKING:``. Importing ``a.b.c`` also imports the packages ``a.b`` and ``a``
(their ``__init__`` runs first), so those edges are in the graph too; the root package
``buttress`` is left out of them, since everything is imported through it.

Why not import-linter: its layers contract covers the first two checks, but neither the
cycles between modules of one layer nor the rule on late imports; the graph of some sixty
modules, read with :mod:`ast`, does all of it in a fraction of a second, with no
dependency.

The last test imports every module first, alone, in a fresh interpreter (see
``tests/_import_alone.py``), so that a cycle the import order happens to hide fails too.
"""

from __future__ import annotations

import ast
import functools
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "src"
PACKAGE = SOURCE / "buttress"

CORE, FEATURES, COMPOSITION = 0, 1, 2
LAYER_NAMES = ("core", "features", "composition")

#: Every module, by the longest of these names that is it or a package holding it.
LAYERS: dict[str, int] = {
    # core: no decorator, no feature; what every feature builds on
    "buttress._clock": CORE,
    "buttress._errors": CORE,
    "buttress._settings": CORE,
    "buttress._events": CORE,
    "buttress._wrapping": CORE,
    "buttress._registry": CORE,
    "buttress._declare": CORE,
    "buttress._signature": CORE,
    "buttress._streams": CORE,
    "buttress._blocks": CORE,
    "buttress._deadline": CORE,
    "buttress._tracing": CORE,
    # features: one decorator (or one family) each
    "buttress._retry": FEATURES,
    "buttress._caching": FEATURES,
    "buttress._validation": FEATURES,
    "buttress._memory_guard": FEATURES,
    "buttress._memory_probe": FEATURES,
    "buttress._monitoring": FEATURES,
    "buttress._policies": FEATURES,
    "buttress._batching": FEATURES,
    "buttress._redis": FEATURES,
    # composition: what puts features together or in front of users
    "buttress": COMPOSITION,
    "buttress.__main__": COMPOSITION,
    "buttress._policy": COMPOSITION,
    "buttress.metrics": COMPOSITION,
    "buttress.otel": COMPOSITION,
    "buttress._sinks": COMPOSITION,
    "buttress.integrations": COMPOSITION,
    "buttress._demo": COMPOSITION,
    "buttress.testing": COMPOSITION,
    "buttress._pytest_plugin": COMPOSITION,
}

#: A feature is one of these (a module or a package); the memory guard is two modules.
FEATURE_OF: dict[str, str] = {
    "buttress._retry": "retry",
    "buttress._caching": "caching",
    "buttress._validation": "validation",
    "buttress._memory_guard": "memory",
    "buttress._memory_probe": "memory",
    "buttress._monitoring": "monitoring",
    "buttress._policies": "policies",
    "buttress._batching": "batching",
    "buttress._redis": "redis",
}

#: The only imports from one feature into another: (importer, imported) -> why.
FEATURE_DEPENDENCIES: dict[tuple[str, str], str] = {
    ("retry", "policies"): "@retry(budget=...) takes a RetryBudget (_policies._budget)",
    ("caching", "redis"): "RedisStore runs over the shared Redis connection (_redis)",
    ("policies", "redis"): "shared rate limits, breakers and budgets keep their state "
    "in a FleetStore (_redis)",
    ("policies", "caching"): "shared rate limits and breakers are named as a shared cache "
    "names functions (_caching._naming)",
}

#: Import names of the optional dependencies (the extras in pyproject.toml): a module
#: importing one may be imported inside the function that needs it.
OPTIONAL = frozenset(
    {"redis", "prometheus_client", "datadog", "fastapi", "starlette", "uvicorn",
     "matplotlib", "pynvml", "torch", "opentelemetry"}
)


@dataclass(frozen=True)
class Import:
    importer: str
    target: str
    line: int
    late: bool  # inside a function
    implicit: bool = False  # a package imported because a module inside it is

    def __str__(self) -> str:
        where = f"{self.importer} (line {self.line}"
        where += ", inside a function)" if self.late else ")"
        via = " (its package __init__)" if self.implicit else ""
        return f"{where} imports {self.target}{via}"


def module_files() -> dict[str, Path]:
    files = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SOURCE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    return files


MODULES = module_files()


def _late_lines(tree: ast.AST) -> set[int]:
    """The line numbers of import statements inside a function."""
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            lines.update(
                inner.lineno
                for inner in ast.walk(node)
                if isinstance(inner, (ast.Import, ast.ImportFrom))
            )
    return lines


def _targets(module: str, node: ast.Import | ast.ImportFrom) -> Iterator[str]:
    """The modules an import statement names (not yet with their packages)."""
    if isinstance(node, ast.Import):
        yield from (alias.name for alias in node.names)
        return
    if node.level:
        base = module.split(".")
        if MODULES[module].name != "__init__.py":
            base.pop()
        base = base[: len(base) - (node.level - 1)]
        source = ".".join([*base, node.module] if node.module else base)
    else:
        source = node.module or ""
    for alias in node.names:
        # `from package import name` imports the submodule when there is one
        submodule = f"{source}.{alias.name}"
        yield submodule if submodule in MODULES else source


def imports_of(module: str) -> list[Import]:
    tree = ast.parse(MODULES[module].read_text(), str(MODULES[module]))
    late = _late_lines(tree)
    found: list[Import] = []
    for node in ast.walk(tree):
        if not isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        found.extend(
            Import(module, target, node.lineno, node.lineno in late)
            for target in _targets(module, node)
        )
    return found


def third_party_of(module: str) -> set[str]:
    """The top-level names of what ``module`` imports at its top from outside buttress."""
    tree = ast.parse(MODULES[module].read_text())
    names: set[str] = set()
    late = _late_lines(tree)
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)) and node.lineno not in late:
            if isinstance(node, ast.ImportFrom) and node.level:
                continue
            for target in _targets(module, node):
                names.add(target.split(".")[0])
    return names - {"buttress"}


@functools.cache
def graph() -> tuple[Import, ...]:
    """Every import between modules of the package, with the packages they imply."""
    edges: dict[Import, None] = {}  # ordered and without repeats
    for module in MODULES:
        for found in imports_of(module):
            if found.target not in MODULES:
                continue
            edges[found] = None
            parts = found.target.split(".")
            for size in range(2, len(parts)):
                package = ".".join(parts[:size])
                if module != package and not module.startswith(package + "."):
                    edges[Import(module, package, found.line, found.late, implicit=True)] = None
    return tuple(edges)


def _owner(module: str, table: dict[str, object]) -> str | None:
    """The entry of ``table`` that is ``module`` or the closest package holding it.

    The root package's entry is for ``buttress/__init__.py`` alone: a new module never
    falls into a layer by default.
    """
    if module in table:
        return module
    parts = module.split(".")
    for size in range(len(parts) - 1, 1, -1):
        name = ".".join(parts[:size])
        if name in table:
            return name
    return None


def layer_of(module: str) -> int:
    owner = _owner(module, dict(LAYERS))
    assert owner is not None, module
    return LAYERS[owner]


def feature_of(module: str) -> str | None:
    owner = _owner(module, dict(FEATURE_OF))
    return None if owner is None else FEATURE_OF[owner]


def cycles(edges: Sequence[Import]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    successors: dict[str, set[str]] = {module: set() for module in MODULES}
    for edge in edges:
        successors[edge.importer].add(edge.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(successors[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1 or node in successors[node]:
                found.append(sorted(component))

    for node in sorted(successors):
        if node not in index:
            visit(node)
    return found


# --- the contract ------------------------------------------------------------------------


def test_every_module_has_a_layer() -> None:
    missing = [module for module in MODULES if _owner(module, dict(LAYERS)) is None]
    assert not missing, (
        f"{missing}: place each in LAYERS (tests/test_architecture.py) and in the layers "
        "described in buttress/__init__.py"
    )


def test_no_module_imports_from_a_layer_above_its_own() -> None:
    upward = [
        f"{edge}: {LAYER_NAMES[layer_of(edge.importer)]} -> {LAYER_NAMES[layer_of(edge.target)]}"
        for edge in graph()
        if layer_of(edge.target) > layer_of(edge.importer)
    ]
    assert not upward, "\n".join(upward)


def test_features_import_each_other_only_along_the_declared_dependencies() -> None:
    crossing = []
    for edge in graph():
        source, target = feature_of(edge.importer), feature_of(edge.target)
        if source and target and source != target and (source, target) not in FEATURE_DEPENDENCIES:
            crossing.append(f"{edge}: feature {source} -> feature {target}")
    assert not crossing, "\n".join(crossing)


def test_declared_feature_dependencies_run_one_way() -> None:
    for source, target in FEATURE_DEPENDENCIES:
        assert (target, source) not in FEATURE_DEPENDENCIES, (source, target)


def test_the_import_graph_has_no_cycle() -> None:
    edges = graph()
    found = cycles(edges)
    details = []
    for component in found:
        members = set(component)
        details.append(" <-> ".join(component))
        details.extend(
            f"    {edge}"
            for edge in edges
            if edge.importer in members and edge.target in members
        )
    assert not found, "import cycles:\n" + "\n".join(details)


def test_late_imports_are_only_of_modules_that_need_an_optional_dependency() -> None:
    dodges = [
        f"{edge}: {edge.target} needs no optional dependency; import it at the top"
        for edge in graph()
        if edge.late and not edge.implicit and not third_party_of(edge.target) & OPTIONAL
    ]
    assert not dodges, "\n".join(dodges)


def test_the_architecture_description_names_every_layer_entry_and_dependency() -> None:
    import buttress

    described = buttress.__doc__ or ""
    for module in LAYERS:
        if module == "buttress" or (module not in MODULES):
            continue
        short = module.rpartition(".")[2]
        assert f"``{short}" in described, f"{module} is not placed in buttress/__init__.py"
    for source, target in FEATURE_DEPENDENCIES:
        assert f"- {source} -> {target}:" in described, (source, target)


# --- the checker itself ------------------------------------------------------------------


def test_the_checker_sees_late_and_implicit_imports() -> None:
    edges = graph()
    # metrics.enable() imports the Prometheus collector when it is called
    assert any(
        edge.importer == "buttress.metrics"
        and edge.target == "buttress._sinks._prometheus"
        and edge.late
        for edge in edges
    )
    # `from buttress import _clock` is an import of the submodule
    assert any(
        edge.importer == "buttress._retry" and edge.target == "buttress._clock" for edge in edges
    )
    # importing _policies._budget runs _policies/__init__ first
    assert any(
        edge.importer == "buttress._retry" and edge.target == "buttress._policies" and edge.implicit
        for edge in edges
    )


def test_the_cycle_finder_finds_the_cycle_that_broke_import_buttress() -> None:
    # The knot this contract was written to undo: retry -> budget -> policies/__init__
    # -> the old _pipeline -> retry.
    edges = [
        *graph(),
        Import("buttress._policies", "buttress._policy", 1, late=False),
    ]
    found = cycles(edges)
    knot = {"buttress._retry", "buttress._policies", "buttress._policy"}
    assert any(knot <= set(component) for component in found)


# --- every module first, in a fresh interpreter -------------------------------------------


@pytest.mark.slow
def test_every_module_imports_first_in_a_fresh_interpreter(tmp_path: Path) -> None:
    environment = {
        key: value for key, value in os.environ.items() if key != "PYTHONDONTWRITEBYTECODE"
    }
    # Bytecode compiled once and shared by every child, kept out of the source tree.
    environment["PYTHONPYCACHEPREFIX"] = str(tmp_path / "pycache")
    result = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("_import_alone.py")), *MODULES],
        capture_output=True,
        text=True,
        timeout=300,
        env=environment,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(MODULES) + 1} orders imported" in result.stdout, result.stdout
