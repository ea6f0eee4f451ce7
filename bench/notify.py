"""Change-notification benchmarks: wake-up latency against the OS floor, write-to-device latency, idle CPU.

* ``wake_latency``: two processes ping-pong through two buffers (A ``set``s,
  B returns from ``wait_update`` and ``set``s the other, A returns from its
  wait); one-way latency is half a round trip. Beside it, the same ping-pong
  over a pair of pipes between the same two processes: the OS floor.
* ``write_to_device``: the bridge serves a device played by this process on a
  pseudo-terminal; the time from ``write()`` to the DEV_WRITE frame arriving
  on the device's side of the pty.
* ``idle_wait_cpu``: the CPU a consumer uses while waiting for a buffer that
  does not change.

Run through ``bench/run.py`` (scenarios), or alone: ``python bench/notify.py``.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import select
import subprocess
import sys
import time
import tty
from typing import Any

from runtime import catalog
from runtime.buffer import Buffer, DeviceUID, Parameter
from runtime.messaging import FrameSplitter, Message, MessageType
from runtime.store import BufferStore

Ping = Buffer.make_type("bench-ping", [Parameter("n", ctypes.c_int64, 0)])


def percentiles(samples_ns: list[float] | list[int]) -> dict[str, float]:
    """Sample count, p50 and p99 in microseconds of latencies in nanoseconds (NaN when there are none);
    bench/bridge.py's too."""
    ordered = sorted(samples_ns)
    if not ordered:
        return {"samples": 0, "p50_us": float("nan"), "p99_us": float("nan")}
    return {
        "samples": len(ordered),
        "p50_us": ordered[len(ordered) // 2] / 1e3,
        "p99_us": ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1e3,
    }


def wake_latency(samples: int = 10_000) -> dict[str, Any]:
    """One-way latency of a wake-up across processes, beside a pipe ping-pong (the OS floor)."""
    tag = f"{BufferStore.namespace()}-bench-wake-{os.getpid()}"
    ping, pong = Ping.attach(f"{tag}-a"), Ping.attach(f"{tag}-b")
    to_child_r, to_child_w = os.pipe()
    to_parent_r, to_parent_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the echo: buffers first, then pipes
        try:
            mine, theirs = Ping.attach(f"{tag}-a", create=False), Ping.attach(f"{tag}-b", create=False)
            for n in range(samples):
                mine.wait_update(10)
                theirs.set("n", n)
            for _ in range(samples):
                os.read(to_child_r, 1)
                os.write(to_parent_w, b"x")
        finally:
            os._exit(0)
    buffers: list[float] = []
    pipes: list[float] = []
    try:
        time.sleep(0.2)
        for n in range(samples):
            started = time.perf_counter_ns()
            ping.set("n", n)
            pong.wait_update(10)
            buffers.append((time.perf_counter_ns() - started) / 2)
        for _ in range(samples):
            started = time.perf_counter_ns()
            os.write(to_child_w, b"x")
            os.read(to_parent_r, 1)
            pipes.append((time.perf_counter_ns() - started) / 2)
    finally:
        os.waitpid(pid, 0)
        for fd in (to_child_r, to_child_w, to_parent_r, to_parent_w):
            os.close(fd)
        for buffer in (ping, pong):
            buffer.close()
            Ping.unlink(buffer.name)
    result = {"buffer": percentiles(buffers), "pipe": percentiles(pipes)}
    result["p50_ratio_to_pipe"] = result["buffer"]["p50_us"] / result["pipe"]["p50_us"]
    return result


def write_to_device(samples: int = 100) -> dict[str, Any]:
    """write() in this process to the DEV_WRITE frame on the device's pty, through a real bridge."""
    cat = catalog.load()
    servo = cat["servo-motor"]
    uid = int(DeviceUID(servo.device_id, 1, os.getpid()))  # type: ignore[attr-defined]
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    path = os.ttyname(slave)
    namespace = f"rt-bench-write-{os.getpid()}"
    env = {**os.environ, "RUNTIME_BUFFER_NAMESPACE": namespace}
    bridge = subprocess.Popen(
        [sys.executable, "-m", "runtime.tools.bridge", "--port", path],
        env=env,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
    )
    splitter = FrameSplitter()
    latencies: list[float] = []

    def messages(timeout: float) -> list[Message]:
        ready, _, _ = select.select([master], [], [], timeout)
        if not ready:
            return []
        try:
            data = os.read(master, 4096)
        except BlockingIOError:
            return []
        return [Message.decode(frame) for frame in splitter.feed(data)]

    def answer(message: Message) -> None:
        if message.type == MessageType.PING:
            parts = DeviceUID.from_int(uid)
            reply = Message.make_sub_res(0, 0, parts.device_id, parts.year, parts.random)
            os.write(master, reply.encode() + b"\0")
        elif message.type == MessageType.HB_REQ:
            os.write(master, Message.make_hb_res(message.read_hb_req()).encode() + b"\0")

    previous = os.environ.get("RUNTIME_BUFFER_NAMESPACE")
    os.environ["RUNTIME_BUFFER_NAMESPACE"] = namespace
    try:
        with BufferStore(cat) as store:
            deadline = time.monotonic() + 20
            motor = None
            while motor is None or not motor.valid:
                for message in messages(0.05):
                    answer(message)
                try:
                    motor = store.get_or_open(uid, create=False)
                except Exception:  # noqa: BLE001 - not made yet
                    motor = None
                if time.monotonic() > deadline:
                    raise RuntimeError("the bridge never served the device")
            time.sleep(0.2)
            while messages(0.05):
                pass
            for n in range(samples):
                time.sleep(float(servo.write_interval) + 0.01)  # one batch per write_interval: space them out
                while (early := messages(0)) != []:
                    for message in early:
                        answer(message)
                started = time.perf_counter_ns()
                motor.write("servo0", (n % 100) / 100)
                got = False
                while not got:
                    for message in messages(1.0):
                        answer(message)
                        got = got or message.type == MessageType.DEV_WRITE
                    if time.perf_counter_ns() - started > 2e9:
                        break
                if got:
                    latencies.append(time.perf_counter_ns() - started)
            store.unlink_all()
    finally:
        bridge.terminate()
        bridge.wait(10)
        os.close(master)
        os.close(slave)
        if previous is None:
            os.environ.pop("RUNTIME_BUFFER_NAMESPACE", None)
        else:
            os.environ["RUNTIME_BUFFER_NAMESPACE"] = previous
    return percentiles(latencies)


def idle_wait_cpu(seconds: float = 2.0) -> dict[str, float]:
    """CPU seconds a consumer spends waiting ``seconds`` for a buffer that does not change."""
    name = f"{BufferStore.namespace()}-bench-idle-{os.getpid()}"
    with Ping.open(name) as buffer:
        before = resource.getrusage(resource.RUSAGE_SELF)
        buffer.wait_update(seconds)
        after = resource.getrusage(resource.RUSAGE_SELF)
    Ping.unlink(name)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"seconds": seconds, "cpu_seconds": cpu, "cpu_percent": 100 * cpu / seconds}


