"""runtime.buffer.BufferStore and BufferStore.make_catalog."""

import contextlib
import copy
import ctypes
import dataclasses
import math
import os
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from e2e import segment_exists

from runtime.buffer import Buffer, BufferStore, DeviceBuffer, DeviceBufferError, DeviceUID, Parameter

SHM_DIR = "/dev/shm"

RAW_CATALOG: dict[str, Any] = {
    "motor": {
        "device_id": 0x10,
        "sub_interval": 0.08,
        "write_interval": 0.05,
        "heartbeat_interval": 2.0,
        "params": [
            {"name": "duty_cycle", "type": "float", "lower": -1, "upper": 1, "writeable": True},
            {"name": "enc_pos", "type": "int32"},
            {"name": "gain", "type": "double", "lower": 0, "writeable": True, "readable": False},
            {"name": "secret", "type": "uint8[4]", "readable": False, "writeable": True, "id": 5},
        ],
    },
    "switch": {"device_id": 0x11, "params": [{"name": "pressed", "type": "bool", "subscribed": False}]},
    "gamepad": {"params": [{"name": "joystick", "type": "double[4]"}, {"name": "buttons", "type": "uint32"}]},
    "empty-device": {"device_id": 0x12},
}
CATALOG = BufferStore.make_catalog(RAW_CATALOG)
MOTOR_UID = int(DeviceUID(0x10, 0x0A, 0xC0FFEE))
SWITCH_UID = int(DeviceUID(0x11, 0x01, 0xBEEF))


def namespace_segments() -> set[str]:
    prefix = BufferStore.namespace() + "-"
    return {entry for entry in os.listdir(SHM_DIR) if entry.startswith(prefix)}


@pytest.fixture(autouse=True)
def remove_new_segments(buffer_namespace: str) -> Iterator[None]:
    """Unlink every namespace segment a test creates, pass or fail."""
    before = namespace_segments()
    try:
        yield
    finally:
        for name in namespace_segments() - before:
            with contextlib.suppress(DeviceBufferError):
                Buffer.unlink(name)


@pytest.fixture
def store() -> Iterator[BufferStore]:
    with BufferStore(CATALOG) as store:
        yield store


# ---- make_catalog -------------------------------------------------------------------------------


def test_make_catalog_generates_buffer_types() -> None:
    assert set(CATALOG) == set(RAW_CATALOG)
    motor = CATALOG["motor"]
    assert issubclass(motor, DeviceBuffer)
    assert motor.type_name == "motor"
    assert (motor.device_id, motor.sub_interval, motor.write_interval, motor.heartbeat_interval) == (
        0x10,
        0.08,
        0.05,
        2.0,
    )
    assert motor.params["duty_cycle"] == Parameter("duty_cycle", ctypes.c_float, 0, -1, 1, writeable=True)
    assert motor.params["enc_pos"] == Parameter("enc_pos", ctypes.c_int32, 1)
    assert motor.params["gain"] == Parameter(
        "gain", ctypes.c_double, 2, lower=0, writeable=True, readable=False
    )
    assert math.isinf(motor.params["gain"].upper)
    secret = motor.params["secret"]
    assert secret.id == 5
    assert ctypes.sizeof(secret.ctype) == 4 and secret.ctype._length_ == 4
    assert (secret.readable, secret.writeable) == (False, True)
    assert CATALOG["switch"].params["pressed"].subscribed is False
    assert issubclass(CATALOG["empty-device"], DeviceBuffer) and not CATALOG["empty-device"].params
    gamepad = CATALOG["gamepad"]
    assert issubclass(gamepad, Buffer) and not issubclass(gamepad, DeviceBuffer)
    assert gamepad.params["joystick"].platform_type._type_ is ctypes.c_float


def test_make_catalog_does_not_mutate_its_input() -> None:
    raw = copy.deepcopy(RAW_CATALOG)
    first = BufferStore.make_catalog(raw)
    assert raw == RAW_CATALOG
    second = BufferStore.make_catalog(raw)  # and the same input can be used again
    assert raw == RAW_CATALOG
    for name in RAW_CATALOG:
        assert first[name].params == second[name].params


def with_params(*params: dict[str, Any], device_id: int | None = 0x30) -> dict[str, Any]:
    spec: dict[str, Any] = {"params": list(params)}
    if device_id is not None:
        spec["device_id"] = device_id
    return {"broken": spec}


