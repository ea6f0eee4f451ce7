"""Run student code the way robot teams do: one mode at a time, in a process the runner supervises.

:class:`Runner` is the engine of ``runtime run``. It watches the field
buffer's ``mode`` (``runtime mode``, the driver station, a field controller
set it) and, for each mode:

* **idle**: no student code runs and the robot is disabled
  (:meth:`~runtime.store.BufferStore.disable`): every actuator holds its safe
  value and nobody's command is taken.
* **auto** and **teleop**: the robot is enabled and a fresh child process
  (forked, so it starts in about a millisecond) runs the student file's top
  level, then ``<mode>_setup()`` once, then ``<mode>_main()`` every
  ``period`` seconds on a steady clock (each call is due at ``start + k *
  period``, so nothing drifts; a late call is an *overrun*: counted, warned
  about at most every :data:`OVERRUN_WARNING_INTERVAL` seconds, and the
  missed periods are skipped, never run in a burst).

Leaving a mode (another mode, idle, the field ending the period) kills that
child with SIGKILL, whatever it does (``while True: pass`` included), which
stops every ``Robot.run`` function and ends all its commands: the bridge puts
every actuator back to its safe value (:mod:`runtime.commands`); going idle
also disables the robot. A call of a setup or main function that has not
returned after ``call_limit`` seconds (:data:`DEFAULT_CALL_LIMIT`) is taken
for a hung program: the mode stops, with a message naming the function. An
exception in student code prints its traceback with the student file's
frames only, and stops the mode too. Either way the runner sets the field's
mode to idle and waits for the next mode; it never dies of student code.

Everything the student code prints (``print``, tracebacks, anything written
to its stdout or stderr) reaches the runner's output as lines stamped with
the time and the mode, and the newest lines are kept in the runner's own
buffer (``runner``, served while the runner runs) for ``runtime foxglove``,
``runtime record`` and the driver station (:func:`runtime.student.log_lines_since`).
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import math
import mmap
import os
import signal
import struct
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from types import CodeType
from typing import Any, NoReturn, TextIO

from ._core import WakeWord
from .buffer import Buffer, DeviceBufferError
from .commands import die_with_parent
from .exception import RuntimeBaseException
from .notify import wait_any
from .store import BufferStore
from .student import (
    FIELD_KEY,
    MODE_FUNCTIONS,
    MODES,
    RUNNER_KEY,
    Gamepad,
    Keyboard,
    Robot,
    mode_name,
)

__all__ = [
    "DEFAULT_CALL_LIMIT",
    "DEFAULT_PERIOD",
    "OVERRUN_WARNING_INTERVAL",
    "Runner",
    "RunnerError",
    "filtered_traceback",
    "load_devices",
    "load_student_code",
]

DEFAULT_PERIOD = 0.02
"""Seconds between two calls of a mode's main function (50 Hz)."""
DEFAULT_CALL_LIMIT = 1.0
"""Seconds one call of a setup or main function (or the file's top level) may take before the mode stops."""
OVERRUN_WARNING_INTERVAL = 5.0
"""Seconds between two warnings about main functions that overran their period."""
IDLE_LOOK_INTERVAL = 0.5
"""Seconds between two looks at a changed student file (``reload``) while idle."""
RUNNING_LOOK_INTERVAL = 0.5
"""The longest time between two looks at the child (its counters, a new overrun) while a mode runs. A
mode change or a disabled robot wakes the runner at once, and so does the end of the child's output
(it exited); a call in progress is looked at again when it reaches the call limit, not later."""
COUNTERS_INTERVAL = 1.0
"""Seconds between two writes of the student code's counters (``cycles``, ``overruns``) into the
runner's buffer while they only count up: each write is a change every watcher of the buffer (Zenoh,
Foxglove, a recording) publishes. A new overrun is written at the next look."""
STUDENT_ERROR_EXIT = 3
"""The child's exit status when student code raised (its traceback is printed)."""
_STATUS = struct.Struct("=dQQ")  # call started (monotonic, 0: not in a call), main calls, overruns
_PR_SET_TIMERSLACK = 29


class RunnerError(RuntimeBaseException):
    """The runner cannot start: a student or robot file it cannot use, another runner in the namespace."""


