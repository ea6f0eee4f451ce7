"""Shared test configuration.

Hypothesis runs derandomized by default so the suite is deterministic; set
``HYPOTHESIS_PROFILE=explore`` to search with fresh random examples instead.

Each test session names its segments under a namespace of its own
(``rt-test-PID``); a test looks only at its own namespace, never at all of /dev/shm.

Slow tests carry ``@pytest.mark.slow`` (a module of them ``pytestmark = pytest.mark.slow``);
``make test-fast`` skips them and passes ``--slow-check``, which fails an unmarked test that
takes over a second (its call plus the set-up of its function-scoped fixtures; module-scoped
set-up does not count). ``make test`` (what CI runs) leaves the check off, so a busy machine
cannot turn it red.

Helpers the test modules share (processes, waiting, namespaces) are in ``tests/e2e.py``.

A suite started in the background of a script (``make test &`` without job
control) inherits SIGINT ignored, and so would every command it starts: the
tests that press Ctrl-C on a command would wait for it in vain. The session
hears SIGINT again, so its children start with the default.
"""

import os
import signal

if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

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


# ---- the fast subset (`make test-fast`: pytest -m "not slow --slow-check") --------------------------
# A test that takes a second or more (end to end, multi-process, builds, long searches) carries
# ``@pytest.mark.slow`` (a module of such tests: ``pytestmark = pytest.mark.slow``); the rest runs
# in under 30 s. With ``--slow-check`` (make test-fast passes it; make test, what CI runs, does not:
# a busy machine must not turn the suite red) an unmarked test that passed but took over
# SLOW_SECONDS fails, saying to mark it or make it faster.

import time as _time  # noqa: E402

from _pytest.doctest import DoctestItem as _DoctestItem  # noqa: E402

SLOW_SECONDS = 1.0
"""What an unmarked test may take (its call plus the set-up of its function-scoped fixtures)."""

SLOW_DOCTEST_CALLS = ("emulated_robot(", "run_student_code(")
"""A doctest that runs one of these starts robot processes: it is marked ``slow`` (it has no decorator)."""

_SETUP_SECONDS = _pytest.StashKey[float]()
"""The set-up time of a test's function-scoped fixtures."""


def pytest_addoption(parser: _pytest.Parser) -> None:
    parser.addoption(
        "--slow-check",
        action="store_true",
        help=f"fail a test not marked slow that takes over {SLOW_SECONDS:g} s (make test-fast)",
    )


def pytest_collection_modifyitems(config: _pytest.Config, items: list[_pytest.Item]) -> None:
    """Mark slow the doctests that start robot processes (see :data:`SLOW_DOCTEST_CALLS`)."""
    for item in items:
        if isinstance(item, _DoctestItem) and item.dtest is not None:
            source = "".join(example.source for example in item.dtest.examples)
            if any(call in source for call in SLOW_DOCTEST_CALLS):
                item.add_marker(_pytest.mark.slow)


_wider_setup = {"depth": 0, "seconds": 0.0}
"""The set-up time of this test's fixtures wider than a function (outermost: an inner one counts in them)."""


@_pytest.hookimpl(hookwrapper=True)
def pytest_fixture_setup(fixturedef: _pytest.FixtureDef[object]) -> _Iterator[None]:
    """Time the set-up of wider-scoped fixtures: not the cost of the test that happens to come first."""
    wider = fixturedef.scope != "function"
    started = _time.perf_counter()
    _wider_setup["depth"] += wider
    try:
        yield
    finally:
        _wider_setup["depth"] -= wider
        if wider and _wider_setup["depth"] == 0:
            _wider_setup["seconds"] += _time.perf_counter() - started


@_pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: _pytest.Item) -> _Iterator[None]:
    _wider_setup["seconds"] = 0.0
    started = _time.perf_counter()
    yield
    item.stash[_SETUP_SECONDS] = max(_time.perf_counter() - started - _wider_setup["seconds"], 0.0)


@_pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: _pytest.Item, call: _pytest.CallInfo[None]) -> _Iterator[None]:
    """With ``--slow-check``: fail a passing unmarked test slower than :data:`SLOW_SECONDS`."""
    outcome = yield
    report: _pytest.TestReport = outcome.get_result()
    if call.when != "call" or not report.passed or not item.config.getoption("--slow-check"):
        return
    if item.get_closest_marker("slow") is not None:
        return
    setup = item.stash.get(_SETUP_SECONDS, 0.0)
    took = call.duration + setup
    if took > SLOW_SECONDS:
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} took {took:.2f} s (call {call.duration:.2f} s, "
            f"function-scoped set-up {setup:.2f} s), "
            f"over the {SLOW_SECONDS:g} s of an unmarked test (--slow-check, make test-fast): "
            "mark it @pytest.mark.slow or make it faster"
        )
