"""The robust process-shared Mutex, with real processes contending for it.

Each test puts the mutex in an anonymous shared mmap created before fork, so
the children see the same memory. Children are always killed and reaped in a
``finally`` and every wait has a timeout: a broken mutex fails the test
instead of hanging the suite.
"""

import ctypes
import errno
import functools
import mmap
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

import pytest
from e2e import finish, reaped, start

from runtime.sync import Mutex, SyncError

CTX = multiprocessing.get_context("fork")
COUNTER_OFFSET = Mutex.SIZE  # a uint64 counter right after the mutex
WAIT = 10.0  # seconds: generous bound on anything that should be quick

multiprocess = pytest.mark.timeout(30)


@pytest.fixture
def memory() -> Iterator[mmap.mmap]:
    mem = mmap.mmap(-1, mmap.PAGESIZE)  # anonymous, MAP_SHARED: inherited by forked children
    yield mem
    with suppress(BufferError):  # a Mutex still referring to it keeps it open
        mem.close()


@pytest.fixture
def mutex(memory: mmap.mmap) -> Mutex:
    mutex = Mutex(memory)
    mutex.initialize()
    return mutex


@pytest.fixture
def plain_mutex(memory: mmap.mmap) -> Mutex:
    mutex = Mutex(memory, recursive=False)
    mutex.initialize()
    return mutex


@contextmanager
def children() -> Iterator[Callable[..., Any]]:
    """Start fork children with ``spawn(target, *args)``; they are killed and reaped on exit."""
    with reaped(WAIT) as started:
        yield functools.partial(start, started, CTX)


def join(process: Any) -> int:
    return finish(process, WAIT)


def sync_errno(call: Callable[[], object]) -> int:
    with pytest.raises(SyncError) as info:
        call()
    return info.value.errno


# ---- child bodies (run after fork) --------------------------------------------


def hold(memory: mmap.mmap, ready: Any, done: Any, times: int = 1) -> None:
    """Acquire `times` times, say so, and keep the mutex until `done` is set (or we are killed)."""
    mutex = Mutex(memory)
    for _ in range(times):
        mutex.acquire(timeout=WAIT)
    ready.set()
    done.wait(WAIT)
    for _ in range(times):
        mutex.release()


def try_acquire(memory: mmap.mmap) -> None:
    """Exit 0 after acquiring and releasing with a try-lock; 1 when busy."""
    mutex = Mutex(memory)
    try:
        mutex.acquire(timeout=0)
    except SyncError as error:
        sys.exit(1 if error.errno == errno.EBUSY else 2)
    mutex.release()


def increment(memory: mmap.mmap, count: int, start: Any) -> None:
    mutex = Mutex(memory)
    counter = ctypes.c_uint64.from_buffer(memory, COUNTER_OFFSET)
    start.wait(WAIT)
    for i in range(count):
        mutex.acquire(timeout=WAIT)
        try:
            value = counter.value
            if i % 64 == 0:
                time.sleep(0)  # let the other side run inside the critical section now and then
            counter.value = value + 1
        finally:
            mutex.release()


# ---- single process ---------------------------------------------------------------


def test_size_and_properties(memory: mmap.mmap) -> None:
    assert Mutex.SIZE == 64
    assert Mutex.DEFAULT_TIMEOUT == 1.0
    mutex = Mutex(memory, shared=False, recursive=False)
    assert (mutex.shared, mutex.recursive, mutex.initialized, mutex.recovered) == (False, False, False, False)
    mutex.initialize()
    assert mutex.initialized
    # Another object over the same memory sees the initialized mutex.
    assert Mutex(memory).initialized
    assert (Mutex().shared, Mutex().recursive) == (True, True)


def test_docstring_example() -> None:
    mutex = Mutex()
    mutex.initialize()
    with mutex:
        pass
    assert mutex.acquire(timeout=0) is False
    mutex.release()


def test_context_manager_releases_on_error(plain_mutex: Mutex) -> None:
    with pytest.raises(KeyError), plain_mutex as entered:
        assert entered is plain_mutex
        raise KeyError("boom")
    plain_mutex.acquire(timeout=0)  # would be EDEADLK if the with block had kept it
    plain_mutex.release()


def test_recursive_reacquire(mutex: Mutex) -> None:
    assert [mutex.acquire(timeout=t) for t in (0, 0.5, None)] == [False, False, False]
    with mutex:
        pass
    for _ in range(3):
        mutex.release()
    assert sync_errno(mutex.release) == errno.EPERM


