"""Hostile neighbours of a producer (issue 22): validity and the update block belong to the live
producer, the robust-lock limit of a dying thread, the producer role is a thread's, the waits'
edges, one namespace check, and ``last_write`` from a precise clock."""

import asyncio
import contextlib
import ctypes
import math
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e import JOIN_TIMEOUT, finish, reaped, start

from runtime import _core, remote
from runtime.buffer import Buffer, BufferStore, DeviceBuffer, DeviceBufferError, Parameter
from runtime.catalog import load as load_catalog
from runtime.messaging import Message, MessageType
from runtime.notify import wait_any, wait_any_async
from runtime.store import check_namespace
from runtime.sync import Mutex

FORK = multiprocessing.get_context("fork")

Sensor = DeviceBuffer.make_type(
    "hostile-sensor",
    [
        Parameter("enc_pos", ctypes.c_int32, 0),
        Parameter("duty_cycle", ctypes.c_float, 1, lower=-1, upper=1, writeable=True, safe=0.0),
    ],
    device_id=0x56,
)
Plain = Buffer.make_type("hostile-plain", [Parameter("level", ctypes.c_int32, 0)])


# ---- child process bodies ---------------------------------------------------------------------------


def serve_then_wait(name: str, unplug: bool, serving: Any, stop: Any) -> None:
    """A producer (a bridge): serve, report a reading, then (``unplug``) stop serving; wait to be killed."""
    with Sensor.open(name, create=False) as buffer:
        buffer.serve()
        buffer.set("enc_pos", 1234)
        if unplug:
            buffer.stop_serving()  # the device unplugged: the bridge lives on
        serving.set()
        if not stop.wait(JOIN_TIMEOUT):
            raise TimeoutError("never told to stop")


def die_in_a_transaction(name: str, inside: Any) -> None:
    """Change a value inside a transaction, then wait there to be killed: the change must never count."""
    with Plain.open(name, create=False) as buffer:
        buffer.set_lock_timeout(JOIN_TIMEOUT)
        with buffer.transaction():
            buffer.set("level", 99)
            inside.set()
            time.sleep(JOIN_TIMEOUT * 2)  # killed here


def serve_beyond_the_kernel_s_walk(names: list[str], mutexes: int, ready: Any) -> None:
    """Serve ``names``, then hold ``mutexes`` robust locks more: the producer locks, held longest, are past
    the 2048 entries of the robust list that the kernel releases when this thread dies."""
    buffers = [Plain.attach(name, create=False) for name in names]
    for buffer in buffers:
        buffer.serve()
    held = []
    for _ in range(mutexes):
        mutex = Mutex()
        mutex.initialize()
        mutex.acquire()
        held.append(mutex)
    ready.set()
    time.sleep(JOIN_TIMEOUT * 2)  # killed here


@contextlib.contextmanager
def producer(name: str, *, unplug: bool = False) -> Iterator[Any]:
    """A producer process serving ``name`` (stopped serving when ``unplug``); killed when the block ends."""
    serving, stop = FORK.Event(), FORK.Event()
    with reaped() as processes:
        process = start(processes, FORK, serve_then_wait, name, unplug, serving, stop)
        assert serving.wait(JOIN_TIMEOUT)
        yield process


# ---- validity belongs to the live producer ------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("how", ["killed", "unplugged"])
def test_a_consumer_cannot_make_a_dead_or_stopped_producer_s_buffer_valid(
    shm_name: Callable[[str], str], how: str
) -> None:
    name = shm_name()
    with Sensor.open(name) as consumer:
        with producer(name, unplug=how == "unplugged") as process:
            if how == "killed":
                os.kill(process.pid, signal.SIGKILL)
                assert finish(process) == -signal.SIGKILL
            assert not consumer.valid and consumer.producer_pid is None
            for value in (True, False):
                with pytest.raises(DeviceBufferError, match="only a buffer's live producer") as caught:
                    consumer.valid = value
                assert caught.value.context["producer_pid"] == process.pid
            assert not consumer.valid  # the stale reading never passes for live
            with pytest.raises(DeviceBufferError, match="not valid"):
                consumer.get("enc_pos")


