"""A robot without hardware for tests: emulated Smart Devices and the bridge, in a namespace of their own.

:func:`emulated_robot` starts, as real processes, what runs on a robot:
``runtime emulate`` (the devices, each on a pseudo-terminal) and ``runtime
bridge`` (serving them into shared memory), in a private buffer namespace
(:meth:`BufferStore.use_namespace <runtime.buffer.BufferStore.use_namespace>`),
waits until every device's buffer is valid and has data, and yields an
:class:`EmulatedRobot`: a :class:`~runtime.buffer.BufferStore` over that
namespace, the devices' UIDs, and the environment for running your own
programs against it. At the end it stops both processes (killing them if they
do not stop in time) and unlinks every segment of the namespace, however the
block ends.

>>> with emulated_robot("yogi-bear", "limit-switch") as robot:
...     motor = robot.buffer("yogi-bear")           # the bridge's buffer: valid, with data
...     motor.write("duty_cycle", 0.5)              # the bridge sends it to the emulated motor
...     robot.wait_for(lambda: motor.get("enc_pos") > 100)
...     print(motor.valid, robot.stop_bridge(), motor.valid)   # no bridge: invalid buffers
True
True 0 False

Code under test that runs as a process gets the namespace from the
environment: ``subprocess.run([...], env=robot.env)``. With pytest, the
``runtime_robot`` fixture of :mod:`runtime.testing.pytest_plugin` does all this
for one test.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import random
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Literal, TypeVar

from .. import catalog as catalog_module
from ..buffer import NAMESPACE_ENV, SHM_DIR, Buffer, DeviceBuffer, DeviceBufferError
from ..commands import die_with_parent
from ..store import BufferStore
from .device import random_uid
from .faults import FaultRates
from .waiting import wait_for

__all__ = ["EmulatedDevice", "EmulatedRobot", "EmulationError", "emulated_robot"]

T = TypeVar("T")

START_TIMEOUT = 20.0
"""Seconds the devices have, by default, to be served (valid, with data) after the start."""
STOP_TIMEOUT = 10.0
"""Seconds each process has to exit after SIGTERM before it is killed."""
LOG_TAIL = 2000
"""Characters of each process's log quoted in an :class:`EmulationError`."""


class EmulationError(RuntimeError):
    """The emulated robot could not start or failed; the message quotes the processes' last log lines."""


@dataclasses.dataclass(frozen=True)
class EmulatedDevice:
    """One emulated Smart Device of an :class:`EmulatedRobot`."""

    type_name: str
    """Its catalog type, e.g. ``"yogi-bear"``."""
    uid: int
    """Its 88-bit UID: the key of its buffer in the store."""
    port: str
    """The pseudo-terminal it started on."""
    link: str
    """A symlink to its pseudo-terminal; the bridge serves this path."""

    @property
    def spec(self) -> str:
        """``TYPE:UID``, as ``runtime emulate`` takes it."""
        return f"{self.type_name}:{self.uid:#x}"


def stop_process(
    process: subprocess.Popen[Any],
    signum: int = signal.SIGTERM,
    timeout: float = STOP_TIMEOUT,
    on_kill: Callable[[], None] | None = None,
) -> int:
    """Send ``signum`` (if it still runs), wait up to ``timeout`` s, then kill; its exit status.

    ``on_kill``, if given, is called just before a process that did not stop in time is killed.
    """
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signum)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            if on_kill is not None:
                on_kill()
            process.kill()
            process.wait()
    return process.returncode


