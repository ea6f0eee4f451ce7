"""The student API: ``Robot``, ``Gamepad`` and ``Keyboard``, as PiE student code uses them.

A student file defines any of ``autonomous_setup()``, ``autonomous_main()``,
``teleop_setup()`` and ``teleop_main()``, and calls the three globals that
:mod:`runtime.runner` gives it:

* ``Robot.get_value(device, param)`` and ``Robot.set_value(device, param,
  value)`` read a sensor and command an actuator through the buffers;
  ``Robot.run(function, *args)`` runs a function beside the mode's main loop,
  ``Robot.is_running(function)`` says whether it still runs, and
  ``Robot.sleep(seconds)`` pauses only the function that calls it;
* ``Gamepad.get_value(name)`` and ``Keyboard.get_value(key)`` read the driver
  station's inputs (the ``gamepad`` and ``keyboard`` buffers). In autonomous
  mode they raise :class:`StudentCodeError`: inputs are not allowed then.

A ``device`` is a name of the robot file (``--devices FILE``, a YAML or JSON
mapping of names to UIDs), a UID in hex as ``runtime buffers`` prints it
(``"0x…"``), or the ``"<device_id>_<random>"`` string of PiE's tools (the
random part in decimal; the device of that type whose UID ends in it is
found among the namespace's buffers).

The module also holds what the runner, ``runtime mode``, the Zenoh server and
the driver station share: the modes (:data:`MODES`), the keys of the field,
gamepad, keyboard and runner buffers, the keyboard's key names, and
:func:`log_lines_since`, which reads the runner's print lines from its buffer.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from .buffer import Buffer, DeviceBuffer, DeviceBufferError, DeviceUID
from .exception import RuntimeBaseException, did_you_mean
from .store import BufferStore

__all__ = [
    "FIELD_KEY",
    "GAMEPAD_KEY",
    "KEYBOARD_KEY",
    "KEY_NAMES",
    "MAX_RUNNING",
    "MODES",
    "MODE_FUNCTIONS",
    "RUNNER_KEY",
    "Gamepad",
    "Keyboard",
    "Robot",
    "StudentCodeError",
    "key_param",
    "log_lines_since",
    "mode_name",
    "mode_number",
    "resolve_device",
]

MODES = {"idle": 0, "auto": 1, "teleop": 2}
"""The modes, by name, with their number in the field buffer's ``mode``."""
MODE_FUNCTIONS = {"auto": "autonomous", "teleop": "teleop"}
"""The prefix of a mode's functions in a student file: ``autonomous_setup``, ``teleop_main``..."""
FIELD_KEY = ("field", 0)
"""The field-control buffer: its ``mode`` says which mode the robot is in."""
GAMEPAD_KEY = ("gamepad", 0)
"""The driver station's gamepad."""
KEYBOARD_KEY = ("keyboard", 0)
"""The driver station's keyboard."""
RUNNER_KEY = ("runner", 0)
"""The runner's own buffer: the mode it runs, its counters, the last lines printed."""

KEY_NAMES = {
    **{str(digit): f"digit_{digit}" for digit in range(10)},
    ",": "comma",
    ".": "period",
    "/": "slash",
    ";": "semicolon",
    "'": "quote",
    "[": "left_bracket",
    "]": "right_bracket",
}
"""The keys whose parameter in the ``keyboard`` buffer is not the key itself."""


MAX_RUNNING = 64
"""Functions ``Robot.run`` runs at once, at most (each is a thread)."""


class StudentCodeError(RuntimeBaseException):
    """Student code used the student API in a way it does not allow (inputs in autonomous...)."""


def mode_number(mode: str | int) -> int:
    """The field's number of a mode given by name or number; ``ValueError`` with the names otherwise.

    >>> mode_number("teleop"), mode_number(1)
    (2, 1)
    """
    if isinstance(mode, bool):
        raise ValueError(f"a mode is one of {', '.join(MODES)}, not {mode!r}")
    if isinstance(mode, int) and mode in MODES.values():
        return mode
    if isinstance(mode, str) and mode in MODES:
        return MODES[mode]
    raise ValueError(f"a mode is one of {', '.join(MODES)}, not {mode!r}{did_you_mean(mode, MODES)}")


def mode_name(number: int) -> str:
    """The name of the field's mode number; an unknown number counts as idle (nothing runs).

    >>> mode_name(2), mode_name(7)
    ('teleop', 'idle')
    """
    for name, value in MODES.items():
        if value == number:
            return name
    return "idle"


def key_param(key: str) -> str:
    """The ``keyboard`` buffer's parameter of a key: ``"a"`` is ``a``, ``"0"`` is ``digit_0``."""
    return KEY_NAMES.get(key, key)


