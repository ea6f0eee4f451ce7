"""The live tables read in an 80x24 terminal, and keep their one-row layout on a wide one.

``runtime demo``'s table and ``runtime buffers watch`` show each buffer's
values as ``name=value`` pairs: at 80 columns the values go under the table,
whole pairs to a line (never a pair or a number split across lines), the
state words stay whole; at 200 columns the values are a column of the table.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import re
import select
import struct
import subprocess
import sys
import termios
import time
import uuid
from collections.abc import Iterator

import pytest
from rich.console import Console

from runtime import catalog
from runtime.buffer import NAMESPACE_ENV, BufferStore
from runtime.report import BufferReport
from runtime.tools._common import format_value
from runtime.tools._views import buffers_view, namespace_view, pack_pairs, print_demo_summary

NOW = time.time()
VALUES = {
    "limit-switch": {"switch0": False, "switch1": True, "switch2": False},
    "line-follower": {"left": 0.123456, "center": 0.5, "right": 1.0},
    "servo-motor": {"servo0": -0.25, "servo1": 0.75},
    "yogi-bear": {"duty_cycle": 0.25, "pid_pos_setpoint": 12345.5, "enc_pos": -1234567.25, "enc_vel": 3.5},
}


def demo_reports() -> list[BufferReport]:
    """What the demo's table shows: its default devices (one invalid), and one that failed."""
    reports = [
        BufferReport(name, 0xA0A0123456789ABCDEF00 + i, "x", smart=True, valid=True, last_update=NOW - 0.2)
        for i, name in enumerate(VALUES)
    ]
    for report in reports:
        report.values = dict(VALUES[report.type_name])
    reports.insert(2, BufferReport("battery", 0xF0A0123456789ABCDEF00, "x", smart=True, valid=False))
    reports.append(BufferReport("rfid", 0xB0A0123456789ABCDEF00, "x", smart=True, error="cannot open it"))
    return reports


def render(renderable: object, width: int) -> list[str]:
    console = Console(width=width, record=True, file=io.StringIO(), markup=False, highlight=False)
    console.print(renderable)
    return [line.rstrip() for line in console.export_text().splitlines()]


def pairs_of(reports: list[BufferReport]) -> list[str]:
    return [
        f"{name}={format_value(value)}" for report in reports for name, value in (report.values or {}).items()
    ]


NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def assert_readable(lines: list[str], reports: list[BufferReport], width: int) -> None:
    """Every line fits; every pair, number and state word is whole on one line."""
    assert all(len(line) <= width for line in lines), lines
    text = "\n".join(lines)
    for pair in pairs_of(reports):
        assert any(pair in line for line in lines), f"{pair!r} split or cut:\n{text}"
        for number in NUMBER.findall(pair.split("=", 1)[1]):
            assert any(number in line for line in lines), f"{number!r} split:\n{text}"
    for word in ("valid", "invalid", "error:", "cannot", "open", "it"):
        assert re.search(rf"(^|\s){re.escape(word)}(\s|$)", text, re.M), f"{word!r} not whole:\n{text}"
    assert "…" not in text, text


def test_the_demo_table_reads_in_80_columns() -> None:
    reports = demo_reports()
    view = buffers_view(reports, title="runtime demo: namespace rt-demo-123456, 12 of 30 s (Ctrl-C to stop)")
    lines = render(view, 80)
    assert_readable(lines, reports, 80)
    assert len(lines) <= 20, "\n".join(lines)  # the banner's lines and the table fit in 24 rows
    values = [line for line in lines if line.startswith("yogi-bear: ")]
    assert values and "duty_cycle=0.25" in values[0], lines


def test_the_demo_table_keeps_its_values_column_when_wide() -> None:
    reports = demo_reports()
    lines = render(buffers_view(reports, extra={"in/out/err": ["1/2/0"] * len(reports)}), 200)
    assert_readable(lines, reports, 200)
    header = next(line for line in lines if "type" in line)
    assert header.split() == ["type", "uid", "state", "last", "update", "in/out/err", "values"]
    row = next(line for line in lines if line.lstrip().startswith("limit-switch"))
    assert "switch0=false, switch1=true, switch2=false" in row


def test_the_watch_view_reads_in_80_columns() -> None:
    reports = demo_reports()
    for width in (80, 200):
        assert_readable(render(namespace_view(reports, values=True, robot=True), width), reports, width)


def test_pairs_are_packed_whole() -> None:
    pairs = ["duty_cycle=0.25", "enc_pos=-1234567.25", "list=[0, 1, 2]", "x=1"]
    for width in range(28, 60):  # the longest pair fits after the indent
        lines = pack_pairs(pairs, width, label="yogi-bear: ", indent=4)
        assert all(len(line) <= width for line in lines), (width, lines)
        assert all(any(pair in line for line in lines) for pair in pairs), (width, lines)


def test_the_demo_summary_folds_its_values_to_the_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    values = {f"v_cell{index}": 4.0069876 + index for index in range(8)}
    device = {"type": "battery", "uid": "0x4", "seen": True, "messages_in": 1, "messages_out": 2, "errors": 0}
    summary = {"seconds": 3, "namespace": "rt-demo-1", "student_code": None}
    print_demo_summary({**summary, "devices": [{**device, "last_values": values}]}, width=80)
    lines = capsys.readouterr().out.splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    for name, value in values.items():
        assert any(f"{name}={format_value(value)}" in line for line in lines), lines
    print_demo_summary({**summary, "devices": [{**device, "last_values": values}]})  # not a terminal
    assert (
        sum("v_cell" in line for line in capsys.readouterr().out.splitlines()) == 1
    )  # one line, for scripts


# ---- runtime buffers watch through an 80x24 pseudo-terminal --------------------------------------


@pytest.fixture
def yogi_namespace() -> Iterator[str]:
    """A namespace of its own holding one valid yogi-bear buffer with long values."""
    with BufferStore.use_namespace(f"rt-test-terminal-{os.getpid()}-{uuid.uuid4().hex[:8]}") as name:
        store = BufferStore(catalog.load())
        try:
            buffer = store.get_or_open(("yogi-bear", 0xA0A0000000000C0FFEE))
            buffer.serve()  # valid while this test's thread serves it
            buffer.set("duty_cycle", -0.125)
            buffer.set("enc_pos", -1234567)
            yield name
        finally:
            store.close()
            BufferStore({}).unlink_all()


@pytest.mark.slow  # a command's process
def test_buffers_watch_reads_in_an_80_column_terminal(yogi_namespace: str) -> None:
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    env = {key: value for key, value in os.environ.items() if key not in ("COLUMNS", "LINES")}
    env.update({NAMESPACE_ENV: yogi_namespace, "TERM": "xterm"})
    process = subprocess.Popen(
        [sys.executable, "-m", "runtime", "buffers", "watch", "--count", "1"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
    )
    os.close(slave)
    output = b""
    try:
        deadline = time.monotonic() + 30
        while True:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"buffers watch did not end: {output!r}"
            ready, _, _ = select.select([master], [], [], remaining)
            if not ready:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the command exited, the terminal closed
                break
            if not chunk:
                break
            output += chunk
        assert process.wait(10) == 0, output
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        process.wait(10)
        os.close(master)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\r", "", output.decode(errors="replace"))
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), lines
    for pair in ("duty_cycle=-0.125", "enc_pos=-1234567.0", "motor_current=0.0"):
        assert any(pair in line for line in lines), f"{pair!r} split:\n{text}"
    assert re.search(r"\svalid(\s|$)", text), text