def _spin_reads(name: str, seconds: float, go: Any) -> None:
    with Ping.open(name, create=False) as buffer:
        get = buffer.get
        go.wait(30)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for _ in range(1000):
                get("n")


def _writes_per_second(buffer: Buffer, seconds: float) -> float:
    set_ = buffer.set
    done = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for n in range(1000):
            set_("n", n)
        done += 1000
    return done / seconds


def reader_interference(seconds: float = 1.0, readers: int = 3) -> dict[str, float]:
    """A writer's set() rate alone, then with ``readers`` processes reading the same buffer flat out."""
    import multiprocessing

    name = f"{BufferStore.namespace()}-bench-readers-{os.getpid()}"
    context = multiprocessing.get_context("fork")
    with Ping.open(name) as buffer:
        alone = _writes_per_second(buffer, seconds)
        go = context.Event()
        processes = [
            context.Process(target=_spin_reads, args=(name, seconds + 1, go)) for _ in range(readers)
        ]
        for process in processes:
            process.start()
        go.set()
        time.sleep(0.3)
        contended = _writes_per_second(buffer, seconds)
        for process in processes:
            process.join(30)
    Ping.unlink(name)
    ratio = contended / alone
    return {"alone_per_s": alone, "with_readers_per_s": contended, "ratio": ratio, "readers": readers}


def run_all() -> dict[str, Any]:
    """Every notification benchmark."""
    return {
        "wake_latency": wake_latency(),
        "write_to_device": write_to_device(),
        "idle_wait": idle_wait_cpu(),
        "reader_interference": reader_interference(),
    }


def describe(results: dict[str, Any]) -> str:
    """The figures as text lines."""
    wake = results["wake_latency"]
    write = results["write_to_device"]
    idle = results["idle_wait"]
    readers = results["reader_interference"]
    return "\n".join(
        [
            f"wake-up across processes (one way, {wake['buffer']['samples']} samples): "
            f"p50 {wake['buffer']['p50_us']:.1f} us, p99 {wake['buffer']['p99_us']:.1f} us; "
            f"pipe floor p50 {wake['pipe']['p50_us']:.1f} us, p99 {wake['pipe']['p99_us']:.1f} us "
            f"(p50 ratio {wake['p50_ratio_to_pipe']:.2f})",
            f"write() to DEV_WRITE on the pty, through the bridge ({write['samples']} samples): "
            f"p50 {write['p50_us'] / 1e3:.2f} ms, p99 {write['p99_us'] / 1e3:.2f} ms",
            f"waiting {idle['seconds']:g} s on a buffer that does not change: "
            f"{idle['cpu_seconds'] * 1e3:.1f} ms CPU ({idle['cpu_percent']:.2f} %)",
            f"a writer's set() rate with {readers['readers']} processes reading the same buffer flat out: "
            f"{readers['ratio']:.2f} of its rate alone ({readers['alone_per_s'] / 1e6:.2f} M/s)",
        ]
    )


if __name__ == "__main__":
    figures = run_all()
    print(json.dumps(figures, indent=2) if "--json" in sys.argv else describe(figures))
