"""The change feed (:class:`runtime._core.ChangeFeed`) and the values it hands over
(:func:`runtime._core.read_json`).

The compiled conversion must give what :func:`runtime.values.json_values`
gives for every type of the catalog (float32 values shortened bit for bit as
:func:`runtime.values.short_float` shortens them), and the feed must wake its
consumer once for a batch, see validity change (a producer killed too), follow
buffers added and removed while it sleeps, and leave no thread once closed.
All on real shared memory, in a namespace of this module's, unlinked at the end.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from e2e import CATALOG, SERVO, make_uid, namespace_fixture
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from runtime import BufferStore, _core
from runtime.buffer import Buffer, DeviceBuffer
from runtime.values import (
    BOOL,
    FLOAT,
    INTEGER,
    TEXT,
    encode_json,
    json_values,
    kind_of,
    read_state,
    short_float,
)

namespace = namespace_fixture("rt-test-feed")

_FLOAT32 = struct.Struct("<f")


def bits(value: float | None) -> bytes | None:
    """A double's bytes (tells -0.0 from 0.0), None as None."""
    return None if value is None else struct.pack("<d", value)


# ---- float32 values, shortened -------------------------------------------------------------------


@given(st.integers(0, 2**32 - 1))
@example(0x00000000)  # 0.0
@example(0x80000000)  # -0.0
@example(0x00000001)  # the smallest subnormal
@example(0x807FFFFF)  # the largest negative subnormal
@example(0x00800000)  # the smallest normal
@example(0x7F7FFFFF)  # the largest float32
@example(0xFF7FFFFF)
@example(0x3DCCCCCD)  # 0.1
@example(0x7F800000)  # inf
@example(0x7FC00000)  # nan
def test_a_float32_is_shortened_bit_for_bit_as_short_float(pattern: int) -> None:
    (value,) = _FLOAT32.unpack(struct.pack("<I", pattern))
    expected = shortest_decimal(value) if math.isfinite(value) else None
    assert bits(_core.short_float32(value)) == bits(expected)
    assert bits(short_float(value)) == bits(value if expected is None else expected)


def shortest_decimal(value: float) -> float:
    """The reference: the fewest significant digits (1 to 9) whose decimal reads back as the float32."""
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        if ctypes.c_float(candidate).value == value:  # ctypes: a decimal past the float32 range is inf
            return candidate
    return value


@given(st.floats(allow_nan=False, allow_infinity=False))
def test_a_double_that_is_no_float32_is_left_as_it_is(value: float) -> None:
    if ctypes.c_float(value).value != value:
        assert bits(_core.short_float32(value)) == bits(value)


# ---- a buffer's values, as JSON data --------------------------------------------------------------


def value_strategy(param: Any) -> st.SearchStrategy[Any]:
    """Values ``set`` stores as they are for this parameter (within its bounds: no clamping)."""
    ctype: Any = param.platform_type
    kind = kind_of(ctype)
    if kind == BOOL:
        return st.booleans()
    if kind == INTEGER:
        size = ctypes.sizeof(ctype) * 8
        low, high = (0, 2**size - 1) if ctype._type_.isupper() else (-(2 ** (size - 1)), 2 ** (size - 1) - 1)
        return st.integers(max(low, int(max(param.lower, -(2**63)))), min(high, int(min(param.upper, 2**63))))
    if kind == FLOAT:
        if math.isinf(param.lower) and math.isinf(param.upper):
            return st.floats(width=32)  # NaN and infinities too: None in JSON
        return st.floats(param.lower, param.upper, width=32)
    if kind == TEXT:
        return st.binary(max_size=24).map(lambda data: data.replace(b"\0", b"x"))
    return st.binary(max_size=24)  # byte arrays: the rest stays zero