def test_non_recursive_reacquire_is_edeadlk(plain_mutex: Mutex) -> None:
    assert plain_mutex.acquire() is False
    # With a nonzero timeout (or none), re-acquisition must report the deadlock.
    assert sync_errno(lambda: plain_mutex.acquire(timeout=0.05)) == errno.EDEADLK
    assert sync_errno(lambda: plain_mutex.acquire(timeout=None)) == errno.EDEADLK
    assert sync_errno(plain_mutex.__enter__) == errno.EDEADLK
    # A try-lock may say busy or deadlock (glibc's robust mutexes say EDEADLK).
    assert sync_errno(lambda: plain_mutex.acquire(timeout=0)) in (errno.EDEADLK, errno.EBUSY)
    # The failed attempts did not add to the hold: one release frees it.
    plain_mutex.release()
    assert sync_errno(plain_mutex.release) == errno.EPERM


def test_edeadlk_error_details(plain_mutex: Mutex) -> None:
    plain_mutex.acquire()
    with pytest.raises(SyncError) as info:
        plain_mutex.acquire(timeout=1)
    assert info.value.context == {"errno": errno.EDEADLK}
    assert "already held" in str(info.value)
    plain_mutex.release()


def test_release_unowned_is_eperm(plain_mutex: Mutex) -> None:
    assert sync_errno(plain_mutex.release) == errno.EPERM
    recursive = Mutex()
    recursive.initialize()
    assert sync_errno(recursive.release) == errno.EPERM


def test_uninitialized_is_einval(memory: mmap.mmap) -> None:
    for mutex in (Mutex(memory), Mutex(), Mutex(bytearray(Mutex.SIZE))):
        assert not mutex.initialized
        for call in (mutex.acquire, lambda m=mutex: m.acquire(timeout=0), mutex.release, mutex.destroy):
            assert sync_errno(call) == errno.EINVAL
        assert sync_errno(mutex.__enter__) == errno.EINVAL


def test_destroy(memory: mmap.mmap) -> None:
    mutex = Mutex(memory)
    mutex.initialize()
    mutex.destroy()
    assert not mutex.initialized
    assert sync_errno(mutex.acquire) == errno.EINVAL
    mutex.initialize()  # may be initialized again
    with mutex:
        pass


def test_buffer_checks() -> None:
    with pytest.raises(ValueError):
        Mutex(bytearray(Mutex.SIZE - 1))
    with pytest.raises(ValueError):
        Mutex(memoryview(bytearray(Mutex.SIZE + 8))[1 : Mutex.SIZE + 1])  # misaligned
    with pytest.raises((TypeError, BufferError)):
        Mutex(bytes(Mutex.SIZE))  # read-only
    Mutex(bytearray(Mutex.SIZE)).initialize()


def test_bad_timeouts(mutex: Mutex) -> None:
    for timeout in (-1, -0.001, float("nan")):
        with pytest.raises(ValueError):
            mutex.acquire(timeout=timeout)
    with pytest.raises(TypeError):
        mutex.acquire(timeout="1")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        mutex.acquire(1.0)  # type: ignore[misc]
    with pytest.raises(TypeError):
        mutex.acquire(wait=1.0)  # type: ignore[call-arg]


@pytest.mark.parametrize("timeout", [float("inf"), 1e300, 1e10])
def test_huge_timeout_waits(mutex: Mutex, timeout: float) -> None:
    # A timeout too long for a deadline waits like timeout=None (it used to fail with EINVAL).
    mutex.acquire()
    result: list[object] = []

    def waiter() -> None:
        try:
            result.append(mutex.acquire(timeout=timeout))
            mutex.release()
        except SyncError as error:
            result.append(error)

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    thread.join(0.2)
    assert thread.is_alive() and result == []
    mutex.release()
    thread.join(WAIT)
    assert result == [False]


def test_threads_contend(plain_mutex: Mutex) -> None:
    # Ownership is per thread: another thread of the same process is excluded too.
    plain_mutex.acquire()
    errors: list[int] = []

    def other() -> None:
        errors.append(sync_errno(lambda: plain_mutex.acquire(timeout=0)))
        errors.append(sync_errno(lambda: plain_mutex.acquire(timeout=0.05)))
        errors.append(sync_errno(plain_mutex.release))

    thread = threading.Thread(target=other)
    thread.start()
    thread.join(WAIT)
    assert errors == [errno.EBUSY, errno.ETIMEDOUT, errno.EPERM]
    plain_mutex.release()


# ---- several processes ----------------------------------------------------------


@multiprocess
@pytest.mark.parametrize("recursive", [True, False], ids=["recursive", "errorcheck"])
def test_no_lost_increments(memory: mmap.mmap, recursive: bool) -> None:
    mutex = Mutex(memory, recursive=recursive)
    mutex.initialize()
    workers, count = 3, 3000
    start = CTX.Event()
    with children() as spawn:
        processes = [spawn(increment, memory, count, start) for _ in range(workers)]
        start.set()
        increment(memory, count, start)  # the parent takes part too
        assert [join(process) for process in processes] == [0] * workers
    counter = ctypes.c_uint64.from_buffer(memory, COUNTER_OFFSET)
    assert counter.value == (workers + 1) * count
    del counter


