"""The README's Python examples run, and print what their comments say."""

import contextlib
import io
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def expected_output(code: str) -> list[str]:
    """The comment after each print() call, in order."""
    return [match.group(1).strip() for match in re.finditer(r"^\s*print\(.*\)\s*#\s*(.*)$", code, flags=re.M)]


def test_readme_has_examples() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example(code: str) -> None:
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(code, str(README), "exec"), {"__name__": "readme"})
    assert output.getvalue().splitlines() == expected_output(code)