def spawn(
    command: Sequence[str],
    log: str | os.PathLike[str],
    env: Mapping[str, str],
    *,
    stdout: Literal["devnull", "pipe", "log"] = "devnull",
    cwd: str | os.PathLike[str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``command`` as a child that gets SIGTERM when this process dies (even by SIGKILL).

    Its stderr (and, with ``stdout="log"``, its stdout) is appended to the file
    ``log``; ``stdout="pipe"`` gives its output to read (see :func:`read_lines`).
    """
    with open(log, "ab") as file:  # appended to across restarts
        output: int | IO[bytes] = {"devnull": subprocess.DEVNULL, "pipe": subprocess.PIPE}.get(stdout, file)
        return subprocess.Popen(
            list(command),
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=file,
            env=dict(env),
            cwd=cwd,
            preexec_fn=functools.partial(die_with_parent, os.getpid()),  # no child outlives its parent
        )


def served(store: BufferStore, uid: int) -> bool:
    """Whether the bridge serves the buffer, with the device's data in it (if it sends any)."""
    try:
        buffer = store.get_or_open(uid, create=False)  # never before the bridge made it
    except DeviceBufferError:
        return False
    if not buffer.valid:
        return False
    streams = any(param.readable and param.subscribed for param in buffer.params.values())
    return not streams or buffer.last_update > 0


class EmulatedRobot:
    """A running emulated robot (see :func:`emulated_robot`, which makes it).

    Its :attr:`store` names segments in the robot's namespace only while the
    ``with emulated_robot(...)`` block runs (the namespace is set in the
    process environment there).
    """

    def __init__(
        self,
        catalog: Mapping[str, type[Buffer]],
        namespace: str,
        directory: Path,
        bridge_command: Sequence[str],
    ) -> None:
        self.catalog = catalog
        """The device catalog (the packaged one unless another was given)."""
        self.namespace = namespace
        """The buffer namespace of this robot (``$RUNTIME_BUFFER_NAMESPACE`` of its processes)."""
        self.directory = directory
        """Where the processes' logs (``emulator.log``, ``bridge.log``), links and stats are."""
        self.devices: tuple[EmulatedDevice, ...] = ()
        """The emulated devices, in the order given."""
        self.store = BufferStore(catalog)
        """The robot's buffers, as student code would open them."""
        self.env: dict[str, str] = dict(os.environ, **{NAMESPACE_ENV: namespace})
        """The environment for a program of yours to run against this robot (``subprocess.run(env=)``)."""
        self._bridge_command = list(bridge_command)
        self._emulator: subprocess.Popen[bytes] | None = None
        self._bridge: subprocess.Popen[bytes] | None = None

    # -- what the tests use --

    @property
    def uids(self) -> tuple[int, ...]:
        """The devices' UIDs, in the order given."""
        return tuple(device.uid for device in self.devices)

    def uid(self, type_name: str) -> int:
        """The UID of the robot's device of this type.

        Raises:
            KeyError: The robot has no device of this type.
            ValueError: It has several (use :attr:`devices`).
        """
        found = [device.uid for device in self.devices if device.type_name == type_name]
        if not found:
            raise KeyError(type_name)
        if len(found) > 1:
            raise ValueError(f"the robot has {len(found)} {type_name} devices: pick one of .devices")
        return found[0]

    def buffer(self, key: str | int) -> DeviceBuffer:
        """A device's buffer from :attr:`store`, by type name (see :meth:`uid`) or UID."""
        uid = self.uid(key) if isinstance(key, str) else key
        return self.store.get_or_open(uid)

    def wait_for(self, predicate: Callable[[], T], timeout: float = 10.0, what: str | None = None) -> T:
        """Call ``predicate`` every 10 ms until it returns something true, and return that.

        Errors of the library (an invalid buffer, say) count as false.

        Raises:
            TimeoutError: Still false after ``timeout`` seconds (or a process of the robot died).
        """
        return wait_for(predicate, timeout, what, check=self._check_alive)

    def wait_valid(self, timeout: float = START_TIMEOUT) -> None:
        """Wait until every device's buffer is valid and holds data from its device.

        Raises:
            EmulationError: Not within ``timeout`` seconds, or a process of the robot died.
        """
        deadline = time.monotonic() + timeout
        for device in self.devices:
            what = f"the {device.type_name} {device.uid:#x} to be served, with data"
            try:
                self.wait_for(
                    functools.partial(served, self.store, device.uid), deadline - time.monotonic(), what
                )
            except TimeoutError as exc:
                raise EmulationError(f"{exc}\n{self.logs()}") from None

    @property
    def pids(self) -> dict[str, int]:
        """The process ids of the robot's running processes: ``"emulator"``, ``"bridge"``."""
        found = {}
        for name, process in (("emulator", self._emulator), ("bridge", self._bridge)):
            if process is not None and process.poll() is None:
                found[name] = process.pid
        return found

    @property
    def bridge_running(self) -> bool:
        """Whether the bridge process runs."""
        return self._bridge is not None and self._bridge.poll() is None

    def stop_bridge(self, signum: int = signal.SIGTERM, timeout: float = STOP_TIMEOUT) -> int:
        """Stop the bridge (with ``signum``; killed after ``timeout`` s); return its exit status.

        Its buffers turn invalid (whatever the signal: validity belongs to the
        live producer); the devices keep running. :meth:`start_bridge` brings it back.
        """
        if self._bridge is None:
            raise RuntimeError("the bridge is not running")
        bridge, self._bridge = self._bridge, None
        return stop_process(bridge, signum, timeout)

    def start_bridge(self, wait: bool = True, timeout: float = START_TIMEOUT) -> None:
        """Start the bridge again after :meth:`stop_bridge`; with ``wait``, until every buffer is valid."""
        if self.bridge_running:
            raise RuntimeError("the bridge is running")
        self._bridge = self._spawn("bridge", self._bridge_command)
        if wait:
            self.wait_valid(timeout)

    @contextlib.contextmanager
    def bridge_stopped(self, signum: int = signal.SIGTERM, timeout: float = START_TIMEOUT) -> Iterator[int]:
        """Stop the bridge for the block (:meth:`stop_bridge` with ``signum``; yields its exit status);
        at the end, however the block ends, start it again and wait until every device is served.

        For a robot shared by several tests (a module-scoped fixture): a test
        that fails with the bridge stopped leaves the robot whole for the next
        one. The block may start the bridge itself (:meth:`start_bridge`); it
        is then only waited for.

        >>> with emulated_robot("limit-switch") as robot:
        ...     switch = robot.buffer("limit-switch")
        ...     with robot.bridge_stopped():
        ...         print(switch.valid)        # no bridge: an invalid buffer
        ...     print(switch.valid)            # served again
        False
        True
        """
        status = self.stop_bridge(signum)
        try:
            yield status
        finally:
            if self.bridge_running:
                self.wait_valid(timeout)
            else:
                self.start_bridge(timeout=timeout)

    def bridge_stats(self) -> dict[str, Any] | None:
        """The bridge's latest ``--stats`` (per-device counters and last values), or None before any."""
        try:
            data = json.loads((self.directory / "bridge-stats.json").read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def logs(self) -> str:
        """The end of each process's log, for a failure message."""
        parts = []
        for name in ("emulator", "bridge"):
            with contextlib.suppress(OSError):
                text = (self.directory / f"{name}.log").read_text(errors="replace")
                parts.append(f"---- {name}.log (end)\n{text[-LOG_TAIL:]}")
        return "\n".join(parts)

    # -- processes --

    def _spawn(self, name: str, command: Sequence[str], stdout: bool = False) -> subprocess.Popen[bytes]:
        log = self.directory / f"{name}.log"
        return spawn(command, log, self.env, stdout="pipe" if stdout else "devnull", cwd=self.directory)

    def _check_alive(self) -> None:
        for name, process in (("emulator", self._emulator), ("bridge", self._bridge)):
            if process is not None and process.poll() is not None:
                raise EmulationError(f"the {name} exited (status {process.returncode})\n{self.logs()}")

    def _start(
        self, emulator_command: Sequence[str], specs: Sequence[tuple[str, int]], timeout: float
    ) -> None:
        deadline = time.monotonic() + timeout
        self._emulator = emulator = self._spawn("emulator", emulator_command, stdout=True)
        assert emulator.stdout is not None
        lines = read_lines(emulator.stdout, len(specs), deadline)
        if len(lines) < len(specs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                emulator.wait(1.0)  # it may be exiting: say so rather than "did not announce"
            status = emulator.poll()
            state = "did not announce its devices" if status is None else f"exited (status {status})"
            raise EmulationError(f"the emulator {state}; it printed {lines!r}\n{self.logs()}")
        devices = []
        for (type_name, uid), line in zip(specs, lines, strict=True):
            words = line.split()  # TYPE UID PTY LINK
            if len(words) != 4 or words[0] != type_name or int(words[1], 16) != uid:
                raise EmulationError(f"unexpected line from the emulator: {line!r}\n{self.logs()}")
            link = words[3] if os.path.isabs(words[3]) else str(self.directory / words[3])
            devices.append(EmulatedDevice(type_name, uid, words[2], link))
        self.devices = tuple(devices)
        self._bridge_command += [argument for device in devices for argument in ("--port", device.link)]
        self.start_bridge(timeout=max(deadline - time.monotonic(), 0.0))

    def _stop(self) -> None:
        """Close the store, stop the bridge, then the devices (killing what does not stop)."""
        self.store.close()
        if self._bridge is not None:
            self.stop_bridge()
        if self._emulator is not None:
            stop_process(self._emulator, signal.SIGTERM, STOP_TIMEOUT)
            if self._emulator.stdout is not None:
                self._emulator.stdout.close()


def read_lines(stream: IO[bytes], count: int, deadline: float) -> list[str]:
    """Up to ``count`` lines from a child's stdout, until ``deadline`` or its end."""
    data = b""
    fd = stream.fileno()
    while data.count(b"\n") < count:
        ready, _, _ = select.select([fd], [], [], max(deadline - time.monotonic(), 0.0))
        if not ready:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").splitlines()[:count]


def _resolve(
    devices: Sequence[str | int], catalog: Mapping[str, type[Buffer]], rng: random.Random
) -> list[tuple[str, int]]:
    """``(type name, UID)`` of each device given as ``TYPE``, ``TYPE:UID`` or a UID."""
    smart = {
        name: buffer_type.device_id
        for name, buffer_type in catalog.items()
        if issubclass(buffer_type, DeviceBuffer) and hasattr(buffer_type, "device_id")
    }
    by_id = {device_id: name for name, device_id in smart.items()}
    specs = []
    for device in devices:
        if isinstance(device, int):
            type_name, uid = by_id.get(device >> 72, ""), device
            if not type_name:
                raise ValueError(f"UID {device:#x}: no Smart Device type has device_id {device >> 72}")
        else:
            type_name, _, uid_text = device.partition(":")
            if type_name not in smart:
                raise ValueError(f"{device!r}: {type_name!r} is not a Smart Device type of the catalog")
            try:
                uid = int(uid_text, 0) if uid_text else random_uid(smart[type_name], rng)
            except ValueError:
                raise ValueError(f"{device!r}: the UID must be an integer (0x hex, or decimal)") from None
            if uid >> 72 != smart[type_name]:
                raise ValueError(f"{device!r}: the UID's device_id is not {type_name}'s ({smart[type_name]})")
        specs.append((type_name, uid))
    if len({uid for _, uid in specs}) != len(specs):
        raise ValueError("the same UID is given twice")
    return specs


def namespace_in_use(namespace: str) -> bool:
    """Whether ``namespace`` has segments in /dev/shm (a new robot needs one of its own)."""
    with contextlib.suppress(FileNotFoundError):
        return any(entry.startswith(namespace + "-") for entry in os.listdir(SHM_DIR))
    return False


@contextlib.contextmanager
def emulated_robot(
    *devices: str | int,
    catalog: str | os.PathLike[str] | None = None,
    namespace: str | None = None,
    seed: int | None = 0,
    still: bool = False,
    faults: FaultRates | None = None,
    faults_in: FaultRates | None = None,
    emulate_args: Sequence[str] = (),
    bridge_args: Sequence[str] = (),
    timeout: float = START_TIMEOUT,
    directory: str | os.PathLike[str] | None = None,
) -> Iterator[EmulatedRobot]:
    """Emulated Smart Devices served by a bridge, in a buffer namespace of their own, for one ``with`` block.

    Starts ``python -m runtime.tools.emulate`` and ``python -m
    runtime.tools.bridge``, waits until every device's buffer is valid and holds
    data, and yields the :class:`EmulatedRobot`. On exit, whatever the reason,
    it closes the robot's store, stops the bridge and the emulator (SIGTERM,
    then SIGKILL after :data:`STOP_TIMEOUT`), unlinks every segment of the
    namespace and removes its temporary directory.

    Args:
        devices: Each a catalog type (``"yogi-bear"``: a UID is made up from
            ``seed``), ``"TYPE:UID"``, or a Smart Device UID.
        catalog: A device catalog YAML file (default: the packaged one).
        namespace: The buffer namespace (default: ``rt-testing-<pid>-<random>``).
            It must have no segments yet: all of its segments are unlinked at the end.
        seed: Seeds the made-up UIDs, the simulated values and the injected faults
            (None: random). The default makes runs reproducible.
        still: Sensor values change only when written (no simulation).
        faults: Damage to the frames the devices send (``runtime emulate --faults``).
        faults_in: Damage to the frames the devices receive (``--faults-in``).
        emulate_args: More ``runtime emulate`` options (e.g. ``["--disconnect-every", "2"]``).
        bridge_args: More ``runtime bridge`` options.
        timeout: Seconds the devices have to be served at the start.
        directory: Where to keep the processes' logs (default: a temporary
            directory, removed at the end; one you give is kept).

    Raises:
        ValueError: A device is not a Smart Device of the catalog, a UID
            repeats, or the namespace is in use.
        DeviceBufferError: The catalog file cannot be read or is invalid (see :func:`runtime.catalog.load`).
        EmulationError: The robot did not start within ``timeout`` (the
            message quotes the processes' logs).
    """
    loaded = catalog_module.load(catalog)
    specs = _resolve(devices, loaded, random.Random(seed))
    if not specs:
        raise ValueError("no devices to emulate")
    namespace = namespace or f"rt-testing-{os.getpid()}-{secrets.token_hex(4)}"
    if namespace_in_use(namespace):
        raise ValueError(f"namespace {namespace!r} already has segments in {SHM_DIR}: it must be a new one")
    catalog_args = ["--catalog", os.path.abspath(catalog)] if catalog is not None else []
    emulator_command = [sys.executable, "-m", "runtime.tools.emulate", *(f"{t}:{u:#x}" for t, u in specs)]
    emulator_command += ["--link", "devices", *catalog_args]  # relative to the robot's directory
    if seed is not None:
        emulator_command += ["--seed", str(seed)]
    if still:
        emulator_command.append("--still")
    if faults is not None:
        emulator_command += ["--faults", str(faults)]
    if faults_in is not None:
        emulator_command += ["--faults-in", str(faults_in)]
    emulator_command += emulate_args
    bridge_command = [sys.executable, "-m", "runtime.tools.bridge", "--stats", "bridge-stats.json"]
    bridge_command += [*catalog_args, *bridge_args]
    if directory is None:
        where = Path(tempfile.mkdtemp(prefix=f"runtime-testing-{os.getpid()}-"))
    else:
        where = Path(directory).absolute()
        where.mkdir(parents=True, exist_ok=True)
    try:
        with BufferStore.use_namespace(namespace):
            robot = EmulatedRobot(loaded, namespace, where, bridge_command)
            try:
                robot._start(emulator_command, specs, timeout)
                yield robot
            finally:
                try:
                    robot._stop()
                finally:
                    BufferStore({}).unlink_all()  # the namespace is in effect here
    finally:
        if directory is None:
            shutil.rmtree(where, ignore_errors=True)