CATALOG_ERRORS = {
    "unknown-type": (with_params({"name": "x", "type": "int33"}), {"param": "x"}),
    "pointer-type": (with_params({"name": "x", "type": "char_p"}), {"param": "x"}),
    "missing-name": (with_params({"name": "x", "type": "int8"}, {"type": "int8"}), {"index": 1}),
    "missing-type": (with_params({"name": "x"}), {"param": "x"}),
    "duplicate-names": (
        with_params({"name": "x", "type": "int8"}, {"name": "x", "type": "int16"}),
        {"param": "x"},
    ),
    "duplicate-ids": (
        with_params({"name": "x", "type": "int8", "id": 3}, {"name": "y", "type": "int8", "id": 3}),
        {"param": "y"},
    ),
    "duplicate-implicit-id": (
        with_params({"name": "x", "type": "int8"}, {"name": "y", "type": "int8", "id": 0}),
        {"param": "y"},
    ),
    "bad-bounds": (with_params({"name": "x", "type": "float", "lower": 2, "upper": 1}), {"param": "x"}),
    "bad-bounds-plain-buffer": (
        with_params({"name": "x", "type": "int32", "lower": 5, "upper": -5}, device_id=None),
        {"param": "x"},
    ),
    "unknown-option": (with_params({"name": "x", "type": "int8", "colour": "red"}), {"param": "x"}),
    "id-out-of-range": (with_params({"name": "x", "type": "int8", "id": 16}), {"param": "x"}),
}


@pytest.mark.parametrize(("raw", "context"), list(CATALOG_ERRORS.values()), ids=list(CATALOG_ERRORS))
def test_make_catalog_errors_name_the_device_type_and_parameter(
    raw: dict[str, Any], context: dict[str, Any]
) -> None:
    with pytest.raises(DeviceBufferError) as info:
        BufferStore.make_catalog(raw)
    assert info.value.context["device"] == "broken"
    for key, value in context.items():
        assert info.value.context[key] == value


def test_make_catalog_refuses_more_than_16_parameters_on_a_smart_device() -> None:
    params = [{"name": f"p{i}", "type": "uint8"} for i in range(17)]
    with pytest.raises(ValueError):
        BufferStore.make_catalog(with_params(*params))
    assert len(BufferStore.make_catalog(with_params(*params[:16]))["broken"].params) == 16
    assert len(BufferStore.make_catalog(with_params(*params, device_id=None))["broken"].params) == 17


def test_make_catalog_refuses_two_types_with_one_device_id() -> None:
    raw = {"a": {"device_id": 7, "params": []}, "b": {"device_id": 7, "params": []}}
    with pytest.raises(DeviceBufferError):
        BufferStore.make_catalog(raw)


# ---- the store ----------------------------------------------------------------------------------


def test_store_is_a_dataclass_and_a_mapping() -> None:
    assert [field.name for field in dataclasses.fields(BufferStore)] == [
        "catalog",
        "buffers",
        "stack",
        "shared",
    ]
    store = BufferStore(CATALOG)
    assert isinstance(store, Mapping)
    assert store.shared is True
    assert len(store) == 0 and list(store) == []


def test_int_key_is_a_uid_whose_device_id_picks_the_type(store: BufferStore) -> None:
    motor = store.get_or_open(MOTOR_UID)
    assert type(motor) is CATALOG["motor"]
    assert not motor.valid  # a new Smart Device buffer waits for its producer
    motor.serve()
    assert motor.uid == MOTOR_UID  # recorded at creation all the same
    assert motor.valid
    assert segment_exists(motor.name)
    assert motor.name == BufferStore.segment_name("motor", MOTOR_UID)
    assert motor.name.startswith(BufferStore.namespace() + "-")
    switch = store.get_or_open(SWITCH_UID)
    assert type(switch) is CATALOG["switch"]
    assert store[MOTOR_UID] is motor
    assert store["motor", MOTOR_UID] is motor
    assert store[SWITCH_UID] is switch
    assert len(store) == 2
    assert set(store) == {("motor", MOTOR_UID), ("switch", SWITCH_UID)}
    assert MOTOR_UID in store and ("switch", SWITCH_UID) in store
    assert int(DeviceUID(0x10, 0, 1)) not in store


