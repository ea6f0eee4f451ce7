"""``runtime record`` and ``runtime replay`` on hostile ground: each ends with one line, never a hang.

* record on a full disk (a file size limit: EFBIG; a tiny tmpfs in a private
  mount namespace: ENOSPC) ends with one line saying what the file keeps, and
  what it keeps is a readable MCAP file (the ``mcap`` reader, ``runtime replay``);
* record never opens anything but a regular file: a symlink (to a device, a
  FIFO, a file), a FIFO (which blocked ``open()`` for ever), a device, a
  directory are refused at once, whether given or met when a split recording
  starts its next file;
* replay of a recording whose catalog, times or messages are damaged (or
  fuzzed) ends with one line, or skips what it cannot store;
* replay never serves a buffer it did not create, and never plays into a
  namespace that a live process (a robot's bridge) serves: a device unplugged
  for a moment gets its buffer back when it comes back.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import resource
import shutil
import signal
import stat
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e import make_uid
from mcap.reader import make_reader
from mcap.writer import Writer
from test_record import one_error_line, read, tool

import runtime
from runtime import BufferStore, mcap, recorder
from runtime.buffer import DeviceBuffer, DeviceBufferError
from runtime.mcap import RecordingError
from runtime.schema import buffer_schema, describe_catalog
from runtime.testing import EmulatedRobot, emulated_robot

pytestmark = pytest.mark.timeout(120)

CATALOG = runtime.load_catalog()
T0 = 1_700_000_000_000_000_000
"""A plausible log time (ns)."""
GOOD = {"valid": True, "values": {"servo0": 0.5, "servo1": -0.25}}


def hostile_recording(
    path: Path,
    *,
    catalog: Any = None,
    states: list[tuple[int, Any]] | None = None,
    type_name: str = "servo-motor",
    uid: int = 0x1234,
) -> Path:
    """A recording as ``runtime record`` makes one (with its index), with this catalog and these messages.

    ``catalog`` is the recorded description (default: the true one), or a str
    written as is; each state is ``(log time ns, message)``, a message being
    JSON data or raw bytes.
    """
    described = describe_catalog(CATALOG, [type_name]) if catalog is None else catalog
    with open(path, "wb") as file:
        writer = Writer(file)
        writer.start()
        writer.add_metadata(
            "runtime",
            {
                "format": mcap.RECORDING_FORMAT,
                "namespace": "rt-elsewhere",
                "started": "0",
                "file_index": "1",
                "catalog": described if isinstance(described, str) else json.dumps(described),
            },
        )
        schema = writer.register_schema(
            f"runtime.{type_name}", "jsonschema", json.dumps(buffer_schema(CATALOG[type_name])).encode()
        )
        channel = writer.register_channel(mcap.topic_of(type_name, uid), "json", schema)
        for stamp, message in [(T0, GOOD)] if states is None else states:
            data = message if isinstance(message, bytes) else json.dumps(message).encode()
            writer.add_message(channel, log_time=stamp, data=data, publish_time=stamp)
        writer.finish()
    return path


def fresh_namespace(label: str) -> str:
    return f"rt-hostile-{label}-{os.getpid()}-{random.randrange(1 << 32):08x}"


# ---- record: a full disk --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def robot() -> Iterator[EmulatedRobot]:
    """Three emulated devices reporting 25 times a second each: a recording grows steadily."""
    with emulated_robot("servo-motor", "yogi-bear", "limit-switch") as robot:
        yield robot


def check_full_disk_outcome(
    done: subprocess.CompletedProcess[str], path: Path, reason: str, named: Path | None = None
) -> None:
    """One line saying what failed and what the file keeps; the file (at ``path``) reads back and replays."""
    line = one_error_line(done)
    assert line.startswith(f"runtime record: error: cannot write {named or path}: {reason}; "), line
    assert "it keeps what was recorded up to " in line, line
    assert line.endswith(" bytes, a readable MCAP file without index (as a killed recorder's)"), line
    kept = int(line.split(" bytes, a readable MCAP file")[0].rsplit(" ", 1)[1])
    assert path.stat().st_size == kept
    with open(path, "rb") as file:
        reader = make_reader(file)
        assert reader.get_summary() is None  # no index: read from the start, as a killed recorder's
        count = sum(1 for _ in reader.iter_messages())
    with open(path, "rb") as file:
        assert [m.name for m in make_reader(file).iter_metadata()] == ["runtime"]
    assert count >= 30, count  # what was recorded before the disk filled is there
    assert sum(len(items) for items in read(path).values()) == count
    replayed = tool(
        None, "replay", str(path), "--speed", "20", "--json", "--namespace", fresh_namespace("full")
    )
    assert replayed.returncode == 0, replayed.stderr
    summary = json.loads(replayed.stdout)
    assert summary["states"] == count and summary["damaged"] == []


@pytest.mark.slow
def test_record_past_a_file_size_limit_ends_with_one_line_and_a_readable_file(
    robot: EmulatedRobot, tmp_path: Path
) -> None:
    path = tmp_path / "limited.mcap"
    limit = 40_000  # the header and the catalog take about 22 kB: the rest fills in a couple of seconds

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    done = subprocess.run(
        [sys.executable, "-m", "runtime", "record", str(path), "--compression", "none"],
        env=robot.env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        preexec_fn=limit_file_size,
    )
    check_full_disk_outcome(done, path, "File too large (EFBIG)")
    assert path.stat().st_size <= limit


def can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        probe = subprocess.run(
            [
                "unshare",
                "-m",
                "--propagation",
                "private",
                "sh",
                "-c",
                "mount -t tmpfs -o size=64k tmpfs /mnt",
            ],
            capture_output=True,
            timeout=20,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not can_mount_tmpfs(), reason="unshare -m and mount (a private tmpfs) not permitted")
def test_record_on_a_full_disk_ends_with_one_line_and_a_readable_file(
    robot: EmulatedRobot, tmp_path: Path
) -> None:
    # A 48 kB tmpfs mounted over a directory in a private mount namespace: the recorder fills it; the
    # file is copied out before the namespace (and the tmpfs) goes away.
    disk = tmp_path / "disk"
    disk.mkdir()
    inside = disk / "full.mcap"
    path = tmp_path / "full.mcap"
    script = f'mount -t tmpfs -o size=48k tmpfs {disk} && "$@"; status=$?; cp {inside} {path}; exit $status'
    done = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"]
        + [sys.executable, "-m", "runtime", "record", str(inside), "--compression", "none"],
        env=robot.env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    check_full_disk_outcome(done, path, "No space left on device (ENOSPC)", named=inside)


# ---- record: only a regular file --------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(60)
def test_record_never_opens_anything_but_a_regular_file(tmp_path: Path) -> None:
    namespace = fresh_namespace("nothing")
    fifo = tmp_path / "fifo.mcap"
    os.mkfifo(fifo)
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    links = {
        "to-null.mcap": "/dev/null",
        "to-fifo.mcap": str(fifo),
        "to-file.mcap": str(target),
        "dangling.mcap": str(tmp_path / "nowhere.mcap"),
    }
    for name, to in links.items():
        (tmp_path / name).symlink_to(to)
    null = os.stat("/dev/null")
    cases = {str(tmp_path / name): f"it is a symbolic link (to {to})" for name, to in links.items()}
    cases[str(fifo)] = "it is a FIFO (named pipe)"
    cases["/dev/null"] = "it is a character device"
    cases[str(tmp_path)] = "it is a directory"
    for path, what in cases.items():
        for force in ([], ["--force"]):
            started = time.monotonic()
            # A FIFO blocked open() for ever (SIGINT and SIGTERM ignored): the timeout would kill it.
            done = tool(
                None, "record", path, *force, "--duration", "30", "--namespace", namespace, timeout=20
            )
            assert time.monotonic() - started < 15
            line = one_error_line(done)
            assert line == (
                f"runtime record: error: cannot write {path}: {what}; "
                "a recording is written only to a regular file"
            ), (path, force)
    assert target.read_text() == "keep me"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    now = os.stat("/dev/null")
    assert stat.S_ISCHR(now.st_mode) and now.st_rdev == null.st_rdev
    assert not (tmp_path / "nowhere.mcap").exists()


@pytest.mark.slow  # record/replay processes (near a second; over it on a busy machine)
@pytest.mark.timeout(60)
def test_a_split_recording_meeting_a_fifo_ends_with_one_line_and_keeps_its_files(tmp_path: Path) -> None:
    # The names of a split recording are checked when each file starts: OUT-002.mcap is a FIFO.
    fifo = tmp_path / "day-002.mcap"
    os.mkfifo(fifo)
    done = tool(
        None,
        "record",
        str(tmp_path / "day.mcap"),
        "--split-time",
        "0.5",
        "--duration",
        "30",
        "--force",
        "--namespace",
        fresh_namespace("split"),
        timeout=20,
    )
    assert one_error_line(done) == (
        f"runtime record: error: cannot write {fifo}: it is a FIFO (named pipe); "
        "a recording is written only to a regular file"
    )
    with open(tmp_path / "day-001.mcap", "rb") as file:  # the first file is finished, with its index
        reader = make_reader(file)
        assert reader.get_summary() is not None
        assert [m.name for m in reader.iter_metadata()] == ["runtime"]


def test_open_regular_refuses_what_replaced_the_file_after_the_look(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Between the look (lstat) and the open, the path became a FIFO or a symlink: the open itself
    # neither blocks nor follows, and fstat refuses before anything is truncated.
    monkeypatch.setattr(mcap, "not_a_regular_file", lambda path: None)
    fifo = tmp_path / "fifo.mcap"
    os.mkfifo(fifo)
    link = tmp_path / "link.mcap"
    target = tmp_path / "file.txt"
    target.write_text("keep me")
    link.symlink_to(target)
    for path in (fifo, link):
        with pytest.raises(OSError) as caught:
            mcap.open_regular(str(path), overwrite=True)
        assert not isinstance(caught.value, FileExistsError)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    try:  # with a reader, a FIFO opens: fstat refuses it
        with pytest.raises(mcap.NotRegularFileError, match="FIFO"):
            mcap.open_regular(str(fifo), overwrite=True)
    finally:
        os.close(reader)
    assert target.read_text() == "keep me"
    regular = tmp_path / "old.mcap"
    regular.write_text("old")
    fd = mcap.open_regular(str(regular), overwrite=True)
    os.close(fd)
    assert regular.read_text() == ""  # truncated once known to be a regular file
    with pytest.raises(FileExistsError):
        mcap.open_regular(str(regular))


# ---- replay: damaged recordings ---------------------------------------------------------------------


def servo_with(**changes: Any) -> dict[str, Any]:
    described = describe_catalog(CATALOG, ["servo-motor"])
    described["servo-motor"].update(changes)
    return described


@pytest.mark.parametrize(
    ("catalog", "expected"),
    [
        (servo_with(params=5), "servo-motor: 'params' is 5, not a list"),
        (servo_with(params=True), "servo-motor: 'params' is true, not a list"),
        (servo_with(params="servo0"), "servo-motor: 'params' is \"servo0\", not a list"),
        (servo_with(params={"name": "servo0"}), "servo-motor: 'params' is a mapping, not a list"),
        (servo_with(params=[5]), "servo-motor: parameter 0 is 5, not a mapping with a name"),
        (
            servo_with(params=[{"name": 7}]),
            "servo-motor: parameter 0 is a mapping, not a mapping with a name",
        ),
        ({"servo-motor": [1, 2]}, "servo-motor: its description is a list, not a mapping"),
        ({"servo-motor": "x" * 100}, 'servo-motor: its description is "' + "x" * 36 + "..., not a mapping"),
        ("[" * 100_000 + "]" * 100_000, "nested too deep"),
        ("[1]", "not a mapping"),
        ("{", "Expecting property name"),
    ],
    ids=[
        "params-5",
        "params-true",
        "params-string",
        "params-mapping",
        "param-5",
        "param-name-7",
        "type-list",
        "type-long-string",
        "deep",
        "list",
        "not-json",
    ],
)
def test_replay_of_a_damaged_recorded_catalog_is_one_error_line(
    tmp_path: Path, catalog: Any, expected: str
) -> None:
    path = hostile_recording(tmp_path / "damaged.mcap", catalog=catalog)
    line = one_error_line(tool(None, "replay", str(path), "--namespace", fresh_namespace("catalog")))
    assert line.startswith(f"runtime replay: error: {path}: the recorded catalog is damaged ("), line
    assert expected in line, line


@pytest.mark.slow  # record/replay processes (near a second; over it on a busy machine)
def test_replay_of_states_stamped_too_far_apart_is_one_error_line(tmp_path: Path) -> None:
    cases = {
        "end-of-time.mcap": [(T0, GOOD), (2**64 - 1, GOOD)],  # was an OverflowError
        "epoch.mcap": [(0, GOOD), (T0, GOOD)],  # 54 years of waiting
    }
    for name, states in cases.items():
        path = hostile_recording(tmp_path / name, states=states)
        first, last = states[0][0], states[-1][0]
        line = one_error_line(tool(None, "replay", str(path), "--namespace", fresh_namespace("far")))
        assert line.startswith(
            f"runtime replay: error: {path}: its states are stamped {first} to {last} ns ("
        ), line
        assert line.endswith("a replay covers at most 366): its times are damaged"), line
    # Two files a year and a half apart: one line too (the replay would wait that long between them).
    a = hostile_recording(tmp_path / "a.mcap", states=[(T0, GOOD)])
    b = hostile_recording(tmp_path / "b.mcap", states=[(T0 + 548 * 86400 * 10**9, GOOD)])
    line = one_error_line(tool(None, "replay", str(a), str(b), "--namespace", fresh_namespace("far")))
    assert line == "runtime replay: error: the recordings span 548 days: a replay covers at most 366 " + (
        "(play them one at a time)"
    )


@pytest.mark.slow  # record/replay processes (near a second; over it on a busy machine)
def test_a_lone_state_at_the_end_of_time_replays(tmp_path: Path) -> None:
    path = hostile_recording(tmp_path / "lone.mcap", states=[(2**64 - 1, GOOD)])
    done = tool(None, "replay", str(path), "--json", "--namespace", fresh_namespace("lone"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["states"] == 1


@pytest.mark.slow  # record/replay processes (near a second; over it on a busy machine)
def test_replay_skips_messages_it_cannot_store_and_says_so(tmp_path: Path) -> None:
    states: list[tuple[int, Any]] = [
        (T0, GOOD),
        (T0 + 1, {"valid": True, "values": {"servo0": "fast", "servo1": [1, 2]}}),
        (T0 + 2, {"valid": True, "values": {"servo0": {"a": 1}}}),
        (T0 + 3, {"valid": True, "values": {"servo0": 10**400}}),
        (T0 + 4, b'{"valid": true, "values": {"servo0": ' + b"[" * 100_000 + b"]" * 100_000 + b"}}"),
        (T0 + 5, {"valid": "yes"}),
        (T0 + 6, [1]),
        (T0 + 7, b"\xff\xfe"),
        (T0 + 8, {"valid": True, "values": [1]}),
        (T0 + 9, GOOD | {"valid": True}),
    ]
    path = hostile_recording(tmp_path / "messages.mcap", states=states)
    done = tool(None, "replay", str(path), "--json", "--namespace", fresh_namespace("messages"))
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    summary = json.loads(done.stdout)
    assert summary["states"] + summary["skipped"] + summary["repeated"] <= len(states)
    assert summary["states"] >= 2


@pytest.mark.timeout(60)
def test_replay_refuses_a_fifo_or_a_device_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.mcap"
    os.mkfifo(fifo)
    for path in (str(fifo), "/dev/zero"):
        line = one_error_line(tool(None, "replay", path, timeout=20))
        assert (
            line
            == f"runtime replay: error: cannot read {path}: it is not a regular file (a FIFO, a device...)"
        )


# ---- replay: fuzzed catalogs and messages ----------------------------------------------------------


def random_json(rng: random.Random, depth: int = 0) -> Any:
    """A JSON value of any type, sometimes big or nested."""
    kind = rng.randrange(11 if depth < 3 else 8)
    simple = [None, True, False, 0, -1, 2**64, 1e308, -0.5, "", "servo0", "x" * 300]
    if kind < 8:
        return rng.choice(simple)
    if kind == 8:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    if kind == 9:
        return {rng.choice(["name", "type", "params", "lower", "id", "x"]): random_json(rng, depth + 1)}
    return rng.choice([[[[1.5]]], {"name": "servo0"}, ["servo0", 1], list(range(100))])


def mutate(rng: random.Random, value: Any) -> Any:
    """``value`` (a JSON tree) with one node, chosen at random, replaced by a random value."""
    if isinstance(value, dict) and value and rng.random() < 0.8:
        key = rng.choice(list(value))
        return {**value, key: mutate(rng, value[key])}
    if isinstance(value, list) and value and rng.random() < 0.8:
        index = rng.randrange(len(value))
        return [*value[:index], mutate(rng, value[index]), *value[index + 1 :]]
    return random_json(rng)


def test_fuzzed_recorded_catalogs_are_accepted_or_one_command_error(tmp_path: Path) -> None:
    rng = random.Random(22)
    true = describe_catalog(CATALOG, ["servo-motor", "yogi-bear"])
    outcomes: dict[str, int] = {}
    for index in range(300):
        catalog = mutate(rng, true)
        path = hostile_recording(tmp_path / f"fuzz-{index % 4}.mcap", catalog=catalog)
        try:
            mcap.open_recording(str(path), CATALOG)
            outcome = "accepted"
        except RecordingError as exc:
            assert "\n" not in exc.message
            outcome = "damaged" if "damaged" in exc.message else "another catalog"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert outcomes.get("damaged", 0) > 20 and outcomes.get("another catalog", 0) > 20, outcomes


def test_fuzzed_states_are_stored_or_skipped_never_raised(tmp_path: Path, buffer_namespace: str) -> None:
    rng = random.Random(2022)
    keys = [("servo-motor", 0x1234), ("yogi-bear", 0x5678), ("gamepad", 0)]
    with BufferStore.use_namespace(f"{buffer_namespace}-fuzz"):
        replayer = recorder.Replayer(CATALOG)
        try:
            recording = mcap.Recording("fuzz.mcap", {}, {}, keys=set(keys))
            replayer.prepare([recording])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # values out of bounds: clamped, as in play()
                for stamp in range(2000):
                    key = rng.choice(keys)
                    params = list(CATALOG[key[0]].params)
                    values = {rng.choice([*params, "x"]): random_json(rng) for _ in range(rng.randrange(4))}
                    replayer.apply(mcap.RecordedState(T0 + stamp, key, rng.random() > 0.05, values))
            assert replayer.applied > 100 and replayer.skipped > 100, (replayer.applied, replayer.skipped)
        finally:
            replayer.close()
    # And states of any shape in a file: iter_states skips what is not a state.
    states = [(T0 + i, random_json(rng) if i % 2 else mutate(rng, GOOD)) for i in range(300)]
    path = hostile_recording(tmp_path / "states.mcap", states=states)
    read_back = list(mcap.iter_states(str(path)))
    assert 0 < len(read_back) < 300


# ---- replay: never a live robot's buffers ----------------------------------------------------------


def start_device(directory: Path, spec: str, env: dict[str, str]) -> subprocess.Popen[str]:
    """A ``runtime emulate`` process plugging one device in at ``directory`` (the bridge's --glob)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "runtime.tools.emulate", spec, "--link", str(directory)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline(), "the emulator did not start"
    return process


def stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout is not None:
        process.stdout.close()


@pytest.mark.slow
def test_replay_into_a_live_robots_namespace_is_refused_and_an_unplugged_device_comes_back(
    tmp_path: Path,
) -> None:
    plugged = tmp_path / "hotplug"
    plugged.mkdir()
    servo_type = CATALOG["servo-motor"]
    assert issubclass(servo_type, DeviceBuffer)
    uid = make_uid(servo_type)
    spec = f"servo-motor:{uid:#x}"
    with emulated_robot("limit-switch", bridge_args=["--glob", f"{plugged}/*"]) as robot:
        bridge = robot.pids["bridge"]
        device = start_device(plugged, spec, robot.env)
        try:
            servo = robot.store.get_or_open(("servo-motor", uid))
            robot.wait_for(
                lambda: servo.producer_pid == bridge, 20, "the bridge serves the hot-plugged servo"
            )
            stop(device)  # unplugged: the bridge stops serving its buffer, and serves the limit switch on
            robot.wait_for(lambda: not servo.valid and servo.producer_pid is None, 20, "the servo unplugged")
            path = hostile_recording(
                tmp_path / "servo.mcap", uid=uid, states=[(T0, GOOD), (T0 + 10**9, GOOD)]
            )
            player = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "runtime",
                    "replay",
                    str(path),
                    "--loop",
                    "--namespace",
                    robot.namespace,
                ],
                env=robot.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                stdin=subprocess.DEVNULL,
                text=True,
            )
            try:
                out, err = player.communicate(timeout=30)  # a replay that took the buffer plays for ever
            finally:
                if player.poll() is None:
                    player.kill()
                    player.communicate()
            done = subprocess.CompletedProcess(player.args, player.returncode, out, err)
            line = one_error_line(done)
            assert line == (
                f"runtime replay: error: namespace {robot.namespace!r} is live: process {bridge} serves "
                "1 of its buffers (a robot's bridge? another replay?); a replay serves only buffers of "
                "its own: leave out --namespace (a fresh rt-replay-<pid>) or give a new one"
            )
            assert servo.producer_pid is None and not servo.valid  # untouched
            device = start_device(plugged, spec, robot.env)  # plugged in again: the bridge serves it
            robot.wait_for(lambda: servo.producer_pid == bridge and servo.valid, 20, "the servo served again")
        finally:
            stop(device)


