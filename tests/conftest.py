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
