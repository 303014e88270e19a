"""Sphinx configuration: MyST pages, the API reference from the docstrings, strict refs.

Build with ``tox -e docs`` (or ``sphinx-build -W -n -b html docs docs/_build/html``);
``tests/test_docs.py`` runs the same strict build. See docs/contributing.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

project = "buttress"
author = "buttress developers"
copyright = "buttress developers"  # Sphinx's name for it

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "buttress_refs",  # type hints' references: public names linked, others shown as text
    "bench_tables",  # the {benchmark-headline} directive, from benchmarks/RESULTS.md
]
source_suffix = {".md": "markdown"}
exclude_patterns = ["_build"]

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3  # [text](page.md#a-section-title) links, checked by the build

# The same anchors as GitHub, whatever myst's version (an import path: Sphinx pickles it).
myst_heading_slug_func = "buttress_refs.github_slug"

nitpicky = True  # every reference must resolve; with -W a broken one fails the build
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
napoleon_google_docstring = True
napoleon_numpy_docstring = False

html_theme = "furo"
html_title = "buttress"
