"""runtime.buffer in one process: buffer types, segments, values, Smart Device messages.

Multi-process behaviour lives in test_buffer_multiprocess.py, BufferStore in test_store.py.
"""

import ctypes
import functools
import math
import os
import struct
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from e2e import segment_exists
from hypothesis import given, settings
from hypothesis import strategies as st

from runtime.buffer import Buffer, DeviceBuffer, DeviceBufferError, DeviceUID, Parameter
from runtime.messaging import (
    MAX_PAYLOAD,
    Message,
    MessageError,
    MessageType,
    ParamLayout,
    make_dev_disable,
    make_dev_read,
    make_hb_req,
    make_ping,
    make_sub_req,
    make_sub_res,
)

SHM_DIR = "/dev/shm"

# The device type of the protocol spec's worked examples.
Example = DeviceBuffer.make_type(
    "example",
    [
        Parameter("flag", ctypes.c_bool, 0, readable=False, writeable=True),
        Parameter("duty_cycle", ctypes.c_double, 1),
        Parameter("id", ctypes.c_uint32, 2, readable=True, writeable=True),
    ],
    device_id=0x77,
)

# A Smart Device with one parameter of each interesting kind.
Gadget = DeviceBuffer.make_type(
    "gadget",
    [
        Parameter("speed", ctypes.c_float, 0, lower=-1, upper=1, writeable=True),
        Parameter("level", ctypes.c_int16, 1, lower=0, upper=100, writeable=True),
        Parameter("enabled", ctypes.c_bool, 2, writeable=True),
        Parameter("secret", ctypes.c_uint32, 3, readable=False, writeable=True),
        Parameter("sensor", ctypes.c_double, 4),
        Parameter("quiet", ctypes.c_int32, 5, subscribed=False),
    ],
    device_id=0x42,
    sub_interval=0.1,
)
GADGET_READABLE = {"speed", "level", "enabled", "sensor", "quiet"}
GADGET_SUBSCRIBED = {"speed", "level", "enabled", "sensor"}

Arrays = Buffer.make_type(
    "arrays",
    [
        Parameter("data", ctypes.c_uint8 * 16, 0, writeable=True),
        Parameter("label", ctypes.c_char * 8, 1, writeable=True),
        Parameter("grid", ctypes.c_int16 * 3, 2, writeable=True),
    ],
)


def f32(value: float) -> float:
    """``value`` rounded to single precision, as a 4-byte float stores it."""
    return float(struct.unpack("<f", struct.pack("<f", value))[0])


def bitmap(buffer_type: type[Buffer], names: Any) -> int:
    return sum(1 << buffer_type.params[name].id for name in names)


@pytest.fixture
def gadget(shm_name: Callable[[str], str]) -> Iterator[Any]:
    with Gadget.open(shm_name("gadget")) as buffer:
        yield buffer


@pytest.fixture
def example(shm_name: Callable[[str], str]) -> Iterator[Any]:
    with Example.open(shm_name("example")) as buffer:
        yield buffer


def namespace_segments(namespace: str) -> set[str]:
    return {entry for entry in os.listdir(SHM_DIR) if entry.startswith(namespace)}


# ---- buffer types ------------------------------------------------------------------------------


def test_make_type_generates_update_and_write_blocks() -> None:
    assert issubclass(Gadget, ctypes.Structure)
    assert issubclass(Gadget, DeviceBuffer)
    assert Gadget.type_name == "gadget"
    names = [field[0] for field in Gadget._fields_]
    assert names[:2] == ["_update", "_write"]
    update_type, write_type = Gadget._fields_[0][1], Gadget._fields_[1][1]
    assert update_type is write_type
    assert issubclass(update_type, ctypes.Structure)
    expected = [
        (param.name, param.platform_type) for param in sorted(Gadget.params.values(), key=lambda p: p.id)
    ]
    assert list(update_type._fields_) == expected
    assert list(Gadget.params) == ["speed", "level", "enabled", "secret", "sensor", "quiet"]
    assert Gadget.params["level"] == Parameter("level", ctypes.c_int16, 1, lower=0, upper=100, writeable=True)
    assert Gadget.device_id == 0x42
    assert Gadget.sub_interval == 0.1


def test_make_type_orders_fields_by_parameter_id() -> None:
    shuffled = Buffer.make_type(
        "shuffled", [Parameter("b", ctypes.c_uint8, 1), Parameter("a", ctypes.c_uint32, 0)]
    )
    assert [field[0] for field in shuffled._fields_[0][1]._fields_] == ["a", "b"]


def test_make_type_appends_extra_fields_and_sets_attrs(shm_name: Callable[[str], str]) -> None:
    extra = [("extra", ctypes.c_uint32), ("tag", ctypes.c_char * 4)]
    Custom = Buffer.make_type("custom", [Parameter("x", ctypes.c_int32, 0)], *extra, colour="red", answer=42)
    assert list(Custom._fields_[-2:]) == extra
    assert Custom.colour == "red"
    assert Custom.answer == 42
    name = shm_name("custom")
    with Custom.open(name) as first, Custom.open(name, create=False) as second:
        first.extra = 123456  # the extra fields live in the shared structure too
        assert second.extra == 123456
        assert second.colour == "red"


def test_device_make_type_refuses_more_than_16_parameters() -> None:
    params = [Parameter(f"p{i}", ctypes.c_uint8, i) for i in range(17)]
    with pytest.raises(ValueError):
        DeviceBuffer.make_type("too-many", params, device_id=1)
    assert len(DeviceBuffer.make_type("sixteen", params[:16], device_id=1).params) == 16
    assert len(Buffer.make_type("plain-many", params).params) == 17  # the limit is for Smart Devices


# ---- segments ----------------------------------------------------------------------------------


def test_open_creates_segment_and_exit_closes_without_unlinking(shm_name: Callable[[str], str]) -> None:
    name = shm_name()
    assert not segment_exists(name)
    with Gadget.open(name, create=True) as buffer:
        assert segment_exists(name)
        assert buffer.name == name
        buffer.set("level", 7)
    assert buffer.closed
    with pytest.raises(DeviceBufferError):
        buffer.get("level")
    assert segment_exists(name)
    with Gadget.open(name, create=False) as again:
        assert again.closed is False
        assert again.valid  # nobody serves it: closing its creator changed nothing
        assert again.get("level") == 7


def test_open_create_false_on_missing_segment_raises(shm_name: Callable[[str], str]) -> None:
    name = shm_name()
    with pytest.raises(DeviceBufferError):
        with Gadget.open(name, create=False):
            pass
    assert not segment_exists(name)


def test_open_create_true_attaches_to_an_existing_segment(shm_name: Callable[[str], str]) -> None:
    name = shm_name()
    with Gadget.open(name) as first, Gadget.open(name, create=True) as second:
        first.set("level", 42)
        first.write("speed", 0.5)
        assert second.get("level") == 42
        assert second.get_write() == {"speed": 0.5}


def test_unlink_destroys_the_segment(shm_name: Callable[[str], str]) -> None:
    name = shm_name()
    with Gadget.open(name):
        pass
    Gadget.unlink(name)
    assert not segment_exists(name)
    with pytest.raises(DeviceBufferError):
        with Gadget.open(name, create=False):
            pass
    with pytest.raises(DeviceBufferError):
        Gadget.unlink(name)