@pytest.fixture(scope="module")
def buffers(namespace: str) -> Iterator[dict[str, Buffer]]:
    """One buffer of every catalog type, served by this process."""
    with BufferStore(CATALOG) as store:
        opened: dict[str, Buffer] = {}
        for index, (type_name, buffer_type) in enumerate(sorted(CATALOG.items())):
            if issubclass(buffer_type, DeviceBuffer):
                buffer = store.get_or_open(make_uid(buffer_type))
            else:
                buffer = store.get_or_open((type_name, 100 + index))
            buffer.serve()
            opened[type_name] = buffer
        yield opened
        store.unlink_all()


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data())
@pytest.mark.parametrize("type_name", sorted(CATALOG))
def test_read_json_gives_what_json_values_gives_for_every_type(
    buffers: dict[str, Buffer], type_name: str, data: st.DataObject
) -> None:
    buffer = buffers[type_name]
    readable = [param for param in type(buffer).params.values() if param.readable]
    with buffer.transaction():
        for param in readable:
            buffer.set(param.name, data.draw(value_strategy(param), label=param.name))
    before = time.time()
    valid, values, stamp = _core.read_json(buffer._access)
    assert valid is True and values is not None
    expected = json_values(type(buffer), buffer.snapshot())
    assert values == expected
    for name, value in values.items():  # the same types, and floats bit for bit
        assert type(value) is type(expected[name])
        if isinstance(value, float):
            assert bits(value) == bits(shortest_decimal(value))
    assert stamp >= before  # nothing from a device yet: when read


def test_the_time_is_the_devices_last_update_and_an_invalid_buffer_has_no_values(
    buffers: dict[str, Buffer],
) -> None:
    servo = buffers["servo-motor"]
    servo.set("servo0", 0.5)
    for message in servo.emit_dev_data():
        servo.update(message)  # as the bridge stores a DEV_DATA: last_update set
    stamp = servo.last_update
    assert stamp > 0
    assert _core.read_json(servo._access) == (True, {**json_values(SERVO, servo.snapshot())}, stamp)
    assert read_state(servo) == read_state(servo, stamp - 1)
    later = read_state(servo, stamp)  # nothing new from the device since `previous`: now
    assert later.time > stamp and later.values == read_state(servo).values
    servo.valid = False
    try:
        valid, values, _ = _core.read_json(servo._access)
        assert (valid, values) == (False, None)
    finally:
        servo.serve()


# ---- the feed ------------------------------------------------------------------------------------


def feed_threads() -> int:
    """The change feed threads of this process."""
    count = 0
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as file:
                count += file.read().strip() == "runtime-feed"
        except OSError:
            pass  # ended meanwhile
    return count


@pytest.fixture
def servos(namespace: str) -> Iterator[list[Buffer]]:
    """Three servo-motors served by this process, unlinked after the test."""
    with BufferStore(CATALOG) as store:
        served = [store.get_or_open(make_uid(SERVO)) for _ in range(3)]
        for buffer in served:
            buffer.serve()
        yield served
        store.unlink_all()


@pytest.fixture(params=["wait", "eventfd"])
def feed(request: pytest.FixtureRequest) -> Iterator[_core.ChangeFeed]:
    """A feed that wait() sleeps in, or one whose thread signals its eventfd (as asyncio uses it)."""
    feed = _core.ChangeFeed()
    if request.param == "eventfd":
        feed.fileno()
    yield feed
    feed.close()


def take_all(feed: _core.ChangeFeed) -> dict[Any, tuple[int, bool, dict[str, Any] | None]]:
    """Wait for a batch and take it: by key, (blocks changed, valid, values)."""
    assert feed.wait(10)
    return {key: (changed, valid, values) for key, changed, valid, values, _ in feed.take()}


def test_the_feed_wakes_once_for_a_batch_and_hands_over_the_values(
    servos: list[Buffer], feed: _core.ChangeFeed
) -> None:
    for index, buffer in enumerate(servos):
        feed.add(index, buffer._access)
    first = take_all(feed)  # every buffer's state as it is added
    assert sorted(first) == [0, 1, 2] and all(valid for _, valid, _ in first.values())
    wakeups = feed.wakeups
    for index, buffer in enumerate(servos):  # the consumer is not looking: one batch
        buffer.set("servo0", index / 4)
    batch = take_all(feed)
    assert {key: values["servo0"] for key, (_, _, values) in batch.items() if values} == {
        0: 0.0,
        1: 0.25,
        2: 0.5,
    }
    assert all(changed == 1 for changed, _, _ in batch.values())
    assert feed.wakeups == wakeups + 1
    assert feed.take() == [] and not feed.wait(0)  # taken: nothing left