def test_a_smart_device_buffer_nobody_served_stays_invalid_for_consumers() -> None:
    catalog = load_catalog()
    with BufferStore(catalog) as store:
        uid = (catalog["limit-switch"].device_id << 72) | 0x22_0000_0000_0000_0042
        buffer = store.get_or_open(uid)
        try:
            assert not buffer.valid
            with pytest.raises(DeviceBufferError, match="serve\\(\\) it first"):
                buffer.valid = True
            assert not buffer.valid
        finally:
            store.close()
            Buffer.unlink(buffer.name)


def test_only_the_serving_thread_of_the_producer_sets_validity(shm_name: Callable[[str], str]) -> None:
    name = shm_name()
    with Sensor.open(name) as producer_handle, Sensor.open(name, create=False) as consumer:
        producer_handle.serve()
        with pytest.raises(DeviceBufferError, match="only it changes") as caught:
            consumer.valid = False  # another handle, even in the producer's thread
        assert caught.value.context["producer_pid"] == os.getpid()
        errors: list[BaseException] = []

        def from_another_thread() -> None:
            try:
                producer_handle.valid = False
            except DeviceBufferError as exc:
                errors.append(exc)

        thread = threading.Thread(target=from_another_thread)
        thread.start()
        thread.join(JOIN_TIMEOUT)
        assert len(errors) == 1 and "thread that serves" in str(errors[0])
        assert consumer.valid
        producer_handle.valid = False  # the producer itself: no data now
        assert not consumer.valid
        producer_handle.valid = True
        assert consumer.valid


@pytest.mark.timeout(60)
def test_a_consumer_cannot_change_what_a_live_producer_reports(shm_name: Callable[[str], str]) -> None:
    name = shm_name()
    with Sensor.open(name) as consumer, producer(name) as process:
        with pytest.raises(DeviceBufferError, match="served by another process") as caught:
            consumer.set("enc_pos", 0)
        assert caught.value.context["producer_pid"] == process.pid
        spoof = Message(MessageType.DEV_DATA, b"\x01\x00" + b"\x00" * 4)  # enc_pos = 0
        with pytest.raises(DeviceBufferError, match="served by another process"):
            consumer.update(spoof)
        with pytest.raises(DeviceBufferError, match="served by another process"):
            with consumer.transaction():
                consumer.set("enc_pos", 0)
        assert consumer.get("enc_pos") == 1234  # the producer's reading stands
        consumer.write("duty_cycle", 0.5)  # a request for the device: anyone's
        assert consumer.pending_writes() == {"duty_cycle": 0.5}


def test_the_producer_s_process_changes_the_update_block_from_any_thread(
    shm_name: Callable[[str], str],
) -> None:
    name = shm_name()
    with Sensor.open(name) as producer_handle, Sensor.open(name, create=False) as other:
        producer_handle.serve()
        other.set("enc_pos", 1)  # another handle of the producer's process
        thread = threading.Thread(target=other.set, args=("enc_pos", 2))
        thread.start()
        thread.join(JOIN_TIMEOUT)
        assert producer_handle.get("enc_pos") == 2
    with Plain.open(shm_name()) as alone:  # a buffer nobody serves is anyone's
        alone.set("level", 3)
        assert alone.get("level") == 3


# ---- more producer locks than the kernel releases --------------------------------------------------------


def test_a_thread_serves_at_most_the_limit_of_producer_locks() -> None:
    limit = _core.MAX_SERVED_PER_THREAD
    assert limit <= 1024  # half the kernel's ROBUST_LIST_LIMIT (2048), the rest for other robust locks
    buffers = [Plain.attach(f"served-{index}", shared=False) for index in range(limit + 1)]
    try:
        for buffer in buffers[:limit]:
            buffer.serve()
        with pytest.raises(DeviceBufferError, match="serve more from another thread") as caught:
            buffers[limit].serve()
        assert caught.value.context["limit"] == limit and not buffers[limit].serving
        served: list[bool] = []
        thread = threading.Thread(target=lambda: served.append(buffers[limit].serve() is None))
        thread.start()
        thread.join(JOIN_TIMEOUT)
        assert served == [True]  # another thread may
        buffers[0].stop_serving()
        buffers[1].close()  # closing a served buffer gives its lock back too
        spare = Plain.attach("served-spare", shared=False)
        buffers.append(spare)
        spare.serve()
    finally:
        for buffer in buffers:
            with contextlib.suppress(DeviceBufferError):
                buffer.close()


