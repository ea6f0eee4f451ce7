"""Runner benchmarks: the period of ``teleop_main``, a mode change to safe motors, the runner's CPU.

* ``period``: ``runtime run`` at 50 Hz on a student file whose ``teleop_main``
  notes ``time.monotonic()`` at each call. Each call is due at ``first + k *
  period``; its lateness is the time past that (a call never comes early).
  Reported as p50/p99 and the largest, with the overruns (periods skipped).
* ``mode_to_safe``: a real bridge serves a servo motor played here on a pty
  (``bench/safety.py``'s rig); the student code's ``teleop_main`` commands
  ``servo0`` and then spins forever (hung student code, the worst case). One
  sample: the field's mode set to idle, to the DEV_WRITE carrying the safe
  value on the pty (the runner kills the student process; the bridge sees its
  commander die, and the robot disabled).
* ``cpu``: the runner's CPU (its own process, and its student process when a
  mode runs), over :data:`CPU_SECONDS`, idle and running an empty
  ``teleop_main`` at 50 Hz.

Run through ``bench/run.py`` (scenarios), or alone: ``python bench/runner.py [--json]``.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

from notify import percentiles
from safety import TIMEOUT, _Rig

from runtime.store import BufferStore
from runtime.student import FIELD_KEY, MODES

PERIOD = 0.02
PERIOD_CALLS = 500
"""teleop_main calls timed (10 s at 50 Hz)."""
SAFE_SAMPLES = 30
CPU_SECONDS = 5.0

TIMING_FILE = """\
import json, os, time

times = []

def teleop_main():
    if len(times) < {calls}:
        times.append(time.monotonic())
        if len(times) == {calls}:
            with open(os.environ["BENCH_TIMES"], "w") as file:
                json.dump(times, file)
"""

HUNG_FILE = """\
def teleop_main():
    Robot.set_value({uid!r}, "servo0", 0.5)
    while True:
        pass
"""


def _runner(path: str, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "runtime", "run", path, *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


LINE_TIMEOUT = 10.0
"""Seconds the bench waits for a line of the runner it expects (never for ever: a lost line is an error)."""


class _Lines:
    """The runner's output lines, read by a thread, so that waiting for one has a timeout."""

    def __init__(self, runner: subprocess.Popen[str]) -> None:
        assert runner.stdout is not None
        self._stdout = runner.stdout
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, name="bench-runner-lines", daemon=True).start()

    def _read(self) -> None:
        for line in self._stdout:
            self._queue.put(line)
        self._queue.put(None)

    def next(self, timeout: float = LINE_TIMEOUT) -> str:
        """The next line; RuntimeError when none comes within ``timeout`` or the runner ended."""
        try:
            line = self._queue.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"the runner printed nothing for {timeout:g} s") from None
        if line is None:
            raise RuntimeError("the runner ended")
        return line


def _student_pid(lines: _Lines, timeout: float = LINE_TIMEOUT) -> int:
    """The student process of the mode the runner just started (from its 'started' line)."""
    deadline = time.monotonic() + timeout
    while True:
        line = lines.next(max(0.0, deadline - time.monotonic()))
        found = re.search(r"started \(student code pid (\d+)\)", line)
        if found:
            return int(found[1])


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as file:
        fields = file.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _cpu_share(pids: list[int], seconds: float) -> float:
    """The CPU these processes used over ``seconds``, as a percentage of one core."""
    before = sum(_cpu_seconds(pid) for pid in pids)
    time.sleep(seconds)
    return 100 * (sum(_cpu_seconds(pid) for pid in pids) - before) / seconds


def _stop(runner: subprocess.Popen[str]) -> None:
    runner.terminate()
    try:
        runner.wait(10)
    except subprocess.TimeoutExpired:
        runner.kill()
        runner.wait()