def test_the_feed_delivers_validity_and_write_changes(servos: list[Buffer], feed: _core.ChangeFeed) -> None:
    servo = servos[0]
    feed.add("servo", servo._access, 3)
    take_all(feed)
    servo.valid = False
    assert take_all(feed) == {"servo": (3, False, None)}
    servo.serve()
    changed, valid, values = take_all(feed)["servo"]
    assert valid and values == json_values(SERVO, servo.snapshot())
    with SERVO.open(servo.name, create=False) as consumer:  # a consumer's write: the write block
        consumer.write("servo0", 0.75)
    assert take_all(feed) == {"servo": (2, True, None)}  # its values did not change: not read


def test_a_buffer_not_wanted_reports_its_validity_only_then_its_state_once_wanted(
    servos: list[Buffer], feed: _core.ChangeFeed
) -> None:
    servo = servos[0]
    feed.add("servo", servo._access, wanted=False)
    take_all(feed)  # its state as it is added, wanted or not
    servo.set("servo0", 0.5)
    servo.valid = False  # after a change that is not wanted: only this comes
    assert take_all(feed) == {"servo": (1, False, None)}
    servo.serve()
    assert take_all(feed)["servo"][1] is True
    feed.want("servo", True)
    assert take_all(feed)["servo"][2] == json_values(SERVO, servo.snapshot())


PRODUCER = textwrap.dedent(
    """
    import sys, time
    from runtime import BufferStore, load_catalog
    with BufferStore(load_catalog()) as store:
        buffer = store.get_or_open(int(sys.argv[1]))
        buffer.serve()
        buffer.set("servo0", 0.5)
        print("serving", flush=True)
        time.sleep(120)
    """
)


@pytest.mark.slow  # a Python process of its own
def test_the_feed_sees_a_producer_killed(namespace: str, feed: _core.ChangeFeed) -> None:
    uid = make_uid(SERVO)
    producer = subprocess.Popen(
        [sys.executable, "-c", PRODUCER, str(uid)], stdout=subprocess.PIPE, text=True, env=os.environ
    )
    try:
        assert producer.stdout is not None and producer.stdout.readline() == "serving\n"
        with BufferStore(CATALOG) as store:
            servo = store.get_or_open(uid)
            feed.add("servo", servo._access)
            assert take_all(feed)["servo"][1:] == (True, {"servo0": 0.5, "servo1": 0.0})
            producer.send_signal(signal.SIGKILL)  # no chance to say it stops: its lock tells
            producer.wait()
            assert take_all(feed) == {"servo": (0, False, None)}
            feed.remove("servo")
            store.unlink_all()
    finally:
        producer.kill()
        producer.wait()


def test_buffers_added_and_removed_while_it_sleeps(servos: list[Buffer], feed: _core.ChangeFeed) -> None:
    first, second, third = servos
    feed.add("first", first._access)
    take_all(feed)
    batches: list[Any] = []

    def consumer() -> None:
        while not batches or "second" not in batches[-1]:
            if feed.wait(10):
                batches.append({key for key, *_ in feed.take()})

    thread = threading.Thread(target=consumer)
    thread.start()
    feed.add("second", second._access)  # the sleeping consumer wakes to its state
    thread.join(10)
    assert not thread.is_alive() and "second" in batches[-1]
    assert feed.remove("first") and not feed.remove("first")
    first.set("servo0", 0.5)  # followed no more
    third.set("servo0", 0.5)  # never followed
    second.set("servo0", 0.5)
    assert set(take_all(feed)) == {"second"}
    assert feed.count == 1
    with pytest.raises(KeyError):
        feed.add("second", third._access)


@pytest.mark.parametrize("eventfd", [False, True], ids=["wait", "eventfd"])
def test_closing_the_feed_wakes_its_waiter_and_leaves_no_thread(servos: list[Buffer], eventfd: bool) -> None:
    before = feed_threads()
    feed = _core.ChangeFeed()
    feed.add("servo", servos[0]._access)
    take_all(feed)
    assert not feed.running and feed_threads() == before  # wait() sleeps on the buffers itself
    if eventfd:
        feed.fileno()  # for asyncio: a thread sleeps on the buffers, and signals the eventfd
        assert feed.running and feed_threads() == before + 1
    woken: list[bool] = []
    thread = threading.Thread(target=lambda: woken.append(feed.wait()))
    thread.start()
    feed.close()
    thread.join(10)
    assert woken == [False] and not feed.running and feed_threads() == before
    with pytest.raises(ValueError, match="closed"):
        feed.take()
    feed.close()  # again: nothing
    servos[0].set("servo0", 0.25)  # the buffer is the caller's still


