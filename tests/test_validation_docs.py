"""The validation page's example and examples/validated_ranker.py run as documented."""

from __future__ import annotations

import contextlib
import io
import re
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "decorators" / "validation.md"


def test_the_validation_page_example_runs_as_documented() -> None:
    """Also run by tests/test_docs.py; here its error message is pinned line by line."""
    code = re.search(r"```python\n(.*?)```", PAGE.read_text(), re.DOTALL)
    assert code is not None
    source = code.group(1)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        exec(compile(source, str(PAGE), "exec"), {"__name__": "docs_example"})
    lines = printed.getvalue().splitlines()
    # Every "#> ..." line in the example is what it prints.
    documented = [
        line[3:] for line in source.splitlines() if line.startswith("#> rank(): ")
    ]
    assert documented, "the example documents its error message"
    assert [line for line in lines if line.startswith("rank(): ")] == documented
    assert lines[-1] == "{'id': 1} {'error': 'bad request'}"


def test_validated_ranker_example() -> None:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        runpy.run_path(str(ROOT / "examples" / "validated_ranker.py"), run_name="__main__")
    lines = printed.getvalue().splitlines()
    assert lines[0] == "{'status': 200, 'query': 'cats', 'ranking': [3, 4]}"
    assert lines[1].startswith("{'status': 422, 'problems': [")
    assert "contains non-finite values" in lines[2]
    assert lines[3] == "{'status': 200, 'query': 'glitch', 'ranking': []}"
    assert lines[4] == "refused: {'input': 2, 'output': 1}"
