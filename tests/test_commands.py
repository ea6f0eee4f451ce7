"""Commands and commanders in one buffer: who wrote the value in force, ending commands, disabling.

The end-to-end half (a real bridge and emulated devices, commanders killed
every way) is tests/test_commands_robot.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from runtime import _core
from runtime.buffer import Buffer, CatalogError, DeviceBuffer, DeviceBufferError, Parameter
from runtime.commands import CommanderWatch, my_commander, start_time
from runtime.messaging import Message
from runtime.store import ROBOT_STATE, BufferStore

Motor = DeviceBuffer.make_type(
    "test-motor",
    [
        Parameter("duty", ctypes.c_float, 0, lower=-1, upper=1, writeable=True, safe=0.0),
        Parameter("gain", ctypes.c_float, 1, writeable=True),
        Parameter("speed", ctypes.c_int16, 2, writeable=True, lower=-100, upper=100, safe=5),
        Parameter("brake", ctypes.c_bool, 3, writeable=True, safe=True),
        Parameter("position", ctypes.c_float, 4),
    ],
    device_id=0x7E57,
)

WRITE_IN_CHILD = """\
import sys
from runtime.buffer import DeviceBuffer
from tests.test_commands import Motor
with Motor.open(sys.argv[1], create=False) as motor:
    motor.write(sys.argv[2], float(sys.argv[3]))
    if sys.argv[4] == "close":
        pass  # the with block closes the handle: the command ends
    else:
        import os
        os._exit(0)  # ends without closing: the handle stays, the command too (only the bridge ends it)