def test_wake_ends_a_wait_without_a_batch(servos: list[Buffer], feed: _core.ChangeFeed) -> None:
    feed.add("servo", servos[0]._access)
    take_all(feed)
    woken: list[bool] = []
    thread = threading.Thread(target=lambda: woken.append(feed.wait()))
    thread.start()
    feed.wake()
    thread.join(10)
    # No batch (wait() sleeping in the words says so; the eventfd is readable all the same).
    assert woken == [feed.running] and feed.take() == []


def test_a_buffer_closed_while_followed_stays_mapped_and_reads_as_invalid(
    namespace: str, feed: _core.ChangeFeed
) -> None:
    with BufferStore(CATALOG) as store:
        servo = store.get_or_open(make_uid(SERVO))
        servo.serve()
        reader = SERVO.attach(servo.name, create=False)
        feed.add("servo", reader._access)
        take_all(feed)
        reader.close()  # its memory stays until the feed lets go
        servo.set("servo0", 0.5)
        assert take_all(feed) == {"servo": (1, False, None)}
        assert feed.remove("servo")
        store.unlink_all()


def test_a_feed_that_gathers_a_batch_still_delivers_every_buffer(servos: list[Buffer]) -> None:
    with pytest.raises(ValueError, match="batch"):
        _core.ChangeFeed(batch=-1)
    feed = _core.ChangeFeed(batch=0.01)
    try:
        for index, buffer in enumerate(servos):
            feed.add(index, buffer._access)
        take_all(feed)
        for buffer in servos:
            buffer.set("servo0", -0.5)
        seen: dict[Any, Any] = {}
        while len(seen) < len(servos):  # one batch, or more on a busy machine
            seen.update(take_all(feed))
        assert all(values is not None and values["servo0"] == -0.5 for _, _, values in seen.values())
    finally:
        feed.close()


@pytest.mark.parametrize("consumer", ["wait", "eventfd"])
def test_a_paced_feed_hands_a_change_over_at_once_then_at_most_one_batch_per_pace(
    servos: list[Buffer], consumer: str
) -> None:
    feed = _core.ChangeFeed(batch=0.5)  # a long pace: what is held back is held back ten times the look
    try:
        if consumer == "eventfd":
            feed.fileno()
        feed.add("servo", servos[0]._access)
        take_all(feed)  # its state as it is added: a batch, now the pace runs
        servos[0].set("servo0", 0.25)
        servos[0].set("servo0", 0.5)
        assert not feed.wait(0.05)  # too soon after the last batch: held back, not lost
        assert take_all(feed)["servo"][2] == json_values(SERVO, servos[0].snapshot())  # the newest state
        assert feed.take() == []
    finally:
        feed.close()
    quiet = _core.ChangeFeed(batch=0.5)
    try:
        quiet.add("servo", servos[1]._access)
        assert quiet.wait(10) and quiet.take()  # the first batch goes at once: nothing came before
    finally:
        quiet.close()


# ---- the messages, encoded -----------------------------------------------------------------------

JSON_DATA = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text() | st.integers(), inner, max_size=4),
    max_leaves=16,
)


@given(JSON_DATA)
def test_encode_json_is_json_that_parses_as_json_writes_it(data: Any) -> None:
    """orjson's bytes may differ from json's (UTF-8 text, ``1e-7``), never what they parse to."""
    encoded = encode_json(data)
    assert json.loads(encoded) == json.loads(json.dumps(data, separators=(",", ":")))


@pytest.mark.parametrize("bad", [math.nan, math.inf, {"values": [1.0, -math.inf]}])
def test_encode_json_refuses_nan_and_infinities(bad: Any) -> None:
    with pytest.raises(ValueError, match="Out of range float"):
        encode_json(bad)