def log_lines_since(seen: int, lines: int, log: str | bytes) -> tuple[list[str], int]:
    """The lines of the runner's ``log`` printed after the first ``seen``, and how many of them are lost.

    ``lines`` is the runner buffer's count of every line printed, ``log`` its
    text (the newest lines, newline-separated). Lines that no longer fit in
    the text are counted as lost. A count below ``seen`` means the runner
    started again: every line in the text is new.

    >>> log_lines_since(1, 3, "one\\ntwo\\nthree")
    (['two', 'three'], 0)
    >>> log_lines_since(0, 5, "four\\nfive")
    (['four', 'five'], 3)
    """
    text = log.decode("utf-8", "replace") if isinstance(log, bytes) else log
    kept = text.split("\n") if text else []
    if lines < seen:
        seen = 0
    new = lines - seen
    if new <= 0:
        return [], 0
    if new <= len(kept):
        return kept[len(kept) - new :], 0
    return kept, new - len(kept)


# ---- finding devices -----------------------------------------------------------------------------


def resolve_device(store: BufferStore, device: object, names: Mapping[str, int | str] | None = None) -> int:
    """The UID of a device as student code names it (see the module's docstring).

    Raises:
        DeviceBufferError: No such name, or no buffer of that type ends in that random part;
            the message lists what exists.
        TypeError: ``device`` is neither a string nor an integer.
    """
    names = names or {}
    if isinstance(device, bool) or not isinstance(device, (str, int)):
        raise TypeError(f"a device is a name, a UID or '<device_id>_<random>', not {device!r}")
    if isinstance(device, int):
        return device
    if device in names:
        return resolve_device(store, names[device])  # the robot file's UID, in any of the forms
    text = device.strip()
    if text.lower().startswith("0x"):
        try:
            return int(text, 16)
        except ValueError:
            pass
    id_text, underscore, random_text = text.partition("_")
    if underscore and id_text.isdigit() and random_text.isdigit():
        return _find_by_random(store, int(id_text), int(random_text), device)
    known = sorted(names)
    hint = did_you_mean(device, known) if known else ""
    listed = f"; the robot file names {', '.join(known)}" if known else ""
    raise DeviceBufferError(
        f"unknown device {device!r}{hint}: use a name of the robot file, a UID like 0x…,"
        f" or '<device_id>_<random>'{listed}",
        device=device,
    )


def _searched(device: str) -> bool:
    """Whether ``device`` is a ``'<device_id>_<random>'`` string, found among the buffers present."""
    id_text, underscore, random_text = device.strip().partition("_")
    return bool(underscore) and id_text.isdigit() and random_text.isdigit()


def _find_by_random(store: BufferStore, device_id: int, random: int, device: str) -> int:
    type_name = store.device_types.get(device_id)
    if type_name is None:
        raise DeviceBufferError(
            f"no device type has the device ID {device_id} (in {device!r})", device=device
        )
    uids = [uid for found_type, uid, _ in store.find_segments() if found_type == type_name]
    matches = [uid for uid in uids if DeviceUID.from_int(uid).random == random]
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise DeviceBufferError(
            f"several {type_name} devices end in {random}: name one by its UID"
            f" ({', '.join(hex(uid) for uid in matches)})",
            device=device,
        )
    present = ", ".join(f"{device_id}_{DeviceUID.from_int(uid).random}" for uid in uids) or "none"
    raise DeviceBufferError(
        f"no {type_name} device {device!r} on this robot (connected {type_name} devices: {present})",
        device=device,
    )


# ---- the API -------------------------------------------------------------------------------------


