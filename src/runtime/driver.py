"""The driver station's engine: keys, a gamepad and line commands to a robot, over Zenoh.

What ``runtime drive`` runs (see :mod:`runtime.tools.drive` for the command):
it drives a :class:`runtime.remote.Robot`, switching its mode
(:meth:`~runtime.remote.Robot.set_mode`), sending keys as the ``keyboard``
input and a real gamepad's state as the ``gamepad`` input
(:meth:`~runtime.remote.Robot.send_input`), and showing the mode and the lines
the student code prints (:meth:`~runtime.remote.Robot.log_lines`).

* :func:`interactive`, on a terminal in raw mode: the mode keys are control
  keys, which the student API's ``Keyboard`` does not have, so that every key
  it has reaches the robot: :data:`MODE_KEYS` (space is idle), :data:`QUIT_KEYS`
  (quit, idle first). A terminal sees key presses (and the auto-repeat of a
  key held down), never releases: a key counts as held (:class:`HeldKeys`)
  from its press until :data:`HOLD_REPEAT` seconds after its last repeat, or
  :data:`HOLD_FIRST` seconds after a single press (a terminal's auto-repeat
  starts about half a second after the press). Upper case is the same key.
* :func:`run_script`: line commands (:data:`SCRIPT_HELP`), for scripts and tests.

A real gamepad is read with pygame's SDL2 game-controller module
(``pygame._sdl2.controller``, the optional ``runtime[gamepad]`` extra): SDL2
knows the layout of most gamepads on Linux, macOS and Windows and names their
buttons the Xbox way, as the ``gamepad`` buffer does. Without pygame it is said
once and the keyboard works alone. :func:`go_idle` is how a driver station ends.
"""

from __future__ import annotations

import importlib
import math
import os
import queue
import select
import sys
import threading
import time
from collections.abc import Iterable
from typing import IO, TYPE_CHECKING, Any

from .buffer import DeviceBufferError
from .exception import did_you_mean
from .student import key_param

if TYPE_CHECKING:
    from .remote import Robot

__all__ = [
    "HOLD_FIRST",
    "HOLD_REPEAT",
    "KEY_TAP",
    "MODE_KEYS",
    "QUIT_KEYS",
    "SCRIPT_HELP",
    "Display",
    "HeldKeys",
    "go_idle",
    "interactive",
    "parse_keys",
    "run_script",
]

HOLD_FIRST = 0.6
"""Seconds a key counts as held after a single press (a terminal's auto-repeat starts later)."""
HOLD_REPEAT = 0.3
"""Seconds a key counts as held after each of its auto-repeats."""
KEY_TAP = 0.1
"""Seconds a scripted ``key K`` holds the key down before it releases it."""
POLL = 0.02
"""Seconds between two looks at the keys, the gamepad and what the robot said."""
IDLE_TIMEOUT = 1.0
"""Seconds ``runtime drive`` waits on its way out for the robot to say it is idle."""
GAMEPAD_LOOK = 2.0
"""Seconds between two looks for a gamepad while none is plugged in."""
MODE_KEYS = {b" ": "idle", b"\x01": "auto", b"\x14": "teleop"}
"""Space: idle; Ctrl-A: auto; Ctrl-T: teleop."""
QUIT_KEYS = frozenset({b"\x03", b"\x11", b"\x04"})
"""Ctrl-C, Ctrl-Q, Ctrl-D: quit (the robot goes idle first)."""
_ARROWS = {"A": "up_arrow", "B": "down_arrow", "C": "right_arrow", "D": "left_arrow"}
_KEYS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789,./;'[]")
_TRUE = frozenset({"true", "on", "down", "pressed"})
_FALSE = frozenset({"false", "off", "up", "released"})

SCRIPT_HELP = """\
  mode idle|auto|teleop     switch the robot's mode
  key K                     press key K and release it (K: a, 0, ',', left_arrow...)
  key K down | key K up     press or release it
  gamepad NAME VALUE        button_a true, joystick_left_x -0.5...
  wait SECONDS              let the robot run (what it prints is shown meanwhile)
  quit                      the robot goes idle, and runtime drive ends
  (blank lines and lines starting with # are skipped; the end of the input quits)"""
"""The line commands of ``runtime drive`` when stdin is not a terminal."""


# ---- the keys of a terminal ------------------------------------------------------------------------


