"""runtime.buffer across processes: shared values, atomic transactions, crashes, attachers."""

import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from typing import Any

import pytest
from e2e import JOIN_TIMEOUT, finish, reaped, start

from runtime.buffer import DeviceBuffer, DeviceBufferError, Parameter

SHM_DIR = "/dev/shm"
FORK = multiprocessing.get_context("fork")
SPAWN = multiprocessing.get_context("spawn")

# Spawned children import this module, so the type is defined at module level.
Counter = DeviceBuffer.make_type(
    "mp-counter",
    [
        Parameter("count", ctypes.c_int64, 0, writeable=True),
        Parameter("label", ctypes.c_char * 16, 1, writeable=True),
        Parameter("speed", ctypes.c_float, 2, writeable=True),
    ],
    device_id=0x55,
)


class PatientCounter(Counter):
    lock_timeout = 30.0  # for waiters that must not give up while a test holds the lock


# The same type, for programs that know nothing about this test module.
COUNTER_SOURCE = """
import ctypes
from runtime.buffer import DeviceBuffer, Parameter
Counter = DeviceBuffer.make_type(
    "mp-counter",
    [
        Parameter("count", ctypes.c_int64, 0, writeable=True),
        Parameter("label", ctypes.c_char * 16, 1, writeable=True),
        Parameter("speed", ctypes.c_float, 2, writeable=True),
    ],
    device_id=0x55,
)
"""

pytestmark = pytest.mark.timeout(60)


# ---- child process bodies (module level, so that 'spawn' can import them) ----------------------------


def observe(name: str, results: Any) -> None:
    with Counter.open(name, create=False) as buffer:
        results.put((buffer.valid, buffer.get("count"), buffer.get("label"), buffer.get_write()))
        buffer.set("speed", 0.5)
        buffer.write("count", 7)


def increment(name: str, ready: Any, go: Any, times: int) -> None:
    with Counter.open(name, create=False) as buffer:
        ready.release()
        if not go.wait(JOIN_TIMEOUT):
            raise TimeoutError("never told to start")
        for _ in range(times):
            with buffer.transaction():
                buffer.set("count", buffer.get("count") + 1)


def write_pairs(name: str, times: int) -> None:
    with Counter.open(name, create=False) as buffer:
        for index in range(1, times + 1):
            with buffer.transaction():
                buffer.set("count", index)
                buffer.set("label", str(index).encode())
                buffer.set("speed", float(index))


def get_count(name: str, results: Any) -> None:
    with PatientCounter.open(name, create=False) as buffer:
        results.put(buffer.get("count"))


def die_in_transaction(name: str, depth: int, ready: Any) -> None:
    with Counter.open(name, create=False) as buffer:
        with contextlib.ExitStack() as stack:
            for _ in range(depth):
                stack.enter_context(buffer.transaction())
            buffer.set("count", 99)
            ready.set()
            time.sleep(JOIN_TIMEOUT * 2)  # killed here, holding the lock


def create_then_close(name: str, created: Any, close: Any) -> None:
    with Counter.open(name, create=True) as buffer:
        buffer.set("count", 5)
        created.set()
        if not close.wait(JOIN_TIMEOUT):
            raise TimeoutError("never told to close")


def serve_then_wait(name: str, count: int, serving: Any, stop: Any) -> None:
    """A producer: serve the buffer, report, wait (killed here, or told to stop and exit cleanly)."""
    with Counter.open(name, create=False) as buffer:
        buffer.serve()
        buffer.set("count", count)
        serving.set()
        if not stop.wait(JOIN_TIMEOUT):
            raise TimeoutError("never told to stop")


def try_to_serve(name: str, results: Any) -> None:
    with Counter.open(name, create=False) as buffer:
        try:
            buffer.serve()
        except DeviceBufferError as exc:
            results.put(("refused", exc.context.get("producer_pid")))
        else:
            results.put(("served", None))


# ---- tests ------------------------------------------------------------------------------------------


def test_another_process_sees_writes(shm_name: Callable[[str], str]) -> None:
    name = shm_name()
    results = SPAWN.Queue()
    with Counter.open(name) as buffer, reaped() as processes:
        buffer.set("count", 41)
        buffer.set("label", b"hello")
        buffer.write("speed", -0.25)
        process = start(processes, SPAWN, observe, name, results)
        assert results.get(timeout=JOIN_TIMEOUT) == (True, 41, b"hello", {"speed": -0.25})
        assert finish(process) == 0
        assert buffer.get("speed") == 0.5  # and this process sees the other's writes
        assert buffer.get_write() == {"count": 7}


