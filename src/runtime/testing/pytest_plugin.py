"""pytest fixtures for testing robot code against emulated devices.

Enable it in your ``conftest.py`` (or a test module)::

    pytest_plugins = ["runtime.testing.pytest_plugin"]

Fixtures:

* ``runtime_robot``: an :class:`~runtime.testing.EmulatedRobot` for one test
  (emulated devices and the bridge, in a namespace of their own; stopped and
  unlinked after the test). The devices are ``runtime_devices``; options of
  :func:`~runtime.testing.emulated_robot` come from the marker's keywords.
* ``runtime_devices``: the devices to emulate: the arguments of the
  ``runtime_devices`` marker, else :data:`DEFAULT_DEVICES`. Override the
  fixture to change the default for a module or a directory.
* ``fake_device``: a :class:`~runtime.testing.FakeDevice` (closed after the test).

Example (a whole test file)::

    import pytest

    pytest_plugins = ["runtime.testing.pytest_plugin"]

    @pytest.mark.runtime_devices("yogi-bear", still=True)
    def test_motor_moves(runtime_robot):
        motor = runtime_robot.buffer("yogi-bear")
        motor.write("duty_cycle", 1.0)
        runtime_robot.wait_for(lambda: motor.get("enc_pos") > 500)

When a test fails, the end of the bridge's and the emulator's logs is printed
in its teardown (pytest shows it with the failure).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .pty import FakeDevice
from .robot import EmulatedRobot, emulated_robot

__all__ = ["DEFAULT_DEVICES", "fake_device", "pytest_configure", "runtime_devices", "runtime_robot"]

DEFAULT_DEVICES: tuple[str | int, ...] = ("limit-switch", "yogi-bear")
"""What ``runtime_robot`` emulates when neither the marker nor an overridden ``runtime_devices`` says."""


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``runtime_devices`` marker."""
    config.addinivalue_line(
        "markers",
        "runtime_devices(*devices, **options): the devices the runtime_robot fixture emulates "
        "(TYPE, TYPE:UID or UID) and options of runtime.testing.emulated_robot (seed, still, ...)",
    )


@pytest.fixture
def runtime_devices(request: pytest.FixtureRequest) -> tuple[str | int, ...]:
    """The devices ``runtime_robot`` emulates: the ``runtime_devices`` marker's arguments, or the default."""
    marker = request.node.get_closest_marker("runtime_devices")
    if marker is not None and marker.args:
        return tuple(marker.args)
    return DEFAULT_DEVICES


@pytest.fixture
def runtime_robot(
    request: pytest.FixtureRequest, runtime_devices: tuple[str | int, ...]
) -> Iterator[EmulatedRobot]:
    """Emulated devices served by a bridge for one test (see :func:`runtime.testing.emulated_robot`)."""
    marker = request.node.get_closest_marker("runtime_devices")
    options = dict(marker.kwargs) if marker is not None else {}
    with emulated_robot(*runtime_devices, **options) as robot:
        try:
            yield robot
        finally:
            print(robot.logs())  # shown by pytest only when the test fails


@pytest.fixture
def fake_device() -> Iterator[FakeDevice]:
    """A :class:`~runtime.testing.FakeDevice` for one test, closed after it."""
    with FakeDevice() as device:
        yield device