@multiprocess
def test_timeouts_while_another_process_holds(mutex: Mutex, memory: mmap.mmap) -> None:
    ready, done = CTX.Event(), CTX.Event()
    with children() as spawn:
        holder = spawn(hold, memory, ready, done)
        assert ready.wait(WAIT)

        assert sync_errno(lambda: mutex.acquire(timeout=0)) == errno.EBUSY
        for timeout in (0.05, 0.3):
            started = time.monotonic()
            with pytest.raises(SyncError) as info:
                mutex.acquire(timeout=timeout)
            elapsed = time.monotonic() - started
            assert info.value.errno == errno.ETIMEDOUT
            assert info.value.errno_name == "ETIMEDOUT"
            assert timeout * 0.9 <= elapsed < timeout + 2.0
        # Not ours to release.
        assert sync_errno(mutex.release) == errno.EPERM

        done.set()
        assert join(holder) == 0
    assert mutex.acquire(timeout=0) is False
    mutex.release()


@multiprocess
def test_waiter_gets_the_mutex_when_released(mutex: Mutex, memory: mmap.mmap) -> None:
    ready, done = CTX.Event(), CTX.Event()
    with children() as spawn:
        holder = spawn(hold, memory, ready, done)
        assert ready.wait(WAIT)
        threading.Timer(0.1, done.set).start()
        started = time.monotonic()
        assert mutex.acquire(timeout=WAIT) is False
        assert time.monotonic() - started < WAIT
        mutex.release()
        assert join(holder) == 0


@multiprocess
def test_try_lock_from_another_process(mutex: Mutex, memory: mmap.mmap) -> None:
    with children() as spawn:
        assert join(spawn(try_acquire, memory)) == 0  # free
        mutex.acquire()
        assert join(spawn(try_acquire, memory)) == 1  # busy
        mutex.release()
        assert join(spawn(try_acquire, memory)) == 0


@multiprocess
@pytest.mark.parametrize(
    ("recursive", "times"), [(True, 1), (True, 3), (False, 1)], ids=["once", "thrice", "plain"]
)
def test_holder_killed_mutex_recovered(memory: mmap.mmap, recursive: bool, times: int) -> None:
    mutex = Mutex(memory, recursive=recursive)
    mutex.initialize()
    ready, done = CTX.Event(), CTX.Event()
    with children() as spawn:
        holder = spawn(hold, memory, ready, done, times)
        assert ready.wait(WAIT)
        assert sync_errno(lambda: mutex.acquire(timeout=0)) == errno.EBUSY
        os.kill(holder.pid, signal.SIGKILL)
        assert join(holder) == -signal.SIGKILL

        assert mutex.acquire(timeout=WAIT) is True
        assert mutex.recovered
        mutex.release()  # one release undoes the recovering acquire, whatever the dead owner's count
        assert join(spawn(try_acquire, memory)) == 0  # really free for others

        assert mutex.acquire(timeout=1) is False
        assert not mutex.recovered
        mutex.release()
        with mutex:
            assert not mutex.recovered


@multiprocess
def test_waiter_recovers_when_holder_killed(mutex: Mutex, memory: mmap.mmap) -> None:
    # The waiter is already blocked in the kernel when the owner dies.
    ready, done = CTX.Event(), CTX.Event()
    with children() as spawn:
        holder = spawn(hold, memory, ready, done)
        assert ready.wait(WAIT)
        killer = threading.Timer(0.2, os.kill, (holder.pid, signal.SIGKILL))
        killer.start()
        try:
            started = time.monotonic()
            assert mutex.acquire(timeout=WAIT) is True
            assert time.monotonic() - started < WAIT / 2
        finally:
            killer.cancel()
        mutex.release()
        assert join(holder) == -signal.SIGKILL
        assert mutex.acquire(timeout=0) is False
        mutex.release()


@multiprocess
def test_recovery_is_reported_once(mutex: Mutex, memory: mmap.mmap) -> None:
    # Of two survivors, only the first acquirer sees the recovery.
    ready, done = CTX.Event(), CTX.Event()
    results = CTX.Array("b", 2)

    def survivor(slot: int) -> None:
        results[slot] = int(Mutex(memory).acquire(timeout=WAIT))
        Mutex(memory).release()

    with children() as spawn:
        holder = spawn(hold, memory, ready, done)
        assert ready.wait(WAIT)
        os.kill(holder.pid, signal.SIGKILL)
        assert join(holder) == -signal.SIGKILL
        first = spawn(survivor, 0)
        assert join(first) == 0
        second = spawn(survivor, 1)
        assert join(second) == 0
    assert list(results) == [1, 0]
