"""``runtime buffers hz`` and ``echo``, and their engine :mod:`runtime.rates`.

A buffer served by the test (a producer thread) changes at a pace the test
sets; echo is checked in lockstep (each change echoed exactly once, in order),
rates only for sanity (never a timing bound a busy machine could break).
"""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import IO, Any

import pytest
from e2e import CATALOG, SERVO, make_uid, namespace_fixture, wait_for

from runtime.buffer import BufferStore, DeviceBuffer
from runtime.rates import RateMeter, changes, measure

namespace = namespace_fixture("rt-test-rates", scope="function")


@pytest.fixture
def servo(namespace: str) -> Iterator[DeviceBuffer]:
    with BufferStore(CATALOG) as store:
        buffer: Any = store.get_or_open(("servo-motor", make_uid(SERVO)))
        buffer.serve()  # the test plays the bridge
        yield buffer


def test_the_meter_gives_the_rate_and_the_interval_statistics_over_its_window() -> None:
    meter = RateMeter(window=3)
    for stamp in (0.0, 1.0, 1.5, 2.0, 2.5):  # the window keeps the last 3 intervals: 0.5 each
        meter.tick("a", stamp)
    meter.add("b")
    a, b = meter.rates()
    assert (a.key, a.count, a.samples, a.rate, a.min, a.max, a.std) == ("a", 5, 3, 2.0, 0.5, 0.5, 0.0)
    assert b.rate is None and b.count == 0 and "no changes yet" in b.line()
    assert "average rate: 2.000 Hz" in a.line() and a.to_json()["rate"] == 2.0


def test_changes_yields_every_change_once_in_order(servo: DeviceBuffer) -> None:
    stop = threading.Event()
    seen: list[float] = []
    stream = changes(servo, stop, slice_=0.05)
    for step in range(20):
        servo.set("servo0", step / 100)
        seen.append(next(stream).values["servo0"])  # lockstep: the change is yielded before the next
    stop.set()
    assert seen == pytest.approx([step / 100 for step in range(20)], abs=1e-6)


def test_measure_counts_the_changes_of_a_served_buffer(servo: DeviceBuffer) -> None:
    meter, stop = RateMeter(), threading.Event()
    watcher = measure(CATALOG, meter, stop)
    try:
        wait_for("the watcher to find the buffer", lambda: meter.rates())
        done = 0

        def changed() -> bool:
            nonlocal done
            servo.set("servo0", (done % 50) / 100)
            done += 1
            return meter.rates()[0].count >= 5

        wait_for("five changes counted", changed, every=0.01)
        rate = meter.rates()[0]
        assert rate.rate is not None and 0 < rate.rate < 1e6  # sanity only
        assert rate.min is not None and rate.max is not None and 0 <= rate.min <= rate.max
    finally:
        stop.set()
    assert not watcher.failed


def _lines(stream: IO[str]) -> queue.Queue[str]:
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def _runtime(*argv: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "runtime", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
    )


@pytest.mark.slow
def test_echo_prints_each_change_once_in_order_as_json_lines(servo: DeviceBuffer) -> None:
    key = f"servo-motor:{servo.uid:#x}"
    process = _runtime("buffers", "echo", key, "--json", "--count", "5")
    try:
        assert process.stdout is not None and process.stderr is not None
        out, err = _lines(process.stdout), _lines(process.stderr)
        assert "echoing" in err.get(timeout=30)  # its handle is open: every change from now is echoed
        got = []
        for step in range(5):
            servo.set("servo0", step / 10)
            got.append(json.loads(out.get(timeout=30)))
        assert process.wait(timeout=30) == 0
    finally:
        process.kill()
        process.wait(timeout=30)
    assert [line["values"]["servo0"] for line in got] == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4], abs=1e-6)
    assert all(line["time"] > 0 for line in got)
    assert out.empty()


@pytest.mark.slow
def test_hz_reports_a_rate_for_a_changing_buffer(servo: DeviceBuffer) -> None:
    key = f"servo-motor:{servo.uid:#x}"
    process = _runtime("buffers", "hz", key, "--json", "--count", "3")
    stop = threading.Event()

    def produce() -> None:
        step = 0
        while not stop.wait(0.01):  # about 100 Hz
            servo.set("servo0", (step % 50) / 100)
            step += 1

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        out, err = process.communicate(timeout=60)
    finally:
        stop.set()
        producer.join()
        process.kill()
    assert process.returncode == 0, err
    reports = [json.loads(line) for line in out.splitlines()]
    assert len(reports) == 3 and all(len(report) == 1 and report[0]["key"] == key for report in reports)
    last = reports[-1][0]
    assert last["count"] > 0 and last["rate"] is not None and 0 < last["rate"] < 1e6  # sanity only


def test_echo_of_a_missing_buffer_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    from e2e import run

    status, _, err = run(capsys, "buffers", "echo", f"servo-motor:{make_uid(SERVO):#x}", "--count", "1")
    assert status == 1 and "no buffer" in err
