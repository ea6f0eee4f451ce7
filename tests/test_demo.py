"""``runtime demo`` end to end: emulated devices, the bridge and student code, then nothing left behind.

The demo runs as a real process (not a terminal, so it prints its summary)
and must stop on its own (``--duration``) or on a signal, exit 0, report data
flowing for every device, and leave no process, shared-memory segment or
temporary directory of its own behind.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from runtime.buffer import NAMESPACE_ENV, SHM_DIR, BufferStore
from runtime.testing.demo import DEFAULT_DEVICES, runtime_program
from runtime.tools import cli
from runtime.tools.demo import _print_banner, watch_command

pytestmark = pytest.mark.slow  # the demo's processes, end to end

SUMMARY_LINE = re.compile(
    r"^(?P<type>[a-z][a-z0-9-]*) (?P<uid>0x[0-9a-f]+): "
    r"messages in (?P<in>\d+), out (?P<out>\d+), errors (?P<errors>\d+)$",
    re.M,
)


def start_demo(*arguments: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "runtime", "demo", *arguments],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def demo_processes(pid: int) -> list[int]:
    """Processes whose environment carries the demo's namespace (its children, if any are left)."""
    marker = f"{NAMESPACE_ENV}=rt-demo-{pid}\0".encode()
    found = []
    for path in glob.glob("/proc/[0-9]*/environ"):
        with contextlib.suppress(OSError):
            with open(path, "rb") as file:
                if marker in file.read() + b"\0":
                    found.append(int(path.split("/")[2]))
    return found


def demo_segments(pid: int) -> list[str]:
    return [entry for entry in os.listdir(SHM_DIR) if entry.startswith(f"rt-demo-{pid}-")]


def demo_directories(pid: int) -> list[str]:
    return glob.glob(os.path.join(tempfile.gettempdir(), f"runtime-demo-{pid}-*"))


def assert_nothing_left(pid: int) -> None:
    assert demo_segments(pid) == []
    assert demo_processes(pid) == []
    assert demo_directories(pid) == []


@pytest.mark.timeout(90)
def test_demo_runs_reports_and_cleans_up() -> None:
    started = time.monotonic()
    demo = start_demo("--duration", "6")
    out, err = demo.communicate(timeout=60)
    elapsed = time.monotonic() - started
    assert demo.returncode == 0, err
    assert 6 <= elapsed < 40
    rows = {match["type"]: match for match in SUMMARY_LINE.finditer(out)}
    assert set(rows) == set(DEFAULT_DEVICES), out
    for name, row in rows.items():
        assert int(row["in"]) > 0, f"{name}: no messages from the device\n{out}"
        assert int(row["out"]) > 0, f"{name}: no messages to the device\n{out}"
    # The student code wrote motor commands, which went out to the actuators.
    student = re.search(r"^student code: (\d+) modes, (\d+) main calls, 0 overruns, 0 errors", out, re.M)
    assert student is not None, out
    assert int(student[1]) == 1 and int(student[2]) > 0
    assert int(rows["yogi-bear"]["out"]) > int(rows["limit-switch"]["out"])
    assert f"rt-demo-{demo.pid}" in err
    assert_nothing_left(demo.pid)


@pytest.mark.timeout(90)
def test_demo_json_summary() -> None:
    demo = start_demo("yogi-bear", "rfid", "--duration", "3", "--json", "--seed", "7")
    out, err = demo.communicate(timeout=60)
    assert demo.returncode == 0, err
    summary = json.loads(out)
    assert summary["namespace"] == f"rt-demo-{demo.pid}"
    assert [device["type"] for device in summary["devices"]] == ["yogi-bear", "rfid"]
    for device in summary["devices"]:
        assert device["seen"] and device["messages_in"] > 0
        assert int(device["uid"], 16) >> 72 == {"yogi-bear": 10, "rfid": 11}[device["type"]]
    assert set(summary["devices"][0]["last_values"]) >= {"duty_cycle", "enc_pos"}
    assert summary["student_code"]["cycles"] > 0 and summary["student_code"]["errors"] == 0
    assert_nothing_left(demo.pid)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_demo_stops_and_cleans_up_on_a_signal(signum: signal.Signals) -> None:
    demo = start_demo()  # no --duration: runs until stopped
    try:
        deadline = time.monotonic() + 30
        while len(demo_segments(demo.pid)) < len(DEFAULT_DEVICES):  # the bridge serves every device
            assert demo.poll() is None, demo.communicate()[1]
            assert time.monotonic() < deadline, "the demo's devices never appeared in shared memory"
            time.sleep(0.1)
        # emulator, bridge, runner and its student code
        deadline = time.monotonic() + 30
        while len(demo_processes(demo.pid)) < 4:
            assert demo.poll() is None and time.monotonic() < deadline, demo_processes(demo.pid)
            time.sleep(0.1)
        demo.send_signal(signum)
        out, err = demo.communicate(timeout=30)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate()
    assert demo.returncode == 0, err
    assert "stopping" in err
    assert len(SUMMARY_LINE.findall(out)) == len(DEFAULT_DEVICES)
    assert_nothing_left(demo.pid)


