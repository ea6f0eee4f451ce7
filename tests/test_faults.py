"""runtime.buffer under a kill storm: processes SIGKILLed at random, mid-transaction or not.

Worker processes run random transactions on a few shared buffers while a
supervisor (the test) SIGKILLs random workers at random times and starts new
ones. Every transaction increments a pair of counters ``a`` and ``b`` and sets
``tag`` to ``a`` as text; the buffer's rollback must make that all or nothing,
so ``a == b`` always, not even off by one. Afterwards every buffer works for
this process and a fresh one, and the set of segments is what it was.

The storm lasts ``$RUNTIME_STRESS_SECONDS`` seconds (default 5, the CI form);
``RUNTIME_STRESS_SECONDS=30 pytest -s tests/test_faults.py`` runs it longer and
prints the figures (``$RUNTIME_STRESS_SEED`` replays the supervisor's choices).

Workers are forked (fast) and leave with ``os._exit`` so nothing of pytest runs
in them; the final check runs in a spawned process, which inherited nothing.
Workers use no multiprocessing locks or queues (a SIGKILL could leave one held):
they report through a control buffer and their exit code.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import multiprocessing
import os
import random
import signal
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from e2e import JOIN_TIMEOUT, STRESS_SECONDS, namespace_segments, reaped, start

from runtime.buffer import Buffer, Parameter

WORKERS = 8
PAIRS = 3
FORK = multiprocessing.get_context("fork")  # the workers: cheap to start, hundreds of them
SPAWN = multiprocessing.get_context("spawn")  # the final check: a process that inherited nothing

EXIT_OK, EXIT_ERROR, EXIT_VIOLATION = 0, 2, 3

# slow: many processes, kill storms, thousands of cycles
pytestmark = [pytest.mark.slow, pytest.mark.timeout(90 + 2 * STRESS_SECONDS)]


class Patient(Buffer):
    lock_timeout = 10.0  # eight processes on two cores: never time out on mere contention


Pair = Patient.make_type(
    "storm-pair",
    [
        Parameter("a", ctypes.c_int64, 0, writeable=True),
        Parameter("b", ctypes.c_int64, 1, writeable=True),
        Parameter("tag", ctypes.c_char * 16, 2, writeable=True),
        Parameter("noise", ctypes.c_int32, 3, writeable=True),
    ],
)

Control = Patient.make_type(
    "storm-control",
    [
        Parameter("rollbacks", ctypes.c_int64, 0),
        Parameter("recoveries", ctypes.c_int64, 1),
        Parameter("violations", ctypes.c_int64, 2),
    ],
)


def consistent(snapshot: dict[str, Any]) -> bool:
    """The invariant of a pair buffer: both counters equal, and the tag names their value."""
    a = snapshot["a"]
    return bool(a == snapshot["b"] and snapshot["tag"] == (str(a).encode() if a else b""))


def bump(control: Buffer, param: str) -> None:
    with control.transaction():
        control.set(param, control.get(param) + 1)


class RecoveryCounter(logging.Handler):
    """Counts the lock recoveries 'runtime.buffer' logs (and adds them up in the control buffer)."""

    def __init__(self, control: Buffer | None = None) -> None:
        super().__init__(logging.WARNING)
        self.control = control
        self.rolled_back = 0
        self.recovered = 0

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if "recovered" not in text or (self.control is not None and self.control.name in text):
            return
        param = "rollbacks" if "rolled back" in text else "recoveries"
        if param == "rollbacks":
            self.rolled_back += 1
        else:
            self.recovered += 1
        if self.control is not None:
            # We hold the recovered buffer's lock; nobody holding the control lock waits for another.
            bump(self.control, param)


# ---- the worker (a forked child) -------------------------------------------------------------------


def pause(rng: random.Random) -> None:
    """Nothing, some busy work or a tiny sleep: kills should often land inside a transaction."""
    roll = rng.random()
    if roll < 0.4:
        return
    if roll < 0.8:
        total = 0
        for index in range(rng.randrange(3000)):
            total += index
        return
    time.sleep(rng.uniform(0.0002, 0.002))


def increment_pair(buffer: Buffer, rng: random.Random) -> None:
    with buffer.transaction():
        a = buffer.get("a") + 1
        buffer.set("a", a)
        pause(rng)
        if rng.random() < 0.3:
            with buffer.transaction():  # nested: a kill after it commits still undoes everything
                buffer.set("b", buffer.get("b") + 1)
            pause(rng)
        else:
            buffer.set("b", buffer.get("b") + 1)
        buffer.set("tag", str(a).encode())


def storm(names: list[str], control_name: str, deadline: float, seed: int) -> int:
    rng = random.Random(seed)
    control = Control.attach(control_name, create=False)
    logger = logging.getLogger("runtime.buffer")
    logger.handlers = [RecoveryCounter(control)]
    logger.propagate = False
    logger.setLevel(logging.WARNING)
    buffers = [Pair.attach(name, create=rng.random() < 0.5) for name in names]
    code = EXIT_OK
    while time.monotonic() < deadline:
        index = rng.randrange(len(buffers))
        buffer = buffers[index]
        roll = rng.random()
        if roll < 0.7:
            increment_pair(buffer, rng)
        elif roll < 0.85:
            if not consistent(buffer.snapshot()):
                code = EXIT_VIOLATION
                bump(control, "violations")
        elif roll < 0.95:
            buffer.write("noise", rng.randrange(1 << 20))
        else:  # reopen, sometimes with create=True: an existing segment is attached, never reset
            buffer.close()
            buffers[index] = Pair.attach(names[index], create=rng.random() < 0.5)
    return code


def storm_worker(names: list[str], control_name: str, deadline: float, seed: int) -> None:
    code = EXIT_ERROR
    try:
        code = storm(names, control_name, deadline, seed)
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


def one_more_transaction(names: list[str]) -> None:
    code = EXIT_ERROR
    try:
        for name in names:
            with Pair.open(name, create=False) as buffer:
                increment_pair(buffer, random.Random(0))
        code = EXIT_OK
    except BaseException:
        traceback.print_exc()
    finally:
        os._exit(code)


# ---- the supervisor (the test) ---------------------------------------------------------------------


@contextlib.contextmanager
def counting_recoveries() -> Iterator[RecoveryCounter]:
    """Count this process's own recoveries (the supervisor takes the locks too)."""
    logger = logging.getLogger("runtime.buffer")
    counter = RecoveryCounter()
    level = logger.level
    logger.addHandler(counter)
    logger.setLevel(logging.WARNING)
    try:
        yield counter
    finally:
        logger.removeHandler(counter)
        logger.setLevel(level)