def test_get_or_open_returns_the_open_buffer(store: BufferStore) -> None:
    motor = store.get_or_open(MOTOR_UID)
    assert store.get_or_open(MOTOR_UID) is motor
    assert store.get_or_open(("motor", MOTOR_UID)) is motor
    assert store.get_or_open(MOTOR_UID, create=False) is motor
    assert len(store) == 1


def test_tuple_key_opens_any_type(store: BufferStore) -> None:
    gamepad = store.get_or_open(("gamepad", 3))
    assert type(gamepad) is CATALOG["gamepad"]
    gamepad.set("buttons", 0b101)
    assert store["gamepad", 3].get("buttons") == 0b101
    other = store.get_or_open(("gamepad", 4))
    assert other is not gamepad and other.get("buttons") == 0
    motor = store.get_or_open(("motor", MOTOR_UID))
    motor.serve()
    assert motor.uid == MOTOR_UID
    assert store[MOTOR_UID] is motor


def test_new_smart_device_buffers_are_invalid_until_served_other_types_valid(store: BufferStore) -> None:
    motor = store.get_or_open(MOTOR_UID)  # a consumer got there before the bridge
    gamepad = store.get_or_open(("gamepad", 5))
    assert gamepad.valid and gamepad.producer_pid is None  # usable on its own at once
    assert not motor.valid
    with pytest.raises(DeviceBufferError, match="not valid"):
        motor.get("enc_pos")  # no default passes for a reading
    with pytest.raises(DeviceBufferError, match="not valid"):
        motor.write("duty_cycle", 0.5)
    with BufferStore(CATALOG) as bridge:
        served = bridge.get_or_open(MOTOR_UID)
        served.serve()
        served.set("enc_pos", 10)
        assert motor.valid and motor.get("enc_pos") == 10
    assert not motor.valid  # the producer's store closed: it stopped serving


@pytest.mark.parametrize(
    "key",
    [
        ("nope", 1),
        int(DeviceUID(0x99, 0, 1)),  # no type has device_id 0x99
        -1,
        1 << 88,
        ("gamepad", -1),
    ],
    ids=["type", "device-id", "negative", "too-large", "negative-uid"],
)
def test_unknown_key_raises_key_error(store: BufferStore, key: Any) -> None:
    before = namespace_segments()
    with pytest.raises(KeyError):
        store.get_or_open(key)
    with pytest.raises(KeyError):
        store[key]  # noqa: B018
    assert namespace_segments() == before
    assert len(store) == 0


def test_missing_key_of_known_type_raises_key_error(store: BufferStore) -> None:
    with pytest.raises(KeyError):
        store[MOTOR_UID]  # noqa: B018
    with pytest.raises(KeyError):
        store["gamepad", 1]  # noqa: B018


def test_create_false_on_a_missing_buffer_raises(store: BufferStore) -> None:
    with pytest.raises(DeviceBufferError):
        store.get_or_open(MOTOR_UID, create=False)
    with pytest.raises(DeviceBufferError):
        store.get_or_open(("gamepad", 9), create=False)
    assert len(store) == 0
    assert not segment_exists(BufferStore.segment_name("motor", MOTOR_UID))


def test_create_false_attaches_to_another_stores_buffer(store: BufferStore) -> None:
    motor = store.get_or_open(MOTOR_UID)
    motor.serve()
    motor.set("enc_pos", 1200)
    with BufferStore(CATALOG) as other:
        attached = other.get_or_open(MOTOR_UID, create=False)
        assert attached is not motor
        assert attached.get("enc_pos") == 1200
        assert attached.uid == MOTOR_UID
        attached.write("duty_cycle", 0.5)
    assert attached.closed
    assert motor.valid  # the attaching store closing does not invalidate the producer's buffer
    assert motor.get_write() == {"duty_cycle": 0.5}


def test_context_manager_closes_every_buffer_it_opened() -> None:
    with BufferStore(CATALOG) as store:
        buffers = [
            store.get_or_open(MOTOR_UID),
            store.get_or_open(SWITCH_UID),
            store.get_or_open(("gamepad", 1)),
        ]
        names = [buffer.name for buffer in buffers]
        assert not any(buffer.closed for buffer in buffers)
        buffers[0].serve()
        buffers[0].set("enc_pos", 5)
    assert all(buffer.closed for buffer in buffers)
    assert len(store) == 0
    for buffer in buffers:
        with pytest.raises(DeviceBufferError):
            buffer.snapshot()
    assert all(segment_exists(name) for name in names)  # closed, not unlinked
    with BufferStore(CATALOG) as again:
        motor = again.get_or_open(MOTOR_UID, create=False)
        assert not motor.valid  # its producer closed it
        motor.serve()
        assert motor.get("enc_pos") == 5