WATCH_LINE = re.compile(r"^runtime demo: watch them from another terminal: (?P<command>.+)$", re.M)


def read_stderr_until(demo: subprocess.Popen[str], pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
    """Read the demo's stderr until a line matches ``pattern`` (without blocking past ``timeout``)."""
    assert demo.stderr is not None
    text = ""
    deadline = time.monotonic() + timeout
    while (match := pattern.search(text)) is None:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"the demo did not print {pattern.pattern!r}; it printed {text!r}"
        ready, _, _ = select.select([demo.stderr], [], [], remaining)
        if ready:  # raw reads: a buffered readline would keep the next line where select cannot see it
            chunk = os.read(demo.stderr.fileno(), 4096)
            assert chunk, f"the demo exited ({demo.wait()}): {text}"
            text += chunk.decode()
    return match


@pytest.mark.timeout(90)
def test_the_banner_prints_the_command_that_watches_the_buffers() -> None:
    """The banner's command, pasted into another shell, shows the demo's live buffers."""
    demo = start_demo("yogi-bear", "limit-switch")
    try:
        command = read_stderr_until(demo, WATCH_LINE, 30)["command"]
        assert command.endswith(f"buffers watch --namespace rt-demo-{demo.pid}"), command
        deadline = time.monotonic() + 30
        while len(demo_segments(demo.pid)) < 2:  # the bridge serves both devices
            assert demo.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        rows: list[dict[str, object]] = []
        while not (len(rows) == 2 and all(row["valid"] for row in rows)):
            assert time.monotonic() < deadline, rows
            shell = os.environ.get("SHELL") or "/bin/sh"
            watched = subprocess.run(
                [shell, "-c", f"{command} --count 1 --json"],  # exactly as printed, in another shell
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=30,
                env={key: value for key, value in os.environ.items() if key != NAMESPACE_ENV},
            )
            assert watched.returncode == 0, watched.stderr
            devices = ("limit-switch", "yogi-bear")  # beside the field's and the runner's buffers
            rows = [row for row in json.loads(watched.stdout) if row["type"] in devices]
        assert sorted(row["type"] for row in rows) == ["limit-switch", "yogi-bear"]
    finally:
        stop(demo)
    assert demo.returncode == 0
    assert_nothing_left(demo.pid)


def stop(demo: subprocess.Popen[str]) -> tuple[str, str]:
    """SIGTERM (the demo then stops its children and cleans up), SIGKILL if it does not exit in time.

    Returns what it printed (stdout, stderr) since it was last read.
    """
    if demo.poll() is None:
        demo.send_signal(signal.SIGTERM)
    try:
        return demo.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        demo.kill()
        return demo.communicate()


@pytest.mark.timeout(90)
def test_a_demo_killed_outright_leaves_no_process() -> None:
    """SIGKILL gives the demo no chance to stop its children: they stop on their own, and its cleaner
    removes its segments and temporary directory once they are gone."""
    demo = start_demo("limit-switch")
    try:
        read_stderr_until(demo, WATCH_LINE, 30)
        deadline = time.monotonic() + 30
        while len(demo_processes(demo.pid)) < 4:  # emulator, bridge, runner and its student code
            assert demo.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        children = demo_processes(demo.pid)
        demo.kill()
        demo.communicate()
        deadline = time.monotonic() + 30  # the children's own shutdown, timed from the kill
        while demo_processes(demo.pid):
            assert time.monotonic() < deadline, f"still running: {demo_processes(demo.pid)} of {children}"
            time.sleep(0.1)
        deadline = time.monotonic() + 30  # the cleaner acts once the children are gone
        while demo_segments(demo.pid) or demo_directories(demo.pid):
            assert time.monotonic() < deadline, (
                f"left behind: {demo_segments(demo.pid)}, {demo_directories(demo.pid)}"
            )
            time.sleep(0.1)
    finally:
        stop(demo)
        with BufferStore.use_namespace(f"rt-demo-{demo.pid}"):  # what nobody was left to remove
            BufferStore({}).unlink_all()
        for directory in demo_directories(demo.pid):
            shutil.rmtree(directory, ignore_errors=True)
    assert_nothing_left(demo.pid)


def test_the_watch_command_names_the_catalog_and_quotes_words(tmp_path: Path) -> None:
    catalog = tmp_path / "my catalog.yaml"
    command = watch_command("rt-demo-7", str(catalog))
    assert command.endswith(f"buffers watch --namespace rt-demo-7 --catalog {shlex.quote(str(catalog))}")
    assert shlex.split(command)[-2:] == ["--catalog", str(catalog)]
    script = os.path.join(os.path.dirname(sys.executable), "runtime")
    assert runtime_program() in ("runtime", shlex.quote(script), f"{shlex.quote(sys.executable)} -m runtime")


def test_the_banner_says_how_programs_find_the_demo_s_buffers(capsys: pytest.CaptureFixture[str]) -> None:
    """Next to the watch command: the environment variable that points the examples at the demo."""
    args = cli.build_parser().parse_args(["demo"])
    _print_banner(args, [], "rt-demo-42")
    err = capsys.readouterr().err
    assert "watch them from another terminal: " in err
    line = next(line for line in err.splitlines() if "examples/read_a_sensor.py" in line)
    assert line.endswith(f": {NAMESPACE_ENV}=rt-demo-42 python examples/read_a_sensor.py"), line


def test_the_readme_says_how_make_demo_takes_options(capsys: pytest.CaptureFixture[str]) -> None:
    """``make demo DEMO_ARGS="..."``: shown in the README, passed on by the Makefile, options of the demo."""
    root = Path(__file__).resolve().parent.parent
    shown = re.findall(r'make demo DEMO_ARGS="([^"]*)"', (root / "README.md").read_text())
    assert shown, "the README does not show DEMO_ARGS"
    assert "runtime demo $(DEMO_ARGS)" in (root / "Makefile").read_text()
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["demo", "--help"])
    help_text = capsys.readouterr().out
    for arguments in shown:
        cli.build_parser().parse_args(["demo", *shlex.split(arguments)])  # options the demo takes
        for option in (word for word in shlex.split(arguments) if word.startswith("--")):
            assert option in help_text, f"{option} not in runtime demo --help"