@pytest.mark.parametrize("bad", ["", "a/b", "/leading", "x" * 300], ids=["empty", "slash", "lead", "long"])
def test_invalid_names_are_refused(bad: str, buffer_namespace: str) -> None:
    name = bad if bad in ("", "x" * 300) else f"{buffer_namespace}-{bad}"
    before = namespace_segments(buffer_namespace)
    with pytest.raises(DeviceBufferError):
        with Gadget.open(name):
            pass
    with pytest.raises(DeviceBufferError):
        Gadget.unlink(name)
    assert namespace_segments(buffer_namespace) == before


@pytest.mark.parametrize("create", [True, False])
def test_opening_with_a_different_layout_is_refused(shm_name: Callable[[str], str], create: bool) -> None:
    same_size = Buffer.make_type("layout-a", [Parameter("x", ctypes.c_int32, 0)])
    other_kind = Buffer.make_type("layout-b", [Parameter("x", ctypes.c_float, 0)])
    other_name = Buffer.make_type("layout-c", [Parameter("y", ctypes.c_int32, 0)])
    bigger = Buffer.make_type(
        "layout-d", [Parameter("x", ctypes.c_int32, 0), Parameter("z", ctypes.c_int64, 1)]
    )
    assert ctypes.sizeof(same_size) == ctypes.sizeof(other_kind) == ctypes.sizeof(other_name)
    name = shm_name()
    with same_size.open(name) as original:
        original.set("x", 5)
        for wrong in (other_kind, other_name, bigger, Gadget):
            with pytest.raises(DeviceBufferError):
                with wrong.open(name, create=create):
                    pass
        assert original.get("x") == 5
        assert original.valid
        with same_size.open(name, create=create) as same:
            assert same.get("x") == 5


# ---- the valid bit ------------------------------------------------------------------------------


def test_consumers_never_change_validity_by_opening_or_closing(shm_name: Callable[[str], str]) -> None:
    name = shm_name()
    creator = Gadget.attach(name, create=True)
    try:
        with Gadget.open(name, create=False) as attacher:
            assert creator.valid and attacher.valid  # created valid: usable on its own
            attacher.set("level", 3)
        assert creator.valid
        with Gadget.open(name, create=False) as attacher:
            creator.close()
            assert attacher.valid and attacher.get("level") == 3
    finally:
        creator.close()


def test_a_producer_owns_validity_until_it_stops_or_closes(shm_name: Callable[[str], str]) -> None:
    name = shm_name()
    with Gadget.open(name) as consumer, Gadget.open(name, create=False) as producer:
        assert producer.producer_pid is None and not producer.serving
        assert producer.serve() is None
        assert producer.serving and not consumer.serving
        assert consumer.producer_pid == os.getpid()
        with pytest.raises(DeviceBufferError, match="only it changes"):
            consumer.valid = False  # a consumer cannot end a producer's validity
        consumer.close()  # nor can it by closing
        assert producer.valid
        with Gadget.open(name, create=False) as reader:
            producer.valid = False  # the producer says: no data now (device unplugged, say)
            assert not reader.valid and producer.serving
            producer.serve()  # and: live again
            assert reader.valid
            producer.stop_serving()
            assert not reader.valid and reader.producer_pid is None and not producer.serving
            with pytest.raises(DeviceBufferError, match="not valid"):
                reader.get("level")
            producer.serve()
            assert reader.valid
            producer.close()  # closing a served buffer stops serving it
            assert not reader.valid


def test_a_second_producer_is_refused_while_the_first_serves(shm_name: Callable[[str], str]) -> None:
    name = shm_name()
    with Gadget.open(name) as first, Gadget.open(name, create=False) as second:
        first.serve()
        with pytest.raises(DeviceBufferError, match="already served by this thread"):
            second.serve()
        errors: list[BaseException] = []

        def serve_from_another_thread() -> None:
            try:
                second.serve()
            except DeviceBufferError as exc:
                errors.append(exc)

        thread = threading.Thread(target=serve_from_another_thread)
        thread.start()
        thread.join(10)
        assert len(errors) == 1 and "another producer" in str(errors[0])
        assert errors[0].context["producer_pid"] == os.getpid()  # type: ignore[attr-defined]
        first.stop_serving()
        second.serve()  # free now
        assert first.valid and second.serving
        second.stop_serving()


def test_a_producer_thread_that_ends_invalidates_its_buffer(shm_name: Callable[[str], str]) -> None:
    name = shm_name()
    with Gadget.open(name) as buffer, Gadget.open(name, create=False) as producer:
        thread = threading.Thread(target=producer.serve)
        thread.start()
        thread.join(10)
        # The role was the thread's: it ends with it (join() may return just before the thread is gone).
        deadline = time.monotonic() + 10
        while buffer.valid and time.monotonic() < deadline:
            time.sleep(0.001)
        assert not buffer.valid
        producer.serve()  # taken over by this thread
        assert buffer.valid and producer.serving


def test_serving_from_another_thread_while_the_first_holds_the_role_is_refused(
    shm_name: Callable[[str], str],
) -> None:
    name = shm_name()
    with Gadget.open(name) as producer:
        producer.serve()
        errors: list[BaseException] = []

        def serve_again() -> None:
            try:
                producer.serve()
            except DeviceBufferError as exc:
                errors.append(exc)

        thread = threading.Thread(target=serve_again)
        thread.start()
        thread.join(10)
        assert len(errors) == 1 and "another producer" in str(errors[0])
        assert producer.serving and producer.valid


def test_process_local_buffer_is_valid_while_open() -> None:
    with Gadget.open("local-only", shared=False) as buffer:
        assert buffer.valid
        buffer.set("level", 9)
        assert buffer.get("level") == 9
    assert not buffer.valid
    assert not segment_exists("local-only")


INVALID_OPERATIONS: dict[str, Callable[[Any], Any]] = {
    "get": lambda b: b.get("level"),
    "set": lambda b: b.set("level", 1),
    "write": lambda b: b.write("level", 1),
    "read": lambda b: b.read(),
    "read_named": lambda b: b.read(["level"]),
    "snapshot": lambda b: b.snapshot(),
    "transaction": lambda b: b.transaction().__enter__(),
    "emit_dev_rw": lambda b: list(b.emit_dev_rw()),
    "emit_dev_data": lambda b: list(b.emit_dev_data()),
    "emit_subscription": lambda b: list(b.emit_subscription()),
    "make_sub_req": lambda b: b.make_sub_req(),
    "make_sub_req_args": lambda b: b.make_sub_req(["level"], 0.1),
    "make_sub_res": lambda b: b.make_sub_res(),
    "get_read": lambda b: b.get_read(),
    "get_update": lambda b: b.get_update(),
    "get_write": lambda b: b.get_write(),
    "update_dev_data": lambda b: b.update(Message(MessageType.DEV_DATA, b"\x02\x00\x05\x00")),
    "update_dev_write": lambda b: b.update(Message(MessageType.DEV_WRITE, b"\x02\x00\x05\x00")),
    "update_dev_read": lambda b: b.update(make_dev_read(0b10)),
    "update_sub_req": lambda b: b.update(make_sub_req(0b10, 100)),
    "update_sub_res": lambda b: b.update(make_sub_res(0b10, 100, 0x42, 1, 2)),
    "update_ping": lambda b: b.update(make_ping()),
    "uid": lambda b: b.uid,
    "uid_setter": lambda b: setattr(b, "uid", 5),
    "subscription": lambda b: b.subscription,
    "interval": lambda b: b.interval,
    "last_update": lambda b: b.last_update,
    "last_write": lambda b: b.last_write,
}