@pytest.mark.timeout(120)
def test_a_producer_lock_the_kernel_left_to_a_dead_thread_is_released() -> None:
    catalog: dict[str, type[Buffer]] = {"hostile-plain": Plain}
    names = [BufferStore.segment_name("hostile-plain", 0x2200 + index) for index in range(3)]
    ready = FORK.Event()
    opened = [Plain.attach(name) for name in names]
    try:
        with reaped() as processes:
            process = start(processes, FORK, serve_beyond_the_kernel_s_walk, names, 2100, ready)
            assert ready.wait(JOIN_TIMEOUT)
            assert all(buffer.producer_pid == process.pid for buffer in opened)
            os.kill(process.pid, signal.SIGKILL)
            assert finish(process) == -signal.SIGKILL
        # The kernel left these producer locks with the dead thread's ID: by the lock word alone,
        # the producer lives. Where the producer is looked up (producer_pid, serve(), buffers
        # clean), a dead owner is dead whatever the lock word says, and its lock is released.
        assert opened[0].producer_pid is None
        assert not opened[0].valid  # released: every reader sees it invalid now
        assert opened[1].serve() == process.pid  # a new producer takes over, told whose it was
        with BufferStore(catalog) as store:
            stale = {name for _, _, name, _ in store.stale_segments()}
        assert stale == {names[0], names[2]}  # what `runtime buffers clean` removes
        assert not opened[2].valid
    finally:
        for buffer in opened:
            buffer.close()
            with contextlib.suppress(DeviceBufferError):
                Buffer.unlink(buffer.name)


# ---- the producer role is a thread's ---------------------------------------------------------------------


def test_stop_serving_from_another_thread_is_refused_and_changes_nothing(
    shm_name: Callable[[str], str],
) -> None:
    name = shm_name()
    orders: list[str] = []
    order, done = threading.Condition(), threading.Event()
    results: list[Any] = []

    def serving_thread(buffer: Any) -> None:
        def next_order() -> str:
            with order:
                assert order.wait_for(lambda: orders, JOIN_TIMEOUT)
                return orders.pop(0)

        buffer.serve()
        done.set()
        while (what := next_order()) != "exit":
            try:
                results.append(getattr(buffer, what)())
            except DeviceBufferError as exc:
                results.append(exc)
            done.set()

    def ask(what: str) -> Any:
        done.clear()
        with order:
            orders.append(what)
            order.notify()
        assert done.wait(JOIN_TIMEOUT)
        return results.pop()

    with Sensor.open(name) as buffer, Sensor.open(name, create=False) as reader:
        thread = threading.Thread(target=serving_thread, args=(buffer,))
        thread.start()
        try:
            assert done.wait(JOIN_TIMEOUT) and buffer.serving
            for attempt in (buffer.stop_serving, buffer.close):
                with pytest.raises(DeviceBufferError, match="thread that serves"):
                    attempt()
                assert buffer.serving and reader.valid and not buffer.closed  # nothing changed
            assert ask("stop_serving") is None and not reader.valid and not buffer.serving
            assert ask("serve") is None and reader.valid  # the serving thread can serve again...
            assert ask("close") is None and not reader.valid  # ...and let go
        finally:
            with order:
                orders.append("exit")
                order.notify()
            thread.join(JOIN_TIMEOUT)
        with Sensor.open(name, create=False) as successor:
            assert successor.serve() is None  # nobody holds the role any more


# ---- waits -------------------------------------------------------------------------------------------------


def _forms(buffer: Any) -> dict[str, Callable[[Any], Any]]:
    return {
        "wait_update": buffer.wait_update,
        "wait_write": buffer.wait_write,
        "wait_update_async": lambda timeout: asyncio.run(buffer.wait_update_async(timeout)),
        "wait_write_async": lambda timeout: asyncio.run(buffer.wait_write_async(timeout)),
        "wait_any": lambda timeout: wait_any([buffer], timeout),
        "wait_any_async": lambda timeout: asyncio.run(wait_any_async([buffer], timeout)),
        "wait_any_empty": lambda timeout: wait_any([], timeout),
        "wait_any_async_empty": lambda timeout: asyncio.run(wait_any_async([], timeout)),
    }


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    "timeout, error", [(math.nan, ValueError), (-1, ValueError), (-math.inf, ValueError), ("1", TypeError)]
)
def test_every_form_of_wait_refuses_the_same_timeouts(timeout: Any, error: type[Exception]) -> None:
    with Plain.open("waits", shared=False) as buffer:
        for form, wait in _forms(buffer).items():
            with pytest.raises(error):
                wait(timeout)
                pytest.fail(f"{form}({timeout!r}) did not raise")


