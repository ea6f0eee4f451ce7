"""The documentation holds: its links lead somewhere, its examples run, its names exist.

* Every relative link in README.md and docs/*.md points to a file or directory of
  the repository (and a ``#fragment`` to a heading of the target Markdown file);
  nothing points outside the repository.
* Every ``python`` block of docs/api.md runs and prints what its comments say
  (the comment after each ``print(...)``, as in tests/test_readme.py). A block
  whose first line is ``# needs: MODULE ...`` is skipped while a module is missing.
* Every name in the first column of docs/api.md's tables exists in the module
  (or class) its section documents.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import io
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
API = ROOT / "docs" / "api.md"
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

FENCE = re.compile(r"^```.*?^```", flags=re.S | re.M)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"(?<!!)\[[^\]\n]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)|!\[[^\]\n]*\]\(\s*([^)\s]+)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*(\S+)", flags=re.M)


def prose(text: str) -> str:
    """The text without code blocks and inline code (which may look like links)."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def links(text: str) -> list[str]:
    body = prose(text)
    found = [a or b for a, b in LINK.findall(body)]
    return found + REFERENCE.findall(body)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_~]|<[^>]+>", lambda m: "_" if m.group(0) == "_" else "", heading.strip().lower())
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    result = set()
    for line in FENCE.sub("", path.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result


def test_slug_is_githubs() -> None:
    assert slug("What the library guarantees") == "what-the-library-guarantees"
    assert slug("`runtime.buffer`") == "runtimebuffer"
    assert slug("`runtime._core` and `runtime.tools`") == "runtime_core-and-runtimetools"
    assert slug("New: the student-facing API") == "new-the-student-facing-api"


@pytest.mark.parametrize("document", DOCUMENTS, ids=[str(d.relative_to(ROOT)) for d in DOCUMENTS])
def test_relative_links_point_into_the_repository(document: Path) -> None:
    problems = []
    for target in links(document.read_text(encoding="utf-8")):
        if re.match(r"[a-z][a-z0-9+.-]*:", target, flags=re.I):  # https:, mailto:, ...
            continue
        path_part, _, fragment = target.partition("#")
        path = (document.parent / path_part).resolve() if path_part else document
        if ROOT not in path.parents and path != ROOT:
            problems.append(f"{target}: outside the repository")
        elif not path.exists():
            problems.append(f"{target}: no such file")
        elif fragment and path.suffix == ".md" and fragment not in anchors(path):
            problems.append(f"{target}: no heading #{fragment} in {path.relative_to(ROOT)}")
    assert not problems, f"{document.relative_to(ROOT)}: " + "; ".join(problems)


def test_the_readme_points_at_the_api_reference() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "docs/api.md" in links(readme)
    assert "runtime-buffer-api.txt" not in readme  # the contract lives outside the repository


# ---- the examples of docs/api.md ----------------------------------------------------------------

BLOCKS = re.findall(r"^```python\n(.*?)^```", API.read_text(encoding="utf-8"), flags=re.S | re.M)


def expected_output(code: str) -> list[str]:
    """The comment after each print() call, in order."""
    return [m.group(1).strip() for m in re.finditer(r"^\s*print\(.*\)\s*#\s*(.*)$", code, flags=re.M)]


def test_the_api_reference_has_examples() -> None:
    assert len(BLOCKS) >= 8


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_api_example(code: str) -> None:
    needs = re.match(r"#\s*needs:\s*(.*)\n", code)
    for module in needs.group(1).split() if needs else []:
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not there yet")
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        exec(compile(code, str(API), "exec"), {"__name__": "api_example"})
    assert output.getvalue().splitlines() == expected_output(code)


# ---- the names of docs/api.md -------------------------------------------------------------------

NOT_NAMES = {"class", "store", "len", "iter", "int", "with", "mutex", "message"}
"""First words of table cells that are syntax or example variables, not documented names."""


def documented_names() -> list[tuple[str, str | None, str]]:
    """``(module, class or None, name)`` for each name in the first column of a table of docs/api.md.

    A ``## `runtime.x``` or ``### `runtime.x``` heading sets the module, a
    ``### `Name``` heading the class; rows of a section whose heading is
    neither are skipped.
    """
    module: str | None = None
    cls: str | None = None
    result = []
    for line in FENCE.sub("", API.read_text(encoding="utf-8")).splitlines():
        heading = re.match(r"(#{2,3})\s+(.*)", line)
        if heading:
            level, title = heading.groups()
            named = re.fullmatch(r"`(runtime(?:\.\w+)?)`", title)
            if named:
                module, cls = named.group(1), None
            elif level == "###" and module and re.fullmatch(r"`([A-Z]\w*)`", title):
                cls = title.strip("`")
            elif level == "###":
                cls = None
            else:
                module = cls = None
            continue
        row = re.match(r"\|(.*?)(?<!\\)\|", line)
        if module is None or row is None or set(row.group(1).strip()) <= set("-: "):
            continue
        for span in re.findall(r"`([^`]*)`", row.group(1)):
            name = re.match(r"(?:class\s+)?([A-Za-z_][\w.]*)", span)
            if name and name.group(1) not in NOT_NAMES:
                result.append((module, cls, name.group(1)))
    return result


def has(owner: Any, name: str) -> bool:
    if hasattr(owner, name):
        return True
    if isinstance(owner, type):
        if dataclasses.is_dataclass(owner) and name in {f.name for f in dataclasses.fields(owner)}:
            return True
        return any(name in getattr(klass, "__annotations__", {}) for klass in owner.__mro__)
    return False


def resolve(module_name: str, cls: str | None, dotted: str) -> bool:
    module = importlib.import_module(module_name)
    owners: list[Any] = [module]
    if cls is not None:
        owners.insert(0, getattr(module, cls))
    # members listed in a module's table belong to a class documented there (Message, Mutex, ...)
    owners += [value for value in vars(module).values() if isinstance(value, type)]
    for owner in owners:
        target = owner
        for part in dotted.split("."):
            if not has(target, part):
                break
            target = getattr(target, part, None)
        else:
            return True
    return False


NAMES = documented_names()


def test_the_api_reference_documents_names() -> None:
    modules = {module for module, _, _ in NAMES}
    assert {
        "runtime.buffer",
        "runtime.catalog",
        "runtime.messaging",
        "runtime.store",
        "runtime.device",
    } <= modules
    assert len(NAMES) > 100


@pytest.mark.parametrize("module", sorted({module for module, _, _ in NAMES}))
def test_documented_names_exist(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not there yet")
    missing = [
        f"{cls + '.' if cls else ''}{name}"
        for owner, cls, name in NAMES
        if owner == module and not resolve(module, cls, name)
    ]
    assert not missing, f"docs/api.md documents names that {module} does not have: {missing}"


def test_the_top_level_names_are_documented() -> None:
    import runtime

    text = FENCE.sub("", API.read_text(encoding="utf-8"))
    section = text.split("### The top-level names", 1)[1].split("\n#", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    documented = {name for row in rows for name in re.findall(r"`(\w+)`", row)}
    assert documented == set(runtime.__all__)
    for name in documented:
        assert getattr(runtime, name) is not None


# ---- the tests docs/guarantees.md cites -----------------------------------------------------------


def test_every_test_the_guarantees_cite_exists() -> None:
    text = (ROOT / "docs" / "guarantees.md").read_text(encoding="utf-8")
    cited = re.findall(r"`(test_\w+\.py)(?:::(\w+)(\.\.\.)?)?", text)  # a name, or its start and "..."
    assert len(cited) > 20
    missing = []
    for module, function, shortened in cited:
        path = ROOT / "tests" / module
        wanted = f"def {function}" if shortened else f"def {function}("
        if not path.is_file() or (function and wanted not in path.read_text(encoding="utf-8")):
            missing.append(f"{module}::{function}" if function else module)
    assert not missing, f"docs/guarantees.md cites tests that do not exist: {missing}"