@pytest.mark.parametrize("operation", list(INVALID_OPERATIONS))
def test_every_operation_on_an_invalid_buffer_raises(gadget: Any, operation: str) -> None:
    run = INVALID_OPERATIONS[operation]
    run(gadget)  # works while valid
    if operation == "transaction":
        gadget.transaction().__exit__(None, None, None)
    gadget.serve()  # only a buffer's producer changes its validity
    gadget.valid = False
    assert gadget.valid is False
    with pytest.raises(DeviceBufferError):
        run(gadget)
    gadget.valid = True
    run(gadget)
    if operation == "transaction":
        gadget.transaction().__exit__(None, None, None)


def test_invalid_buffer_is_left_unchanged(gadget: Any) -> None:
    gadget.set("level", 10)
    gadget.get_update()
    gadget.serve()  # only a buffer's producer changes its validity
    gadget.valid = False
    for operation in ("set", "write", "update_dev_data", "update_sub_req", "uid_setter"):
        with pytest.raises(DeviceBufferError):
            INVALID_OPERATIONS[operation](gadget)
    gadget.valid = True
    assert gadget.get("level") == 10
    assert gadget.get_update() == {}
    assert gadget.get_write() == {}
    assert gadget.uid == 0
    assert gadget.subscription == frozenset()


# ---- transactions -------------------------------------------------------------------------------


def test_transaction_is_reentrant_and_released_completely(gadget: Any) -> None:
    with gadget.transaction():
        with gadget.transaction():
            gadget.set("level", 1)
            with gadget.transaction():
                gadget.set("level", gadget.get("level") + 1)
        assert gadget.get("level") == 2
    # Every level was released: another thread gets the lock (it would time out otherwise).
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(gadget.get("level")))
    thread.start()
    thread.join(10)
    assert result == [2]


class PatientGadget(Gadget):
    lock_timeout = 30.0  # a waiter that does not give up while the test holds the lock


def test_transaction_excludes_other_threads_until_it_ends(shm_name: Callable[[str], str]) -> None:
    seen: list[Any] = []
    with PatientGadget.open(shm_name()) as gadget:
        with gadget.transaction():
            gadget.set("level", 1)
            thread = threading.Thread(target=lambda: seen.append(gadget.get("level")))
            thread.start()
            thread.join(0.2)  # it is blocked on the lock, so it cannot see the intermediate value
            gadget.set("level", 2)
        thread.join(10)
    assert seen == [2]


def test_transaction_reports_an_invalid_buffer(gadget: Any) -> None:
    gadget.serve()  # only a buffer's producer changes its validity
    gadget.valid = False
    with pytest.raises(DeviceBufferError):
        with gadget.transaction():
            pass
    gadget.valid = True
    with gadget.transaction():
        gadget.set("level", 4)
    assert gadget.get("level") == 4


# ---- values -------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["get", "set", "write"])
def test_unknown_parameter_raises_naming_it(gadget: Any, method: str) -> None:
    args = ("nope",) if method == "get" else ("nope", 1)
    with pytest.raises(DeviceBufferError) as info:
        getattr(gadget, method)(*args)
    assert info.value.context["param"] == "nope"


def test_unreadable_parameter_cannot_be_read(gadget: Any) -> None:
    with pytest.raises(DeviceBufferError) as info:
        gadget.get("secret")
    assert info.value.context["param"] == "secret"
    with pytest.raises(DeviceBufferError) as info:
        gadget.read(["speed", "secret"])
    assert info.value.context["param"] == "secret"
    assert gadget.get_read() == set()  # nothing was requested
    assert "secret" not in gadget.snapshot()


def test_unwriteable_parameter_cannot_be_written(gadget: Any) -> None:
    with pytest.raises(DeviceBufferError) as info:
        gadget.write("sensor", 1.0)
    assert info.value.context["param"] == "sensor"
    assert gadget.get_write() == {}
    gadget.set("sensor", 0.5)  # the update block holds what the device reports
    assert gadget.get("sensor") == 0.5


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("speed", "fast"),
        ("speed", None),
        ("speed", b"1"),
        ("level", 1.5),
        ("level", "3"),
        ("level", None),
        ("enabled", "yes"),
        ("enabled", None),
        ("secret", 2.0),
    ],
)
def test_wrong_value_type_raises_type_error(gadget: Any, param: str, value: Any) -> None:
    if param != "secret":
        with pytest.raises(TypeError):
            gadget.set(param, value)
    with pytest.raises(TypeError):
        gadget.write(param, value)
    assert gadget.get_update() == {}
    assert gadget.get_write() == {}


def test_values_round_trip(gadget: Any) -> None:
    gadget.set("speed", -0.25)
    gadget.set("level", 99)
    gadget.set("enabled", True)
    gadget.set("quiet", -(2**31))
    assert gadget.get("speed") == -0.25
    assert gadget.get("level") == 99
    assert gadget.get("enabled") is True
    assert gadget.get("quiet") == -(2**31)
    gadget.write("secret", 0xFFFFFFFF)
    gadget.write("enabled", 1)
    assert gadget.get_write() == {"secret": 0xFFFFFFFF, "enabled": True}


@pytest.mark.parametrize(
    ("param", "value", "clamped"),
    [("speed", 2.0, 1.0), ("speed", -3, -1.0), ("level", 150, 100), ("level", -5, 0)],
)
@pytest.mark.parametrize("method", ["set", "write"])
def test_out_of_bounds_values_are_clamped_with_a_warning(
    gadget: Any, method: str, param: str, value: Any, clamped: Any
) -> None:
    with pytest.warns(RuntimeWarning, match=param):
        getattr(gadget, method)(param, value)
    stored = gadget.get(param) if method == "set" else gadget.get_write()[param]
    assert stored == clamped


