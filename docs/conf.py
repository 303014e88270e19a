"""Sphinx configuration: MyST pages, the API reference from the docstrings, strict refs."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

project = "buttress"
author = "buttress developers"
copyright = "buttress developers"  # noqa: A001 (Sphinx's name)

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
nitpicky = True
html_theme = "furo"
exclude_patterns = ["_build"]
autodoc_member_order = "bysource"
extensions += ["buttress_refs", "bench_tables"]