def parse_keys(data: bytes) -> list[str]:
    """What a terminal's bytes say: ``"quit"``, ``"mode:<name>"`` or a ``keyboard`` parameter, in order.

    >>> parse_keys(b"aW,\\x1b[D \\x14\\x03")
    ['a', 'w', 'comma', 'left_arrow', 'mode:idle', 'mode:teleop', 'quit']
    >>> parse_keys(b"\\x1b[1;5A!\\x1bOB")  # Ctrl-up is up; '!' is not a key of the keyboard
    ['up_arrow', 'down_arrow']
    """
    tokens: list[str] = []
    index = 0
    while index < len(data):
        byte = data[index : index + 1]
        index += 1
        if byte in QUIT_KEYS:
            tokens.append("quit")
        elif byte in MODE_KEYS:
            tokens.append(f"mode:{MODE_KEYS[byte]}")
        elif byte == b"\x1b":  # an escape sequence: ESC [ params final, or ESC O final
            if data[index : index + 1] in (b"[", b"O"):
                end = index + 1
                while end < len(data) and not 0x40 <= data[end] <= 0x7E:
                    end += 1
                final = data[end : end + 1].decode("latin-1")
                index = end + 1
                if final in _ARROWS:
                    tokens.append(_ARROWS[final])
        else:
            char = byte.decode("latin-1").lower()
            if char in _KEYS:
                tokens.append(key_param(char))
    return tokens


class HeldKeys:
    """Which keys count as held, from presses alone (see the module's docstring)."""

    def __init__(self) -> None:
        self.until: dict[str, float] = {}
        """By parameter, when the key counts as released unless it repeats."""

    def press(self, param: str, now: float) -> bool:
        """A press (or an auto-repeat) of a key; True when it was not held."""
        held = param in self.until
        self.until[param] = now + (HOLD_REPEAT if held else HOLD_FIRST)
        return not held

    def expired(self, now: float) -> list[str]:
        """The keys released by now (forgotten here)."""
        gone = [param for param, until in self.until.items() if until <= now]
        for param in gone:
            del self.until[param]
        return gone

    def release_all(self) -> list[str]:
        """Every held key, released."""
        gone = list(self.until)
        self.until.clear()
        return gone


# ---- what the robot says ---------------------------------------------------------------------------


class Display:
    """Prints the robot's news, one line each: ``mode: ...``, ``log: ...``, ``error: ...``, ``robot ...``."""

    def __init__(self, robot: Robot, out: IO[str]) -> None:
        self.robot = robot
        self.out = out
        self.shown: tuple[Any, ...] | None = None
        self.lost = 0
        self.online: bool | None = None
        self.enabled: bool | None = None

    def say(self, line: str) -> None:
        """Print one line now."""
        self.out.write(line + "\n")
        self.out.flush()

    def update(self) -> None:
        """Print what changed since the last call."""
        robot = self.robot
        online, enabled = robot.online, robot.enabled
        if online != self.online:
            self.online = online
            if online or self.shown is not None:
                self.say("robot: online" if online else "robot: offline (waiting for it to come back)")
        if online and enabled is not None and enabled != self.enabled:
            self.enabled = enabled
            self.say("robot: enabled" if enabled else "robot: disabled ('runtime enable' on the robot)")
        state = (robot.mode, robot.running)
        if state != self.shown and state[0] is not None:
            self.shown = state
            running = (
                f"student code runs {state[1]}" if state[1] is not None else "no runtime run on the robot"
            )
            self.say(f"mode: {state[0]} ({running})")
        for line in robot.log_lines():
            self.say(f"log: {line}")
        if robot.log_lines_lost != self.lost:
            self.say(f"log: ... {robot.log_lines_lost - self.lost} lines lost (printed too fast)")
            self.lost = robot.log_lines_lost
        for refusal in robot.refusals():
            self.say(f"error: the robot refused it: {refusal.get('error', refusal)}")

    def wait(self, seconds: float, stop: threading.Event) -> None:
        """Let ``seconds`` pass, printing the news meanwhile (returns early when ``stop`` is set)."""
        deadline = time.monotonic() + seconds
        while not stop.is_set():
            self.update()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            stop.wait(min(POLL, remaining))


# ---- a real gamepad --------------------------------------------------------------------------------