def test_concurrent_increments_in_transactions_are_not_lost(shm_name: Callable[[str], str]) -> None:
    name = shm_name()
    workers, times = 4, 2000
    ready, go = FORK.Semaphore(0), FORK.Event()
    with Counter.open(name) as buffer, reaped() as processes:
        for _ in range(workers):
            start(processes, FORK, increment, name, ready, go, times)
        for _ in range(workers):
            assert ready.acquire(timeout=JOIN_TIMEOUT)
        go.set()
        assert [finish(process) for process in processes] == [0] * workers
        assert buffer.get("count") == workers * times


def test_transaction_makes_several_values_change_together(shm_name: Callable[[str], str]) -> None:
    name = shm_name()
    times = 3000
    with Counter.open(name) as buffer, reaped() as processes:
        writer = start(processes, FORK, write_pairs, name, times)
        snapshots = []
        while writer.is_alive() and len(snapshots) < 100_000:
            snapshots.append(buffer.snapshot())
        assert finish(writer) == 0
        snapshots.append(buffer.snapshot())
        for snapshot in snapshots:
            count = snapshot["count"]
            assert snapshot["label"] == (str(count).encode() if count else b"")
            assert snapshot["speed"] == float(count)
        assert snapshots[-1]["count"] == times


def test_transaction_holds_off_other_processes_until_it_ends(shm_name: Callable[[str], str]) -> None:
    name = shm_name()
    results = FORK.Queue()
    with Counter.open(name) as buffer, reaped() as processes:
        with buffer.transaction():
            with buffer.transaction():  # reentrant
                buffer.set("count", 1)
                reader = start(processes, FORK, get_count, name, results)
                time.sleep(0.2)  # the reader is now waiting for the lock
                buffer.set("count", 2)
        assert results.get(timeout=JOIN_TIMEOUT) == 2
        assert finish(reader) == 0
        # Both levels were released: another process gets the lock at once.
        start(processes, FORK, get_count, name, results)
        assert results.get(timeout=JOIN_TIMEOUT) == 2


@pytest.mark.parametrize("depth", [1, 3])
def test_process_killed_inside_a_transaction_does_not_wedge_the_others(
    shm_name: Callable[[str], str], caplog: pytest.LogCaptureFixture, depth: int
) -> None:
    name = shm_name()
    ready = FORK.Event()
    results = FORK.Queue()
    with Counter.open(name) as buffer, reaped() as processes:
        buffer.set("count", 7)
        victim = start(processes, FORK, die_in_transaction, name, depth, ready)
        assert ready.wait(JOIN_TIMEOUT)
        os.kill(victim.pid, signal.SIGKILL)
        assert finish(victim) == -signal.SIGKILL
        with caplog.at_level(logging.WARNING, logger="runtime.buffer"):
            # Within the normal lock timeout, no error, and the unfinished transaction is undone.
            assert buffer.get("count") == 7
            buffer.set("count", 100)
        records = [record for record in caplog.records if record.name == "runtime.buffer"]
        assert len(records) == 1
        assert name in records[0].getMessage()
        assert "rolled back" in records[0].getMessage()
        assert records[0].levelno >= logging.WARNING
        # The lock works normally again, for this process and others.
        with buffer.transaction():
            buffer.set("count", buffer.get("count") + 1)
        start(processes, FORK, get_count, name, results)
        assert results.get(timeout=JOIN_TIMEOUT) == 101
        assert len([record for record in caplog.records if record.name == "runtime.buffer"]) == 1


def test_a_consumer_that_created_the_buffer_exiting_leaves_it_valid(shm_name: Callable[[str], str]) -> None:
    # Student code opened the buffer first (it created it), then exits at a mode change.
    name = shm_name()
    created, close = FORK.Event(), FORK.Event()
    with reaped() as processes:
        creator = start(processes, FORK, create_then_close, name, created, close)
        assert created.wait(JOIN_TIMEOUT)
        with Counter.open(name, create=False) as producer:
            producer.serve()
            close.set()
            assert finish(creator) == 0
            assert producer.valid and producer.get("count") == 5
            producer.set("count", 6)  # the producer goes on serving
        assert os.path.exists(os.path.join(SHM_DIR, name))  # closed, not unlinked