def test_process_local_store_creates_nothing_in_shared_memory() -> None:
    before = namespace_segments()
    with BufferStore(CATALOG, shared=False) as first, BufferStore(CATALOG, shared=False) as second:
        motor = first.get_or_open(MOTOR_UID)
        gamepad = first.get_or_open(("gamepad", 2))
        motor.serve()
        assert motor.valid and motor.uid == MOTOR_UID
        motor.set("enc_pos", 77)
        gamepad.set("buttons", 3)
        assert motor.get("enc_pos") == 77 and gamepad.get("buttons") == 3
        twin = second.get_or_open(MOTOR_UID)
        assert not twin.valid  # nothing is shared: not even the producer
        twin.serve()
        assert twin.get("enc_pos") == 0
        assert not segment_exists(motor.name)
        assert namespace_segments() == before
    assert motor.closed
    assert namespace_segments() == before


def test_two_types_with_one_device_id_are_refused() -> None:
    first = DeviceBuffer.make_type("first", [], device_id=0x20)
    second = DeviceBuffer.make_type("second", [Parameter("x", ctypes.c_int8, 0)], device_id=0x20)
    with BufferStore({"first": first, "second": second}) as store:
        with pytest.raises(DeviceBufferError):
            store.get_or_open(int(DeviceUID(0x20, 0, 1)))
        assert len(store) == 0


def test_unlink_all_removes_this_namespaces_segments_and_nothing_else(buffer_namespace: str) -> None:
    no_magic = os.path.join(SHM_DIR, f"{buffer_namespace}-decoy-without-magic")
    outside = f"{buffer_namespace}x-decoy"  # a real buffer, but of another namespace
    foreign = CATALOG["gamepad"]
    try:
        with open(no_magic, "wb") as decoy:
            decoy.write(b"NOTABUFF" + bytes(248))
        with foreign.open(outside):
            pass
        with BufferStore(CATALOG) as store:
            names = {
                store.get_or_open(MOTOR_UID).name,
                store.get_or_open(SWITCH_UID).name,
                store.get_or_open(("gamepad", 1)).name,
            }
        assert all(segment_exists(name) for name in names)
        removed = BufferStore(CATALOG).unlink_all()
        assert names <= set(removed)
        assert all(name.startswith(buffer_namespace + "-") for name in removed)
        assert not any(segment_exists(name) for name in names)
        assert os.path.exists(no_magic)
        assert segment_exists(outside)
        with foreign.open(outside, create=False):
            pass
        assert BufferStore({}).unlink_all() == []
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(no_magic)
        with contextlib.suppress(DeviceBufferError):
            Buffer.unlink(outside)


def test_namespace_follows_the_environment(monkeypatch: pytest.MonkeyPatch, buffer_namespace: str) -> None:
    assert BufferStore.namespace() == buffer_namespace
    assert BufferStore.segment_name("motor", 0xAB) == f"{buffer_namespace}-motor-ab"
    monkeypatch.setenv("RUNTIME_BUFFER_NAMESPACE", "elsewhere")
    assert BufferStore.segment_name("motor", 0xAB) == "elsewhere-motor-ab"


def test_store_buffers_see_each_other_through_shared_memory(store: BufferStore) -> None:
    # Two stores in one process are as good as two processes: same segment, same values.
    motor = store.get_or_open(MOTOR_UID)
    motor.serve()
    with BufferStore(CATALOG) as other:
        twin = other.get_or_open(MOTOR_UID)
        with twin.transaction():
            twin.set("enc_pos", -42)
            twin.set("duty_cycle", 0.25)
    assert motor.snapshot() == {"duty_cycle": 0.25, "enc_pos": -42}


# ---- discovery ------------------------------------------------------------------------------------