def test_values_within_bounds_are_not_clamped(gadget: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gadget.set("speed", 1.0)
        gadget.set("level", 0)
        gadget.write("level", 100)
    assert gadget.get("speed") == 1.0
    assert gadget.get("level") == 0
    assert gadget.get_write() == {"level": 100}


def test_double_parameter_is_stored_four_bytes_wide(gadget: Any) -> None:
    param = Gadget.params["sensor"]
    assert param.ctype is ctypes.c_double
    assert param.platform_type is ctypes.c_float
    values_type = Gadget._fields_[0][1]
    assert values_type.sensor.size == 4
    gadget.set("sensor", 0.1)
    assert gadget.get("sensor") == f32(0.1)
    assert gadget.get("sensor") != 0.1
    assert struct.pack("<f", gadget.get("sensor")) == struct.pack("<f", 0.1)


# ---- arrays -------------------------------------------------------------------------------------


def test_array_get_returns_a_copy(shm_name: Callable[[str], str]) -> None:
    with Arrays.open(shm_name()) as buffer:
        buffer.set("data", bytes(range(16)))
        value = buffer.get("data")
        assert isinstance(value, ctypes.Array)
        assert list(value) == list(range(16))
        value[0] = 99
        assert buffer.get("data")[0] == 0
        buffer.set("data", [5] * 16)
        assert list(value) == [99, *range(1, 16)]  # the copy does not follow the buffer
        assert list(buffer.get("data")) == [5] * 16


def test_array_set_accepts_bytes_and_sequences(shm_name: Callable[[str], str]) -> None:
    with Arrays.open(shm_name()) as buffer:
        buffer.set("data", bytearray(b"\x01" * 16))
        assert bytes(buffer.get("data")) == b"\x01" * 16
        buffer.set("data", tuple(range(100, 116)))
        assert list(buffer.get("data")) == list(range(100, 116))
        buffer.set("grid", [-1, 0, 1])
        assert list(buffer.get("grid")) == [-1, 0, 1]
        buffer.set("grid", (ctypes.c_int16 * 3)(7, 8, 9))
        assert list(buffer.get("grid")) == [7, 8, 9]
        buffer.write("data", list(range(16)))
        assert list(buffer._write.data) == list(range(16))  # the structure's write block
        assert list(buffer.get("data")) == list(range(100, 116))


def test_char_array_is_bytes(shm_name: Callable[[str], str]) -> None:
    with Arrays.open(shm_name()) as buffer:
        buffer.set("label", b"motor")
        assert buffer.get("label") == b"motor"
        buffer.set("label", b"12345678")
        assert buffer.get("label") == b"12345678"
        buffer.set("label", b"ab")  # a shorter C string is NUL-padded
        assert buffer.get("label") == b"ab"
        assert buffer.snapshot()["label"] == b"ab"


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("data", bytes(17)),
        ("data", list(range(17))),
        ("data", [1, 2, 3]),
        ("data", b"\x01" * 100),
        ("grid", [1, 2]),
        ("grid", [1, 2, 3, 4]),
        ("grid", (ctypes.c_int16 * 4)()),
        ("label", b"123456789"),
        ("label", "text"),
        ("data", 5),
    ],
)
def test_array_of_wrong_length_or_type_raises_type_error(
    shm_name: Callable[[str], str], param: str, value: Any
) -> None:
    with Arrays.open(shm_name()) as buffer:
        before = buffer.snapshot()
        with pytest.raises(TypeError):
            buffer.set(param, value)
        with pytest.raises(TypeError):
            buffer.write(param, value)
        after = buffer.snapshot()
        assert bytes(after["data"]) == bytes(before["data"])
        assert list(after["grid"]) == list(before["grid"])
        assert after["label"] == before["label"]
        assert bytes(buffer._write) == bytes(len(bytes(buffer._write)))


def test_snapshot_returns_every_readable_value(gadget: Any) -> None:
    gadget.set("speed", 0.5)
    gadget.set("level", 12)
    gadget.set("enabled", True)
    gadget.set("sensor", 2.5)
    gadget.set("quiet", -3)
    gadget.write("secret", 77)
    assert gadget.snapshot() == {"speed": 0.5, "level": 12, "enabled": True, "sensor": 2.5, "quiet": -3}


# ---- parameters ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "specifier",
    [
        "",
        "foo",
        "int33",
        "char_p",
        "void_p",
        "wchar_p",
        "int32[0]",
        "int32[",
        "int32[-1]",
        "[4]",
        "int32 x",
        5,
        None,
    ],
)
def test_parse_ctype_refuses_bad_specifiers(specifier: Any) -> None:
    with pytest.raises(DeviceBufferError):
        Parameter.parse_ctype(specifier)


@pytest.mark.parametrize(
    ("specifier", "expected"),
    [
        ("double", ctypes.c_double),
        ("char[8]", ctypes.c_char * 8),
        (" uint8 [ 4 ] ", ctypes.c_uint8 * 4),
        ("float[2][3]", ctypes.c_float * 2 * 3),
    ],
)
def test_parse_ctype_accepts_simple_types_and_arrays(specifier: str, expected: Any) -> None:
    result = Parameter.parse_ctype(specifier)
    assert ctypes.sizeof(result) == ctypes.sizeof(expected)
    if issubclass(expected, ctypes.Array):
        assert result._length_ == expected._length_
        assert ctypes.sizeof(result._type_) == ctypes.sizeof(expected._type_)
    else:
        assert result is expected


@pytest.mark.parametrize(
    ("ctype", "default"),
    [
        (ctypes.c_double, 0.0),
        (ctypes.c_float, 0.0),
        (ctypes.c_uint32, 0),
        (ctypes.c_int8, 0),
        (ctypes.c_bool, False),
    ],
)
def test_parameter_default(ctype: Any, default: Any) -> None:
    value = Parameter("p", ctype, 0).default
    assert value == default
    assert type(value) is type(default)


@pytest.mark.parametrize("ctype", [ctypes.c_uint8 * 4, ctypes.c_char * 8, ctypes.c_double * 2])
def test_vector_parameter_has_no_default(ctype: Any) -> None:
    with pytest.raises(DeviceBufferError):
        Parameter("p", ctype, 0).default  # noqa: B018


def test_platform_type_narrows_doubles_in_arrays() -> None:
    narrowed = Parameter("p", ctypes.c_double * 3, 0).platform_type
    assert ctypes.sizeof(narrowed) == 12
    assert narrowed._type_ is ctypes.c_float
    assert Parameter("p", ctypes.c_int64, 0).platform_type is ctypes.c_int64


# ---- Smart Device state --------------------------------------------------------------------------


def test_device_properties_start_empty(gadget: Any) -> None:
    assert gadget.uid == 0
    assert gadget.subscription == frozenset()
    assert gadget.interval == 0.0
    assert gadget.last_update == 0.0
    assert gadget.last_write == 0.0
    assert gadget.get_read() == set()
    assert gadget.get_update() == {}
    assert gadget.get_write() == {}
    assert list(gadget.emit_dev_rw()) == []
    assert list(gadget.emit_dev_data()) == []
    assert list(gadget.emit_subscription()) == []


def test_uid_is_settable(gadget: Any, shm_name: Callable[[str], str]) -> None:
    uid = int(DeviceUID(0x42, 0x0B, 0xC0DEBEEF_DEADBEEF))
    gadget.uid = uid
    assert gadget.uid == uid
    with Gadget.open(gadget.name, create=False) as other:
        assert other.uid == uid
    gadget.uid = DeviceUID(1, 2, 3)
    assert gadget.uid == 1 << 72 | 2 << 64 | 3
    with pytest.raises(ValueError):
        gadget.uid = 1 << 88
    assert gadget.uid == 1 << 72 | 2 << 64 | 3


def test_read_requests_readable_parameters(gadget: Any) -> None:
    gadget.read()
    assert gadget.get_read() == GADGET_READABLE
    assert gadget.get_read() == set()
    gadget.read(["level"])
    gadget.read(["sensor", "level"])
    assert gadget.get_read() == {"level", "sensor"}
    with pytest.raises(DeviceBufferError) as info:
        gadget.read(["nope"])
    assert info.value.context["param"] == "nope"


def test_get_update_and_get_write_return_and_clear_pending(gadget: Any) -> None:
    gadget.set("level", 5)
    gadget.set("speed", 0.5)
    gadget.set("level", 6)
    assert gadget.get_update() == {"level": 6, "speed": 0.5}
    assert gadget.get_update() == {}
    gadget.write("speed", -0.5)
    gadget.write("speed", 0.25)  # a newer pending write replaces the older one
    gadget.write("secret", 3)
    assert gadget.get_write() == {"speed": 0.25, "secret": 3}
    assert gadget.get_write() == {}
    assert gadget.get("speed") == 0.5  # the write block is separate from the update block