def test_kill_storm_keeps_transactions_atomic_and_buffers_usable(shm_name: Callable[[str], str]) -> None:
    seed = int(os.environ.get("RUNTIME_STRESS_SEED") or random.randrange(1 << 32))
    rng = random.Random(seed)
    names = [shm_name("pair") for _ in range(PAIRS)]
    control_name = shm_name("control")
    killed = spawned = 0
    failures: list[str] = []
    with contextlib.ExitStack() as stack:
        pairs = [stack.enter_context(Pair.open(name)) for name in names]
        control = stack.enter_context(Control.open(control_name))
        segments = namespace_segments()
        assert set(names) | {control_name} <= segments
        processes = stack.enter_context(reaped())
        counter = stack.enter_context(counting_recoveries())
        seen = [0] * PAIRS

        def check_pairs(when: str) -> None:
            for index, buffer in enumerate(pairs):
                snapshot = buffer.snapshot()
                if not consistent(snapshot) or snapshot["a"] < seen[index]:
                    failures.append(f"{when}: {buffer.name} {snapshot} (a was {seen[index]})")
                seen[index] = max(seen[index], snapshot["a"])

        started = time.monotonic()
        deadline = started + STRESS_SECONDS

        def spawn() -> Any:
            nonlocal spawned
            process = start(processes, FORK, storm_worker, names, control_name, deadline, rng.getrandbits(32))
            spawned += 1
            return process

        alive = [spawn() for _ in range(WORKERS)]
        while time.monotonic() < deadline - 0.05:
            time.sleep(rng.uniform(0.0, 0.03))
            victims = rng.sample(alive, rng.choice([1, 1, 1, 2, 3]))
            for victim in victims:
                with contextlib.suppress(ProcessLookupError):  # it ended by itself: reported below
                    os.kill(victim.pid, signal.SIGKILL)
            for victim in victims:
                victim.join(JOIN_TIMEOUT)
                alive.remove(victim)
                processes.remove(victim)
                if victim.exitcode != -signal.SIGKILL:
                    failures.append(f"worker {victim.pid} exited by itself with {victim.exitcode}")
                killed += 1
                alive.append(spawn())
            check_pairs("during the storm")
        for process in alive:
            process.join(max(deadline - time.monotonic(), 0.0) + JOIN_TIMEOUT)
            if process.exitcode != EXIT_OK:
                failures.append(f"worker {process.pid} ended with {process.exitcode}")
        elapsed = time.monotonic() - started

        # Every buffer works: here, and in a fresh process, within the normal lock timeout.
        check_pairs("after the storm")
        committed = sum(seen)
        fresh = start(processes, SPAWN, one_more_transaction, names)
        fresh.join(JOIN_TIMEOUT)
        for index, buffer in enumerate(pairs):
            with buffer.transaction():
                snapshot = buffer.snapshot()
            if not consistent(snapshot) or snapshot["a"] != seen[index] + 1:
                failures.append(f"after one more transaction: {buffer.name} {snapshot} (a was {seen[index]})")
        outcome = control.snapshot()
        rollbacks = outcome["rollbacks"] + counter.rolled_back
        recoveries = outcome["recoveries"] + counter.recovered
        summary = (
            f"kill storm ({seed=}): {elapsed:.1f} s, {WORKERS} workers, {spawned} started, {killed} killed "
            f"(SIGKILL), {committed} transactions committed on {PAIRS} buffers {seen}, {rollbacks} "
            f"unfinished transactions rolled back, {recoveries} other lock recoveries, "
            f"{outcome['violations']} invariant violations seen by workers"
        )
        print(summary)
        assert fresh.exitcode == EXIT_OK, f"a fresh process could not use the buffers; {summary}"
        assert not failures, f"{len(failures)} failures, the first: {failures[:3]}; {summary}"
        assert outcome["violations"] == 0, summary
        assert killed >= STRESS_SECONDS * 5, f"too few kills for a storm; {summary}"
        assert committed > killed, f"the workers made no progress; {summary}"
        assert rollbacks > 0, f"no kill landed inside a transaction; {summary}"
        assert namespace_segments() == segments, f"segments leaked or vanished; {summary}"
    # Closed by their creator: still there until unlinked, and then gone.
    for name in [*names, control_name]:
        Pair.unlink(name)
    assert not namespace_segments() & ({*names, control_name})