class Robot:
    """The student's ``Robot``: devices by name, and functions run beside the main loop."""

    def __init__(
        self,
        store: BufferStore,
        names: Mapping[str, int | str] | None = None,
        *,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._store = store
        self._names = dict(names or {})
        self._buffers: dict[object, DeviceBuffer] = {}
        self._unknown: dict[object, str] = {}
        """Devices no robot could have (a name the robot file lacks): the error, said again without a
        search, so that code calling an absent name 50 times a second costs no more than one that works."""
        self._running: dict[Callable[..., Any], threading.Thread] = {}
        self._told: set[Callable[..., Any]] = set()
        self._on_error = on_error

    def _buffer(self, device: object) -> DeviceBuffer:
        try:
            return self._buffers[device]
        except (KeyError, TypeError):
            pass
        known_error = self._unknown.get(device) if isinstance(device, str) else None
        if known_error is not None:
            raise DeviceBufferError(known_error, device=device)
        try:
            uid = resolve_device(self._store, device, self._names)
        except DeviceBufferError as exc:
            if isinstance(device, str) and device not in self._names and not _searched(device):
                # a name the robot file lacks: that answer holds for good
                self._unknown[device] = exc.message
            raise
        try:
            buffer = self._store.get_or_open(uid, create=False)
        except DeviceBufferError as exc:
            raise DeviceBufferError(
                f"device {device!r} is not connected: {exc.message}", device=device
            ) from None
        except KeyError as exc:  # a UID of no type of the catalog
            raise DeviceBufferError(f"device {device!r}: {exc.args[0]}", device=device) from None
        self._buffers[device] = buffer
        return buffer

    def get_value(self, device: object, param: str) -> Any:
        """The newest value of one of the device's parameters (its sensor reading)."""
        return self._buffer(device).get(param)

    def set_value(self, device: object, param: str, value: Any) -> None:
        """Command the device: ``value`` goes to it (clamped to the parameter's bounds, with a warning)."""
        self._buffer(device).write(param, value)

    def run(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """Run ``function(*args)`` beside the main loop, in a thread; an error in it stops the mode.

        While that function still runs, another call for it does nothing (it
        says so once), so ``if pressed: Robot.run(arm)`` in a main loop is safe.
        """
        if not callable(function):
            raise StudentCodeError(f"Robot.run takes a function, not {function!r}")
        if self.is_running(function):  # as in PiE: said once per run, nothing done
            if function not in self._told:
                self._told.add(function)
                print(
                    f"Robot.run({_name(function)}): it is still running, so nothing was done"
                    " (Robot.is_running tells when it is over)",
                    file=sys.stderr,
                    flush=True,
                )
            return
        if sum(thread.is_alive() for thread in self._running.values()) >= MAX_RUNNING:
            raise StudentCodeError(
                f"Robot.run({_name(function)}): {MAX_RUNNING} functions run already; let some return first",
                function=_name(function),
            )
        self._told.discard(function)

        def call() -> None:
            try:
                function(*args, **kwargs)
            except BaseException as exc:  # the student's error: the mode stops
                if self._on_error is None:
                    raise
                self._on_error(exc)

        thread = threading.Thread(target=call, name=_name(function), daemon=True)
        self._running[function] = thread
        thread.start()

    def is_running(self, function: Callable[..., Any]) -> bool:
        """Whether a function started by :meth:`run` still runs."""
        thread = self._running.get(function)
        return thread is not None and thread.is_alive()

    @staticmethod
    def sleep(seconds: float) -> None:
        """Pause the calling function only (the main loop and other functions go on)."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not math.isfinite(seconds):
            raise TypeError(f"Robot.sleep takes a number of seconds, not {seconds!r}")
        if seconds > 0:
            time.sleep(seconds)

    def __repr__(self) -> str:
        return f"<Robot namespace={self._store.namespace()!r}>"


def _name(function: object) -> str:
    return str(getattr(function, "__name__", function))


class _Input:
    """One driver-station input buffer, read as neutral (released, centred) while nobody feeds it."""

    kind = "input"
    key: tuple[str, int] = GAMEPAD_KEY

    def __init__(self, store: BufferStore, mode: Callable[[], str] | None = None) -> None:
        self._store = store
        self._mode = mode
        self._buffer: Buffer | None = None
        self._next_look = 0.0
        self._type = store.catalog[self.key[0]]
        self._params = self._type.params

    def _param(self, name: object) -> str:
        if not isinstance(name, str) or name not in self._params:
            raise DeviceBufferError(
                f"{self.kind} has no input {name!r}{did_you_mean(name, self._params)}", param=name
            )
        return name

    def _read(self, param: str) -> Any:
        if self._mode is not None and self._mode() == "auto":
            raise StudentCodeError(
                f"{type(self).__name__}.get_value is not allowed in autonomous mode: no driver inputs then",
                param=param,
            )
        buffer = self._buffer
        if buffer is None and time.monotonic() >= self._next_look:
            try:
                buffer = self._buffer = self._store.get_or_open(self.key, create=False)
            except DeviceBufferError:
                self._next_look = time.monotonic() + 0.5  # no driver station yet
        if buffer is not None:
            try:
                return buffer.get(param)
            except DeviceBufferError:
                pass  # its producer (the driver station's link) is gone: neutral
        return self._params[param].ctype().value  # released, centred: a scalar's zero

    def get_value(self, name: str) -> Any:
        """The input's current value (a button: True while pressed; a joystick: -1.0 to 1.0)."""
        return self._read(self._param(name))


class Gamepad(_Input):
    """The student's ``Gamepad``: ``button_a``…, ``joystick_left_x``… of the driver station."""

    kind = "the gamepad"
    key = GAMEPAD_KEY


class Keyboard(_Input):
    """The student's ``Keyboard``: ``"a"``…``"z"``, ``"0"``…``"9"``, ``","``…, the arrows."""

    kind = "the keyboard"
    key = KEYBOARD_KEY

    def get_value(self, name: str) -> bool:
        """True while the key is pressed."""
        param = key_param(name) if isinstance(name, str) else name
        if not isinstance(param, str) or param not in self._params:
            keys = [key for key in [*self._params, *KEY_NAMES] if key not in KEY_NAMES.values()]
            raise DeviceBufferError(f"the keyboard has no key {name!r}{did_you_mean(name, keys)}", param=name)
        return bool(self._read(param))
