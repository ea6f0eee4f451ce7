"""Lock-free reads: get, snapshot and metadata never take the mutex, and never see half a write.

A sequence counter (seqlock) in the segment is odd while the lock's owner
changes the structure; readers copy and retry, and fall back to the lock (and
its recovery) when a writer stays too long or died in the middle.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
from e2e import JOIN_TIMEOUT, finish, reaped, start

from runtime.buffer import Buffer, Parameter

pytestmark = pytest.mark.timeout(60)
FORK = multiprocessing.get_context("fork")

Pair = Buffer.make_type(
    "lockfree-pair",
    [
        Parameter("a", ctypes.c_int64, 0),
        Parameter("b", ctypes.c_int64, 1),
        Parameter("blob", ctypes.c_uint8 * 200, 2),
    ],
)


def write_pairs(name: str, seconds: float, go: Any) -> None:
    with Pair.open(name, create=False) as buffer:
        go.wait(JOIN_TIMEOUT)
        deadline = time.monotonic() + seconds
        k = 0
        while time.monotonic() < deadline:
            k += 1
            with buffer.transaction():  # three changes that readers must see together or not at all
                buffer.set("a", k)
                buffer.set("blob", bytes([k % 256]) * 200)
                buffer.set("b", -k)


def read_pairs(name: str, seconds: float, go: Any, results: Any) -> None:
    with Pair.open(name, create=False) as buffer:
        go.wait(JOIN_TIMEOUT)
        deadline = time.monotonic() + seconds
        reads = torn = 0
        while time.monotonic() < deadline:
            for _ in range(100):
                values = buffer.snapshot()
                a, b, blob = values["a"], values["b"], bytes(values["blob"])
                if b != -a or blob != bytes([a % 256]) * 200:
                    torn += 1
                reads += 1
        results.put((reads, torn))


@pytest.mark.slow  # 1.5 s of writing and reading, by design
def test_readers_in_other_processes_never_see_half_a_transaction(shm_name: Callable[[str], str]) -> None:
    name = shm_name()
    go = FORK.Event()
    results = FORK.Queue()
    with Pair.open(name) as buffer, reaped() as processes:
        buffer.set("blob", bytes(200))
        writer = start(processes, FORK, write_pairs, name, 1.5, go)
        readers = [start(processes, FORK, read_pairs, name, 1.5, go, results) for _ in range(3)]
        go.set()
        outcomes = [results.get(timeout=JOIN_TIMEOUT) for _ in readers]
        assert finish(writer) == 0
        assert all(torn == 0 for _, torn in outcomes), outcomes
        assert all(reads > 100 for reads, _ in outcomes), outcomes
        assert buffer.get("a") > 0 and buffer.get("b") == -buffer.get("a")


def die_mid_write(name: str, ready: Any) -> None:
    with Pair.open(name, create=False) as buffer:
        with buffer.transaction():
            buffer.set("a", 99)  # b not yet: killed here, the sequence counter odd
            ready.set()
            time.sleep(JOIN_TIMEOUT * 2)


def test_a_writer_killed_mid_write_leaves_readers_neither_spinning_nor_torn(
    shm_name: Callable[[str], str],
) -> None:
    name = shm_name()
    ready = FORK.Event()
    with Pair.open(name) as buffer, reaped() as processes:
        buffer.set("a", 1)
        buffer.set("b", -1)
        victim = start(processes, FORK, die_mid_write, name, ready)
        assert ready.wait(JOIN_TIMEOUT)
        os.kill(victim.pid, signal.SIGKILL)
        assert finish(victim) == -signal.SIGKILL
        started = time.monotonic()
        assert (buffer.get("a"), buffer.get("b")) == (1, -1)  # rolled back by the reader's recovery
        assert time.monotonic() - started < buffer.lock_timeout + 1
        assert buffer.snapshot()["a"] == 1


def test_reads_inside_ones_own_transaction_see_its_changes(shm_name: Callable[[str], str]) -> None:
    with Pair.open(shm_name()) as buffer:
        with buffer.transaction():
            buffer.set("a", 5)
            assert buffer.get("a") == 5 and buffer.snapshot()["a"] == 5
        assert buffer.get("a") == 5