@pytest.mark.timeout(30)
def test_every_form_of_wait_agrees_on_timeouts_and_on_no_buffers() -> None:
    with Plain.open("waits", shared=False) as buffer:
        for form, wait in _forms(buffer).items():
            assert wait(0) in (False, []), form
            assert wait(math.inf if "empty" in form else 0.001) in (False, []), form
        started = time.monotonic()
        assert wait_any([]) == [] and asyncio.run(wait_any_async([])) == []  # nothing to wait for: at once
        assert wait_any([], 30) == [] and asyncio.run(wait_any_async([], 30)) == []
        assert time.monotonic() - started < 10
        buffer.set("level", 1)
        assert asyncio.run(buffer.wait_update_async(math.inf)) is True  # no limit, and a change


@pytest.mark.timeout(60)
def test_a_wait_reports_only_committed_changes(shm_name: Callable[[str], str]) -> None:
    name = shm_name()
    inside = FORK.Event()
    with Plain.open(name) as buffer, Plain.open(name, create=False) as other:
        buffer.set("level", 1)
        assert buffer.wait_update(0) is True
        with other.transaction():
            other.set("level", 2)
            assert buffer.wait_update(0) is False  # not committed yet (another handle, same thread)
        assert buffer.wait_update(0) is True  # committed
        with reaped() as processes:
            writer = start(processes, FORK, die_in_a_transaction, name, inside)
            assert inside.wait(JOIN_TIMEOUT)
            assert buffer.wait_update(0) is False  # a change inside its open transaction
            os.kill(writer.pid, signal.SIGKILL)
            assert finish(writer) == -signal.SIGKILL
        assert buffer.get("level") == 2  # rolled back by this read's recovery
        assert buffer.wait_update(0) is False  # so nothing ever changed
        buffer.set("level", 3)
        assert buffer.wait_update(0) is True


# ---- one namespace check ---------------------------------------------------------------------------------


BAD_NAMESPACES = ["a/b", "*", "", "@admin", "x$y", "a?b", "a#b", "nul\0", "n" * 200]


def test_one_namespace_check_for_the_store_and_for_zenoh() -> None:
    for good in ("rt", "rt-demo-4242", "robot_1.x"):
        assert check_namespace(good) == remote.check_namespace(good) == good
        with BufferStore.use_namespace(good) as namespace:
            assert namespace == good
    for bad in BAD_NAMESPACES:
        with pytest.raises(ValueError):
            check_namespace(bad)
        with pytest.raises(ValueError):
            remote.check_namespace(bad)
        if bad:  # (an empty one keeps the namespace in effect)
            before = os.environ.get("RUNTIME_BUFFER_NAMESPACE")
            with pytest.raises(DeviceBufferError, match="namespace"):
                with BufferStore.use_namespace(bad):
                    pass
            assert os.environ.get("RUNTIME_BUFFER_NAMESPACE") == before


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "command",
    [
        ["foxglove"],
        ["buffers", "clean"],
        ["buffers", "list"],
        ["zenoh"],
        ["mode", "idle"],
        ["record", "x.mcap"],
    ],
)
def test_every_command_refuses_a_bad_namespace_in_one_line(command: list[str], tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "runtime", *command, "--namespace", "a/b"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert "argument --namespace: a namespace is one key chunk" in last and "'a/b'" in last
    assert "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []  # refused before doing anything


# ---- last_write from a precise clock ---------------------------------------------------------------------


def test_last_write_is_never_earlier_than_a_time_time_taken_before_the_write() -> None:
    with Sensor.open("stamps", shared=False) as buffer:
        late = []
        for _ in range(2000):
            before = time.time()
            buffer.write("duty_cycle", 0.25)
            stamp = buffer.last_write
            if stamp < before:
                late.append(before - stamp)
        assert late == [], f"{len(late)} stamps earlier than time.time(), by up to {max(late) * 1e3:.3f} ms"
        assert buffer.last_command >= before
