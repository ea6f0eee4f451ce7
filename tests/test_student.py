"""The student API and the runner's pieces that need no process: devices, inputs, modes, files, logs."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from runtime import BufferStore, DeviceBufferError, DeviceUID, load_catalog
from runtime.runner import RunnerError, filtered_traceback, load_devices, load_student_code
from runtime.student import (
    GAMEPAD_KEY,
    KEYBOARD_KEY,
    Gamepad,
    Keyboard,
    Robot,
    StudentCodeError,
    key_param,
    log_lines_since,
    mode_name,
    mode_number,
    resolve_device,
)

YOGI = int(DeviceUID(10, 1, 12648430))  # a yogi-bear: PiE's tools show it as "10_12648430"


@pytest.fixture
def store() -> Iterator[BufferStore]:
    """A store in a namespace of its own, its segments unlinked at the end."""
    with BufferStore.use_namespace(f"rt-student-{secrets.token_hex(4)}"):
        store = BufferStore(load_catalog())
        try:
            yield store
        finally:
            store.unlink_all()
            store.close()


def test_a_device_is_a_hex_uid_a_name_or_pie_s_id_and_random(store: BufferStore) -> None:
    motor = store.get_or_open(YOGI)
    motor.serve()
    names: dict[str, int | str] = {"left": hex(YOGI), "pie": "10_12648430", "number": YOGI}
    assert resolve_device(store, hex(YOGI)) == YOGI
    assert resolve_device(store, "10_12648430") == YOGI
    for name in names:
        assert resolve_device(store, name, names) == YOGI
    robot = Robot(store, names)
    robot.set_value("left", "duty_cycle", 0.25)
    assert motor.pending_writes() == {"duty_cycle": 0.25}
    assert robot.get_value("pie", "duty_cycle") == motor.get("duty_cycle")


def test_a_wrong_device_or_parameter_says_what_exists(store: BufferStore) -> None:
    store.get_or_open(YOGI).serve()
    with pytest.raises(DeviceBufferError, match=r"did you mean 'left'\?.*the robot file names left"):
        resolve_device(store, "lfet", {"left": YOGI})
    with pytest.raises(DeviceBufferError, match=r"no yogi-bear device '10_7'.*10_12648430"):
        resolve_device(store, "10_7")
    with pytest.raises(DeviceBufferError, match="has device_id 16, which no Smart Device type"):
        Robot(store).get_value("0x10010000000000c0ffee", "duty_cycle")
    with pytest.raises(DeviceBufferError, match="no device type has the device ID 999"):
        resolve_device(store, "999_1")
    with pytest.raises(DeviceBufferError, match="is not connected"):
        Robot(store).get_value(hex(YOGI + 1), "duty_cycle")
    with pytest.raises(TypeError, match="a device is a name"):
        resolve_device(store, 1.5)
    with pytest.raises(DeviceBufferError, match="duty_cycle"):  # the library's "did you mean"
        Robot(store).set_value(hex(YOGI), "duty_cycel", 0.5)


def test_an_unknown_name_says_the_same_every_call_and_a_searched_device_is_found_once_it_comes(
    store: BufferStore,
) -> None:
    robot = Robot(store, {"left": YOGI})
    errors = []
    for _ in range(3):  # the robot file's answer is remembered: said again, word for word
        with pytest.raises(DeviceBufferError, match=r"unknown device 'lfet'.*did you mean 'left'") as raised:
            robot.set_value("lfet", "duty_cycle", 0.5)
        errors.append(str(raised.value))
    assert len(set(errors)) == 1
    with pytest.raises(DeviceBufferError, match="not connected"):  # a robot file name: looked for again
        robot.get_value("left", "duty_cycle")
    with pytest.raises(DeviceBufferError, match="no yogi-bear device '10_12648430'"):
        robot.get_value("10_12648430", "duty_cycle")
    store.get_or_open(YOGI).serve()
    assert robot.get_value("left", "duty_cycle") == 0.0
    assert robot.get_value("10_12648430", "duty_cycle") == 0.0


def test_inputs_read_neutral_without_a_driver_station_and_refuse_in_autonomous(store: BufferStore) -> None:
    mode = "teleop"
    gamepad, keyboard = Gamepad(store, lambda: mode), Keyboard(store, lambda: mode)
    assert gamepad.get_value("button_a") is False and gamepad.get_value("joystick_left_y") == 0.0
    assert keyboard.get_value("w") is False
    pad = store.get_or_open(GAMEPAD_KEY)
    pad.serve()
    keys = store.get_or_open(KEYBOARD_KEY)
    keys.serve()
    pad.set("joystick_left_y", -0.5)
    keys.set("digit_7", True)
    keys.set("comma", True)
    gamepad, keyboard = Gamepad(store, lambda: mode), Keyboard(store, lambda: mode)
    assert gamepad.get_value("joystick_left_y") == -0.5
    assert keyboard.get_value("7") and keyboard.get_value(",") and keyboard.get_value("comma")
    pad.stop_serving()  # the driver station's link went away: neutral, not its last values
    assert gamepad.get_value("joystick_left_y") == 0.0
    mode = "auto"
    with pytest.raises(StudentCodeError, match="not allowed in autonomous mode"):
        gamepad.get_value("button_a")
    with pytest.raises(StudentCodeError, match="Keyboard.get_value is not allowed"):
        keyboard.get_value("w")


def test_unknown_inputs_are_named() -> None:
    store = BufferStore(load_catalog(), shared=False)
    with pytest.raises(DeviceBufferError, match=r"no input 'buton_a' \(did you mean 'button_a'\?\)"):
        Gamepad(store).get_value("buton_a")
    with pytest.raises(DeviceBufferError, match="the keyboard has no key 'F1'"):
        Keyboard(store).get_value("F1")
    assert (
        key_param("0") == "digit_0"
        and key_param("]") == "right_bracket"
        and key_param("up_arrow") == "up_arrow"
    )


def test_robot_run_is_running_and_an_error_in_a_function(capsys: pytest.CaptureFixture[str]) -> None:
    import threading

    store = BufferStore(load_catalog(), shared=False)
    errors: list[BaseException] = []
    release = threading.Event()
    robot = Robot(store, on_error=errors.append)

    def arm(seconds: float) -> None:
        release.wait(10)
        Robot.sleep(seconds)

    robot.run(arm, 0.01)
    assert robot.is_running(arm)
    robot.run(arm, 0.01)  # still running: nothing done, said once
    robot.run(arm, 0.01)
    assert capsys.readouterr().err.count("Robot.run(arm): it is still running, so nothing was done") == 1
    release.set()
    robot._running[arm].join(10)
    assert not robot.is_running(arm)

    def broken() -> None:
        raise KeyError("oops")

    robot.run(broken)
    robot._running[broken].join(10)
    assert [type(error) for error in errors] == [KeyError]
    with pytest.raises(StudentCodeError, match="takes a function"):
        robot.run("arm")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="a number of seconds"):
        Robot.sleep(float("nan"))


def test_modes_by_name_and_number() -> None:
    assert [mode_number(name) for name in ("idle", "auto", "teleop")] == [0, 1, 2]
    assert mode_name(1) == "auto" and mode_name(200) == "idle"
    with pytest.raises(ValueError, match=r"did you mean 'teleop'\?"):
        mode_number("teleo")
    with pytest.raises(ValueError, match="one of idle, auto, teleop"):
        mode_number(True)


def test_log_lines_since_counts_what_the_text_no_longer_holds() -> None:
    assert log_lines_since(0, 0, b"") == ([], 0)
    assert log_lines_since(2, 2, "a\nb") == ([], 0)
    assert log_lines_since(1, 3, b"a\nb\nc") == (["b", "c"], 0)
    assert log_lines_since(0, 10, "i\nj") == (["i", "j"], 8)
    assert log_lines_since(50, 2, "a\nb") == (["a", "b"], 0)  # a new runner counts from 0 again


def test_a_student_file_with_a_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "robot.py"
    path.write_text("def teleop_main():\n    pass\n\ndef oops(:\n")
    with pytest.raises(RunnerError, match="not valid Python: line 4"):
        load_student_code(str(path))
    with pytest.raises(RunnerError, match="cannot read the student file"):
        load_student_code(str(tmp_path / "missing.py"))


def test_the_robot_file_maps_names_to_uids(tmp_path: Path) -> None:
    path = tmp_path / "robot.yaml"
    path.write_text("left: 0x10\narm: '10_12648430'\nraw: 16\n")
    assert load_devices(str(path)) == {"left": 16, "arm": "10_12648430", "raw": 16}
    path.write_text("- left\n")
    with pytest.raises(RunnerError, match="maps device names to UIDs"):
        load_devices(str(path))
    path.write_text("left: [1]\n")
    with pytest.raises(RunnerError, match="not a device name and a UID"):
        load_devices(str(path))
    path.write_text("left: [\n")
    with pytest.raises(RunnerError, match="not YAML"):
        load_devices(str(path))


def test_the_traceback_keeps_the_student_file_s_frames_only(tmp_path: Path) -> None:
    path = tmp_path / "robot.py"
    path.write_text("import json\n\ndef teleop_main():\n    json.loads('{')\n")
    student: dict[str, object] = {}
    exec(load_student_code(str(path)), student)
    try:
        student["teleop_main"]()  # type: ignore[operator]
    except ValueError as exc:
        text = filtered_traceback(exc, str(path))
    assert f'File "{path}", line 4, in teleop_main' in text
    assert "json/" not in text and "decoder.py" not in text and __file__ not in text
    assert text.rstrip().splitlines()[-1].startswith("json.decoder.JSONDecodeError")
