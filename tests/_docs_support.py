"""How the code blocks of README.md and docs/ are run (docs/contributing.md explains it).

Sybil reads each page; a page is one test, its blocks run in order in one namespace, as a
reader would paste them into one file:

- a ````` ```python ````` block runs. Lines starting with ``#>`` show what the block
  prints: everything it prints must be shown, and match (``...`` stands for any text);
- a ````` ```python ````` block starting with ``>>>`` is a doctest;
- ``<!-- invisible-code-block: python ... -->`` runs without being shown (checks a reader
  does not need to see);
- ``<!-- skip: next "why" -->`` (or ``skip: start "why"`` ... ``skip: end``) marks blocks
  that are not run, with the reason; a skip without a reason fails;
- any other block (```` ```bash ````, ```` ```text ````...) must be marked that way;
- ``<!-- fixtures: NAME ... -->`` asks for fixtures of ``tests/test_docs.py`` (servers),
  which set environment variables such as ``EMBEDDING_URL`` or ``REDIS_URL`` that the
  blocks read, with a default a reader can use;
- hidden blocks find the page's fixtures by name, and ``docs_cleanup``, an ``ExitStack``
  closed when the page ends however it ends
  (``docs_cleanup.enter_context(UvicornThread(app))``).

What a page changes in the process is undone after it: logging handlers and levels,
buttress' metrics and OpenTelemetry (disabled again if the page enabled them), @monitor's
exporter thread (stopped again if the page started it).
"""

from __future__ import annotations

import contextlib
import doctest
import gc
import io
import logging
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from unittest import SkipTest

from sybil import Document, Example
from sybil.evaluators.python import PythonEvaluator
from sybil.evaluators.skip import Skipper
from sybil.parsers.myst import CodeBlockParser, PythonCodeBlockParser, SkipParser

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = re.compile(r"^<!-- fixtures: ([\w ]+) -->$", re.MULTILINE)
_CHECKER = doctest.OutputChecker()
_OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def pages() -> list[Path]:
    """Every Markdown file whose blocks are checked: the README and the docs' sources."""
    found = [ROOT / "README.md", ROOT / "benchmarks" / "README.md"]
    found += sorted(
        path for path in (ROOT / "docs").rglob("*.md") if "_build" not in path.parts
    )
    return found


def run_python(example: Example) -> None:
    """Run a block; what it prints must be exactly what its ``#>`` lines show."""
    shown = [
        line.strip()[3:] if line.strip() != "#>" else ""
        for line in example.parsed.splitlines()
        if line.strip().startswith("#>")
    ]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        PythonEvaluator()(example)
    got = printed.getvalue()
    want = "".join(line + "\n" for line in shown)
    if not _CHECKER.check_output(want, got, _OPTIONS):
        if not shown:
            raise AssertionError(
                f"the block prints what it does not show (add #> lines):\n{got}"
            )
        raise AssertionError(
            "the block does not print what its #> lines show:\n"
            + _CHECKER.output_difference(doctest.Example("", want), got, _OPTIONS)
        )


def unmarked(example: Example) -> None:
    language = example.region.lexemes.get("arguments")
    raise AssertionError(
        f"a ```{language} block that is neither run nor marked: put "
        '<!-- skip: next "the reason" --> before it, or make it a python block'
    )


class _Python(PythonCodeBlockParser):
    """Python blocks (and doctests), with printed output checked."""

    def __init__(self) -> None:
        super().__init__(doctest_optionflags=_OPTIONS)
        self.codeblock_parser = CodeBlockParser("python", run_python)


class _Others(CodeBlockParser):
    """Blocks in any other language: they fail unless a skip marks them."""

    def __init__(self) -> None:
        super().__init__(language="*", evaluator=unmarked)

    def __call__(self, document: Document) -> Iterator[object]:  # type: ignore[override]
        for region in self.lexers(document):
            language = region.lexemes["arguments"].strip()
            # MyST directives ({eval-rst}, {toctree}...) are not code blocks.
            if language != "python" and not language.startswith("{"):
                region.parsed = region.lexemes["source"]
                region.evaluator = unmarked
                yield region