def test_emit_dev_rw_makes_read_and_write_messages_and_clears_them(gadget: Any) -> None:
    gadget.read(["level", "sensor"])
    gadget.write("speed", 0.75)
    gadget.write("secret", 0xABCDEF)
    messages = list(gadget.emit_dev_rw())
    assert [message.type for message in messages] == [MessageType.DEV_READ, MessageType.DEV_WRITE]
    assert messages[0].read_dev_read() == bitmap(Gadget, ["level", "sensor"])
    layout, memory = packed_layout(Gadget)
    assert messages[1].read_dev_write(layout, memory) == bitmap(Gadget, ["speed", "secret"])
    assert unpack(Gadget, "speed", layout, memory) == 0.75
    assert unpack(Gadget, "secret", layout, memory) == 0xABCDEF
    assert list(gadget.emit_dev_rw()) == []
    assert gadget.get_read() == set()
    assert gadget.get_write() == {}


def test_get_read_and_get_write_clear_what_emit_dev_rw_would_send(gadget: Any) -> None:
    gadget.read(["level"])
    gadget.write("speed", 0.5)
    assert gadget.get_read() == {"level"}
    assert gadget.get_write() == {"speed": 0.5}
    assert list(gadget.emit_dev_rw()) == []


def test_emit_dev_data_sends_updated_values_once(gadget: Any) -> None:
    gadget.set("level", 33)
    gadget.set("sensor", 1.5)
    gadget.write("secret", 1)  # writes are not device data
    messages = list(gadget.emit_dev_data())
    assert len(messages) == 1
    assert messages[0].type == MessageType.DEV_DATA
    layout, memory = packed_layout(Gadget)
    assert messages[0].read_dev_data(layout, memory) == bitmap(Gadget, ["level", "sensor"])
    assert unpack(Gadget, "level", layout, memory) == 33
    assert unpack(Gadget, "sensor", layout, memory) == 1.5
    assert list(gadget.emit_dev_data()) == []
    assert gadget.get_update() == {}


def test_emit_subscription_sends_subscribed_values_every_time(gadget: Any) -> None:
    gadget.set("speed", -0.5)
    gadget.set("quiet", 8)
    gadget.update(make_sub_req(bitmap(Gadget, ["speed", "quiet"]), 100))
    layout, memory = packed_layout(Gadget)
    for _ in range(2):
        (message,) = gadget.emit_subscription()
        assert message.type == MessageType.DEV_DATA
        assert message.read_dev_data(layout, memory) == bitmap(Gadget, ["speed", "quiet"])
        assert unpack(Gadget, "speed", layout, memory) == -0.5
        assert unpack(Gadget, "quiet", layout, memory) == 8
    assert gadget.get_update() == {"speed": -0.5, "quiet": 8}  # emit_subscription does not clear it
    gadget.update(make_sub_req(0, 0))
    assert list(gadget.emit_subscription()) == []


def test_update_dev_data_copies_values_and_stamps_last_update(
    gadget: Any, shm_name: Callable[[str], str]
) -> None:
    with Gadget.open(shm_name("device")) as device:
        device.set("speed", 0.125)
        device.set("level", 50)
        device.set("quiet", -7)
        messages = list(device.emit_dev_data())
    before = time.time()
    for message in messages:
        gadget.update(message)
    after = time.time()
    assert gadget.get_update() == {"speed": 0.125, "level": 50, "quiet": -7}
    assert gadget.get("level") == 50
    assert before - 0.001 <= gadget.last_update <= after + 0.001  # time.time() stamps
    assert gadget.last_write == 0.0
    assert gadget.get_write() == {}


def test_update_dev_write_fills_the_write_block(gadget: Any, shm_name: Callable[[str], str]) -> None:
    with Gadget.open(shm_name("host")) as host:
        host.write("speed", -0.75)
        host.write("secret", 12345)
        host.read(["level"])
        messages = list(host.emit_dev_rw())
    before = time.time()
    for message in messages:
        gadget.update(message)
    after = time.time()
    assert gadget.get_write() == {"speed": -0.75, "secret": 12345}
    assert gadget.get_read() == {"level"}
    assert before - 0.001 <= gadget.last_write <= after + 0.001
    assert gadget.last_update == 0.0
    assert gadget.get("speed") == 0.0  # the update block is untouched


def test_update_dev_read_records_readable_parameters_only(gadget: Any) -> None:
    gadget.update(make_dev_read(bitmap(Gadget, ["level", "secret", "sensor"])))
    assert gadget.get_read() == {"level", "sensor"}
    gadget.update(make_dev_read(0xFFFF))
    assert gadget.get_read() == GADGET_READABLE


@pytest.mark.parametrize(
    ("interval_ms", "seconds"),
    [(0, 0.0), (1, 0.04), (39, 0.04), (40, 0.04), (100, 0.1), (250, 0.25), (251, 0.25), (65535, 0.25)],
)
def test_update_sub_req_records_subscription_and_clamped_interval(
    gadget: Any, interval_ms: int, seconds: float
) -> None:
    gadget.update(make_sub_req(bitmap(Gadget, ["speed", "secret", "quiet"]), interval_ms))
    assert gadget.subscription == frozenset({"speed", "quiet"})  # readable ones only
    assert gadget.interval == pytest.approx(seconds)
    assert gadget.make_sub_res().read_sub_res()[:2] == (
        bitmap(Gadget, ["speed", "quiet"]),
        round(seconds * 1000),
    )


def test_update_sub_res_records_subscription_interval_and_uid(gadget: Any) -> None:
    gadget.update(make_sub_res(bitmap(Gadget, ["level", "sensor"]), 120, 0x42, 0x0C, 0x0123456789ABCDEF))
    assert gadget.subscription == frozenset({"level", "sensor"})
    assert gadget.interval == pytest.approx(0.12)
    assert gadget.uid == int(DeviceUID(0x42, 0x0C, 0x0123456789ABCDEF))
    assert gadget.make_sub_res().read_sub_res() == (
        bitmap(Gadget, ["level", "sensor"]),
        120,
        (0x42, 0x0C, 0x0123456789ABCDEF),
    )


@pytest.mark.parametrize(
    "message",
    [
        make_ping(),
        make_hb_req(3),
        make_dev_disable(),
        Message(MessageType.HB_RES, b"\x03"),
        Message(0xFF, b"\xfa"),
    ],
    ids=lambda message: str(MessageType(message.type).name),
)
def test_update_with_other_message_types_changes_nothing(gadget: Any, message: Any) -> None:
    gadget.set("level", 3)
    gadget.write("speed", 0.5)
    gadget.read(["sensor"])
    gadget.uid = 77
    gadget.update(make_sub_req(bitmap(Gadget, ["level"]), 50))
    state = (gadget.snapshot(), gadget.uid, gadget.subscription, gadget.interval, gadget.last_update)
    gadget.update(message)
    assert (gadget.snapshot(), gadget.uid, gadget.subscription, gadget.interval, gadget.last_update) == state
    assert gadget.get_update() == {"level": 3}
    assert gadget.get_write() == {"speed": 0.5}
    assert gadget.get_read() == {"sensor"}


