"""Shared test configuration.

Hypothesis runs derandomized by default so the suite is deterministic; set
``HYPOTHESIS_PROFILE=explore`` to search with fresh random examples instead.
"""

import os

from hypothesis import settings

settings.register_profile("deterministic", derandomize=True, deadline=None, database=None)
settings.register_profile("explore", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))


# ---- runtime.buffer: segment isolation and cleanup (tests/test_buffer*.py, tests/test_store.py) ----

import contextlib as _contextlib  # noqa: E402
import itertools as _itertools  # noqa: E402
import re as _re  # noqa: E402
from collections.abc import Callable as _Callable  # noqa: E402
from collections.abc import Iterator as _Iterator  # noqa: E402

import pytest as _pytest  # noqa: E402

from runtime.buffer import NAMESPACE_ENV as _NAMESPACE_ENV  # noqa: E402
from runtime.buffer import Buffer as _Buffer  # noqa: E402
from runtime.buffer import BufferStore as _BufferStore  # noqa: E402
from runtime.buffer import DeviceBufferError as _DeviceBufferError  # noqa: E402

BUFFER_NAMESPACE = f"rt-test-{os.getpid()}"
"""The shared-memory namespace of this test session (child processes inherit it)."""


@_pytest.fixture(scope="session", autouse=True)
def buffer_namespace() -> _Iterator[str]:
    """Put every segment of this session under a namespace of its own; remove them all at the end."""
    previous = os.environ.get(_NAMESPACE_ENV)
    os.environ[_NAMESPACE_ENV] = BUFFER_NAMESPACE
    try:
        yield BUFFER_NAMESPACE
    finally:
        try:
            _BufferStore({}).unlink_all()  # safety net: whatever a test left behind
        finally:
            if previous is None:
                os.environ.pop(_NAMESPACE_ENV, None)
            else:
                os.environ[_NAMESPACE_ENV] = previous


_segment_counter = _itertools.count()


@_pytest.fixture
def shm_name(request: _pytest.FixtureRequest, buffer_namespace: str) -> _Iterator[_Callable[[str], str]]:
    """Make unique segment names in the session namespace; unlink them after the test, pass or fail.

    ``shm_name('motor')`` returns a fresh name such as ``rt-test-123-test_x-motor-4``.
    """
    names: list[str] = []
    test = _re.sub(r"[^A-Za-z0-9_]+", "_", request.node.name)[:60]

    def make(label: str = "buf") -> str:
        name = f"{buffer_namespace}-{test}-{label}-{next(_segment_counter)}"
        names.append(name)
        return name

    try:
        yield make
    finally:
        for name in names:
            with _contextlib.suppress(_DeviceBufferError):
                _Buffer.unlink(name)


# ---- the fast subset (`make test-fast`: pytest -m "not slow") ----------------------------------------
# The modules and tests below dominate the suite's time; the rest runs in under 30 s.

SLOW_MODULES = frozenset(
    {
        # end to end: real bridge, emulator and demo processes on pseudo-terminals
        "tests/test_bridge.py",
        "tests/test_bringup.py",  # producers in child processes, the bridge on ptys, systemd-analyze
        "tests/test_demo.py",
        "tests/test_foxglove.py",  # runtime foxglove and a WebSocket client, against an emulated robot
        "tests/test_record.py",  # runtime record and replay, against an emulated robot
        "tests/test_examples.py",
        "tests/test_flaky_link.py",
        "tests/test_liveness.py",
        "tests/test_zenoh.py",  # runtime zenoh, the bridge and emulated devices; remote Zenoh sessions
        "src/runtime/testing/__init__.py",  # doctests that start an emulated robot
        "src/runtime/testing/robot.py",
        "src/runtime/testing/student.py",
        # many processes, kill storms, a private mount namespace, thousands of cycles
        "tests/test_faults.py",
        "tests/test_leaks.py",
        "tests/test_shm_safety.py",
        "tests/test_testing.py",
        # builds the sdist and the wheel
        "tests/test_packaging.py",
    }
)
"""Files (from the project root) whose every test is marked ``slow``."""

SLOW_TESTS = frozenset(
    {
        # hypothesis searches over many thousands of frames
        "tests/test_messaging.py::test_decode_mutated_frames",
        "tests/test_messaging.py::test_decode_structured_frames",
        "tests/test_messaging.py::test_decode_arbitrary_bytes",
        "tests/test_messaging.py::test_decode_arbitrary_frames_without_zero",
        # a subprocess per case
        "tests/test_cli_errors.py::test_a_catalog_nested_1000_deep_is_one_error_line",
        "tests/test_cli_errors.py::test_a_catalog_larger_than_the_cap_is_refused_unread",
        "tests/test_cli_errors.py::test_every_help_example_runs",
        # runs mypy's stubtest on the compiled core
        "tests/test_api.py::test_the_core_stub_matches_the_compiled_core",
        # a second or more of waiting each
        "tests/test_notify.py::test_waiting_costs_no_cpu",
        "tests/test_notify.py::test_thousands_of_tasks_on_hundreds_of_buffers",
    }
)
"""Single tests (``file::function``, every parametrization) marked ``slow``."""


def pytest_collection_modifyitems(config: _pytest.Config, items: list[_pytest.Item]) -> None:
    """Mark the tests of :data:`SLOW_MODULES` and :data:`SLOW_TESTS` slow (``-m "not slow"`` skips them)."""
    for item in items:
        test = item.nodeid.split("[", 1)[0]
        if test.split("::", 1)[0] in SLOW_MODULES or test in SLOW_TESTS:
            item.add_marker(_pytest.mark.slow)