PARSERS = (_Python(), _Others(), SkipParser())


def parse(path: Path) -> Document:
    return Document.parse(str(path), *PARSERS)


def fixtures_of(document: Document) -> list[str]:
    return [name for match in FIXTURES.finditer(document.text) for name in match[1].split()]


def skip_reasons(document: Document) -> Iterator[tuple[int, str, str | None]]:
    """(line, action, reason) of every skip marker."""
    for example in document:
        if isinstance(example.region.evaluator, Skipper):
            action, reason = example.parsed
            yield example.line, action, reason


def run(path: Path, fixtures: dict[str, object] | None = None) -> tuple[int, int]:
    """Run every block of the page; return (blocks run, blocks marked not runnable).

    ``fixtures`` (the page's, by name) are in the namespace too, for hidden checks.
    """
    # Earlier pages' functions go first: their monitors' static labels (every function
    # carries those of the live monitors) must not show in this page's exposition.
    gc.collect()
    document = parse(path)
    for line, action, reason in skip_reasons(document):
        if action in ("next", "start") and not (reason and reason.strip(" '\"")):
            raise AssertionError(f"{path.name}:{line}: 'skip: {action}' needs a reason")
    label = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    name = "docs_page_" + re.sub(r"\W", "_", str(label.with_suffix("")))
    module = types.ModuleType(name)  # a real module: pickling and pydantic can find it
    module.__file__ = str(path)
    document.namespace = module.__dict__
    sys.modules[name] = module
    ran = skipped = 0
    with contextlib.ExitStack() as cleanup:
        cleanup.enter_context(_logging_restored())
        cleanup.callback(_metrics_restored(), None)
        cleanup.callback(_otel_restored(), None)
        cleanup.callback(_exporter_restored(), None)
        cleanup.callback(sys.modules.pop, name, None)
        document.namespace.update(fixtures or {})
        document.namespace["docs_cleanup"] = cleanup.enter_context(contextlib.ExitStack())
        for example in document:
            if isinstance(example.region.evaluator, Skipper):
                example.evaluate()
                continue
            try:
                example.evaluate()
            except SkipTest:
                skipped += 1
                continue
            except Exception as error:
                raise AssertionError(
                    f"{label}, line {example.line}: {error}"
                ) from error
            ran += 1
    return ran, skipped


@contextlib.contextmanager
def _logging_restored() -> Iterator[None]:
    """Put every logger's handlers, level and propagation back as they were."""
    loggers = [logging.getLogger()] + [
        logger
        for logger in logging.Logger.manager.loggerDict.values()
        if isinstance(logger, logging.Logger)
    ]
    saved = [(logger, logger.handlers[:], logger.level, logger.propagate) for logger in loggers]
    try:
        yield
    finally:
        for logger, handlers, level, propagate in saved:
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate


def _exporter_restored() -> object:
    """A callback that stops @monitor's exporter thread if the page started it (as the
    demo does), so that tests after the page find the process as it was."""
    from buttress import monitoring_stats
    from buttress._monitoring._emitter import exporter

    was_running = monitoring_stats().running

    def restore(_: object) -> None:
        if not was_running and monitoring_stats().running:
            exporter.stop(10.0)

    return restore


def _otel_restored() -> object:
    """A callback that turns buttress.otel off again if the page turned it on."""
    from buttress import otel

    before = otel.is_enabled()

    def restore(_: object) -> None:
        if not before and otel.is_enabled():
            otel.disable()

    return restore


def _metrics_restored() -> object:
    """A callback that disables buttress' metrics if the page enabled them."""
    from buttress import metrics

    before = metrics.current_registry()

    def restore(_: object) -> None:
        if before is None and metrics.current_registry() is not None:
            metrics.disable()

    return restore
