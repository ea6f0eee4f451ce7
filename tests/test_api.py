"""The public API: every name exported once, documented and typed; the stub matches the core.

Like trio's test of its public names: what ``runtime`` re-exports resolves,
lives where it says, carries a docstring, and every public callable has
annotations for each parameter and its return. ``mypy.stubtest`` checks that
``runtime/_core.pyi`` describes the compiled core exactly.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import runtime


def _library_modules() -> list[str]:
    """Every public module of the library: walked, not listed, so a new one is checked from the start.

    Left out: the commands (``runtime.tools``: use the commands, not the
    modules), the compiled core and private modules (a ``_`` name), and
    ``runtime.__main__``.
    """
    found = []
    for info in pkgutil.walk_packages(runtime.__path__, "runtime."):
        parts = info.name.split(".")
        if parts[1] == "tools" or any(part.startswith("_") for part in parts[1:]):
            continue
        found.append(info.name)
    return sorted(found)


LIBRARY_MODULES = _library_modules()
ALLOWLIST = Path(__file__).resolve().parent / "stubtest-allowlist.txt"


def public_names(module: Any) -> list[str]:
    return list(getattr(module, "__all__", []))


def test_the_walk_finds_the_library_and_not_the_commands() -> None:
    expected = {"runtime.buffer", "runtime.values", "runtime.remote.client", "runtime.testing"}
    assert expected <= set(LIBRARY_MODULES)
    assert not [name for name in LIBRARY_MODULES if name.startswith("runtime.tools") or "._" in name]


def test_every_reexported_name_resolves_once_to_its_home() -> None:
    assert len(runtime.__all__) == len(set(runtime.__all__))
    assert runtime.__all__ == sorted(runtime._EXPORTS)  # the lazy table and __all__ agree
    homes: dict[int, str] = {}
    for name in runtime.__all__:
        value = getattr(runtime, name)
        assert id(value) not in homes, f"{name} and {homes.get(id(value))} are the same object"
        homes[id(value)] = name
        assert value.__module__.startswith("runtime."), name
    for name in (
        "Buffer",
        "BufferStore",
        "Device",
        "DeviceBufferError",
        "Parameter",
        "DeviceUID",
        "load_catalog",
    ):
        assert name in runtime.__all__
    namespace: dict[str, Any] = {}
    exec("from runtime import *", namespace)
    assert set(runtime.__all__) <= set(namespace)
    assert set(runtime.__all__) <= set(dir(runtime))


def test_the_contract_import_paths_hold() -> None:
    from runtime.buffer import BufferStore as contract_store
    from runtime.buffer import __all__ as buffer_all

    assert contract_store is runtime.BufferStore
    assert {"Buffer", "BufferStore", "DeviceBuffer", "DeviceBufferError", "DeviceUID", "NullDevice"} <= set(
        buffer_all
    )


def test_importing_runtime_loads_nothing_until_a_name_is_used() -> None:
    code = "import sys, runtime; print(sorted(m for m in sys.modules if m.startswith('runtime')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "['runtime']", result.stderr


def _is_public_callable(obj: Any) -> bool:
    return (
        inspect.isfunction(obj)
        or inspect.ismethoddescriptor(obj)
        or isinstance(obj, (classmethod, staticmethod))
    )


def _unannotated(function: Any) -> list[str]:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):  # a C callable without a text signature: the stub types it
        return []
    missing = [
        name
        for name, parameter in signature.parameters.items()
        if name not in ("self", "cls") and parameter.annotation is inspect.Parameter.empty
    ]
    if signature.return_annotation is inspect.Signature.empty and function.__name__ != "__init__":
        missing.append("return")
    return missing


def _members(cls: type) -> list[tuple[str, Any]]:
    own = []
    for name, raw in vars(cls).items():
        if name.startswith("_") and name not in ("__init__",):
            continue
        own.append((name, raw))
    return own


@pytest.mark.parametrize("module_name", LIBRARY_MODULES)
def test_every_public_name_of_the_library_is_documented_and_typed(module_name: str) -> None:
    module = importlib.import_module(module_name)
    assert module.__doc__ and module.__doc__.strip(), f"{module_name} has no docstring"
    names = public_names(module)
    assert names, f"{module_name} has no __all__"
    assert len(names) == len(set(names))
    problems: list[str] = []
    for name in names:
        value = getattr(module, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            if not (value.__doc__ or "").strip():
                problems.append(f"{name}: no docstring")
        if inspect.isfunction(value):
            problems += [f"{name}: {what} not annotated" for what in _unannotated(value)]
        if inspect.isclass(value) and value.__module__ == module_name:
            for member, raw in _members(value):
                function = raw.__func__ if isinstance(raw, (classmethod, staticmethod)) else raw
                if isinstance(raw, property):
                    function = raw.fget
                if not inspect.isfunction(function):
                    continue
                if not (function.__doc__ or "").strip() and member != "__init__":
                    problems.append(f"{name}.{member}: no docstring")
                problems += [f"{name}.{member}: {what} not annotated" for what in _unannotated(function)]
    assert problems == []


@pytest.mark.slow  # runs mypy's stubtest on the compiled core
def test_the_core_stub_matches_the_compiled_core() -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy is not installed (pip install -e '.[dev]')")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy.stubtest",
            "runtime._core",
            "--allowlist",
            str(ALLOWLIST),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_package_is_typed() -> None:
    package = Path(runtime.__file__).parent
    assert (package / "py.typed").exists()
    assert (package / "_core.pyi").exists()
