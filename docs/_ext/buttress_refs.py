"""Resolve the references that type hints make, and leave every other one strict.

The build runs nitpicky with warnings as errors, so a reference to a name that is not
documented fails it. Type hints make three kinds of reference that cannot resolve:

- buttress' public names under the private module that defines them
  (``buttress._retry.RetryBudget``): linked to the public name (``buttress.RetryBudget``);
- names that exist but are not public API: type variables (``T``, ``P``), private helpers
  (``buttress._policies._bulkhead._Waiter``) and aliases of private modules: shown as
  text. A name that does not exist at all still fails the build;
- other projects' names (``datetime.timedelta``, ``numpy.ndarray``): the build has no
  network to fetch their inventories, so they are shown as text.

Signatures built from string annotations (the declared decorators) name types as their
module does, unqualified (``timedelta``, ``OnError``): a bare name that a buttress module
defines or imports is resolved the same way, public or not.
"""

from __future__ import annotations

import functools
import importlib
import re
import sys
from typing import Any

from docutils import nodes

#: Modules whose names are shown as plain text (no inventory offline).
EXTERNAL_MODULES = (
    "aiohttp", "anyio", "asyncio", "builtins", "collections", "concurrent", "contextlib",
    "contextvars", "datetime", "fastapi", "logging", "numpy", "opentelemetry", "os", "pathlib",
    "prometheus_client", "pydantic", "redis", "starlette", "threading", "types", "typing",
    "typing_extensions", "web",
)
#: Names type hints use unqualified (imported under ``TYPE_CHECKING`` or type variables);
#: ``DogStatsdSink`` is what ``metrics.enable_dogstatsd()`` returns, not public API itself.
EXTERNAL_NAMES = frozenset({
    "APIRouter", "ASGIApp", "CollectorRegistry", "DogStatsdSink", "FastAPI", "MeterProvider",
    "Middleware", "P", "R", "T", "TracerProvider",
    "ellipsis",  # how Sphinx 7 spells types.EllipsisType
})


def github_slug(title: str) -> str:
    """A heading's anchor as GitHub makes it (``## @rate_limit`` is ``#rate_limit``).

    The docs' links then work on GitHub too, and do not change with myst-parser's
    version (its own slugs changed between versions).
    """
    return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")


@functools.cache
def _public_names() -> dict[str, str]:
    """Public name -> the documented target, for buttress and its public modules."""
    found: dict[str, str] = {}
    for module_name in (
        "buttress.integrations.fastapi",
        "buttress.integrations.aiohttp",
        "buttress.testing",
        "buttress.metrics",
        "buttress.otel",
        "buttress",
    ):
        module = importlib.import_module(module_name)
        for name in module.__all__:
            found[name] = f"{module_name}.{name}"
    return found


def _exists(target: str) -> bool:
    """Whether ``target`` names something importable (module.attribute...)."""
    parts = target.split(".")
    for split in range(len(parts) - 1, 0, -1):
        try:
            value: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        try:
            for attribute in parts[split:]:
                value = getattr(value, attribute)
        except AttributeError:
            return False
        return True
    return False


def _known_bare_name(name: str) -> bool:
    """Whether a loaded buttress module defines or imports ``name``."""
    return any(
        hasattr(module, name)
        for module_name, module in list(sys.modules.items())
        if module_name == "buttress" or module_name.startswith("buttress.")
    )


def _missing_reference(app: Any, env: Any, node: Any, contnode: nodes.Node) -> Any:
    if node.get("refdomain") != "py":
        return None
    target: str = node["reftarget"].lstrip("~")
    if target.startswith("typing.~"):  # how autodoc spells a ParamSpec's parts
        return contnode
    public = _public_names()
    last = target.rsplit(".", 1)[-1]
    if target.startswith("buttress.") and last in public and public[last] != target:
        domain = env.get_domain("py")
        return domain.resolve_xref(
            env, node["refdoc"], app.builder, node["reftype"], public[last], node, contnode
        )
    if target in EXTERNAL_NAMES or target.split(".", 1)[0] in EXTERNAL_MODULES:
        return contnode
    if "." not in target:
        if target in public:
            domain = env.get_domain("py")
            return domain.resolve_xref(
                env, node["refdoc"], app.builder, node["reftype"], public[target], node,
                contnode,
            )
        bare = re.match(r"\w+", target)  # a string annotation cut at its comma: Mapping[str
        if bare is not None and _known_bare_name(bare.group()):
            return contnode
    if target.startswith("buttress.") and _exists(target):
        private = any(part.startswith("_") for part in target.split(".")[1:])
        if private:
            return contnode
    return None


def setup(app: Any) -> dict[str, object]:
    app.connect("missing-reference", _missing_reference)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
