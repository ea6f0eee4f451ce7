"""Safety benchmarks: how fast a motor stops when its commander dies, and when the robot is disabled.

* ``commander_death``: a real bridge serves servo motors played by this
  process on pseudo-terminals. A forked child writes ``servo0`` (a command: it
  becomes the commander) and waits; once the DEV_WRITE carrying its value
  reached the pty, the child is SIGKILLed, and the time from ``kill()`` to the
  DEV_WRITE carrying the safe value on the pty is one sample. Beside it, in
  the same run, the same bridge's ``write()`` to DEV_WRITE (what any command
  costs to reach the device): the floor of the path after the death is seen.
* ``disable``: ``BufferStore.disable()`` (what ``runtime disable`` calls) to
  DEV_DISABLE on every pty, with :data:`DISABLE_DEVICES` devices; then
  ``enable()`` and again. And ``runtime disable`` as a command, start to
  last DEV_DISABLE (mostly the interpreter starting).

Run through ``bench/run.py`` (scenarios), or alone: ``python bench/safety.py [--json]``.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import tty
from typing import Any

from notify import percentiles

from runtime import catalog
from runtime.buffer import DeviceBuffer, DeviceUID
from runtime.messaging import FrameSplitter, Message, MessageType
from runtime.store import BufferStore

DISABLE_DEVICES = 5
"""Servo motors on their own ptys in the disable benchmark."""
DEATH_SAMPLES = 60
DISABLE_SAMPLES = 40
COMMAND_RUNS = 10
TIMEOUT = 5.0
"""Seconds any one frame may take before the sample is dropped (counted as lost)."""


class _Device:
    """One servo motor played on a pty: answers PING and heartbeats, collects what else arrives."""

    def __init__(self, uid: int) -> None:
        self.uid = uid
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        self.splitter = FrameSplitter()

    def messages(self) -> list[Message]:
        """Frames read now (answering PING and HB_REQ), without waiting."""
        try:
            data = os.read(self.master, 65536)
        except BlockingIOError:
            return []
        found = []
        for frame in self.splitter.feed(data):
            message = Message.decode(frame)
            if message.type == MessageType.PING:
                parts = DeviceUID.from_int(self.uid)
                reply = Message.make_sub_res(0, 0, parts.device_id, parts.year, parts.random)
                os.write(self.master, reply.encode() + b"\0")
            elif message.type == MessageType.HB_REQ:
                os.write(self.master, Message.make_hb_res(message.read_hb_req()).encode() + b"\0")
            else:
                found.append(message)
        return found

    def close(self) -> None:
        os.close(self.master)
        os.close(self.slave)


class _Rig:
    """A bridge in a namespace of its own serving ``count`` servo motors played here."""

    def __init__(self, count: int) -> None:
        self.catalog = catalog.load()
        self.servo: type[DeviceBuffer] = self.catalog["servo-motor"]  # type: ignore[assignment]
        self.namespace = f"rt-bench-safety-{os.getpid()}-{count}"
        self.devices = [
            _Device(int(DeviceUID(self.servo.device_id, 1, os.getpid() << 8 | n))) for n in range(count)
        ]
        self.env = {**os.environ, "RUNTIME_BUFFER_NAMESPACE": self.namespace}
        self.bridge = subprocess.Popen(
            [sys.executable, "-m", "runtime.tools.bridge", *(f"--port={d.path}" for d in self.devices)],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.previous = os.environ.get("RUNTIME_BUFFER_NAMESPACE")
        os.environ["RUNTIME_BUFFER_NAMESPACE"] = self.namespace
        self.store = BufferStore(self.catalog)
        self.scratch = self.servo.attach("bench-safety-scratch", shared=False)
        try:
            self.buffers = [self._served(device) for device in self.devices]
            self.drain(0.2)
        except BaseException:
            self.close()
            raise

    def _served(self, device: _Device) -> DeviceBuffer:
        deadline = time.monotonic() + 20
        while True:
            self.poll(0.02)
            try:
                buffer = self.store.get_or_open(device.uid, create=False)
                if buffer.valid:
                    return buffer
            except Exception:  # noqa: BLE001 - not made yet
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the bridge never served the devices")

    def poll(self, timeout: float) -> list[tuple[_Device, Message]]:
        """Wait up to ``timeout`` for frames on any pty; the ones that are not PING or heartbeats."""
        ready, _, _ = select.select([d.master for d in self.devices], [], [], timeout)
        return [(d, message) for d in self.devices if d.master in ready for message in d.messages()]

    def drain(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.poll(0.01)

    def servo0(self, message: Message) -> float | None:
        """The servo0 value a DEV_WRITE carries, or None."""
        if message.type != MessageType.DEV_WRITE:
            return None
        self.scratch.update(message)
        return self.scratch.get_write().get("servo0")

    def wait_for_servo0(self, value: float, deadline_ns: int) -> int | None:
        """perf_counter_ns when a DEV_WRITE of ``servo0 = value`` arrived, or None past the deadline."""
        while time.perf_counter_ns() < deadline_ns:
            for _device, message in self.poll(0.05):
                if self.servo0(message) == value:
                    return time.perf_counter_ns()
        return None

    def close(self) -> None:
        self.bridge.terminate()
        try:
            self.bridge.wait(10)
        except subprocess.TimeoutExpired:
            self.bridge.kill()
            self.bridge.wait()
        self.scratch.close()
        self.store.unlink_all()
        self.store.close()
        for device in self.devices:
            device.close()
        if self.previous is None:
            os.environ.pop("RUNTIME_BUFFER_NAMESPACE", None)
        else:
            os.environ["RUNTIME_BUFFER_NAMESPACE"] = self.previous


def commander_death(samples: int = DEATH_SAMPLES) -> dict[str, Any]:
    """SIGKILL of a commander to the safe DEV_WRITE on the pty; beside it, write() to DEV_WRITE."""
    rig = _Rig(1)
    motor = rig.buffers[0]
    interval = float(rig.servo.write_interval)
    deaths: list[int] = []
    writes: list[int] = []
    lost = 0
    try:
        for n in range(samples):
            value = (8 + n % 40) / 64  # exact in float32
            # write() in this process to DEV_WRITE: the floor of the path once the bridge knows
            time.sleep(interval + 0.005)
            rig.drain(0)
            started = time.perf_counter_ns()
            motor.write("servo0", -value)
            arrived = rig.wait_for_servo0(-value, started + int(TIMEOUT * 1e9))
            if arrived is not None:
                writes.append(arrived - started)
            time.sleep(interval + 0.005)
            child = os.fork()
            if child == 0:  # the commander: writes, then waits to be killed
                try:
                    motor.write("servo0", value)
                    signal.pause()
                finally:
                    os._exit(0)
            try:
                taken = rig.wait_for_servo0(value, time.perf_counter_ns() + int(TIMEOUT * 1e9))
                if taken is None:
                    lost += 1
                    continue
                killed = time.perf_counter_ns()
                os.kill(child, signal.SIGKILL)
                safe = rig.wait_for_servo0(0.0, killed + int(TIMEOUT * 1e9))
                if safe is None:
                    lost += 1
                else:
                    deaths.append(safe - killed)
            finally:
                os.kill(child, signal.SIGKILL)
                os.waitpid(child, 0)
    finally:
        rig.close()
    return {"death_to_safe": percentiles(deaths), "write_to_device": percentiles(writes), "lost": lost}


def _all_disabled(rig: _Rig, started: int) -> int | None:
    """perf_counter_ns when the last pty got its DEV_DISABLE, or None after TIMEOUT."""
    waiting = set(range(len(rig.devices)))
    deadline = started + int(TIMEOUT * 1e9)
    while waiting and time.perf_counter_ns() < deadline:
        for device, message in rig.poll(0.05):
            if message.type == MessageType.DEV_DISABLE:
                waiting.discard(rig.devices.index(device))
    return None if waiting else time.perf_counter_ns()


def disable(devices: int = DISABLE_DEVICES, samples: int = DISABLE_SAMPLES) -> dict[str, Any]:
    """disable() to DEV_DISABLE on every pty; and ``runtime disable`` as a command."""
    rig = _Rig(devices)
    calls: list[int] = []
    commands: list[int] = []
    lost = 0
    try:
        for _ in range(samples):
            started = time.perf_counter_ns()
            rig.store.disable()
            done = _all_disabled(rig, started)
            if done is None:
                lost += 1
            else:
                calls.append(done - started)
            rig.store.enable()
            rig.drain(0.05)
        for _ in range(COMMAND_RUNS):
            started = time.perf_counter_ns()
            command = subprocess.Popen(
                [sys.executable, "-m", "runtime", "disable"], env=rig.env, stdout=subprocess.DEVNULL
            )
            done = _all_disabled(rig, started)
            command.wait(30)
            if done is None:
                lost += 1
            else:
                commands.append(done - started)
            rig.store.enable()
            rig.drain(0.05)
    finally:
        rig.close()
    return {
        "devices": devices,
        "call_to_all_disabled": percentiles(calls),
        "command_to_all_disabled": percentiles(commands),
        "lost": lost,
    }


def run_all() -> dict[str, Any]:
    """Every safety benchmark."""
    return {"commander_death": commander_death(), "disable": disable()}


def describe(results: dict[str, Any]) -> str:
    """The figures as text lines."""
    death = results["commander_death"]
    off = results["disable"]

    def ms(figures: dict[str, float]) -> str:
        return f"p50 {figures['p50_us'] / 1e3:.2f} ms, p99 {figures['p99_us'] / 1e3:.2f} ms"

    deaths = death["death_to_safe"]["samples"]
    calls = off["call_to_all_disabled"]["samples"]
    return "\n".join(
        [
            f"commander SIGKILL to the safe DEV_WRITE on the pty ({deaths} samples): "
            f"{ms(death['death_to_safe'])}; beside it write() to DEV_WRITE {ms(death['write_to_device'])}"
            + (f"; {death['lost']} lost" if death["lost"] else ""),
            f"disable() to DEV_DISABLE on all {off['devices']} ptys ({calls} samples): "
            f"{ms(off['call_to_all_disabled'])}; 'runtime disable' (a new interpreter) "
            f"{ms(off['command_to_all_disabled'])}" + (f"; {off['lost']} lost" if off["lost"] else ""),
        ]
    )


if __name__ == "__main__":
    figures = run_all()
    print(json.dumps(figures, indent=2) if "--json" in sys.argv else describe(figures))
