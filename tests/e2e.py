"""Plumbing shared by the tests that run real processes (imported as ``from e2e import ...``).

* End to end (tests/test_bridge.py, tests/test_flaky_link.py, tests/test_leaks.py):
  a namespace of segments per module, UIDs, poll loops with a deadline, child
  processes of ``python -m MODULE`` that are always killed (:class:`Children`),
  the bridge's buffers and stats files, and the test playing a device on a pty (the
  pty plumbing is the public test kit's: :class:`runtime.testing.FakeSerialPort`).
* multiprocessing children (tests/test_buffer_multiprocess.py, tests/test_faults.py,
  tests/test_sync.py): started into a list that :func:`reaped` kills and joins.
* The shared-memory segments of the session namespace, and ``$RUNTIME_STRESS_SECONDS``.

tests/ is no package: pytest's default import mode ("prepend") puts it on
sys.path, so test modules (and the processes spawned from them) import this one.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

import runtime.catalog
from runtime.buffer import NAMESPACE_ENV, SHM_DIR, BufferStore, DeviceBuffer, DeviceBufferError, DeviceUID
from runtime.testing import FakeSerialPort
from runtime.testing import sub_res as sub_res  # re-exported: tests take it from here
from runtime.testing import wait_for as testing_wait_for

T = TypeVar("T")

STRESS_SECONDS = float(os.environ.get("RUNTIME_STRESS_SECONDS") or 5)
"""How long the stress tests run (``$RUNTIME_STRESS_SECONDS``, default 5: the CI form)."""

CATALOG = runtime.catalog.load()
SERVO: type[DeviceBuffer] = CATALOG["servo-motor"]  # type: ignore[assignment]
POT: type[DeviceBuffer] = CATALOG["potentiometer"]  # type: ignore[assignment]


# ---- segments -----------------------------------------------------------------------------------


def namespace_fixture(prefix: str, scope: str = "module", autouse: bool = True) -> Any:
    """A ``namespace`` fixture: a namespace of the module's (or, with ``scope="function"``, the
    test's) own, its children's too, named ``PREFIX-PID-RANDOM``, whose segments are unlinked at the end.

    Use: ``namespace = namespace_fixture("rt-test-bridge")`` at the top of a test module.
    """

    @pytest.fixture(scope=scope, autouse=autouse, name="namespace")  # type: ignore[call-overload, misc]
    def namespace() -> Iterator[str]:
        """Give these tests' segments (and their children's) a namespace of their own; unlink them after."""
        with BufferStore.use_namespace(f"{prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}") as name:
            try:
                yield name
            finally:
                BufferStore({}).unlink_all()

    return namespace


def namespace_segments_of(namespace: str) -> list[str]:
    """The segments (any file) of exactly ``namespace`` in /dev/shm, sorted: never another namespace's."""
    return sorted(entry for entry in os.listdir(SHM_DIR) if entry.startswith(namespace + "-"))


def segment_exists(name: str) -> bool:
    return os.path.exists(os.path.join(SHM_DIR, name))