class _Gamepad:
    """A gamepad seen through pygame's SDL2 game-controller module; ``poll()`` gives what changed."""

    BUTTONS = {
        "button_a": "CONTROLLER_BUTTON_A",
        "button_b": "CONTROLLER_BUTTON_B",
        "button_x": "CONTROLLER_BUTTON_X",
        "button_y": "CONTROLLER_BUTTON_Y",
        "l_bumper": "CONTROLLER_BUTTON_LEFTSHOULDER",
        "r_bumper": "CONTROLLER_BUTTON_RIGHTSHOULDER",
        "button_back": "CONTROLLER_BUTTON_BACK",
        "button_start": "CONTROLLER_BUTTON_START",
        "l_stick": "CONTROLLER_BUTTON_LEFTSTICK",
        "r_stick": "CONTROLLER_BUTTON_RIGHTSTICK",
        "dpad_up": "CONTROLLER_BUTTON_DPAD_UP",
        "dpad_down": "CONTROLLER_BUTTON_DPAD_DOWN",
        "dpad_left": "CONTROLLER_BUTTON_DPAD_LEFT",
        "dpad_right": "CONTROLLER_BUTTON_DPAD_RIGHT",
        "button_xbox": "CONTROLLER_BUTTON_GUIDE",
    }
    AXES = {
        "joystick_left_x": "CONTROLLER_AXIS_LEFTX",
        "joystick_left_y": "CONTROLLER_AXIS_LEFTY",
        "joystick_right_x": "CONTROLLER_AXIS_RIGHTX",
        "joystick_right_y": "CONTROLLER_AXIS_RIGHTY",
    }
    TRIGGERS = {"l_trigger": "CONTROLLER_AXIS_TRIGGERLEFT", "r_trigger": "CONTROLLER_AXIS_TRIGGERRIGHT"}

    def __init__(self, pygame: Any, module: Any, display: Display) -> None:
        self.pygame = pygame
        self.module = module
        self.display = display
        self.controller: Any = None
        self.state: dict[str, Any] = {}
        self.next_look = 0.0

    @classmethod
    def open(cls, display: Display) -> _Gamepad | None:
        """The gamepad reader, or None (said once) when pygame is not installed or cannot start."""
        os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
        try:
            pygame = importlib.import_module("pygame")  # optional: not a dependency of runtime
            module = importlib.import_module("pygame._sdl2.controller")
            module.init()
        except ImportError:
            display.say(
                "gamepad: none (pygame is not installed: pip install 'runtime[gamepad]'); keyboard only"
            )
            return None
        except Exception as exc:  # noqa: BLE001 - SDL cannot start here: the keyboard still works
            display.say(f"gamepad: none (SDL cannot read gamepads here: {exc}); keyboard only")
            return None
        return cls(pygame, module, display)

    def poll(self, now: float) -> dict[str, Any]:
        """The inputs that changed since the last poll (all of them when a gamepad was just found)."""
        try:
            if self.controller is None:
                if now < self.next_look:
                    return {}
                self.next_look = now + GAMEPAD_LOOK
                self._update()
                found = [i for i in range(self.module.get_count()) if self.module.is_controller(i)]
                if not found:
                    return {}
                self.controller = self.module.Controller(found[0])
                self.state = {}
                self.display.say(f"gamepad: {getattr(self.controller, 'name', None) or 'found'}")
            self._update()
            if not self.controller.attached():
                raise RuntimeError("unplugged")
            return self._changes()
        except Exception as exc:  # noqa: BLE001 - unplugged, or SDL failed: neutral, and look again
            if self.controller is not None:
                self.display.say(f"gamepad: lost ({exc}); the robot sees it released")
            self.controller = None
            neutral: dict[str, Any] = {name: (0.0 if name in self.AXES else False) for name in self.state}
            self.state = {}
            return neutral

    def _update(self) -> None:
        """Have SDL read the gamepads now (no window, no event loop here to do it)."""
        update = getattr(self.module, "update", None)
        if update is not None:
            update()

    def _changes(self) -> dict[str, Any]:
        get = self.pygame
        now: dict[str, Any] = {}
        for name, constant in self.BUTTONS.items():
            now[name] = bool(self.controller.get_button(getattr(get, constant)))
        for name, constant in self.TRIGGERS.items():
            now[name] = self.controller.get_axis(getattr(get, constant)) > 16384  # half way down
        for name, constant in self.AXES.items():  # SDL's signs: y is positive downwards, as in a browser
            value = max(-1.0, min(1.0, self.controller.get_axis(getattr(get, constant)) / 32767))
            now[name] = round(value, 2)  # no flood of noise from a stick at rest
        changes = {name: value for name, value in now.items() if self.state.get(name) != value}
        self.state = now
        return changes


# ---- the two ways to run ---------------------------------------------------------------------------