def period_and_cpu(calls: int = PERIOD_CALLS) -> dict[str, Any]:
    """teleop_main's lateness against its steady schedule; the runner's CPU, idle and running."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "timing.py")
        with open(path, "w") as file:
            file.write(TIMING_FILE.format(calls=calls))
        times_path = os.path.join(directory, "times.json")
        env = {
            **os.environ,
            "RUNTIME_BUFFER_NAMESPACE": f"rt-bench-runner-{os.getpid()}",
            "BENCH_TIMES": times_path,
        }
        runner = _runner(path, env)
        try:
            lines = _Lines(runner)
            lines.next()  # running ...: the runner is idle
            idle = _cpu_share([runner.pid], CPU_SECONDS)
            subprocess.run([sys.executable, "-m", "runtime", "mode", "teleop"], env=env, capture_output=True)
            student = _student_pid(lines)
            deadline = time.monotonic() + calls * PERIOD * 3 + 30
            while not os.path.exists(times_path):
                if time.monotonic() > deadline:
                    raise RuntimeError("teleop_main never wrote its times")
                time.sleep(0.1)
            running = _cpu_share([runner.pid, student], CPU_SECONDS)
            with open(times_path) as file:
                times = json.load(file)
        finally:
            _stop(runner)
            with BufferStore.use_namespace(env["RUNTIME_BUFFER_NAMESPACE"]):
                BufferStore({}).unlink_all()
    first = times[0]
    lateness: list[int] = []
    skipped = 0
    previous = 0
    for moment in times[1:]:
        due = max(previous + 1, int((moment - first) / PERIOD + 1e-9))
        skipped += due - previous - 1
        previous = due
        lateness.append(int((moment - first - due * PERIOD) * 1e9))
    return {
        "period_s": PERIOD,
        "calls": len(times),
        "lateness": percentiles(lateness),
        "worst_us": max(lateness) / 1e3,
        "skipped_periods": skipped,
        "cpu_idle_percent": round(idle, 3),
        "cpu_running_percent": round(running, 3),
    }


def mode_to_safe(samples: int = SAFE_SAMPLES) -> dict[str, Any]:
    """The field's mode set to idle, to the safe DEV_WRITE on the pty, with hung student code."""
    rig = _Rig(1)
    field = rig.store.get_or_open(FIELD_KEY)
    results: list[int] = []
    lost = 0
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "hung.py")
        with open(path, "w") as file:
            file.write(HUNG_FILE.format(uid=hex(rig.devices[0].uid)))
        runner = _runner(path, rig.env, "--timeout", "3600")
        try:
            lines = _Lines(runner)
            lines.next()
            for _ in range(samples):
                field.set("mode", MODES["teleop"])
                _student_pid(lines)
                taken = rig.wait_for_servo0(0.5, time.perf_counter_ns() + int(TIMEOUT * 1e9))
                if taken is None:  # back to idle, so that the next teleop starts a mode (and prints it)
                    lost += 1
                    field.set("mode", MODES["idle"])
                    rig.drain(0.05)
                    continue
                rig.drain(0.05)  # the student process spins now
                started = time.perf_counter_ns()
                field.set("mode", MODES["idle"])
                safe = rig.wait_for_servo0(0.0, started + int(TIMEOUT * 1e9))
                if safe is None:
                    lost += 1
                else:
                    results.append(safe - started)
                rig.drain(0.05)
        finally:
            _stop(runner)
            rig.close()
    return {"idle_to_safe": percentiles(results), "lost": lost}


def run_all() -> dict[str, Any]:
    """Every runner benchmark."""
    return {"period": period_and_cpu(), "mode_to_safe": mode_to_safe()}


def describe(results: dict[str, Any]) -> str:
    """The figures as text lines."""
    period = results["period"]
    safe = results["mode_to_safe"]
    late = period["lateness"]
    to_safe = safe["idle_to_safe"]
    return "\n".join(
        [
            f"teleop_main at {1 / period['period_s']:g} Hz ({period['calls']} calls): late by p50 "
            f"{late['p50_us']:.0f} µs, p99 {late['p99_us']:.0f} µs, worst {period['worst_us']:.0f} µs; "
            f"{period['skipped_periods']} periods skipped",
            f"runner CPU: idle {period['cpu_idle_percent']:.2f} % of a core; running an empty "
            f"teleop_main {period['cpu_running_percent']:.2f} % (runner and student process)",
            f"mode idle to the safe DEV_WRITE on the pty, student code hung ({to_safe['samples']} samples): "
            f"p50 {to_safe['p50_us'] / 1e3:.2f} ms, p99 {to_safe['p99_us'] / 1e3:.2f} ms"
            + (f"; {safe['lost']} lost" if safe["lost"] else ""),
        ]
    )


if __name__ == "__main__":
    figures = run_all()
    print(json.dumps(figures, indent=2) if "--json" in sys.argv else describe(figures))