def load_student_code(path: str) -> CodeType:
    """The student file, compiled (checked for syntax, not run).

    Raises:
        RunnerError: The file cannot be read, or is not valid Python (with the line).
    """
    try:
        with open(path, "rb") as file:
            source = file.read()
    except OSError as exc:
        raise RunnerError(f"cannot read the student file: {exc.strerror or exc}", path=path) from None
    try:
        return compile(source, os.path.abspath(path), "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as exc:
        where = f"line {exc.lineno}: " if isinstance(exc, SyntaxError) and exc.lineno else ""
        message = exc.msg if isinstance(exc, SyntaxError) else str(exc)
        raise RunnerError(f"the student file is not valid Python: {where}{message}", path=path) from None


def load_devices(path: str) -> dict[str, int | str]:
    """The robot file: a YAML (or JSON) mapping of device names to UIDs.

    A UID is an integer, a hex string (``0x…``) or PiE's ``"<device_id>_<random>"``.

    Raises:
        RunnerError: The file cannot be read, or is not such a mapping.
    """
    import yaml

    try:
        with open(path, encoding="utf-8") as file:
            data = yaml.safe_load(file)
    except OSError as exc:
        raise RunnerError(f"cannot read the robot file: {exc.strerror or exc}", path=path) from None
    except yaml.YAMLError as exc:
        raise RunnerError(f"the robot file is not YAML: {exc}", path=path) from None
    if not isinstance(data, dict):
        raise RunnerError("the robot file maps device names to UIDs (name: 0x…)", path=path)
    devices: dict[str, int | str] = {}
    for name, uid in data.items():
        if not isinstance(name, str) or isinstance(uid, bool) or not isinstance(uid, (int, str)):
            raise RunnerError(
                f"in the robot file, {name!r}: {uid!r} is not a device name and a UID", path=path
            )
        devices[name] = uid
    return devices


def filtered_traceback(exc: BaseException, filename: str) -> str:
    """The traceback of ``exc`` with only the frames of ``filename`` (the student's), chained ones too."""
    summary = traceback.TracebackException.from_exception(exc)
    for part in _chain(summary):
        part.stack = traceback.StackSummary.from_list([f for f in part.stack if f.filename == filename])
    return "".join(summary.format())


def _chain(summary: traceback.TracebackException) -> list[traceback.TracebackException]:
    seen: list[traceback.TracebackException] = []
    pending: list[traceback.TracebackException | None] = [summary]
    while pending:
        part = pending.pop()
        if part is None or any(part is other for other in seen):
            continue
        seen.append(part)
        pending += [part.__cause__, part.__context__]
    return seen


class _Status:
    """What the child tells the runner without a word: an anonymous shared page both map."""

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, mmap.PAGESIZE)

    def enter(self) -> None:
        _STATUS.pack_into(self._map, 0, time.monotonic(), *self.counters())

    def leave(self, calls: int, overruns: int) -> None:
        _STATUS.pack_into(self._map, 0, 0.0, calls, overruns)

    def call_started(self) -> float:
        return float(_STATUS.unpack_from(self._map, 0)[0])

    def counters(self) -> tuple[int, int]:
        _, calls, overruns = _STATUS.unpack_from(self._map, 0)
        return calls, overruns

    def close(self) -> None:
        self._map.close()


class _Child:
    """One mode's student process, as the runner sees it."""

    def __init__(self, mode: str, pid: int, status: _Status, output: threading.Thread) -> None:
        self.mode = mode
        self.pid = pid
        self.status = status
        self.output = output
        self.exit_status: int | None = None
        self.warned_overruns = 0
        self.next_warning = 0.0
        self.counters_written = (0, 0)
        """The (calls, overruns) last written into the runner's buffer."""
        self.counters_due = 0.0
        """When the counters may be written again (:data:`COUNTERS_INTERVAL`)."""

    def poll(self) -> int | None:
        """The exit status once the process ended (reaped), else None."""
        if self.exit_status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.exit_status = os.waitstatus_to_exitcode(status)
        return self.exit_status

    def kill(self) -> None:
        if self.exit_status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            _, status = os.waitpid(self.pid, 0)
            self.exit_status = os.waitstatus_to_exitcode(status)
        self.output.join(timeout=1.0)  # the pipe's last lines
        self.status.close()


