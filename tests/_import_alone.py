"""Import every buttress module first, alone, each time in a fresh interpreter.

Run by ``tests/test_architecture.py`` as ``python _import_alone.py MODULE...`` with every
module of the package. For each module it starts a fresh process that imports that module
first and then all the others, in an order shuffled per module (seeded, so a failure
repeats); one more process imports them the ordinary way, ``buttress`` first. It prints
``N orders imported`` and exits 0, or prints each failing order with its traceback and
exits 1.

*First, alone.* Python runs a package's ``__init__`` before any module inside it, and
``buttress/__init__.py`` imports every feature in one fixed order, which can hide a cycle
that another order would trip over (``_retry`` importing the policies package while the
policies package imported ``_retry`` worked only because ``__init__`` happened to import
the policies first). So before a module is imported first, the packages above it are put
in ``sys.modules`` with their ``__init__`` not yet run, as if each began by importing that
module; they run right after it. Every other package is imported as Python always does.

*Fresh.* Each order runs in a child forked from this process, which has imported the
third-party modules buttress imports (read from its source) and no buttress module, so a
child pays only for buttress's own modules. Where ``os.fork`` is missing or
this process runs threads, each order runs in a new interpreter instead, more slowly.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import os
import random
import subprocess
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import IO, Any

PACKAGE = "buttress"
#: An order that cannot run here: a module needs an optional package that is not installed.
SKIPPED = 3


def _package_dirs() -> dict[str, Path]:
    """Every package of buttress and its directory, found without importing it."""
    spec = importlib.util.find_spec(PACKAGE)
    assert spec is not None, "buttress is not installed"
    assert spec.submodule_search_locations
    root = Path(next(iter(spec.submodule_search_locations)))
    packages = {}
    for init in sorted(root.rglob("__init__.py")):
        relative = init.parent.relative_to(root.parent)
        packages[".".join(relative.parts)] = init.parent
    return packages


class _Deferred:
    """The packages above one module, placed in ``sys.modules`` with ``__init__`` not run.

    As if each of them began its ``__init__`` by importing that module: meanwhile a
    package serves its submodules (``from buttress import _clock``) as a partly
    initialised package does, and a name its ``__init__`` defines is read by running that
    ``__init__`` then. :meth:`finish` runs what is left, innermost package first.
    """

    def __init__(self, module: str, modules: Sequence[str]) -> None:
        self.modules = set(modules)
        self.pending: dict[str, tuple[Any, ModuleType]] = {}
        directories = _package_dirs()
        parts = module.split(".")
        for size in range(1, len(parts)):
            name = ".".join(parts[:size])
            directory = directories[name]
            spec = importlib.util.spec_from_file_location(
                name, directory / "__init__.py", submodule_search_locations=[str(directory)]
            )
            assert spec is not None
            assert spec.loader is not None
            package = importlib.util.module_from_spec(spec)
            package.__getattr__ = self._reader(name)  # type: ignore[method-assign]
            sys.modules[name] = package
            parent, _, child = name.rpartition(".")
            if parent:
                setattr(sys.modules[parent], child, package)
            self.pending[name] = (spec, package)

    def _reader(self, package: str) -> Callable[[str], Any]:
        def __getattr__(name: str) -> Any:  # PEP 562: called for names not yet defined
            if name.startswith("__"):
                raise AttributeError(name)
            submodule = f"{package}.{name}"
            if submodule in self.modules:
                return importlib.import_module(submodule)
            self.run(package)
            return getattr(sys.modules[package], name)

        return __getattr__

    def run(self, package: str) -> None:
        """Run the package's ``__init__`` now, unless it ran already."""
        entry = self.pending.pop(package, None)
        if entry is None:
            return
        spec, module = entry
        del module.__getattr__
        spec.loader.exec_module(module)

    def finish(self) -> None:
        for package in sorted(self.pending, key=lambda name: -name.count(".")):
            self.run(package)


def import_in_order(order: Sequence[str], modules: Sequence[str]) -> None:
    """Import ``order[0]`` first, before the packages above it ran; then the others."""
    first, *rest = order
    deferred = _Deferred(first, modules)
    importlib.import_module(first)
    deferred.finish()
    for name in rest:
        importlib.import_module(name)


