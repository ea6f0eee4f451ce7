"""Student code under test: ``runtime run FILE`` as a process, its output read line by line.

>>> import pathlib, tempfile
>>> from runtime.testing import emulated_robot, run_student_code
>>> with tempfile.TemporaryDirectory() as directory, emulated_robot("yogi-bear") as robot:
...     path = pathlib.Path(directory, "robot.py")
...     _ = path.write_text("def autonomous_setup():\\n    print('hello')\\n")
...     with run_student_code(robot, path, "--mode", "auto") as student:
...         print(student.wait_line(r"auto: (hello)")[1])
hello
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

from .robot import EmulatedRobot

__all__ = ["StudentRun", "run_student_code"]

WAIT = 30.0
"""Seconds :meth:`StudentRun.wait_line` waits by default."""
END = "<end of output>"
"""The line :attr:`StudentRun.lines` ends with once the runner exited."""


class StudentRun:
    """A running ``runtime run``: its output lines so far, and ways to wait for one."""

    def __init__(self, robot: EmulatedRobot, path: str | os.PathLike[str], *args: str) -> None:
        self.lines: list[str] = []
        """Every line the runner printed so far (the student's prints, stamped with the time and mode)."""
        self._changed = threading.Condition()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "runtime", "run", os.fspath(path), *args],
            env=robot.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.lines.append(END)
            self._changed.notify_all()

    def wait_line(self, pattern: str, count: int = 1, timeout: float = WAIT) -> re.Match[str]:
        """The ``count``-th line that matches ``pattern`` (``re.search``), waiting for it.

        Raises:
            AssertionError: It did not come within ``timeout`` seconds, or the runner exited;
                the message holds the output so far.
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                matches = [match for match in map(regex.search, self.lines) if match]
                if len(matches) >= count:
                    return matches[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or END in self.lines:
                    raise AssertionError(f"no line matching {pattern!r} in:\n" + "\n".join(self.lines))
                self._changed.wait(left)

    def student_pid(self, count: int = 1) -> int:
        """The pid of the student code's process in the ``count``-th mode entered."""
        return int(self.wait_line(r"started \(student code pid (\d+)\)", count)[1])

    def stop(self, timeout: float = WAIT) -> int:
        """SIGTERM (the runner stops its student code and ends), SIGKILL after ``timeout``; the status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(timeout)


@contextlib.contextmanager
def run_student_code(robot: EmulatedRobot, path: str | os.PathLike[str], *args: str) -> Iterator[StudentRun]:
    """Run ``runtime run PATH ARGS`` against ``robot`` while inside; stop it however the block ends."""
    run = StudentRun(robot, path, *args)
    try:
        yield run
    finally:
        run.stop()