class Runner:
    """Run one student file in the field's modes, in supervised child processes (see the module)."""

    counts: dict[str, int]
    """Modes entered, main calls, errors, hung calls, overruns, lines printed: since the start."""

    def __init__(
        self,
        path: str,
        store: BufferStore,
        *,
        devices: Mapping[str, int | str] | None = None,
        period: float = DEFAULT_PERIOD,
        call_limit: float = DEFAULT_CALL_LIMIT,
        reload: bool = False,
        out: TextIO | None = None,
    ) -> None:
        if not (math.isfinite(period) and period > 0):
            raise ValueError(f"the period is a positive number of seconds, not {period!r}")
        if not (math.isfinite(call_limit) and call_limit > 0):
            raise ValueError(f"the call limit is a positive number of seconds, not {call_limit!r}")
        self.path = os.path.abspath(path)
        self.code = load_student_code(path)
        self.store = store
        self.devices = dict(devices or {})
        self.period = period
        self.call_limit = call_limit
        self.reload = reload
        self.out = out or sys.stdout
        self.mode = "idle"
        self.child: _Child | None = None
        self.counts = {"modes": 0, "cycles": 0, "errors": 0, "hung": 0, "overruns": 0, "lines": 0}
        self._loaded = _mtime(self.path)
        self._log: deque[str] = deque()
        self._lock = threading.Lock()
        self._disabled_here = False
        self._field_trouble = False
        self._field: Buffer | None = None
        self._runner: Buffer | None = None
        self._wake = WakeWord()
        """Woken when the child's output ends (it exited): the runner looks at once."""
        self._log_capacity = ctypes.sizeof(store.catalog[RUNNER_KEY[0]].params["log"].ctype)

    # -- the loop --

    def run(self, stop: threading.Event, *, mode: str | None = None) -> None:
        """Run until ``stop`` is set; ``mode`` (a name) is set in the field buffer first.

        Raises:
            RunnerError: Another runner serves this namespace.
        """
        field = self._field = self.store.get_or_open(FIELD_KEY)
        runner = self._runner = self.store.get_or_open(RUNNER_KEY)
        try:
            runner.serve()
        except DeviceBufferError:
            pid = runner.producer_pid or runner.get("pid")
            raise RunnerError(
                f"another runner (pid {pid}) runs in namespace {self.store.namespace()}: stop it first"
            ) from None
        try:
            with runner.transaction():
                runner.set("pid", os.getpid())
                runner.set("mode", MODES["idle"])
            state = self.store._state()
            if mode is not None:
                field.set("mode", MODES[mode])
            self._go_idle(announce=False)
            while not stop.is_set():
                woken = self._wake.value  # before the look at the child: a wake-up after it counts
                wait_any([field, state], self._until_next_look(), control=self._wake, control_value=woken)
                self._look()
        finally:
            self._stop_child()
            if self._disabled_here and not self.store.enabled:
                self.store.enable()  # as the runner found it
            self.say("stopped")
            self._runner = None
            runner.stop_serving()
            with contextlib.suppress(DeviceBufferError):  # nothing runs here now (the field keeps its mode)
                Buffer.unlink(runner.name)

    def _until_next_look(self) -> float:
        """Seconds to sleep before the next look unless woken: idle, :data:`IDLE_LOOK_INTERVAL`; while a
        mode runs, :data:`RUNNING_LOOK_INTERVAL`, or less: until a call in progress reaches the limit, or
        the counters are due (a call that starts after this look is looked at before it can reach it)."""
        child = self.child
        if child is None:
            return IDLE_LOOK_INTERVAL
        now = time.monotonic()
        due = now + min(RUNNING_LOOK_INTERVAL, self.call_limit)
        if child.counters_due > now:  # (one past is written at this look, or has nothing new)
            due = min(due, child.counters_due)
        started = child.status.call_started()
        if started:
            due = min(due, started + self.call_limit)
        return max(0.0, due - now)

    def _look(self) -> None:
        """One pass: the field's mode, the robot's state, the child's health, a changed file."""
        assert self._field is not None
        try:
            wanted = mode_name(int(self._field.get("mode")))
        except DeviceBufferError as exc:  # a field producer that died: no mode to trust, idle
            if not self._field_trouble:
                self.say(f"cannot read the field's mode ({exc.message}): idle until it can be read")
            self._field_trouble = True
            wanted = "idle"
        else:
            self._field_trouble = False
        if wanted != self.mode:
            self._switch(wanted)
        elif self.mode != "idle" and not self.store.enabled:
            self.say(f"the robot was disabled: {self.mode} stopped, idle")
            self._to_idle()
        child = self.child
        if child is None:
            if self.reload:
                self._reload()
            return
        status = child.poll()
        if status is not None:
            if status == STUDENT_ERROR_EXIT:
                self.counts["errors"] += 1
                self.say(f"{child.mode} stopped by the error above (motors safe); idle until the next mode")
            else:
                self.say(f"{child.mode}: the student code exited (status {status}); idle until the next mode")
            self._to_idle()
            return
        started = child.status.call_started()
        if started and time.monotonic() - started > self.call_limit:
            self.counts["hung"] += 1
            function = f"{MODE_FUNCTIONS[child.mode]}_main or _setup"
            self.say(
                f"{child.mode} stopped: a call ({function}, or the file's top level) did not return"
                f" within {self.call_limit:g} s (motors safe); idle until the next mode"
            )
            self._to_idle()
            return
        self._report_counters(child)

    def _report_counters(self, child: _Child) -> None:
        calls, overruns = child.status.counters()
        now = time.monotonic()
        if overruns > child.warned_overruns and now >= child.next_warning:
            self.say(
                f"{MODE_FUNCTIONS[child.mode]}_main overran its period of {self.period:g} s"
                f" ({overruns} times in this mode)"
            )
            self.counts["overruns"] += overruns - child.warned_overruns
            child.warned_overruns = overruns
            child.next_warning = now + OVERRUN_WARNING_INTERVAL
        if (calls, overruns) != child.counters_written and (
            now >= child.counters_due or overruns != child.counters_written[1]
        ):
            self._write_counters(calls, overruns)
            child.counters_written, child.counters_due = (calls, overruns), now + COUNTERS_INTERVAL

    def _write_counters(self, calls: int, overruns: int) -> None:
        assert self._runner is not None
        with self._lock, self._runner.transaction():
            self._runner.set("cycles", calls & 0xFFFF_FFFF)
            self._runner.set("overruns", overruns & 0xFFFF_FFFF)

    def _to_idle(self) -> None:
        assert self._field is not None
        self._field.set("mode", MODES["idle"])
        self._switch("idle")

    def _switch(self, mode: str) -> None:
        self._stop_child()
        if mode == "idle":
            self._go_idle()
            return
        if not self.store.enabled:
            self.store.enable()
        self._disabled_here = False
        self.mode = mode
        self.counts["modes"] += 1
        self.child = self._start_child(mode)
        self._set_mode(mode)
        self.say(f"{mode} started (student code pid {self.child.pid})")

    def _go_idle(self, announce: bool = True) -> None:
        if self.store.enabled:
            self.store.disable()
            self._disabled_here = True
        was, self.mode = self.mode, "idle"
        self._set_mode("idle")
        if announce and was != "idle":
            self.say("idle: the robot is disabled")

    def _set_mode(self, mode: str) -> None:
        assert self._runner is not None
        with self._lock:
            self._runner.set("mode", MODES[mode])

    def _stop_child(self) -> None:
        child, self.child = self.child, None
        if child is not None:
            calls, overruns = child.status.counters()
            self.counts["cycles"] += calls
            if self._runner is not None and (calls, overruns) != child.counters_written:  # its last counts
                with contextlib.suppress(DeviceBufferError):
                    self._write_counters(calls, overruns)
            child.kill()

    def _reload(self) -> None:
        changed = _mtime(self.path)
        if changed == self._loaded:
            return
        self._loaded = changed
        try:
            self.code = load_student_code(self.path)
        except RunnerError as exc:
            self.say(f"not reloaded: {exc.message} (the previous code stays)")
            return
        self.say(f"reloaded {os.path.basename(self.path)}")

    # -- the student's process --

    def _start_child(self, mode: str) -> _Child:
        status = _Status()
        read_end, write_end = os.pipe()
        self.out.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:  # the child: never returns
            os.close(read_end)
            _run_mode(self, mode, status, write_end, parent)
        os.close(write_end)
        output = threading.Thread(target=self._pump_output, args=(read_end, mode), daemon=True)
        output.start()
        return _Child(mode, pid, status, output)

    def _pump_output(self, fd: int, mode: str) -> None:
        """A thread: the child's output, line by line, to the runner's output and log, until its end."""
        pending = b""
        with open(fd, "rb", buffering=0) as pipe:
            while True:
                chunk = pipe.read(65536)
                if not chunk:
                    break
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    self.say(line.decode("utf-8", "replace"), source=mode)
        if pending:
            self.say(pending.decode("utf-8", "replace"), source=mode)
        self._wake.wake()  # the child's end, most likely: looked at now, not at the next look

    def say(self, text: str, *, source: str = "runner") -> None:
        """One line to the runner's output and to its buffer's log: the time, who says it, the text."""
        now = time.time()
        stamp = time.strftime("%H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
        line = f"{stamp} {source}: {text.rstrip()}"
        with self._lock:
            print(line, file=self.out, flush=True)
            self.counts["lines"] += 1
            self._log.append(line)
            log: bytes = "\n".join(self._log).encode("utf-8", "replace")
            while len(log) >= self._log_capacity:  # the newest whole lines that fit (and one, cut)
                if len(self._log) == 1:
                    log = log[: self._log_capacity - 1]
                    break
                self._log.popleft()
                log = "\n".join(self._log).encode("utf-8", "replace")
            if self._runner is not None:
                with self._runner.transaction():
                    self._runner.set("log", log)
                    self._runner.set("lines", self.counts["lines"] & 0xFFFF_FFFF)


def _mtime(path: str) -> float | None:
    try:
        return os.stat(path).st_mtime_ns / 1e9
    except OSError:
        return None


def _student_process(parent: int) -> None:
    """Set up the student's process: SIGKILL when the runner dies, so no student code outlives it.

    And sleep to the microsecond: the main loop's sleeps end on time, not up
    to the kernel's default 50 µs of timer slack later.
    """
    die_with_parent(parent, signal.SIGKILL)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, 1000, 0, 0, 0)


