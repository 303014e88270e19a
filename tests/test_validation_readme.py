"""The README's validation example runs and prints what the README says it prints."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_validation_example_runs_as_documented() -> None:
    text = README.read_text()
    section = text[text.index("## @validate_input and @validate_output") :]
    section = section[: section.index("\n## ", 1)]
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert code is not None
    source = code.group(1)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(source, str(README), "exec"), {"__name__": "readme_example"})
    lines = printed.getvalue().splitlines()
    # Every "# ..." line after a print in the example is what it prints.
    documented = [
        line[2:] for line in source.splitlines() if line.startswith("# rank(): ")
    ]
    assert documented, "the example documents its error message"
    assert [line for line in lines if line.startswith("rank(): ")] == documented
    assert lines[-1] == "{'id': 1} {'error': 'bad request'}"
