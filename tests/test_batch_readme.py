"""The README's @batch example runs as documented."""

from __future__ import annotations

import ast
import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_batch_example_runs_as_documented() -> None:
    text = README.read_text()
    section = text[text.index("## @batch: many single calls, one upstream request") :]
    section = section[: section.index("\n## ", 1)]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(code.group(1), str(README), "exec"), {"__name__": "readme_example"})
    sizes, mean = printed.getvalue().splitlines()
    assert ast.literal_eval(sizes) == [64] * 15 + [40]  # the README says: 16 requests, not 1000
    assert float(mean) == 62.5