@pytest.mark.slow
def test_replay_never_serves_a_buffer_it_did_not_create(robot: EmulatedRobot, tmp_path: Path) -> None:
    # The robot's bridge stops: its namespace has no live producer, but the robot's buffers are still
    # there. A replay of the robot's recording into that namespace must not take them: the bridge,
    # started again, serves them.
    path = tmp_path / "robot.mcap"
    recorded = tool(robot, "record", str(path), "--duration", "0.5", "--no-writes")
    assert recorded.returncode == 0, recorded.stderr
    servo = robot.buffer("servo-motor")
    with robot.bridge_stopped():
        assert servo.producer_pid is None
        done = tool(robot, "replay", str(path), "--namespace", robot.namespace, "--loop", timeout=30)
        line = one_error_line(done)
        assert line.startswith("runtime replay: error: the buffer "), line
        assert f"exists already in namespace {robot.namespace!r}" in line
        assert line.endswith(f"'runtime buffers clean --namespace {robot.namespace}'")
        assert servo.producer_pid is None
    assert servo.valid and servo.producer_pid == robot.pids["bridge"]
    # The same recording plays into a namespace of its own, and leaves nothing behind there.
    namespace = fresh_namespace("own")
    done = tool(robot, "replay", str(path), "--speed", "10", "--json", "--namespace", namespace)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["buffers"] == 3
    with BufferStore.use_namespace(namespace):
        assert BufferStore(CATALOG).find_segments() == []


def test_live_producers_names_the_process_serving_a_buffer(buffer_namespace: str) -> None:
    namespace = f"{buffer_namespace}-live"
    with BufferStore.use_namespace(namespace), BufferStore(CATALOG) as store:
        try:
            assert recorder.live_producers(CATALOG, namespace) == {}
            buffer = store.get_or_open(("servo-motor", 1))
            assert recorder.live_producers(CATALOG, namespace) == {}  # made, nobody serves it
            buffer.serve()
            assert recorder.live_producers(CATALOG, namespace) == {os.getpid(): [buffer.name]}
            assert recorder.live_producers(CATALOG, namespace + "-x") == {}
            buffer.stop_serving()
            assert recorder.live_producers(CATALOG, namespace) == {}
        finally:
            store.close()
            with contextlib.suppress(DeviceBufferError):
                store.unlink_all()