def interactive(robot: Robot, display: Display, stop: threading.Event, gamepad: bool) -> None:
    """The terminal in raw mode: keys to the robot until a quit key or ``stop``."""
    import termios

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        raw = termios.tcgetattr(fd)
        raw[0] &= ~(termios.IXON | termios.ICRNL)  # Ctrl-Q, Ctrl-S and Return reach us as they are
        raw[3] &= ~(termios.ECHO | termios.ICANON | termios.ISIG | termios.IEXTEN)  # Ctrl-C too
        raw[6][termios.VMIN], raw[6][termios.VTIME] = 1, 0
        termios.tcsetattr(fd, termios.TCSADRAIN, raw)  # output untouched: a newline is still one
        display.say(
            "keys: space idle, Ctrl-A auto, Ctrl-T teleop, Ctrl-C or Ctrl-Q quit; "
            "every other key (a-z 0-9 , . / ; ' [ ] arrows) goes to the robot's Keyboard"
        )
        pad = _Gamepad.open(display) if gamepad else None
        held = HeldKeys()
        while not stop.is_set():
            ready, _, _ = select.select([fd], [], [], POLL)
            now = time.monotonic()
            keys: dict[str, bool] = {}
            if ready:
                data = os.read(fd, 1024)
                if not data:
                    break
                for token in parse_keys(data):
                    if token == "quit":
                        stop.set()
                    elif token.startswith("mode:"):
                        robot.set_mode(token.removeprefix("mode:"))
                    elif held.press(token, now):
                        keys[token] = True
            for param in held.expired(now):
                keys[param] = False
            if keys:
                robot.send_keyboard(keys)
            if pad is not None:
                changes = pad.poll(now)
                if changes:
                    robot.send_gamepad(changes)
            display.update()
        released = held.release_all()
        if released and not robot.closed:
            robot.send_keyboard(dict.fromkeys(released, False))
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _lines(stream: IO[str], into: queue.Queue[str | None]) -> None:
    """A reader thread: the lines of ``stream``, then None at its end."""
    try:
        for line in stream:
            into.put(line)
    finally:
        into.put(None)


def _switch(word: str) -> bool | float:
    """A scripted gamepad value: a button's state (true, down, on...) or a number."""
    if word.lower() in _TRUE:
        return True
    if word.lower() in _FALSE:
        return False
    try:
        return float(word)
    except ValueError:
        raise ValueError(f"{word!r} is neither true/false nor a number") from None


def run_script(robot: Robot, commands: Iterable[str], display: Display, stop: threading.Event) -> int:
    """Run line commands (:data:`SCRIPT_HELP`) until their end, ``quit`` or ``stop``; the number of bad lines.

    ``commands`` may be slow to come (a pipe): the robot's news is printed while waiting.
    """
    lines: queue.Queue[str | None] = queue.Queue()
    if isinstance(commands, list):
        for line in commands:
            lines.put(line)
        lines.put(None)
    else:
        reader = threading.Thread(target=_lines, args=(commands, lines), name="drive-stdin", daemon=True)
        reader.start()
    bad = 0
    number = 0
    while not stop.is_set():
        display.update()
        try:
            line = lines.get(timeout=POLL)
        except queue.Empty:
            continue
        if line is None:
            break
        number += 1
        words = line.split("#", 1)[0].split() if not line.lstrip().startswith("#") else []
        if not words:
            continue
        command, rest = words[0].lower(), words[1:]
        try:
            if command == "quit" and not rest:
                break
            if command == "mode" and len(rest) == 1:
                robot.set_mode(rest[0].lower())
            elif command == "key" and len(rest) in (1, 2):
                key = rest[0]
                if len(rest) == 1:
                    robot.send_keyboard({key: True})
                    display.wait(KEY_TAP, stop)
                    robot.send_keyboard({key: False})
                elif rest[1].lower() in ("down", "up"):
                    robot.send_keyboard({key: rest[1].lower() == "down"})
                else:
                    raise ValueError(f"key {key} takes down or up, not {rest[1]!r}")
            elif command == "gamepad" and len(rest) == 2:
                value = _switch(rest[1])
                robot.send_gamepad({rest[0]: value})
            elif command == "wait" and len(rest) == 1:
                seconds = float(rest[0])
                if not math.isfinite(seconds) or seconds < 0:
                    raise ValueError(f"wait takes a number of seconds, not {rest[0]!r}")
                display.wait(seconds, stop)
            else:
                known = ("mode", "key", "gamepad", "wait", "quit")
                hint = did_you_mean(command, known)
                raise ValueError(f"not a command: {line.strip()!r}{hint}; the commands:\n{SCRIPT_HELP}")
        except (ValueError, TypeError, DeviceBufferError) as exc:
            bad += 1
            message = exc.message if isinstance(exc, DeviceBufferError) else str(exc)
            display.say(f"error: line {number}: {message}")
    display.update()
    return bad


# ---- command line ------------------------------------------------------------------------------------


def go_idle(robot: Robot, timeout: float = IDLE_TIMEOUT) -> bool:
    """Send idle; True once the robot says it is idle (within ``timeout`` seconds)."""
    try:
        robot.set_mode("idle")
        deadline = time.monotonic() + timeout
        while robot.mode != "idle":
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL)
    except Exception:  # noqa: BLE001 - the connection is gone: the robot's runtime zenoh sets idle itself
        return False
    return True