@pytest.mark.parametrize("death", ["SIGKILL", "clean exit"])
def test_the_producer_ending_invalidates_at_once_and_a_new_one_takes_over(
    shm_name: Callable[[str], str], death: str
) -> None:
    name = shm_name()
    serving, stop = FORK.Event(), FORK.Event()
    results = FORK.Queue()
    with Counter.open(name) as buffer, reaped() as processes:
        producer = start(processes, FORK, serve_then_wait, name, 5, serving, stop)
        assert serving.wait(JOIN_TIMEOUT)
        assert buffer.valid and buffer.get("count") == 5
        assert buffer.producer_pid == producer.pid
        start(processes, FORK, try_to_serve, name, results)  # a second producer is refused
        assert results.get(timeout=JOIN_TIMEOUT) == ("refused", producer.pid)
        if death == "SIGKILL":
            os.kill(producer.pid, signal.SIGKILL)
            assert finish(producer) == -signal.SIGKILL
        else:
            stop.set()
            assert finish(producer) == 0
        # At once: no lock timeout, no daemon; every operation refuses the stale data.
        assert not buffer.valid and buffer.producer_pid is None
        with pytest.raises(DeviceBufferError, match="not valid") as caught:
            buffer.get("count")
        if death == "SIGKILL":
            assert "producer died" in caught.value.message
            assert caught.value.context["producer_pid"] == producer.pid
        with pytest.raises(DeviceBufferError):
            buffer.write("count", 1)
        # A restarted producer takes the same segment over.
        taken_over = buffer.serve()
        assert taken_over == (producer.pid if death == "SIGKILL" else None)
        assert buffer.valid and buffer.get("count") == 5


def test_a_forked_child_does_not_end_its_parents_transaction_or_role(shm_name: Callable[[str], str]) -> None:
    name = shm_name()
    with Counter.open(name) as buffer:
        buffer.serve()
        buffer.set("count", 1)
        with buffer.transaction():
            buffer.set("count", 2)
            pid = os.fork()
            if pid == 0:  # the child: leaves the inherited block and closes the inherited handle
                code = 1
                try:
                    serving = buffer.serving
                    buffer.transaction().__exit__(None, None, None)
                    buffer.close()
                    code = 0 if not serving else 2
                finally:
                    os._exit(code)
            _, status = os.waitpid(pid, 0)
            assert os.waitstatus_to_exitcode(status) == 0
            # The parent's transaction is still open and its undo copy still armed.
            header = _header(buffer)
            assert header.txn_depth == 1 and header.undo_active == 1
            buffer.set("count", 3)
        assert buffer.serving and buffer.valid  # the child's close did not stop the parent serving
        assert buffer.get("count") == 3


def _header(buffer: Any) -> Any:
    from runtime.buffer import _SegmentHeader

    with open(os.path.join(SHM_DIR, buffer.name), "rb") as segment:
        return _SegmentHeader.from_buffer_copy(segment.read(ctypes.sizeof(_SegmentHeader)))


ATTACHER = COUNTER_SOURCE + textwrap.dedent(
    """
    import os, signal, sys
    name, mode = sys.argv[1], sys.argv[2]
    buffer = Counter.attach(name, create=False)
    buffer.set("count", buffer.get("count") + 1)
    buffer.write("label", b"attacher")
    if mode == "close":
        buffer.close()
    elif mode != "exit":
        os.kill(os.getpid(), getattr(signal, mode))
    """
)


@pytest.mark.parametrize(
    ("mode", "returncode"),
    [("close", 0), ("exit", 0), ("SIGTERM", -signal.SIGTERM), ("SIGKILL", -signal.SIGKILL)],
)
def test_attachers_do_not_destroy_the_segment(
    shm_name: Callable[[str], str], mode: str, returncode: int
) -> None:
    name = shm_name()
    with Counter.open(name) as buffer:
        buffer.set("count", 10)
        for round_ in range(2):
            finished = subprocess.run(
                [sys.executable, "-c", ATTACHER, name, mode], capture_output=True, timeout=JOIN_TIMEOUT
            )
            assert finished.returncode == returncode, finished.stderr.decode()
            assert os.path.exists(os.path.join(SHM_DIR, name))
            assert buffer.valid
            assert buffer.get("count") == 11 + round_
            assert buffer.get_write() == {"label": b"attacher"}
        with Counter.open(name, create=False) as again:
            assert again.get("count") == 12


def read_count(name: str, results: Any) -> None:
    with Counter.open(name, create=False) as buffer:
        results.put(buffer.get("count"))


def test_closing_inside_a_transaction_releases_the_lock(shm_name: Callable[[str], str]) -> None:
    name = shm_name()
    results = FORK.Queue()
    with Counter.open(name) as owner, reaped() as processes:
        buffer = Counter.attach(name, create=False)
        with buffer.transaction():
            with buffer.transaction():
                buffer.set("count", 7)
                buffer.close()  # ends both levels, committing, and unlocks
        with pytest.raises(DeviceBufferError, match="closed"):
            buffer.get("count")
        start(processes, FORK, read_count, name, results)
        assert results.get(timeout=JOIN_TIMEOUT) == 7
        with owner.transaction():  # no rollback of the committed change later
            assert owner.get("count") == 7