"""


@pytest.fixture
def motor(shm_name) -> Iterator[DeviceBuffer]:  # type: ignore[no-untyped-def]
    with Motor.open(shm_name("motor")) as buffer:
        yield buffer


def dev_write(**values: float) -> Message:
    """A DEV_WRITE of these values, as the bridge sends it."""
    with Motor.open("scratch", shared=False) as scratch:
        for name, value in values.items():
            scratch.write(name, value)
        (message,) = scratch.emit_dev_rw()
    return message


def write_in_child(name: str, param: str, value: float, *, close: bool) -> int:
    """Write from another process; return its pid."""
    process = subprocess.run(
        [sys.executable, "-c", WRITE_IN_CHILD, name, param, str(value), "close" if close else "exit"],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        capture_output=True,
        timeout=60,
        check=True,
    )
    assert process.stderr == b""
    return 0


# ---- the catalog's word ---------------------------------------------------------------------------


def test_safe_values_of_a_type() -> None:
    assert Motor.safe_values() == {"duty": 0.0, "speed": 5, "brake": True}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"safe": 0.0}, "writeable"),  # a read-only parameter
        ({"safe": 2.0, "writeable": True, "lower": -1, "upper": 1}, "out of bounds"),
        ({"safe": float("nan"), "writeable": True}, "finite"),
        ({"safe": "off", "writeable": True}, "number"),
        ({"safe": True, "writeable": True}, "number"),
    ],
)
def test_a_bad_safe_value_is_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(CatalogError, match=message):
        DeviceBuffer.make_type("bad", [Parameter("p", ctypes.c_float, 0, **options)], device_id=1)  # type: ignore[arg-type]


def test_only_a_smart_device_has_safe_values() -> None:
    with pytest.raises(CatalogError, match="Smart Device"):
        Buffer.make_type("pad", [Parameter("p", ctypes.c_float, 0, writeable=True, safe=0.0)])


@pytest.mark.parametrize("timeout", [0, -1, float("inf"), True, "1"])
def test_a_bad_command_timeout_is_refused(timeout: object) -> None:
    with pytest.raises(CatalogError, match="command_timeout"):
        DeviceBuffer.make_type("bad", [], device_id=1, command_timeout=timeout)


# ---- who commands ---------------------------------------------------------------------------------


def test_a_write_makes_this_process_the_commander(motor: DeviceBuffer) -> None:
    assert motor.commanders() == {}
    motor.write("duty", 0.5)
    motor.write("gain", 3.0)  # no safe value: not a command
    assert motor.commanders() == {"duty": os.getpid()}
    assert motor._access.commanders() == {"duty": my_commander()}
    assert my_commander() == (os.getpid(), start_time(os.getpid()))


def test_a_command_message_makes_its_digester_the_commander(motor: DeviceBuffer) -> None:
    motor.update(dev_write(duty=0.5, speed=7))
    assert motor.commanders() == {"duty": os.getpid(), "speed": os.getpid()}


def test_end_commands_puts_the_safe_values_back_as_pending_writes(motor: DeviceBuffer) -> None:
    motor.write("duty", 0.5)
    motor.write("speed", 42)
    motor.write("gain", 3.0)
    motor.get_write()  # as if the bridge sent them
    assert motor.end_commands(["duty"]) == {"duty"}
    assert motor.pending_writes() == {"duty": 0.0}
    assert motor.commanders() == {"speed": os.getpid()}
    assert motor.end_commands() == {"speed"}
    assert motor.get_write() == {"duty": 0.0, "speed": 5}  # configuration keeps its value, and is not resent
    assert motor.commanders() == {}
    assert motor.end_commands() == set()  # nothing left to end


def test_end_commands_names_only_writeable_parameters(motor: DeviceBuffer) -> None:
    with pytest.raises(DeviceBufferError, match="not writeable"):
        motor.end_commands(["position"])
    with pytest.raises(DeviceBufferError, match="no such parameter"):
        motor.end_commands(["dutty"])


def test_another_process_takes_the_command_over(motor: DeviceBuffer) -> None:
    motor.write("duty", 0.5)
    write_in_child(motor.name, "duty", -0.5, close=False)
    ((pid, _start),) = motor._access.commanders().values()
    assert pid != os.getpid()
    assert motor.end_commands() == set()  # not ours any more
    assert motor.pending_writes() == {"duty": -0.5}


def test_a_commander_that_closes_its_handle_ends_its_commands(motor: DeviceBuffer) -> None:
    write_in_child(motor.name, "duty", 0.75, close=True)
    assert motor.commanders() == {}
    assert motor.pending_writes() == {"duty": 0.0}


def test_closing_leaves_the_commands_of_others(motor: DeviceBuffer) -> None:
    write_in_child(motor.name, "duty", 0.75, close=False)
    with Motor.open(motor.name, create=False) as other:
        other.write("speed", 50)
    assert list(motor.commanders()) == ["duty"]  # speed ended with our other handle; duty is the child's
    assert motor.pending_writes() == {"duty": 0.75, "speed": 5}


def test_a_forked_child_is_a_commander_of_its_own(motor: DeviceBuffer) -> None:
    motor.write("duty", 0.25)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            motor.write("speed", 9)
            os.write(write, repr(_core.my_commander()).encode())
        finally:
            os._exit(0)
    os.close(write)
    child = eval(os.read(read, 100))  # noqa: S307 - our own child's repr of a tuple
    os.close(read)
    os.waitpid(pid, 0)
    assert child[0] == pid
    assert motor._access.commanders() == {"duty": my_commander(), "speed": child}


def test_a_type_without_safe_values_has_no_commands(shm_name) -> None:  # type: ignore[no-untyped-def]
    Plain = DeviceBuffer.make_type("plain", [Parameter("p", ctypes.c_float, 0, writeable=True)], device_id=2)
    with Plain.open(shm_name("plain")) as plain:
        plain.write("p", 1.0)
        assert plain.commanders() == {}
        assert plain.end_commands() == set()
        assert plain._access.set_disabled(True) == set()
        plain.write("p", 2.0)  # nothing of it actuates: never refused


# ---- disabling ------------------------------------------------------------------------------------


def test_disabling_refuses_commands_and_puts_safe_values_back(motor: DeviceBuffer) -> None:
    motor.write("duty", 0.5)
    motor.write("gain", 2.0)
    motor.get_write()
    assert motor._access.set_disabled(True) == {"duty", "speed", "brake"}
    assert motor.disabled
    assert motor.get_write() == {"duty": 0.0, "speed": 5, "brake": True}
    with pytest.raises(DeviceBufferError, match="the robot is disabled") as caught:
        motor.write("duty", 0.5)
    assert caught.value.context["param"] == "duty"
    with pytest.raises(DeviceBufferError, match="the robot is disabled"):
        motor.update(dev_write(duty=0.5))
    motor.write("gain", 4.0)  # configuration is not refused
    assert motor.get_write() == {"gain": 4.0}
    assert motor._access.set_disabled(False) == set()
    assert motor.get_write() == {}  # enabling moves nothing
    motor.write("duty", 0.5)
    assert motor.get_write() == {"duty": 0.5}


def test_disabling_wakes_the_producer(motor: DeviceBuffer) -> None:
    motor.wait_write(timeout=0)
    motor._access.set_disabled(True)
    assert motor.wait_write(timeout=5)


@contextlib.contextmanager
def lock_held_elsewhere(name: str) -> Iterator[None]:
    """Another process holds the buffer's lock (inside a transaction) until the block ends."""
    script = textwrap.dedent(
        """
        import sys, time
        from tests.test_commands import Motor
        with Motor.open(sys.argv[1], create=False) as motor:
            with motor.transaction():
                print("locked", flush=True)
                sys.stdin.readline()
        """
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, name],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline() == b"locked\n"
        yield
        holder.stdin.write(b"\n")
        holder.stdin.flush()
        assert holder.wait(timeout=60) == 0
    finally:
        holder.kill()
        holder.wait()
        for stream in (holder.stdin, holder.stdout):
            if stream is not None:
                stream.close()