def test_make_sub_req_defaults_to_subscribed_parameters_and_type_interval(gadget: Any) -> None:
    message = gadget.make_sub_req()
    assert message.type == MessageType.SUB_REQ
    assert message.read_sub_req() == (bitmap(Gadget, GADGET_SUBSCRIBED), 100)
    assert gadget.make_sub_req(["quiet"]).read_sub_req() == (bitmap(Gadget, ["quiet"]), 100)
    assert gadget.make_sub_req(interval=0.25).read_sub_req() == (bitmap(Gadget, GADGET_SUBSCRIBED), 250)
    assert gadget.make_sub_req(["level", "sensor"], 0).read_sub_req() == (
        bitmap(Gadget, ["level", "sensor"]),
        0,
    )
    assert gadget.subscription == frozenset()  # making a request does not record it


def test_make_sub_req_refuses_bad_arguments(gadget: Any) -> None:
    with pytest.raises(DeviceBufferError) as info:
        gadget.make_sub_req(["secret"])
    assert info.value.context["param"] == "secret"
    with pytest.raises(DeviceBufferError):
        gadget.make_sub_req(["nope"])
    with pytest.raises(ValueError):
        gadget.make_sub_req(interval=-1)
    with pytest.raises(ValueError):
        gadget.make_sub_req(interval=70.0)


def test_make_sub_res_reports_the_recorded_state(gadget: Any, shm_name: Callable[[str], str]) -> None:
    gadget.uid = int(DeviceUID(0x42, 5, 0xFEED))
    gadget.update(make_sub_req(bitmap(Gadget, ["enabled", "level"]), 80))
    response = gadget.make_sub_res()
    assert response.type == MessageType.SUB_RES
    assert response.read_sub_res() == (bitmap(Gadget, ["enabled", "level"]), 80, (0x42, 5, 0xFEED))
    with Gadget.open(shm_name("host")) as host:  # the host learns it from the response
        host.update(response)
        assert host.subscription == frozenset({"enabled", "level"})
        assert host.interval == pytest.approx(0.08)
        assert host.uid == gadget.uid


# ---- malformed device messages -------------------------------------------------------------------


MALFORMED_PAYLOADS = {
    "empty": b"",
    "one-byte": b"\x01",
    "short-value": b"\x02\x00\x05",  # level is 2 bytes
    "long-value": b"\x02\x00\x05\x00\x00",
    "missing-values": b"\x03\x00\x00\x00\x80\x3f",  # speed and level flagged, only speed sent
    "unknown-id": b"\x40\x00\x00\x00",  # ID 6 does not exist
    "high-id": b"\x00\x80\x01",  # ID 15 does not exist
    "no-params-extra": b"\x00\x00\x01",
}


@pytest.mark.parametrize("kind", [MessageType.DEV_DATA, MessageType.DEV_WRITE])
@pytest.mark.parametrize("payload", list(MALFORMED_PAYLOADS.values()), ids=list(MALFORMED_PAYLOADS))
def test_malformed_values_raise_and_change_nothing(gadget: Any, kind: MessageType, payload: bytes) -> None:
    gadget.set("level", 9)
    gadget.write("speed", 0.5)
    state = gadget.snapshot()
    written_at = gadget.last_write  # the write() request
    with pytest.raises(MessageError):
        gadget.update(Message(kind, payload))
    assert gadget.snapshot() == state
    assert gadget.get_update() == {"level": 9}
    assert gadget.get_write() == {"speed": 0.5}
    assert gadget.last_update == 0.0
    assert gadget.last_write == written_at


def test_last_write_is_when_a_write_was_requested(gadget: Any) -> None:
    assert gadget.last_write == 0.0
    before = time.time()
    gadget.write("speed", 0.25)
    assert before - 0.05 <= gadget.last_write <= time.time() + 0.05  # a coarse clock: within milliseconds
    gadget.set("level", 3)  # not a write
    assert gadget.last_update == 0.0  # nor an update from the device


def test_sub_res_is_recorded_exactly_as_the_device_sent_it(gadget: Any) -> None:
    everything = 0b111111  # "secret" (id 3) is not readable: recorded all the same
    gadget.update(make_sub_res(everything, 100, 0x42, 1, 2))
    assert gadget.make_sub_res().read_sub_res()[0] == everything


def test_well_formed_messages_for_another_layout_are_refused(example: Any, gadget: Any) -> None:
    gadget.set("speed", 0.5)
    gadget.set("level", 1)
    (message,) = gadget.emit_dev_data()  # 2 + 4 + 2 bytes: no match for the example's layout
    with pytest.raises(MessageError):
        example.update(message)
    assert example.get_update() == {}
    assert example.get("duty_cycle") == 0.0


# ---- the protocol spec's worked examples ---------------------------------------------------------

DEV_DATA_EXAMPLE = "04 15 06 02 06 6d e7 fb bd dd"
DEV_READ_EXAMPLE = "04 13 02 06 02 17"
DEV_WRITE_EXAMPLE = "04 14 07 05 07 01 ef be ad de 35"


def test_worked_example_dev_data_update(example: Any) -> None:
    message = Message.decode(bytes.fromhex(DEV_DATA_EXAMPLE))
    assert message.type == MessageType.DEV_DATA
    example.update(message)
    assert example.get("duty_cycle") == f32(-0.123)
    assert example.get_update() == {"duty_cycle": f32(-0.123)}
    assert example.get("id") == 0


def test_worked_example_dev_data_emit(example: Any) -> None:
    example.set("duty_cycle", -0.123)
    messages = list(example.emit_dev_data())
    assert [message.encode() for message in messages] == [bytes.fromhex(DEV_DATA_EXAMPLE)]


@pytest.mark.parametrize("params", [["duty_cycle", "id"], None])
def test_worked_example_dev_read_emit(example: Any, params: Any) -> None:
    example.read(params)
    messages = list(example.emit_dev_rw())
    assert [message.encode() for message in messages] == [bytes.fromhex(DEV_READ_EXAMPLE)]


def test_worked_example_dev_write_emit(example: Any) -> None:
    example.write("flag", True)
    example.write("id", 0xDEADBEEF)
    messages = list(example.emit_dev_rw())
    assert [message.encode() for message in messages] == [bytes.fromhex(DEV_WRITE_EXAMPLE)]


def test_worked_examples_read_and_write_together(example: Any) -> None:
    example.write("id", 0xDEADBEEF)
    example.read(["id", "duty_cycle"])
    example.write("flag", True)
    encoded = [message.encode() for message in example.emit_dev_rw()]
    assert encoded == [bytes.fromhex(DEV_READ_EXAMPLE), bytes.fromhex(DEV_WRITE_EXAMPLE)]


def test_worked_example_dev_write_update(example: Any) -> None:
    example.update(Message.decode(bytes.fromhex(DEV_WRITE_EXAMPLE)))
    assert example.get_write() == {"flag": True, "id": 0xDEADBEEF}


# ---- values that do not fit one message -------------------------------------------------------------


def packed_layout(buffer_type: type[Buffer]) -> tuple[Any, bytearray]:
    """A ParamLayout packing every parameter (by ID) into a fresh bytearray."""
    widths = {param.id: ctypes.sizeof(param.platform_type) for param in buffer_type.params.values()}
    entries, offset = [], 0
    for param_id in range(max(widths) + 1):
        width = widths.get(param_id, 0)
        entries.append((offset, width))
        offset += width
    return ParamLayout(entries), bytearray(offset)


