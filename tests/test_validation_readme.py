"""The README's validation example and examples/validated_ranker.py run as documented."""

from __future__ import annotations

import contextlib
import io
import re
import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


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
