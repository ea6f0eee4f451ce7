"""The robot stack at the demo's load: each process's CPU, and microseconds of CPU per change.

The stack, each piece its own process, in a private namespace
(``rt-stack-<pid>-<n>``) and a temporary directory:

* ``runtime demo --json``: the demo's emulated devices (``runtime emulate``,
  its five default types), ``runtime bridge`` (with its ``--stats`` file) and
  the demo's student code (``runtime run`` in autonomous mode, and the student
  process it starts), found as the demo's child processes;
* ``runtime zenoh --listen tcp/127.0.0.1:PORT``, with a raw Zenoh session of
  this process (client mode, on loopback) subscribed to ``runtime/**``;
* ``runtime foxglove --port 0``, with a WebSocket client of this process
  subscribed to every channel it advertises;
* ``runtime record`` into a file of the temporary directory.

Once every piece is up and the clients receive data, the measuring window
(``--seconds``) runs from one rewrite of the bridge's ``--stats`` file (every
second) to the first one ``--seconds`` later, so that the changes counted and
the CPU read cover the same time. For each process: its CPU (utime + stime of
``/proc/PID/stat``: all its threads, plus any helper processes below it; the
runner's student process is a row of its own) as a percentage of one core,
read from ``/proc`` at the window's two ends (10 ms ticks); the changes are the
messages the bridge received from the devices in the window (its ``--stats``
``messages_in``, summed over the devices), and each process's CPU per change.
The deliveries are a sanity column: Zenoh samples the subscriber got,
messages with data the WebSocket client got, and messages ``runtime record``
wrote (counted in its MCAP file, which it writes out every half second).

"All together" is the stack a robot runs: bridge, ``runtime zenoh``,
``runtime foxglove``, ``runtime record``, the runner and its student code
(its µs per change: the sum's CPU per change). Not in it, and shown
apart: ``runtime emulate`` (it stands in for the hardware), the ``runtime demo``
process that started the pieces (and its cleaner), and this process (the
clients).

``--python PATH`` runs the stack with another interpreter (another checkout's
venv: its ``runtime`` package); the clients stay in this interpreter.
``--compare PATH`` runs the stack alternately with PATH and with this one
(``--rounds`` each, default 2: before, after, before, after) and prints both
side by side, so both come from the same run of the machine. Everything is
stopped, and the namespace's segments unlinked, however the bench ends
(Ctrl-C, SIGTERM, an error); a bench killed outright leaves nothing running
either (each child gets SIGTERM when this process dies).

``--threads`` also shows each thread of the stack's processes: its CPU, how
often it woke up (voluntary context switches a second) and its CPU per
wake-up, from ``/proc/PID/task/TID``. On a machine where a wake-up costs tens
of microseconds, that is where most of the stack's CPU goes (the JSON output
always has it).

    python bench/stack.py [--seconds 10] [--threads] [--json]
    python bench/stack.py --compare /tmp/before/.venv/bin/python

Run through ``bench/run.py`` (scenarios), or alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from runtime.processes import command_line, pid_alive, runs_command
from runtime.testing.demo import Interrupted, SignalGuard, namespace_processes
from runtime.testing.robot import read_lines, spawn, stop_process
from runtime.testing.waiting import wait_for

SECONDS = 10.0
"""The measuring window, by default."""
START_TIMEOUT = 60.0
"""Seconds the stack has to come up and its clients to receive data (a busy 2-core machine)."""
STOP_TIMEOUT = 10.0
"""Seconds each process has to stop after its signal before it is killed."""
DEMO_DEVICES = 5
"""The devices ``runtime demo`` emulates by default (its five types)."""
SUBPROTOCOLS = ("foxglove.sdk.v1", "foxglove.websocket.v1")
"""The Foxglove WebSocket subprotocols the client offers (today's server speaks the first)."""
SUBSCRIBE_DELAY = 0.1
"""Seconds between an advertisement and the subscription (the server may not accept it at once)."""
TICK = os.sysconf("SC_CLK_TCK")

STACK = ("bridge", "zenoh", "foxglove", "record", "runner", "student")
"""The processes of the robot stack: their sum is "all together"."""
APART = ("emulator", "demo", "bench")
"""Processes measured but not in the sum."""
LABELS = {
    "bridge": "runtime bridge",
    "runner": "runtime run (the runner itself)",
    "student": "the demo's student code (the runner's student process)",
    "zenoh": "runtime zenoh, a raw subscriber on runtime/**",
    "foxglove": "runtime foxglove, a client on every channel",
    "record": "runtime record",
    "emulator": "runtime emulate (the devices; not in the sum)",
    "demo": "runtime demo launcher and its cleaner (not in the sum)",
    "bench": "this bench: its Zenoh and WebSocket clients (not in the sum)",
}


class StackError(Exception):
    """The stack could not be brought up or measured; the message says which piece and why."""


# ---- /proc -------------------------------------------------------------------------------------


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (every thread's), empty when it is gone."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{task}/children") as file:
                found.extend(int(word) for word in file.read().split())
    return found


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    found, queue = [], [pid]
    while queue:
        current = queue.pop()
        found.append(current)
        queue.extend(children(current))
    return found


def cpu_ticks(pid: int, *, with_children: bool = True) -> int:
    """Clock ticks of CPU of a process (all threads) and its live descendants, plus those it reaped.

    0 for a process that is gone: its time then moved to its parent's reaped children.
    """
    total = 0
    for each in descendants(pid) if with_children else [pid]:
        try:
            with open(f"/proc/{each}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
        if each == pid and with_children:
            total += int(fields[13]) + int(fields[14])  # cutime, cstime: children it waited for
    return total


def thread_times(pid: int) -> dict[int, tuple[str, int, int]]:
    """Each thread of a process by id: its name, its voluntary context switches (about its wake-ups)
    and its CPU time in nanoseconds (``/proc/PID/task/TID/schedstat``); empty when it is gone."""
    found: dict[int, tuple[str, int, int]] = {}
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            base = f"/proc/{pid}/task/{task}"
            try:
                with open(f"{base}/comm") as file:
                    name = file.read().strip()
                with open(f"{base}/schedstat") as file:
                    nanoseconds = int(file.read().split()[0])
                with open(f"{base}/status") as file:
                    lines = [line for line in file if line.startswith("voluntary_ctxt")]
                switches = int(lines[0].split()[1])
            except (OSError, ValueError, IndexError):  # gone meanwhile
                continue
            found[int(task)] = (name, switches, nanoseconds)
    return found


# ---- the clients -------------------------------------------------------------------------------


class ZenohClient:
    """A raw Zenoh session (client mode, loopback) subscribed to ``runtime/**``: counts samples and keys."""

    def __init__(self, endpoint: str, timeout: float) -> None:
        import zenoh

        config = zenoh.Config()
        config.insert_json5("mode", '"client"')
        config.insert_json5("connect/endpoints", json.dumps([endpoint]))
        config.insert_json5("scouting/multicast/enabled", "false")

        def attempt() -> Any:
            try:
                return zenoh.open(config)
            except zenoh.ZError:
                return None

        self.session: Any = wait_for(attempt, timeout, f"a Zenoh session on {endpoint}", every=0.1)
        self.samples = 0
        self.keys: set[str] = set()
        self.subscriber = self.session.declare_subscriber("runtime/**", self._take)

    def _take(self, sample: Any) -> None:
        self.samples += 1  # callbacks come one at a time, under the GIL
        self.keys.add(str(sample.key_expr))

    def device_keys(self) -> int:
        """How many device keys (``runtime/<namespace>/<type>/<uid>``) sent samples so far."""
        return sum(1 for key in list(self.keys) if re.fullmatch(r"runtime/[^/]+/[^/@]+/0x[0-9a-f]+", key))

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.subscriber.undeclare()
        with contextlib.suppress(Exception):
            self.session.close()


class FoxgloveClient:
    """A WebSocket client of the Foxglove protocol, in a thread: subscribes to every channel, counts data."""

    def __init__(self, url: str) -> None:
        from websockets.sync.client import connect

        self._exit = contextlib.ExitStack()
        connection = connect(url, subprotocols=list(SUBPROTOCOLS), max_size=None)  # type: ignore[arg-type]
        self.ws: Any = self._exit.enter_context(connection)
        self.messages = 0
        self.channels: dict[int, str] = {}
        self.by_subscription: dict[int, int] = {}
        self.with_data: set[int] = set()
        self.errors: list[str] = []
        self._pending: list[tuple[float, int]] = []
        self._next_id = 0
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="bench-foxglove-client", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            timeout = 0.2
            if self._pending:
                timeout = max(0.0, min(self._pending)[0] - time.monotonic())
            try:
                raw = self.ws.recv(timeout=timeout)
            except TimeoutError:
                raw = None
            except Exception as exc:  # noqa: BLE001 - the connection ended: say so in the figures
                if not self._stop.is_set():
                    self.errors.append(f"connection: {exc}")
                return
            if isinstance(raw, bytes):
                if raw[:1] == b"\x01":  # message data: op, subscription id, timestamp, payload
                    self.messages += 1
                    (subscription,) = struct.unpack_from("<I", raw, 1)
                    self.with_data.add(self.by_subscription.get(subscription, -1))
            elif isinstance(raw, str):
                self._on_text(json.loads(raw))
            self._subscribe_due()

    def _on_text(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "advertise":
            for channel in message["channels"]:
                self.channels[channel["id"]] = channel["topic"]
                self._pending.append((time.monotonic() + SUBSCRIBE_DELAY, channel["id"]))
        elif op == "unadvertise":
            for channel_id in message["channelIds"]:
                self.channels.pop(channel_id, None)
        elif op == "status" and message.get("level", 0) >= 2:
            text = str(message.get("message"))
            self.errors.append(text)
            unknown = re.search(r"unknown channel(?: ID)?: (\d+)", text, re.IGNORECASE)
            if unknown and int(unknown[1]) in self.channels:  # subscribed too early: again, a moment later
                self._pending.append((time.monotonic() + SUBSCRIBE_DELAY, int(unknown[1])))

    def _subscribe_due(self) -> None:
        now = time.monotonic()
        due = [channel for when, channel in self._pending if when <= now]
        self._pending = [(when, channel) for when, channel in self._pending if when > now]
        subscriptions = []
        for channel in due:
            if channel in self.channels:
                self._next_id += 1
                self.by_subscription[self._next_id] = channel
                subscriptions.append({"id": self._next_id, "channelId": channel})
        if subscriptions:
            self.ws.send(json.dumps({"op": "subscribe", "subscriptions": subscriptions}))

    def device_topics_with_data(self) -> int:
        """How many device topics (``/runtime/<type>/<uid>``) sent data so far."""
        topics = [self.channels.get(channel, "") for channel in self.with_data]
        return sum(1 for topic in topics if topic.count("/") == 3 and topic.startswith("/runtime/"))

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(Exception):
            self._exit.close()
        self.thread.join(5)


def mcap_messages(path: str) -> int | None:
    """Messages in an MCAP file being written (up to its last complete record); None if unreadable."""
    from mcap.records import Message
    from mcap.stream_reader import StreamReader

    count = 0
    try:
        with open(path, "rb") as file:
            for record in StreamReader(file).records:
                if isinstance(record, Message):
                    count += 1
    except FileNotFoundError:
        return None
    except Exception:  # noqa: BLE001 - the file ends in the middle of a chunk being written
        pass
    return count


# ---- one run of the stack ----------------------------------------------------------------------


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nobody listens on (now)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def checkout(python: str) -> dict[str, Any]:
    """Which ``runtime`` an interpreter imports: its package directory, and the git commit of its checkout."""
    found: dict[str, Any] = {"python": python}
    try:
        done = subprocess.run(
            [python, "-c", "import os, runtime; print(os.path.dirname(runtime.__file__))"],
            capture_output=True,
            text=True,
            timeout=60,
            env=stack_environment(),
            cwd=tempfile.gettempdir(),
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StackError(f"cannot run {python}: {exc}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise StackError(f"{python} cannot import runtime: {last}")
    package = done.stdout.strip()
    found["package"] = package
    git = ["git", "-C", package]
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        found["commit"] = subprocess.check_output([*git, "rev-parse", "--short", "HEAD"], text=True).strip()
        changed = subprocess.check_output([*git, "status", "--porcelain", "--untracked-files=no"], text=True)
        found["modified"] = bool(changed.strip())
    return found


def stack_environment() -> dict[str, str]:
    """This environment without what would make another interpreter import this checkout's ``runtime``."""
    return {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}


@dataclass
class Stack:
    """The processes of one run, what they are and where their files go."""

    python: str
    namespace: str
    directory: str
    guard: SignalGuard
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    """Measured processes by role (the demo's children found in /proc)."""
    stats_path: str = ""

    @property
    def env(self) -> dict[str, str]:
        return dict(stack_environment(), RUNTIME_BUFFER_NAMESPACE=self.namespace, PYTHONUNBUFFERED="1")

    def start(self, role: str, *arguments: str, stdout: bool = False) -> subprocess.Popen[bytes]:
        """``PYTHON -m runtime ARGUMENTS`` in the namespace; stderr (and stdout unless piped) to its log."""
        log = os.path.join(self.directory, f"{role}.log")
        with self.guard.deferred():  # a signal now would leave a child unrecorded
            process = spawn(
                [self.python, "-m", "runtime", *arguments],
                log,
                self.env,
                stdout="pipe" if stdout else "log",
                cwd=self.directory,
            )
            self.processes[role] = process
        self.pids[role] = process.pid
        return process

    def log_tail(self, role: str, lines: int = 10) -> str:
        with contextlib.suppress(OSError), open(os.path.join(self.directory, f"{role}.log")) as file:
            return "".join(f"\n  | {line}" for line in file.read().splitlines(keepends=False)[-lines:])
        return ""

    def check(self) -> None:
        """Raise :class:`StackError` when a process of the stack exited."""
        for role, process in self.processes.items():
            status = process.poll()
            if status is not None:
                raise StackError(f"{LABELS.get(role, role)} exited (status {status}){self.log_tail(role)}")

    def find_demo_children(self) -> bool:
        """Record the demo's emulator, bridge, runner and cleaner once all run (and the student code)."""
        found: dict[str, int] = {}
        for pid in children(self.processes["demo"].pid):
            for role, command in (("emulator", "emulate"), ("bridge", "bridge"), ("runner", "run")):
                if runs_command(pid, command):
                    found[role] = pid
            if any("clean_after_demo" in word for word in command_line(pid)):
                found["cleaner"] = pid
        if not {"emulator", "bridge", "runner"} <= found.keys() or not children(found["runner"]):
            return False  # the runner's student process is not started yet
        argv = command_line(found["bridge"])
        if "--stats" not in argv[:-1]:
            raise StackError(f"the demo's bridge has no --stats file: {argv}")
        self.stats_path = argv[argv.index("--stats") + 1]
        self.pids.update(found)
        return os.path.exists(self.stats_path)

    def stop(self) -> dict[str, int | None]:
        """Stop the servers (SIGINT), then the demo (SIGTERM: it stops its children in order)."""
        statuses: dict[str, int | None] = {}
        for role in ("zenoh", "foxglove", "record", "demo"):
            process = self.processes.get(role)
            if process is None:
                continue
            signum = signal.SIGTERM if role == "demo" else signal.SIGINT
            statuses[role] = stop_process(process, signum, timeout=STOP_TIMEOUT)
            if process.stdout is not None:
                process.stdout.close()
        return statuses


def stats_stamp(path: str) -> tuple[int, int] | None:
    """What changes each time the bridge rewrites its stats file (atomically: a new inode)."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_ino, status.st_mtime_ns


def read_stats(path: str) -> tuple[int, int, int]:
    """The bridge's counters summed over its devices: messages in, messages out; and the device count."""
    with open(path) as file:
        devices = json.load(file).get("devices", [])
    return (
        sum(int(device.get("messages_in", 0)) for device in devices),
        sum(int(device.get("messages_out", 0)) for device in devices),
        len(devices),
    )


def next_stats(stack: Stack, after: float) -> tuple[float, tuple[int, int, int]]:
    """Wait until ``after`` (monotonic), then for the bridge's next stats rewrite; (when, its counters)."""
    time.sleep(max(0.0, after - time.monotonic()))
    stamp = stats_stamp(stack.stats_path)

    def rewritten() -> bool:
        stack.check()
        return stats_stamp(stack.stats_path) != stamp

    wait_for(rewritten, 10.0, "the bridge's stats file to be rewritten", every=0.002)
    return time.monotonic(), read_stats(stack.stats_path)


@dataclass
class Snapshot:
    """What is read at one end of the window."""

    when: float
    bridge: tuple[int, int, int]
    ticks: dict[str, int]
    zenoh: int
    foxglove: int
    record: int | None
    threads: dict[str, dict[int, tuple[str, int, int]]]
    """Per process of the stack: :func:`thread_times`."""


def snapshot(stack: Stack, after: float, zenoh: ZenohClient, fox: FoxgloveClient, record: str) -> Snapshot:
    when, bridge = next_stats(stack, after)
    ticks = {role: cpu_ticks(pid) for role, pid in stack.pids.items() if role not in ("cleaner", "demo")}
    ticks["student"] = ticks["runner"] - cpu_ticks(stack.pids["runner"], with_children=False)
    ticks["runner"] -= ticks["student"]
    ticks["demo"] = cpu_ticks(stack.pids["demo"], with_children=False)
    if "cleaner" in stack.pids:
        ticks["demo"] += cpu_ticks(stack.pids["cleaner"])
    ticks["bench"] = cpu_ticks(os.getpid(), with_children=False)
    pids = {role: pid for role, pid in stack.pids.items() if role in STACK}
    for child in children(stack.pids["runner"])[:1]:  # the runner's student process
        pids["student"] = child
    threads = {role: thread_times(pid) for role, pid in pids.items()}
    return Snapshot(when, bridge, ticks, zenoh.samples, fox.messages, mcap_messages(record), threads)


def run_stack(python: str, seconds: float, index: int, guard: SignalGuard) -> dict[str, Any]:
    """Bring the stack up with ``python``, measure it over ``seconds``, stop it and clean up; the figures."""
    namespace = f"rt-stack-{os.getpid()}-{index}"
    directory = tempfile.mkdtemp(prefix=f"rt-stack-{os.getpid()}-")
    stack = Stack(python, namespace, directory, guard)
    zenoh: ZenohClient | None = None
    fox: FoxgloveClient | None = None
    result: dict[str, Any] = {"namespace": namespace, "python": python}
    try:
        deadline = time.monotonic() + START_TIMEOUT

        def remaining() -> float:
            return max(0.1, deadline - time.monotonic())

        # A backstop: the demo ends by itself even if it is never told to (it also dies with this process).
        duration = f"{START_TIMEOUT + seconds + 600:g}"
        stack.start("demo", "demo", "--duration", duration, "--namespace", namespace, "--json", stdout=True)
        what = "the demo's devices, bridge and student code"
        wait_for(stack.find_demo_children, remaining(), what, every=0.05, check=stack.check)
        port = free_port()
        stack.start("zenoh", "zenoh", "--listen", f"tcp/127.0.0.1:{port}", "--namespace", namespace)
        fox_server = stack.start("foxglove", "foxglove", "--port", "0", "--namespace", namespace, stdout=True)
        record_path = os.path.join(directory, "stack.mcap")
        stack.start("record", "record", record_path, "--namespace", namespace)
        assert fox_server.stdout is not None
        line = " ".join(read_lines(fox_server.stdout, 1, time.monotonic() + remaining()))
        url = re.search(r"ws://\S+", line)
        if url is None:
            stack.check()
            raise StackError(f"runtime foxglove printed no URL: {line!r}{stack.log_tail('foxglove')}")
        fox = FoxgloveClient(url[0])
        zenoh = ZenohClient(f"tcp/127.0.0.1:{port}", remaining())

        def receiving() -> bool:
            stack.check()
            assert zenoh is not None and fox is not None
            return (
                zenoh.device_keys() >= DEMO_DEVICES
                and fox.device_topics_with_data() >= DEMO_DEVICES
                and bool(mcap_messages(record_path))
            )

        try:
            wait_for(receiving, remaining(), every=0.05)
        except TimeoutError:
            raise StackError(
                f"the clients did not receive data from every device within {START_TIMEOUT:g} s: Zenoh keys "
                f"{sorted(zenoh.keys)}, Foxglove topics with data {fox.device_topics_with_data()} "
                f"(errors {fox.errors[:3]}), records {mcap_messages(record_path)}"
            ) from None
        first = snapshot(stack, 0.0, zenoh, fox, record_path)
        last = snapshot(stack, first.when + seconds - 0.05, zenoh, fox, record_path)
        result.update(figures(first, last))
        result["pids"] = dict(stack.pids)
        result["foxglove_errors"] = fox.errors[:5]
    finally:
        guard.stopping = True  # from here on a signal cannot cut the cleanup short
        for client in (fox, zenoh):
            if client is not None:
                client.close()
        result["exit_status"] = stack.stop()
        result["left_over"] = clean_namespace(namespace)
        shutil.rmtree(directory, ignore_errors=True)
    return result


def remove_stale_directories() -> None:
    """Remove the temporary directories of benches killed outright (SIGKILL: they could not)."""
    with contextlib.suppress(OSError):
        for entry in os.listdir(tempfile.gettempdir()):
            found = re.fullmatch(r"rt-stack-(\d+)-\w+", entry)
            if found and not pid_alive(int(found[1])):
                shutil.rmtree(os.path.join(tempfile.gettempdir(), entry), ignore_errors=True)


def clean_namespace(namespace: str) -> dict[str, list[Any]]:
    """Unlink what is left of the namespace (the demo should have); what was left (empty: nothing)."""
    with contextlib.suppress(TimeoutError):
        wait_for(lambda: not namespace_processes(namespace), STOP_TIMEOUT, every=0.05)
    processes = namespace_processes(namespace)
    for pid in processes:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    segments = [entry for entry in sorted(os.listdir("/dev/shm")) if entry.startswith(namespace + "-")]
    for entry in segments:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join("/dev/shm", entry))
    return {"segments": segments, "processes": processes}


def figures(first: Snapshot, last: Snapshot) -> dict[str, Any]:
    """The window's figures from its two ends."""
    window = last.when - first.when
    changes = last.bridge[0] - first.bridge[0]
    writes = last.bridge[1] - first.bridge[1]
    processes: dict[str, Any] = {}
    for role in (*STACK, *APART):
        cpu = (last.ticks.get(role, 0) - first.ticks.get(role, 0)) / TICK
        processes[role] = {
            "cpu_percent": 100 * cpu / window,
            "us_per_change": cpu / changes * 1e6 if changes else None,
        }
    total = sum(processes[role]["cpu_percent"] for role in STACK)
    threads: dict[str, list[dict[str, Any]]] = {}
    for role, after in last.threads.items():
        before = first.threads.get(role, {})
        rows = []
        for tid, (name, switches, nanoseconds) in after.items():
            if tid not in before or nanoseconds <= before[tid][2]:
                continue  # new in the window (not comparable), or idle
            cpu, wakeups = (nanoseconds - before[tid][2]) * 1e-9, switches - before[tid][1]
            rows.append(
                {
                    "tid": tid,
                    "name": name,
                    "cpu_percent": 100 * cpu / window,
                    "wakeups_per_s": wakeups / window,
                    "us_per_wakeup": cpu / wakeups * 1e6 if wakeups else None,
                }
            )
        threads[role] = sorted(rows, key=lambda row: -row["cpu_percent"])
    record = None if first.record is None or last.record is None else last.record - first.record
    return {
        "seconds": window,
        "devices": last.bridge[2],
        "changes": changes,
        "changes_per_s": changes / window,
        "changes_are": "messages the bridge received from the devices (its --stats messages_in)",
        "writes": writes,
        "writes_are": "messages the bridge sent to the devices (its --stats messages_out)",
        "processes": processes,
        "total": {
            "cpu_percent": total,
            "us_per_change": total / 100 * window / changes * 1e6 if changes else None,
            "of": list(STACK),
        },
        "deliveries": {
            "zenoh_samples": last.zenoh - first.zenoh,
            "foxglove_messages": last.foxglove - first.foxglove,
            "record_messages": record,
        },
        "load_average": os.getloadavg()[0],
        "threads": threads,
        "threads_are": "per thread of each process of the stack: CPU, voluntary context switches a second "
        "(about its wake-ups) and CPU per wake-up, from /proc/PID/task/TID",
    }


# ---- rounds, comparison, output ----------------------------------------------------------------


@contextlib.contextmanager
def _guarded() -> Iterator[SignalGuard]:
    with SignalGuard() as guard:
        yield guard


def run_all(
    seconds: float = SECONDS,
    python: str | None = None,
    compare: str | None = None,
    rounds: int | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the stack ``rounds`` times with ``python`` (and alternately with ``compare`` first); the figures.

    Returns ``{"seconds", "sets": [{"label", "checkout", "rounds": [...], "median": {...}}]}``: one
    set, or two (``before``: ``compare``, ``after``: ``python``).
    """
    python = python or sys.executable
    rounds = rounds or (2 if compare else 1)
    remove_stale_directories()
    order = [("before", compare), ("after", python)] if compare else [("this", python)]
    sets: list[dict[str, Any]] = [
        {"label": label, "checkout": checkout(path), "rounds": []} for label, path in order
    ]
    index = 0
    for number in range(rounds):
        for entry, (label, path) in zip(sets, order, strict=True):
            if progress is not None:
                progress(f"round {number + 1}/{rounds}: {label} ({path}), {seconds:g} s")
            with _guarded() as guard:
                entry["rounds"].append(run_stack(path, seconds, index, guard))
            index += 1
    for entry in sets:
        entry["median"] = medians(entry["rounds"])
    return {"seconds": seconds, "rounds": rounds, "sets": sets}


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per process: the median and the range over the rounds of CPU % and µs per change."""

    def spread(values: list[float | None]) -> dict[str, float | None]:
        known = [value for value in values if value is not None]
        if not known:
            return {"median": None, "low": None, "high": None}
        return {"median": statistics.median(known), "low": min(known), "high": max(known)}

    rows: dict[str, Any] = {}
    for role in (*STACK, "total", *APART):
        entries = [run["total"] if role == "total" else run["processes"][role] for run in runs]
        rows[role] = {
            key: spread([entry[key] for entry in entries]) for key in ("cpu_percent", "us_per_change")
        }
    rows["changes_per_s"] = spread([run["changes_per_s"] for run in runs])
    return rows


def _figure(spread: dict[str, float | None], unit: str, digits: int) -> str:
    median, low, high = spread["median"], spread["low"], spread["high"]
    if median is None or low is None or high is None:
        return ""
    text = f"{median:.{digits}f}{unit}"
    return text if low == high else f"{text} ({low:.{digits}f}-{high:.{digits}f})"


def _name(checkout: dict[str, Any]) -> str:
    commit = checkout.get("commit", "?") + (" modified" if checkout.get("modified") else "")
    return f"{checkout['python']} ({checkout.get('package', '?')} @ {commit})"


def describe(results: dict[str, Any]) -> str:
    """The figures as a Markdown table: one set, or two side by side (medians over rounds, and ranges)."""
    sets = results["sets"]
    lines = [
        f"The robot stack at the demo's load: each process's CPU as % of one core, and µs of CPU per change, "
        f"over {results['seconds']:g} s, median (range) of {results['rounds']} round(s)"
        + (" each, alternating" if len(sets) > 1 else ""),
    ]
    for entry in sets:
        rate = _figure(entry["median"]["changes_per_s"], "", 1)
        load = ", ".join(f"{run['load_average']:.1f}" for run in entry["rounds"])
        lines.append(f"  {entry['label']}: {_name(entry['checkout'])}: {rate} changes/s; load average {load}")
    lines.append(
        "  changes: messages the bridge received (its --stats messages_in); deliveries (last round): "
        "Zenoh samples, Foxglove messages, records written"
    )
    header = "| process |" + "".join(f" {e['label']} CPU | {e['label']} µs/change |" for e in sets)
    lines += ["", header + " deliveries |", "|---|" + "---|---|" * len(sets) + "---|"]
    for role in (*STACK, "total", *APART):
        label = "**all together**" if role == "total" else LABELS[role]
        cells = "".join(
            f" {_figure(e['median'][role]['cpu_percent'], ' %', 1)} |"
            f" {_figure(e['median'][role]['us_per_change'], '', 0)} |"
            for e in sets
        )
        lines.append(f"| {label} |{cells} {_deliveries(sets[-1]['rounds'][-1], role)} |")
    return "\n".join(lines)


def describe_threads(results: dict[str, Any], smallest: float = 0.01) -> str:
    """Each thread of the stack's processes (the last round of each set) using at least ``smallest`` %:
    where the CPU goes, and how often each thread wakes up for it."""
    lines = []
    for entry in results["sets"]:
        run = entry["rounds"][-1]
        lines += [
            "",
            f"threads, {entry['label']} (its last round): CPU as % of one core, wake-ups a second "
            "(voluntary context switches), µs of CPU per wake-up",
            "| process | thread | CPU | wake-ups/s | µs/wake-up |",
            "|---|---|---|---|---|",
        ]
        for role in STACK:
            for row in run.get("threads", {}).get(role, []):
                if row["cpu_percent"] < smallest:
                    continue
                per = "" if row["us_per_wakeup"] is None else f"{row['us_per_wakeup']:.0f}"
                lines.append(
                    f"| {role} | {row['name']} ({row['tid']}) | {row['cpu_percent']:.2f} % |"
                    f" {row['wakeups_per_s']:.0f} | {per} |"
                )
    return "\n" + "\n".join(lines)


def _deliveries(run: dict[str, Any], role: str) -> str:
    deliveries = run["deliveries"]
    if role == "bridge":
        return f"{run['changes']} in, {run['writes']} out"
    if role == "zenoh":
        return f"{deliveries['zenoh_samples']} samples"
    if role == "foxglove":
        return f"{deliveries['foxglove_messages']} messages"
    if role == "record":
        count = deliveries["record_messages"]
        return "?" if count is None else f"{count} records"
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=float, default=SECONDS, help="the measuring window (default 10)")
    parser.add_argument("--python", help="run the stack with this interpreter (default: this one)")
    parser.add_argument(
        "--compare", metavar="PATH", help="also run it with this interpreter (before), alternately"
    )
    parser.add_argument("--rounds", type=int, help="rounds of each (default 2 with --compare, else 1)")
    parser.add_argument(
        "--threads",
        action="store_true",
        help="also each process's threads: CPU, wake-ups a second and CPU per wake-up (always in --json)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    if args.seconds <= 0 or (args.rounds is not None and args.rounds < 1):
        parser.error("--seconds must be positive and --rounds at least 1")

    def progress(line: str) -> None:
        print(f"bench/stack.py: {line}", file=sys.stderr, flush=True)

    try:
        results = run_all(args.seconds, args.python, args.compare, args.rounds, progress)
    except (StackError, TimeoutError) as exc:  # a piece that failed, or did not come up in time
        print(f"bench/stack.py: error: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, Interrupted):
        print("bench/stack.py: interrupted; everything stopped and removed", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print(describe(results) + (describe_threads(results) if args.threads else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