def unpack(buffer_type: type[Buffer], name: str, layout: Any, memory: bytearray) -> Any:
    param = buffer_type.params[name]
    offset, width = layout.entries[param.id]
    value = param.platform_type.from_buffer_copy(memory[offset : offset + width])
    return value if isinstance(value, ctypes.Array) else value.value


@functools.cache
def _min_messages(widths: tuple[int, ...]) -> int:
    """The fewest messages that carry values of these widths (exact bin packing)."""
    room = MAX_PAYLOAD - 2
    best: dict[int, tuple[int, int]] = {0: (1, 0)}  # subset -> (messages, bytes in the last one)
    for mask in range(1 << len(widths)):
        messages, used = best[mask]
        for index, width in enumerate(widths):
            if mask & 1 << index:
                continue
            option = (messages, used + width) if used + width <= room else (messages + 1, width)
            key = mask | 1 << index
            if key not in best or option < best[key]:
                best[key] = option
    return best[(1 << len(widths)) - 1][0]


def min_messages(widths: list[int]) -> int:
    return _min_messages(tuple(widths))


def test_min_messages_helper() -> None:
    assert min_messages([253]) == 1
    assert min_messages([200, 100, 100, 100]) == 3
    assert min_messages([41, 121, 54, 111, 85, 76]) == 2
    assert min_messages([127, 127, 126]) == 2


def make_wide_type(widths: list[int], texts: bool = False) -> type[DeviceBuffer]:
    """A Smart Device with one byte array per width (char arrays when ``texts``)."""
    element = ctypes.c_char if texts else ctypes.c_uint8
    params = [Parameter(f"p{i}", element * width, i, writeable=True) for i, width in enumerate(widths)]
    return DeviceBuffer.make_type("wide", params, device_id=0x99)


def pattern(index: int, width: int) -> bytes:
    """Distinct nonzero bytes for each parameter."""
    return bytes((index * 37 + offset) % 255 + 1 for offset in range(width))


def check_split(buffer_type: type[Buffer], messages: list[Any], kind: MessageType, widths: list[int]) -> None:
    assert len(messages) == min_messages(widths)
    layout, memory = packed_layout(buffer_type)
    seen = 0
    for message in messages:
        assert message.type == kind
        assert len(message.payload) <= MAX_PAYLOAD
        read = message.read_dev_data if kind == MessageType.DEV_DATA else message.read_dev_write
        params = read(layout, memory)
        assert params and not params & seen  # every value travels exactly once
        seen |= params
    assert seen == (1 << len(widths)) - 1
    for index, width in enumerate(widths):
        offset, _ = layout.entries[index]
        assert bytes(memory[offset : offset + width]) == pattern(index, width)


SPLIT_CASES = {
    "text-and-bytes": ([100, 200, 100, 200], True),
    "four-texts": ([100, 100, 100, 100], True),
    "first-fit-decreasing-is-not-enough": ([41, 121, 54, 111, 85, 76], False),
    "halves": ([127, 127, 126, 126], False),
    "mixed-small": ([253, 1, 2, 4, 8, 200, 50, 3], False),
    "sixteen": ([60] * 16, False),
}


@pytest.mark.parametrize(("widths", "texts"), list(SPLIT_CASES.values()), ids=list(SPLIT_CASES))
def test_values_are_split_over_as_few_messages_as_possible(
    shm_name: Callable[[str], str], widths: list[int], texts: bool
) -> None:
    Wide = make_wide_type(widths, texts)
    with Wide.open(shm_name("device")) as device, Wide.open(shm_name("host")) as host:
        for index, width in enumerate(widths):
            device.set(f"p{index}", pattern(index, width))
            host.write(f"p{index}", pattern(index, width))
        data = list(device.emit_dev_data())
        check_split(Wide, data, MessageType.DEV_DATA, widths)
        subscription = bitmap(Wide, Wide.params)
        device.update(make_sub_req(subscription, 40))
        check_split(Wide, list(device.emit_subscription()), MessageType.DEV_DATA, widths)
        writes = list(host.emit_dev_rw())
        check_split(Wide, writes, MessageType.DEV_WRITE, widths)

    # The receiving side puts the pieces back together.
    with Wide.open(shm_name("device2")) as device, Wide.open(shm_name("host2")) as host:
        for message in data:
            host.update(message)
        for message in writes:
            device.update(message)
        for index, width in enumerate(widths):
            expected = pattern(index, width)
            got_update = host.get(f"p{index}")
            assert (got_update if texts else bytes(got_update)) == expected
        written = device.get_write()
        assert set(written) == {f"p{index}" for index in range(len(widths))}
        for index, width in enumerate(widths):
            value = written[f"p{index}"]
            assert (value if texts else bytes(value)) == pattern(index, width)


WIDTHS = st.one_of(
    st.lists(st.integers(min_value=30, max_value=130), min_size=5, max_size=9),  # where packing is hard
    st.lists(st.integers(min_value=1, max_value=MAX_PAYLOAD - 2), min_size=1, max_size=8),
)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(WIDTHS)
def test_splitting_is_minimal_and_exact_for_any_widths(widths: list[int]) -> None:
    Wide = make_wide_type(widths)
    with Wide.open("hypothesis-wide", shared=False) as buffer:
        for index, width in enumerate(widths):
            buffer.set(f"p{index}", pattern(index, width))
        check_split(Wide, list(buffer.emit_dev_data()), MessageType.DEV_DATA, widths)
        # A different set of the same type next (then the full set again).
        subset = list(range(0, len(widths), 2))
        for index in subset:
            buffer.set(f"p{index}", pattern(index, widths[index]))
        messages = list(buffer.emit_dev_data())
        assert len(messages) == min_messages([widths[index] for index in subset])
        seen = 0
        for message in messages:
            params = int.from_bytes(message.payload[:2], "little")
            assert not params & seen
            seen |= params
        assert seen == sum(1 << index for index in subset)
        buffer.update(make_sub_req((1 << len(widths)) - 1, 40))
        check_split(Wide, list(buffer.emit_subscription()), MessageType.DEV_DATA, widths)


def test_parameter_too_wide_for_one_message_is_refused() -> None:
    with pytest.raises(DeviceBufferError) as info:
        DeviceBuffer.make_type("huge", [Parameter("blob", ctypes.c_uint8 * 254, 0)], device_id=5)
    assert info.value.context["param"] == "blob"
    widest = DeviceBuffer.make_type("widest", [Parameter("blob", ctypes.c_uint8 * 253, 0)], device_id=5)
    assert list(widest.params) == ["blob"]


# ---- regressions found by the fuzzers ----------------------------------------------------------


def test_huge_int_into_a_float_parameter_is_clamped() -> None:
    Bounded = Buffer.make_type("fz-float", [Parameter("x", ctypes.c_float, 0, lower=-1, upper=1)])
    with Bounded.open("fz-float", shared=False) as buffer:
        with pytest.warns(RuntimeWarning, match="clamped"):
            buffer.set("x", 10**400)
        assert buffer.get("x") == 1.0
        with pytest.warns(RuntimeWarning, match="clamped"):
            buffer.set("x", -(10**400))
        assert buffer.get("x") == -1.0