def test_discover_lists_the_namespaces_buffers_with_validity_producer_and_age(store: BufferStore) -> None:
    import time

    from runtime.messaging import Message, ParamLayout
    from runtime.store import BufferInfo

    assert store.discover() == []
    motor = store.get_or_open(MOTOR_UID)
    switch = store.get_or_open(SWITCH_UID)  # never served: invalid
    pad = store.get_or_open(("gamepad", 7))
    motor.serve()
    layout = ParamLayout([(0, 4), (4, 4)])
    before = time.time()
    motor.update(Message.make_dev_data(0b10, layout, bytes(4) + (77).to_bytes(4, "little")))
    with BufferStore(CATALOG) as other:  # discovery needs no open handle: another store sees the same
        found = {info.key: info for info in other.discover()}
        assert len(other) == 0  # it closed what it opened to look
    assert set(found) == {("motor", MOTOR_UID), ("switch", SWITCH_UID), ("gamepad", 7)}
    seen = found["motor", MOTOR_UID]
    assert seen == BufferInfo("motor", MOTOR_UID, motor.name, True, os.getpid(), seen.last_update)
    assert seen.last_update is not None and before <= seen.last_update <= time.time()
    age = seen.age()
    assert age is not None and 0 <= age < 60
    assert found["switch", SWITCH_UID].valid is False and found["switch", SWITCH_UID].last_update is None
    assert found["gamepad", 7] == BufferInfo("gamepad", 7, pad.name, True, None, None)
    assert switch.valid is False


def test_discover_reports_a_buffer_it_cannot_open_instead_of_failing(store: BufferStore) -> None:
    other_layout = BufferStore.make_catalog(
        {"motor": {"device_id": 0x10, "params": [{"name": "x", "type": "int8"}]}}
    )
    with BufferStore(other_layout) as stranger:
        stranger.get_or_open(MOTOR_UID)  # the same name, another catalog's layout
        (info,) = store.discover()
    assert info.key == ("motor", MOTOR_UID) and not info.valid
    assert info.error is not None and "layout" in info.error


def test_namespaces_lists_where_buffers_are(buffer_namespace: str) -> None:
    from runtime.store import namespaces

    with BufferStore.use_namespace(f"{buffer_namespace}-elsewhere"), BufferStore(CATALOG) as there:
        there.get_or_open(("gamepad", 1))
        assert f"{buffer_namespace}-elsewhere" in namespaces()
        there.unlink_all()
    assert f"{buffer_namespace}-elsewhere" not in namespaces()


def test_buffer_namespaces_live_counts_only_a_served_segment(buffer_namespace: str) -> None:
    from runtime.store import buffer_namespaces

    there = f"{buffer_namespace}-live"
    with BufferStore.use_namespace(there), BufferStore(CATALOG) as store:
        try:
            store.disable()  # the robot's state alone is no buffer
            assert there not in buffer_namespaces()
            gamepad = store.get_or_open(("gamepad", 1))
            assert there in buffer_namespaces() and there not in buffer_namespaces(live=True)  # never served
            gamepad.serve()
            assert there in buffer_namespaces(live=True)
        finally:
            store.unlink_all()
    assert there not in buffer_namespaces()


def test_namespace_hint_names_the_one_namespace_with_live_buffers(
    buffer_namespace: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import runtime.store
    from runtime.store import namespace_hint

    live = [f"{buffer_namespace}-demo"]
    monkeypatch.setattr(runtime.store, "buffer_namespaces", lambda *, live=False: list(found))
    found = live
    assert namespace_hint("python read.py") == (
        f"the live buffers are in namespace {live[0]!r}, not {buffer_namespace!r}: "
        f"run RUNTIME_BUFFER_NAMESPACE={live[0]} python read.py (or add --namespace {live[0]})"
    )
    found = [*live, buffer_namespace]
    assert namespace_hint("python read.py") == ""  # this namespace has live buffers: no hint
    found = [*live, "rt"]
    assert (
        namespace_hint("x") == f"namespaces with live buffers: {live[0]}, rt (choose one with --namespace NS)"
    )
    found = []
    assert namespace_hint("x") == f"no namespace has live buffers (this one is {buffer_namespace!r})"


def test_a_buffer_repr_is_short_and_reads_nothing_under_the_lock(store: BufferStore) -> None:
    motor = store.get_or_open(MOTOR_UID)
    assert repr(motor) == f"<motor buffer {motor.name!r} invalid>"
    motor.serve()
    with motor.transaction():  # held: a repr that read the structure would need this lock
        assert repr(motor) == f"<motor buffer {motor.name!r} valid>"
    motor.close()
    assert repr(motor) == f"<motor buffer {motor.name!r} closed>"
