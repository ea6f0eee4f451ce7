"""Change notification across processes: wait_update/wait_write, wait_any, and their asyncio forms.

Real processes (fork) share real segments; every wait has a timeout far above
what it should take, so a lost wake-up fails the test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import ctypes
import multiprocessing
import os
import resource
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from e2e import JOIN_TIMEOUT, finish, reaped, start

from runtime import _core
from runtime.buffer import Buffer, DeviceBufferError, Parameter
from runtime.notify import WATCHED_PER_THREAD, wait_any, wait_any_async

pytestmark = pytest.mark.timeout(60)
FORK = multiprocessing.get_context("fork")
LONG = 20.0  # a wait that must end long before this

Sensor = Buffer.make_type(
    "notify-sensor",
    [Parameter("value", ctypes.c_int32, 0, writeable=True), Parameter("other", ctypes.c_float, 1)],
)


@pytest.fixture
def name(shm_name: Callable[[str], str]) -> Iterator[str]:
    yield shm_name("sensor")


def set_later(name: str, value: int, delay: float, go: Any = None) -> None:
    with Sensor.open(name, create=False) as buffer:
        if go is not None:
            go.wait(JOIN_TIMEOUT)
        time.sleep(delay)
        buffer.set("value", value)


def write_later(name: str, delay: float) -> None:
    with Sensor.open(name, create=False) as buffer:
        time.sleep(delay)
        buffer.write("value", 9)


def serve_until_told(name: str, serving: Any, stop: Any) -> None:
    with Sensor.open(name, create=False) as buffer:
        buffer.serve()
        serving.set()
        stop.wait(JOIN_TIMEOUT)  # then stops serving (closes) cleanly, unless killed first


def wait_then_report(name: str, waiting: Any, results: Any) -> None:
    with Sensor.open(name, create=False) as buffer:
        waiting.set()
        try:
            results.put(("changed", buffer.wait_update(LONG), buffer.get("value")))
        except DeviceBufferError as exc:
            results.put(("error", exc.message, None))


# ---- blocking waits ---------------------------------------------------------------------------------


def test_a_set_in_another_process_wakes_the_waiter(name: str) -> None:
    with Sensor.open(name) as buffer, reaped() as processes:
        assert buffer.wait_update(timeout=0.05) is False  # nothing since it was opened
        start(processes, FORK, set_later, name, 7, 0.2)
        started = time.monotonic()
        assert buffer.wait_update(LONG) is True
        assert time.monotonic() - started < LONG / 2
        assert buffer.get("value") == 7
        assert buffer.wait_update(timeout=0.05) is False  # that change was taken


def test_wait_write_wakes_on_a_write_and_not_on_a_set(name: str) -> None:
    with Sensor.open(name) as buffer, reaped() as processes:
        buffer.set("value", 1)
        assert buffer.wait_write(timeout=0.05) is False
        start(processes, FORK, write_later, name, 0.1)
        assert buffer.wait_write(LONG) is True
        assert buffer.pending_writes() == {"value": 9}
        assert buffer.wait_update(timeout=0) is True  # the set before, still unseen by wait_update


def test_a_timeout_returns_false_and_zero_does_not_block(name: str) -> None:
    with Sensor.open(name) as buffer:
        started = time.monotonic()
        assert buffer.wait_update(timeout=0.2) is False
        assert time.monotonic() - started >= 0.19
        assert buffer.wait_update(timeout=0) is False
        with pytest.raises(ValueError):
            buffer.wait_update(timeout=-1)


@pytest.mark.parametrize("death", ["stop", "SIGKILL"])
def test_the_producer_ending_wakes_waiters_with_an_error(name: str, death: str) -> None:
    serving, stop, waiting = FORK.Event(), FORK.Event(), FORK.Event()
    results = FORK.Queue()
    with Sensor.open(name) as buffer, reaped() as processes:
        producer = start(processes, FORK, serve_until_told, name, serving, stop)
        assert serving.wait(JOIN_TIMEOUT)
        start(processes, FORK, wait_then_report, name, waiting, results)
        assert waiting.wait(JOIN_TIMEOUT)
        time.sleep(0.1)  # the waiter is asleep
        started = time.monotonic()
        if death == "stop":
            stop.set()
        else:
            os.kill(producer.pid, signal.SIGKILL)
        outcome = results.get(timeout=LONG)
        assert outcome[0] == "error" and "not valid" in outcome[1]
        assert time.monotonic() - started < LONG / 2  # promptly, not at the timeout
        if death == "SIGKILL":
            assert "died" in outcome[1]
        with pytest.raises(DeviceBufferError):
            buffer.wait_update(0)  # an invalid buffer refuses at once too


def test_a_waiter_killed_while_waiting_affects_nobody(name: str) -> None:
    waiting = FORK.Event()
    results = FORK.Queue()
    with Sensor.open(name) as buffer, reaped() as processes:
        victim = start(processes, FORK, wait_then_report, name, waiting, results)
        assert waiting.wait(JOIN_TIMEOUT)
        time.sleep(0.1)
        os.kill(victim.pid, signal.SIGKILL)
        assert finish(victim) == -signal.SIGKILL
        buffer.set("value", 3)  # no hang, no error
        waiting2 = FORK.Event()
        start(processes, FORK, wait_then_report, name, waiting2, results)
        assert waiting2.wait(JOIN_TIMEOUT)
        time.sleep(0.1)
        buffer.set("value", 4)
        assert results.get(timeout=LONG) == ("changed", True, 4)


@pytest.mark.slow  # a second or more of waiting
def test_waiting_costs_no_cpu(name: str) -> None:
    with Sensor.open(name) as buffer:
        before = resource.getrusage(resource.RUSAGE_SELF)
        buffer.wait_update(timeout=1.0)
        after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    assert cpu < 0.05  # asleep in the kernel for the whole second


def test_close_from_another_thread_ends_a_wait(name: str) -> None:
    buffer = Sensor.attach(name)
    errors: list[BaseException] = []

    def wait() -> None:
        try:
            buffer.wait_update(LONG)
        except DeviceBufferError as exc:
            errors.append(exc)

    thread = threading.Thread(target=wait)
    thread.start()
    time.sleep(0.1)  # the scenario: the thread is (most likely) waiting; either way it must raise
    buffer.close()
    buffer.set  # noqa: B018 - the object is still there
    other = Sensor.attach(name, create=False)
    other.set("value", 1)  # a change wakes the sleeper, which finds its handle closed
    thread.join(LONG)
    other.close()
    assert not thread.is_alive() and len(errors) == 1 and "closed" in errors[0].message


# ---- many buffers at once -----------------------------------------------------------------------------


def test_wait_any_returns_the_buffers_that_changed(shm_name: Callable[[str], str]) -> None:
    names = [shm_name(f"s{index}") for index in range(5)]
    buffers = [Sensor.attach(each) for each in names]
    try:
        assert wait_any(buffers, timeout=0.05) == []
        with reaped() as processes:
            start(processes, FORK, set_later, names[3], 1, 0.1)
            assert wait_any(buffers, LONG) == [buffers[3]]
        buffers[1].set("value", 5)
        buffers[4].set("value", 5)
        assert wait_any(buffers, 0) == [buffers[1], buffers[4]]
        assert wait_any(buffers, 0) == []
        buffers[2].serve()  # a validity change counts
        assert wait_any(buffers, 0) == [buffers[2]]
        buffers[2].stop_serving()
        (changed,) = wait_any(buffers, 0)
        assert changed is buffers[2] and not changed.valid
        with pytest.raises(ValueError):
            wait_any(buffers * WATCHED_PER_THREAD, 0)
    finally:
        for buffer in buffers:
            buffer.close()


def test_wait_any_ends_when_its_control_word_is_woken(shm_name: Callable[[str], str]) -> None:
    """Another thread's wake() ends the wait (with nothing changed); one before the wait, after the value
    was read, is not missed; a wake-up for an older value does not end a wait for the newer one."""
    word = _core.WakeWord()
    with Sensor.attach(shm_name("control")) as buffer:
        value = word.value
        word.wake()  # between the read and the wait: the wait returns at once
        started = time.monotonic()
        assert wait_any([buffer], LONG, control=word, control_value=value) == []
        value = word.value
        waker = threading.Timer(0.05, word.wake)
        waker.start()
        try:
            assert wait_any([], LONG, control=word, control_value=value) == []  # no buffers: the word alone
        finally:
            waker.join()
        assert time.monotonic() - started < LONG / 2  # both woken, neither timed out
        buffer.set("value", 3)  # a change still counts beside the word
        assert wait_any([buffer], LONG, control=word, control_value=word.value) == [buffer]
        assert wait_any([buffer], 0.01, control=word, control_value=word.value) == []  # the timeout


# ---- asyncio ------------------------------------------------------------------------------------------


def test_async_waits_wake_on_changes_from_another_process(name: str) -> None:
    async def main() -> tuple[bool, bool, float]:
        with Sensor.open(name) as buffer:
            with reaped() as processes:
                start(processes, FORK, set_later, name, 11, 0.2)
                started = time.monotonic()
                changed = await buffer.wait_update_async(LONG)
                took = time.monotonic() - started
            return changed, await buffer.wait_update_async(0.05), took

    changed, again, took = asyncio.run(main())
    assert changed is True and again is False and took < LONG / 2


@pytest.mark.slow  # a second or more of waiting
def test_thousands_of_tasks_on_hundreds_of_buffers(shm_name: Callable[[str], str]) -> None:
    names = [shm_name(f"m{index}") for index in range(100)]

    async def main() -> None:
        buffers = [Sensor.attach(each) for each in names]
        try:
            woken: list[int] = []

            async def waiter(index: int) -> None:
                if await buffers[index % 100].wait_update_async(LONG):
                    woken.append(index)

            threads_before = set(threading.enumerate())  # (earlier tests' may linger: not counted)
            tasks = [asyncio.create_task(waiter(index)) for index in range(2000)]
            await asyncio.sleep(0.3)  # all asleep: nothing changed
            assert woken == []
            before = resource.getrusage(resource.RUSAGE_SELF)
            await asyncio.sleep(0.5)
            after = resource.getrusage(resource.RUSAGE_SELF)
            assert (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime) < 0.1
            started = set(threading.enumerate()) - threads_before
            assert len(started) <= (100 + WATCHED_PER_THREAD - 1) // WATCHED_PER_THREAD, started
            other = Sensor.attach(names[42], create=False)
            other.set("value", 1)  # from another handle, as another process would
            await asyncio.wait_for(_until(lambda: len(woken) == 20), LONG)
            assert sorted(woken) == list(range(42, 2000, 100))
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            other.close()
        finally:
            for buffer in buffers:
                buffer.close()

    asyncio.run(main())
    from runtime import notify

    assert notify._notifier().workers and all(not worker.watches for worker in notify._notifier().workers)


def test_async_cancellation_leaves_nothing_behind(name: str) -> None:
    from runtime import notify

    async def main() -> None:
        with Sensor.open(name) as buffer:
            task = asyncio.create_task(buffer.wait_update_async(LONG))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert all(not worker.watches for worker in notify._notifier().workers)
            assert await buffer.wait_update_async(0.05) is False
            buffer.set("value", 1)
            assert await buffer.wait_update_async(LONG) is True

    asyncio.run(main())


def test_async_invalidation_raises_in_the_awaiting_task(name: str) -> None:
    serving, stop = FORK.Event(), FORK.Event()

    async def main() -> str:
        with Sensor.open(name) as buffer, reaped() as processes:
            producer = start(processes, FORK, serve_until_told, name, serving, stop)
            assert serving.wait(JOIN_TIMEOUT)
            buffer.wait_update(0)  # take the validity change
            task = asyncio.create_task(buffer.wait_update_async(LONG))
            await asyncio.sleep(0.1)
            os.kill(producer.pid, signal.SIGKILL)
            try:
                await asyncio.wait_for(task, LONG / 2)
            except DeviceBufferError as exc:
                return exc.message
            return "no error"

    assert "died" in asyncio.run(main())


def test_wait_any_async(shm_name: Callable[[str], str]) -> None:
    names = [shm_name(f"a{index}") for index in range(3)]

    async def main() -> None:
        buffers = [Sensor.attach(each) for each in names]
        try:
            assert await wait_any_async(buffers, 0.05) == []
            with reaped() as processes:
                start(processes, FORK, set_later, names[1], 2, 0.1)
                assert await wait_any_async(buffers, LONG) == [buffers[1]]
        finally:
            for buffer in buffers:
                buffer.close()

    asyncio.run(main())


async def _until(predicate: Callable[[], bool]) -> None:
    while not predicate():
        await asyncio.sleep(0.005)


def test_a_producer_that_died_between_two_waits_is_still_reported(shm_name: Callable[[str], str]) -> None:
    # The death changes no sequence word: what counts is that this handle last saw the buffer live.
    name = shm_name()
    serving, stop = FORK.Event(), FORK.Event()
    with Sensor.open(name) as buffer, reaped() as processes:
        producer = start(processes, FORK, serve_until_told, name, serving, stop)
        assert serving.wait(JOIN_TIMEOUT)
        assert wait_any([buffer], 0.05) == [buffer]  # the serve() change
        assert wait_any([buffer], 0.05) == []
        os.kill(producer.pid, signal.SIGKILL)  # while nobody waits
        assert finish(producer) == -signal.SIGKILL
        started = time.monotonic()
        assert wait_any([buffer], LONG) == [buffer] and not buffer.valid
        assert time.monotonic() - started < LONG / 2  # at once, not at the timeout
        assert wait_any([buffer], 0.05) == []  # reported once


def test_the_async_wait_any_reports_a_death_between_two_waits(shm_name: Callable[[str], str]) -> None:
    name = shm_name()
    serving, stop = FORK.Event(), FORK.Event()

    async def main() -> tuple[list[Any], list[Any], float]:
        with Sensor.open(name) as buffer, reaped() as processes:
            producer = start(processes, FORK, serve_until_told, name, serving, stop)
            assert serving.wait(JOIN_TIMEOUT)
            await wait_any_async([buffer], 0.05)  # the serve() change
            quiet = await wait_any_async([buffer], 0.05)
            os.kill(producer.pid, signal.SIGKILL)
            assert finish(producer) == -signal.SIGKILL
            started = time.monotonic()
            ready = await wait_any_async([buffer], LONG)
            return quiet, [b.valid for b in ready], time.monotonic() - started

    quiet, ready, took = asyncio.run(main())
    assert quiet == [] and ready == [False] and took < LONG / 2