@pytest.mark.parametrize(
    ("lower", "upper", "message"),
    [
        (0.5, math.inf, "must be integers"),
        (math.inf, math.inf, "exclude every value"),
        (300, math.inf, "outside the parameter type's range"),
        (-math.inf, -1, "outside the parameter type's range"),
    ],
)
def test_integer_bounds_are_checked(lower: float, upper: float, message: str) -> None:
    with pytest.raises(DeviceBufferError, match=message) as caught:
        Buffer.make_type("fz-int", [Parameter("n", ctypes.c_uint8, 0, lower=lower, upper=upper)])
    assert caught.value.context["param"] == "n"


def test_integral_float_bounds_start_an_integer_parameter_inside_them() -> None:
    Ranged = Buffer.make_type("fz-range", [Parameter("n", ctypes.c_uint8, 0, lower=2.0, upper=10.0)])
    with Ranged.open("fz-range", shared=False) as buffer:
        assert buffer.get("n") == 2


def test_wchar_parameters_are_refused() -> None:
    with pytest.raises(DeviceBufferError, match="wchar"):
        Buffer.make_type("fz-wchar", [Parameter("w", ctypes.c_wchar * 4, 0)])


def test_close_from_another_thread_inside_a_transaction() -> None:
    Plain = Buffer.make_type("fz-close", [Parameter("x", ctypes.c_int32, 0)])
    buffer = Plain.attach("fz-close", shared=False)
    with buffer.transaction():
        closer = threading.Thread(target=buffer.close)
        closer.start()
        closer.join(timeout=10)
        with pytest.raises(DeviceBufferError, match="closed"):
            buffer.get("x")
    assert buffer.closed  # the transaction's exit unlocked the still-mapped memory, then let go


# ---- values that must never reach an actuator ---------------------------------------------------


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("operation", ["set", "write"])
def test_non_finite_values_for_a_bounded_parameter_are_refused(
    gadget: Any, operation: str, value: float
) -> None:
    gadget.set("speed", 0.25)
    gadget.write("speed", 0.5)
    gadget.get_write()
    with pytest.raises(DeviceBufferError, match="finite") as caught:
        getattr(gadget, operation)("speed", value)
    assert caught.value.context["param"] == "speed"
    assert caught.value.context["buffer"] == gadget.name
    assert gadget.get("speed") == 0.25 and gadget.get_write() == {}  # nothing changed, nothing queued
    assert list(gadget.emit_dev_rw()) == []


def test_non_finite_values_pass_where_no_bound_is_finite(gadget: Any) -> None:
    gadget.set("sensor", math.inf)  # a sensor may report infinity; nothing bounds it
    assert gadget.get("sensor") == math.inf
    gadget.set("sensor", math.nan)
    assert math.isnan(gadget.get("sensor"))


def test_integer_array_elements_are_clamped_like_scalars(shm_name: Callable[[str], str]) -> None:
    Grid = Buffer.make_type(
        "grid", [Parameter("cells", ctypes.c_int16 * 3, 0), Parameter("tiles", ctypes.c_uint8 * 2 * 2, 1)]
    )
    with Grid.open(shm_name()) as grid:
        with pytest.warns(RuntimeWarning, match=r"cells\[1\]: 99999 is out of bounds \[-32768, 32767\]"):
            grid.set("cells", [1, 99999, -5])
        assert list(grid.get("cells")) == [1, 32767, -5]  # not wrapped to -31073
        with pytest.warns(RuntimeWarning) as caught:
            grid.set("tiles", [[1, 2], [-3, 300]])
        assert [str(warning.message) for warning in caught] == [
            "parameter tiles[1][0]: -3 is out of bounds [0, 255]; clamped to 0",
            "parameter tiles[1][1]: 300 is out of bounds [0, 255]; clamped to 255",
        ]
        assert [list(row) for row in grid.get("tiles")] == [[1, 2], [0, 255]]
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            grid.set("cells", [-32768, 0, 32767])  # in range: no warning
        with pytest.raises(TypeError):
            grid.set("cells", [1.5, 2, 3])


@pytest.mark.parametrize("ctype", [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_wchar_p, ctypes.py_object])
def test_pointer_types_are_refused(ctype: Any) -> None:
    for shape in (ctype, ctype * 2):
        with pytest.raises(DeviceBufferError, match="pointer") as caught:
            Buffer.make_type("pointy", [Parameter("p", shape, 0)])
        assert caught.value.context["param"] == "p"


@pytest.mark.parametrize(
    "spec",
    [{"open": 5}, {"lock_timeout": -1}, {"device_id": 3, "colour": "red"}, {"params": [], "Params": []}],
    ids=["open", "lock_timeout", "colour", "case"],
)
def test_make_catalog_refuses_unknown_keys(spec: dict[str, Any]) -> None:
    from runtime.store import CATALOG_KEYS, BufferStore

    with pytest.raises(DeviceBufferError, match="unknown key") as caught:
        BufferStore.make_catalog({"thing": spec})
    assert caught.value.context["device"] == "thing"
    assert all(key in caught.value.message for key in CATALOG_KEYS)
    assert Buffer.open is not 5  # noqa: F632 - nothing was replaced


@pytest.mark.parametrize(
    ("attrs", "message"),
    [
        ({"open": 5}, "replace a method"),
        ({"get": None}, "replace a method"),
        ({"valid": True}, "replace a method"),
        ({"_spec": None}, "replace a method"),
        ({"lock_timeout": -1}, "lock_timeout"),
        ({"lock_timeout": math.inf}, "lock_timeout"),
    ],
)
def test_make_type_refuses_attributes_that_break_the_type(attrs: dict[str, Any], message: str) -> None:
    with pytest.raises(DeviceBufferError, match=message):
        Buffer.make_type("breaks", [Parameter("x", ctypes.c_int8, 0)], **attrs)
    Patient = Buffer.make_type("patient", [Parameter("x", ctypes.c_int8, 0)], lock_timeout=5)
    assert Patient.lock_timeout == 5


# ---- threads --------------------------------------------------------------------------------------

CLOSE_WHILE_WAITING = """
import ctypes, sys, threading, time
from runtime.buffer import Buffer, DeviceBufferError, Parameter
Plain = Buffer.make_type("race", [Parameter("x", ctypes.c_int32, 0)])
name = sys.argv[1]
holder = Plain.attach(name)
outcome = []
for round in range(20):
    waiter = Plain.attach(name, create=False)
    waiter.set_lock_timeout(30)
    started = threading.Event()
    def wait_for_lock():
        started.set()
        try:
            waiter.get("x")
            outcome.append("value")
        except DeviceBufferError as exc:
            outcome.append(exc.message)
    with holder.transaction():
        thread = threading.Thread(target=wait_for_lock)
        thread.start()
        started.wait()
        time.sleep(0.02)  # the waiter is blocked on the lock, the GIL released
        waiter.close()
        del waiter  # the last reference: the mapping may go
    thread.join(30)
holder.close()
Plain.unlink(name)
print(set(outcome))
"""


@pytest.mark.slow  # waits out a lock timeout (near a second on a busy machine)
def test_close_while_another_thread_waits_for_the_lock_raises_in_the_waiter(
    shm_name: Callable[[str], str],
) -> None:
    # In a child process: the bug this guards against was a SIGSEGV.
    result = subprocess.run(
        [sys.executable, "-c", CLOSE_WHILE_WAITING, shm_name()],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "{'buffer was closed while waiting for its lock'}"