def _report(order: Sequence[str], exc: BaseException, out: IO[str]) -> int:
    missing = getattr(exc, "name", None)
    if isinstance(exc, ModuleNotFoundError) and missing and not missing.startswith(PACKAGE):
        out.write(f"skipped: {order[0]} first needs {missing}, which is not installed\n")
        return SKIPPED
    reached = next((name for name in order if name not in sys.modules), order[-1])
    out.write(f"importing {order[0]} first failed near {reached}\norder: {list(order)}\n")
    out.write("".join(traceback.format_exception(exc)))
    return 1


def child(order: Sequence[str], modules: Sequence[str], out: IO[str]) -> int:
    """Import ``order`` in this process (fresh); 0 when it worked."""
    try:
        if order[0] == PACKAGE:  # the ordinary way: the package first, as Python does
            for name in order:
                importlib.import_module(name)
        else:
            import_in_order(order, modules)
    except BaseException as exc:
        return _report(order, exc, out)
    return 0


def orders(modules: Sequence[str]) -> list[list[str]]:
    """The ordinary order, then each module first with the rest shuffled."""
    result = [[PACKAGE, *sorted(set(modules) - {PACKAGE})]]
    for index, first in enumerate(modules):
        rest = [name for name in modules if name != first]
        random.Random(index).shuffle(rest)
        result.append([first, *rest])
    return result


def _top_level_imports(statements: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements run when a module is imported (not those inside functions)."""
    for statement in statements:
        if isinstance(statement, (ast.Import, ast.ImportFrom)):
            yield statement
        elif isinstance(statement, (ast.If, ast.Try)):
            for block in (statement.body, statement.orelse, getattr(statement, "finalbody", [])):
                yield from _top_level_imports(block)
            for handler in getattr(statement, "handlers", []):
                yield from _top_level_imports(handler.body)


def _third_party() -> list[str]:
    """What buttress's modules import at their top from outside it, read from the source."""
    names: set[str] = set()
    for path in _package_dirs()[PACKAGE].rglob("*.py"):
        for node in _top_level_imports(ast.parse(path.read_text()).body):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif not node.level and node.module:
                names.add(node.module)
    return sorted(name for name in names if name.split(".")[0] != PACKAGE)


def _preload(names: Sequence[str]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except Exception:  # a private module that cannot be imported alone: not needed
            continue
    loaded = [name for name in sys.modules if name.split(".")[0] == PACKAGE]
    assert not loaded, f"preloading imported buttress itself: {loaded}"


def _run_forked(jobs: list[list[str]], modules: Sequence[str], workers: int) -> list[str]:
    failures: list[str] = []
    running: dict[int, tuple[list[str], IO[str]]] = {}

    def reap() -> None:
        pid, status = os.wait()
        order, log = running.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        log.seek(0)
        text = log.read()
        log.close()
        if code == SKIPPED:
            print(text, end="")
        elif code != 0:
            failures.append(text or f"importing {order[0]} first: exit status {code}")

    for order in jobs:
        if len(running) >= workers:
            reap()
        log = tempfile.TemporaryFile("w+")  # noqa: SIM115 - reap() closes it
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: import, report, leave without running any cleanup
            code = 1
            try:
                code = child(order, modules, log)
                log.flush()
            finally:
                os._exit(code)
        running[pid] = (order, log)
    while running:
        reap()
    return failures


def _run_spawned(jobs: list[list[str]], modules: Sequence[str]) -> list[str]:
    failures = []
    for order in jobs:
        result = subprocess.run(
            [sys.executable, __file__, "--order", *order, "--modules", *modules],
            capture_output=True,
            text=True,
        )
        if result.returncode == SKIPPED:
            print(result.stdout, end="")
        elif result.returncode != 0:
            failures.append(result.stdout + result.stderr)
    return failures


def main(argv: Sequence[str]) -> int:
    if argv and argv[0] == "--order":  # one order, in this fresh interpreter
        split = list(argv).index("--modules")
        return child(argv[1:split], argv[split + 1 :], sys.stdout)
    modules = list(argv)
    jobs = orders(modules)
    if hasattr(os, "fork"):
        _preload(_third_party())
    if hasattr(os, "fork") and threading.active_count() == 1:
        failures = _run_forked(jobs, modules, workers=max(1, min(2, os.cpu_count() or 1)))
    else:
        failures = _run_spawned(jobs, modules)
    for failure in failures:
        print(failure)
    if failures:
        print(f"{len(failures)} of {len(jobs)} orders failed")
        return 1
    print(f"{len(jobs)} orders imported")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