# ---- the command line ---------------------------------------------------------------------------


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """Run ``runtime ARGV...`` in-process; return (status, stdout, stderr)."""
    from runtime.tools import cli  # the command line's entry point, imported when a test runs it

    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def bench_process(script: str, *argv: str, timeout: float = 55) -> subprocess.CompletedProcess[str]:
    """Run ``python bench/SCRIPT ARGV...`` of this checkout to its end; what it did."""
    path = Path(__file__).resolve().parent.parent / "bench" / script
    return subprocess.run(
        [sys.executable, str(path), *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def runtime_process(
    *argv: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m runtime ARGV...`` to its end (in this environment unless ``env``); what it did."""
    return subprocess.run(
        [sys.executable, "-m", "runtime", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def namespace_prefix() -> str:
    """The start of every segment name in the current namespace."""
    return os.environ[NAMESPACE_ENV] + "-"


def namespace_segments() -> set[str]:
    """The segments of the current namespace in /dev/shm."""
    prefix = namespace_prefix()
    return {entry for entry in os.listdir(SHM_DIR) if entry.startswith(prefix)}


# ---- waiting ------------------------------------------------------------------------------------


def make_uid(buffer_type: type[DeviceBuffer], rng: random.Random | None = None) -> int:
    """A UID nobody else in this test run uses (or the next one of ``rng``, reproducibly)."""
    return int(DeviceUID(buffer_type.device_id, 9, (rng or random).getrandbits(64)))


def wait_for(what: str, predicate: Callable[[], T | None], timeout: float = 10.0, every: float = 0.02) -> T:
    """Poll ``predicate`` until it returns something truthy (returned); fail after ``timeout``.

    The kit's :func:`runtime.testing.wait_for`, with what is awaited first (the tests read so).
    """
    return testing_wait_for(predicate, timeout, what, every=every)


def must(item: T | None) -> T:
    assert item is not None
    return item


# ---- child processes: python -m MODULE ----------------------------------------------------------


def launch(module: str, *args: str, log: Path, cwd: Path, stdout: bool = False) -> subprocess.Popen[bytes]:
    """Start ``python -m module args`` in ``cwd``, its stderr into ``log`` (its stdout piped if asked)."""
    with open(log, "wb") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
            stderr=stderr,
            cwd=cwd,
        )


class Children:
    """Child processes of one test (``python -m MODULE``), always killed (their logs printed) at the end."""

    def __init__(self, directory: Path, log_tail: int | None = None) -> None:
        self.directory = directory
        self.log_tail = log_tail
        """How much of each log :meth:`kill_all` prints (the end of it; None: all)."""
        self.processes: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.output: dict[int, bytes] = {}
        """What each child (by pid) printed on stdout, if piped, as far as read."""

    def start(self, module: str, *args: str, stdout: bool = False) -> subprocess.Popen[bytes]:
        log = self.directory / f"{module.rsplit('.', 1)[-1]}-{len(self.processes)}.log"
        process = launch(module, *args, log=log, cwd=self.directory, stdout=stdout)
        self.processes.append((process, log))
        self.output[process.pid] = b""  # nothing yet (not what an earlier child of that pid printed)
        return process

    def log(self, process: subprocess.Popen[bytes]) -> str:
        for candidate, path in self.processes:
            if candidate is process:
                return path.read_text(errors="replace")
        return ""

    def read_lines(self, process: subprocess.Popen[bytes], count: int, timeout: float = 15.0) -> list[str]:
        """Wait for ``count`` lines on the child's stdout (everything read is kept in :attr:`output`)."""
        assert process.stdout is not None
        fd = process.stdout.fileno()
        deadline = time.monotonic() + timeout
        while self.output[process.pid].count(b"\n") < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"{process.args!r} printed {self.output[process.pid]!r}; log: {self.log(process)}"
                )
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise AssertionError(f"{process.args!r} exited ({process.wait()}): {self.log(process)}")
                self.output[process.pid] += chunk
        return self.output[process.pid].decode().splitlines()

    def emulate(self, *args: str, count: int) -> tuple[subprocess.Popen[bytes], list[list[str]]]:
        """Start an emulator and read its ``count`` device lines (type, uid, pty[, link])."""
        process = self.start("runtime.tools.emulate", *args, stdout=True)
        return process, [line.split() for line in self.read_lines(process, count)]

    def stop(
        self, process: subprocess.Popen[bytes], signum: int = signal.SIGTERM, timeout: float = 10
    ) -> int:
        """Send ``signum``, then wait for the exit code (and the rest of the output, if piped)."""
        process.send_signal(signum)
        if process.stdout is not None:
            self.output[process.pid] += process.stdout.read()  # up to the exit: the stream closes then
        return process.wait(timeout)

    def kill_all(self) -> None:
        """Kill what still runs; print every child's log (pytest shows it when a test fails)."""
        for process, log in self.processes:
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)
            if process.stdout is not None:
                process.stdout.close()
            print(f"---- {log.name} (exit {process.returncode})")
            text = log.read_text(errors="replace")
            print(text if self.log_tail is None else text[-self.log_tail :])


def children_fixture(log_tail: int | None = None) -> Any:
    """A ``children`` fixture: the test's :class:`Children`, in its ``tmp_path``, killed after it.

    Use: ``children = children_fixture()`` at the top of a test module.
    """

    @pytest.fixture(name="children")
    def children(tmp_path: Path) -> Iterator[Children]:
        manager = Children(tmp_path, log_tail)
        try:
            yield manager
        finally:
            manager.kill_all()

    return children


# ---- the bridge's buffers and stats -------------------------------------------------------------


@pytest.fixture
def store() -> Iterator[BufferStore]:
    """The test's own view of the buffers (it never creates them: the bridge does).

    Use: ``store = e2e.store`` at the top of a test module.
    """
    with BufferStore(CATALOG) as buffers:
        yield buffers


def try_open(store: BufferStore, uid: int) -> DeviceBuffer | None:
    """The buffer of a device if it exists (the bridge created it), else None."""
    try:
        return store.get_or_open(uid, create=False)
    except DeviceBufferError:
        return None


def open_buffer(store: BufferStore, uid: int, timeout: float = 10.0) -> DeviceBuffer:
    """Open the bridge's buffer of a device, waiting until the bridge created it."""
    return wait_for(f"the buffer of {uid:#x}", lambda: try_open(store, uid), timeout)


def read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    except (OSError, ValueError):
        return None


def stats_entry(path: Path, uid: int) -> dict[str, Any] | None:
    """A device's entry in a stats file (the bridge's or the emulator's), if there is one yet."""
    for item in (read_json(path) or {}).get("devices", []):
        if item["uid"] == f"{uid:#x}":
            return item  # type: ignore[no-any-return]
    return None


# ---- the test playing a device -------------------------------------------------------------------


class FakeDeviceBase(FakeSerialPort):
    """The test playing a Smart Device on a pty whose slave end the bridge opens: what it received.

    The test kit's :class:`runtime.testing.FakeSerialPort` (the test modules
    add the device's side of the conversation in their own ``FakeDevice``);
    :func:`sub_res` is the kit's too.
    """

    def _receive(self, timeout: float) -> None:
        self.receive(timeout)


# ---- multiprocessing children -------------------------------------------------------------------


JOIN_TIMEOUT = 30.0


@contextlib.contextmanager
def reaped(timeout: float = JOIN_TIMEOUT) -> Iterator[list[Any]]:
    """Processes appended to the list are killed and joined when the block exits, whatever happens."""
    processes: list[Any] = []
    try:
        yield processes
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
        for process in processes:
            process.join(timeout)


def start(processes: list[Any], context: Any, target: Callable[..., Any], *args: Any) -> Any:
    """Start ``target(*args)`` in a daemon process of ``context`` (fork, spawn), kept in ``processes``."""
    process = context.Process(target=target, args=args, daemon=True)
    processes.append(process)
    process.start()
    return process


def finish(process: Any, timeout: float = JOIN_TIMEOUT) -> int:
    """Wait for a process to end; its exit code (negative: the signal that killed it)."""
    process.join(timeout)
    assert not process.is_alive(), "child process did not finish"
    return int(process.exitcode)