def test_disabling_sets_the_flag_even_when_the_lock_is_taken(motor: DeviceBuffer) -> None:
    with lock_held_elsewhere(motor.name):
        motor.set_lock_timeout(0)
        with pytest.raises(DeviceBufferError, match="timed out"):
            motor._access.set_disabled(True)
        assert motor.disabled  # the producer sees it and stops the device; the values follow


def test_a_store_disables_and_enables_its_namespace() -> None:
    catalog = {"test-motor": Motor}
    with BufferStore.use_namespace(f"rt-test-disable-{os.getpid()}"), BufferStore(catalog) as store:
        try:
            assert store.enabled
            first = store.get_or_open(("test-motor", 1))
            first.serve()
            first.write("duty", 0.5)
            with BufferStore(catalog) as other:  # another program of the namespace
                assert other.disable() == [first.name]
                assert not other.enabled
            assert not store.enabled and first.disabled
            assert first.pending_writes()["duty"] == 0.0
            assert os.path.exists(f"/dev/shm/{store.namespace()}-{ROBOT_STATE}")
            assert store.enable() == [first.name]
            assert store.enabled and not first.disabled
        finally:
            store.unlink_all()


def test_a_process_local_store_keeps_its_own_state() -> None:
    with BufferStore({"test-motor": Motor}, shared=False) as store:
        motor = store.get_or_open(("test-motor", 3))
        assert store.disable() == [motor.name]
        assert not store.enabled and motor.disabled
        store.enable()
        assert store.enabled and not motor.disabled


# ---- watching commanders --------------------------------------------------------------------------


def test_the_watch_reports_a_commander_that_ends() -> None:
    async def scenario() -> tuple[bool, list[tuple[int, int]]]:
        ended: list[tuple[int, int]] = []
        done = asyncio.Event()

        def on_end(who: tuple[int, int]) -> None:
            ended.append(who)
            done.set()

        watch = CommanderWatch(on_end)
        child = await asyncio.create_subprocess_exec(
            sys.executable, "-c", "import sys; sys.stdin.read()", stdin=asyncio.subprocess.PIPE
        )
        try:
            who = (child.pid, start_time(child.pid) or 0)
            alive = watch.alive(who) and watch.alive(who)  # asked twice, watched once
            assert child.stdin is not None
            child.stdin.close()
            await asyncio.wait_for(done.wait(), 60)
            await child.wait()
            return alive and not watch.alive(who), ended
        finally:
            watch.close()
            if child.returncode is None:
                child.kill()
                await child.wait()

    alive, ended = asyncio.run(scenario())
    assert alive
    assert len(ended) == 1


def test_a_reused_or_missing_pid_is_not_alive() -> None:
    async def scenario() -> list[bool]:
        watch = CommanderWatch(lambda who: None)
        pid, start = my_commander()
        try:
            return [
                watch.alive((pid, start)),
                watch.alive((pid, start + 1)),  # the pid names another process now
                watch.alive((2**22 + 12345, 0)),  # beyond any pid
            ]
        finally:
            watch.close()

    assert asyncio.run(scenario()) == [True, False, False]


# ---- a server's clients -------------------------------------------------------------------------


def test_client_commands_end_only_the_commands_of_the_client_that_went(motor: DeviceBuffer) -> None:
    from runtime.commands import ClientCommands

    table: ClientCommands[str, str] = ClientCommands()
    motor.write("duty", 0.5)
    motor.write("speed", 7)
    motor.write("gain", 2.0)
    table.wrote("motor", motor, ["duty", "gain"], "a")  # gain has no safe value: not a command
    table.wrote("motor", motor, ["speed"], "b")
    assert table.clients() == {"a", "b"}
    motor.get_write()
    assert table.end(lambda client: client == "a") == ({"motor": {"duty"}}, {})
    assert motor.get_write() == {"duty": 0.0}
    assert table.clients() == {"b"}
    table.forget("motor")
    assert table.clients() == set()
    assert table.end(lambda client: True) == ({}, {})


def test_client_commands_keep_what_a_busy_lock_kept_from_ending(motor: DeviceBuffer) -> None:
    from runtime.commands import ClientCommands

    table: ClientCommands[str, str] = ClientCommands()
    motor.write("duty", 0.5)
    table.wrote("motor", motor, ["duty"], "a")
    motor.set_lock_timeout(0)
    with lock_held_elsewhere(motor.name):
        ended, failed = table.end(lambda client: client == "a")
    assert ended == {} and list(failed) == ["motor"]
    assert table.clients() == {"a"}  # kept, to end again later
    assert table.end(lambda client: client == "a") == ({"motor": {"duty"}}, {})
