"""The package's imports point one way: a map a newcomer can read.

* The library's modules form a DAG (errors at the bottom, then the core,
  buffers, the catalog, the store...): no module imports, at its top, a
  module that imports it back.
* A function-level import never hides a cycle: an import inside a function is
  allowed to keep start-up cheap, not to reach a module that imports this one.
  The one exception is the API contract's ``runtime.buffer.BufferStore``, a
  lazy re-export of ``runtime.store.BufferStore`` that nothing inside the
  package uses.
* The commands (``runtime.tools``) and the testing kit (``runtime.testing``)
  use the library, never the reverse; the testing kit never uses a command;
  a command never imports another command (they share ``tools/_*`` modules)
  but the dispatcher, ``runtime.tools.cli``, that runs them all.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import pytest

import runtime

PACKAGE = Path(runtime.__file__).parent

CONTRACT_REEXPORT = ("runtime.buffer", "runtime.store")
"""The lazy re-export the API contract asks for (``runtime.buffer.BufferStore``)."""


DISPATCHER = "runtime.tools.cli"
"""``runtime``'s command line: every command runs through it (``python -m runtime.tools.X`` too)."""


class Import(NamedTuple):
    source: str
    target: str
    line: int
    in_function: bool
    names: tuple[str, ...]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def _resolve(source: str, is_package: bool, level: int, module: str | None) -> str:
    if level == 0:
        return module or ""
    base = source.split(".")
    if not is_package:
        base.pop()
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(name: str) -> Iterator[Import]:
    """The imports of ``runtime`` modules in one module, outside ``if TYPE_CHECKING:``."""
    path = MODULES[name]
    is_package = path.name == "__init__.py"

    def walk(node: ast.AST, in_function: bool) -> Iterator[Import]:
        if isinstance(node, ast.ImportFrom):
            target = _resolve(name, is_package, node.level, node.module)
            names = tuple(alias.name for alias in node.names)
            for alias in names:  # `from . import catalog` imports the module runtime.catalog
                if f"{target}.{alias}" in MODULES:
                    yield Import(name, f"{target}.{alias}", node.lineno, in_function, ())
            if target in MODULES:
                yield Import(name, target, node.lineno, in_function, names)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    yield Import(name, alias.name, node.lineno, in_function, ())
        inner = in_function or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for child in ast.iter_child_nodes(node):
            if isinstance(node, ast.If) and _type_checking(node) and child in node.body:
                continue  # only for the type checker
            yield from walk(child, inner)

    tree = ast.parse(path.read_text(), str(path))
    yield from walk(tree, False)


ALL_IMPORTS = [found for name in sorted(MODULES) for found in imports_of(name)]
TOP_LEVEL: dict[str, set[str]] = {name: set() for name in MODULES}
for _found in ALL_IMPORTS:
    if not _found.in_function and _found.target != _found.source:
        TOP_LEVEL[_found.source].add(_found.target)


def reaches(start: str, goal: str) -> list[str] | None:
    """A chain of top-level imports from ``start`` to ``goal``, else None.

    A package's ``__init__`` importing its own modules is no cycle: Python
    runs the package first, whatever imports one of its modules.
    """
    seen = {start}
    paths = [[start]]
    while paths:
        path = paths.pop()
        for step in sorted(TOP_LEVEL.get(path[-1], set())):
            if step == goal:
                return [*path, step]
            if step not in seen and step in MODULES:
                seen.add(step)
                paths.append([*path, step])
    return None


def kind(name: str) -> str:
    if name.startswith("runtime.tools") or name == "runtime.__main__":  # `python -m runtime` runs the CLI
        return "tool"
    if name.startswith("runtime.testing"):
        return "testing"
    return "library"


def test_the_walk_sees_the_package() -> None:
    # The checks below are only as good as the walk: it must find the modules and their imports.
    assert {"runtime.buffer", "runtime.store", "runtime.catalog", "runtime.tools.cli"} <= set(MODULES)
    assert "runtime.buffer" in TOP_LEVEL["runtime.store"]
    assert any(found.in_function for found in ALL_IMPORTS)


def test_top_level_imports_form_a_dag() -> None:
    cycles = []
    for name in sorted(MODULES):
        for target in sorted(TOP_LEVEL[name]):
            back = reaches(target, name)
            if back is not None:
                cycles.append(" -> ".join([name, *back]))
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_function_level_import_hides_a_cycle() -> None:
    hidden = []
    for found in ALL_IMPORTS:
        if not found.in_function or (found.source, found.target) == CONTRACT_REEXPORT:
            continue
        back = reaches(found.target, found.source)
        if back is not None:
            chain = " -> ".join(back)
            hidden.append(f"{found.source}:{found.line} imports {found.target} in a function: {chain}")
    assert not hidden, "\n".join(hidden)


def test_the_contract_path_of_bufferstore_is_not_used_inside() -> None:
    users = [
        f"{found.source}:{found.line}"
        for found in ALL_IMPORTS
        if found.target == "runtime.buffer" and "BufferStore" in found.names
    ]
    assert not users, f"import BufferStore from runtime.store (or runtime): {users}"
    from runtime.buffer import BufferStore as contract
    from runtime.store import BufferStore

    assert contract is BufferStore


@pytest.mark.parametrize("found", ALL_IMPORTS, ids=lambda found: f"{found.source}:{found.line}")
def test_imports_point_one_way(found: Import) -> None:
    source, target = kind(found.source), kind(found.target)
    where = f"{found.source}:{found.line} imports {found.target}"
    if source == "library":
        assert target == "library", f"{where}: the library never uses the commands or the testing kit"
    elif source == "testing":
        assert target != "tool", f"{where}: the testing kit uses the library, not the commands"
    else:
        tool = found.target.rsplit(".", 1)[-1]
        assert target != "tool" or tool.startswith("_") or found.target in ("runtime.tools", DISPATCHER), (
            f"{where}: a command never imports another command (share a tools/_*.py module)"
        )