def test_demo_foxglove_serves_the_buffers_and_prints_the_url(tmp_path: Path) -> None:
    import socket

    process = subprocess.Popen(
        [sys.executable, "-m", "runtime", "demo", "--foxglove", "0", "--duration", "4", "--json"],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stderr is not None
        url = None
        for line in process.stderr:
            found = re.search(r"live in Foxglove: open (ws://127\.0\.0\.1:(\d+))", line)
            if found:
                url, port = found.group(1), int(found.group(2))
                break
        assert url is not None, "no Foxglove URL printed"
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass  # it listens
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)


@pytest.mark.timeout(90)
def test_a_foxglove_port_taken_stops_the_demo_with_one_line() -> None:
    """--foxglove on a port in use: status 1, one error line, and nothing of the demo left."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # No --duration: only the error ends it.
        demo = start_demo("yogi-bear", "--foxglove", str(port), "--json")
        try:
            out, err = demo.communicate(timeout=60)
        finally:
            stop(demo)
    assert demo.returncode == 1, err
    errors = [line for line in err.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and f"Foxglove cannot serve on 127.0.0.1:{port}" in errors[0], err
    assert "Traceback" not in err
    assert_nothing_left(demo.pid)


@pytest.mark.timeout(90)
def test_the_demo_runs_your_student_file_or_none(tmp_path: Path) -> None:
    """--student runs a file of the student API with the demo's device names; --no-student runs none."""
    student = tmp_path / "mine.py"
    student.write_text(
        "calls = 0\n"
        "def autonomous_setup():\n"
        "    print('mine: motor at', Robot.get_value('yogi_bear', 'duty_cycle'))\n"
        "def autonomous_main():\n"
        "    global calls\n"
        "    calls += 1\n"
        "    Robot.set_value('yogi_bear', 'duty_cycle', 0.25)\n"
        "    if calls == 3:\n"
        "        print('mine: driving')\n"
    )
    demo = start_demo("yogi-bear", "--json", "--student", str(student))
    try:
        deadline = time.monotonic() + 30
        while "auto: mine: driving" not in runner_log(demo.pid):  # the runner's output, in the demo's log
            assert demo.poll() is None and time.monotonic() < deadline, runner_log(demo.pid)
            time.sleep(0.1)
    finally:
        out, err = stop(demo)
    assert demo.returncode == 0, err
    summary = json.loads(out)
    assert summary["student_code"]["cycles"] >= 3 and summary["student_code"]["errors"] == 0
    assert summary["student_code"]["lines"] >= 4  # the runner's, and the file's own prints
    assert_nothing_left(demo.pid)
    demo = start_demo("yogi-bear", "--duration", "2", "--json", "--no-student")
    out, err = demo.communicate(timeout=60)
    assert demo.returncode == 0, err
    summary = json.loads(out)
    assert summary["student_code"] is None and summary["devices"][0]["messages_out"] > 0
    assert "mode teleop" not in err
    assert_nothing_left(demo.pid)


def runner_log(pid: int) -> str:
    """What the demo's runner printed so far (its log in the demo's temporary directory)."""
    for directory in demo_directories(pid):
        with contextlib.suppress(OSError):
            return Path(directory, "runner.log").read_text()
    return ""