def _run_mode(runner: Runner, mode: str, status: _Status, output: int, parent: int) -> NoReturn:
    """The child: run the student file in ``mode`` until killed; exit on an error in it."""
    exit_status = 1
    try:
        _student_process(parent)
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, signal.SIG_DFL)
        os.dup2(output, 1)
        os.dup2(output, 2)
        os.close(output)
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
        exit_status = _student_mode(runner, mode, status)
    except BaseException:  # the runner's own fault, never the student's: say it and go
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(exit_status)


def _student_mode(runner: Runner, mode: str, status: _Status) -> int:
    store = BufferStore(runner.store.catalog)

    def fail(exc: BaseException) -> NoReturn:
        print(filtered_traceback(exc, runner.path), end="", file=sys.stderr, flush=True)
        os._exit(STUDENT_ERROR_EXIT)

    robot = Robot(store, runner.devices, on_error=fail)
    student: dict[str, Any] = {
        "__name__": "student_code",
        "__file__": runner.path,
        "__builtins__": __builtins__,
        "print": _whole_line_print(),
        "Robot": robot,
        "Gamepad": Gamepad(store, lambda: mode),
        "Keyboard": Keyboard(store, lambda: mode),
    }
    prefix = MODE_FUNCTIONS[mode]
    calls = overruns = 0
    try:
        status.enter()
        exec(runner.code, student)
        status.leave(calls, overruns)
        setup = _function(student, f"{prefix}_setup")
        main = _function(student, f"{prefix}_main")
        if setup is not None:
            status.enter()
            setup()
            status.leave(calls, overruns)
        if main is None:
            while True:  # only Robot.run functions, if any: wait to be stopped
                signal.pause()
        period = runner.period
        start = time.monotonic()
        due = 1
        while True:
            status.enter()
            main()
            calls += 1
            now = time.monotonic()
            late = now - (start + due * period)
            if late > 0:  # overran: skip the periods it ate, never run them in a burst
                overruns += 1
                due = math.floor((now - start) / period) + 1
            status.leave(calls, overruns)
            time.sleep(max(0.0, start + due * period - time.monotonic()))
            due += 1
    except BaseException as exc:
        fail(exc)
    return STUDENT_ERROR_EXIT


def _whole_line_print() -> Callable[..., None]:
    """``print`` for student code: one write per call, so that lines of two threads never mix.

    The built-in writes each value, separator and end on its own; a
    ``Robot.run`` function printing beside the main loop would interleave
    them within a line.
    """
    lock = threading.Lock()

    def student_print(
        *values: object, sep: str | None = " ", end: str | None = "\n", file: Any = None, flush: bool = False
    ) -> None:
        if file is not None and file is not sys.stdout and file is not sys.stderr:
            builtins.print(*values, sep=sep, end=end, file=file, flush=flush)
            return
        text = (" " if sep is None else sep).join(map(str, values)) + ("\n" if end is None else end)
        stream = sys.stdout if file is None else file
        with lock:
            stream.write(text)
            stream.flush()

    return student_print


def _function(student: Mapping[str, Any], name: str) -> Callable[[], Any] | None:
    function = student.get(name)
    return function if callable(function) else None
