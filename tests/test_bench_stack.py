"""``bench/stack.py`` end to end: the whole stack for a one-second window, and nothing of it left.

The bench is what proves the stack's CPU figures, before and after a change,
so its output must keep its shape (``bench/run.py`` and the lead's scripts
read it) and it must leave no process or segment of its namespace behind.
Only the shape and the counts' sense are checked, never the figures: speed is
the bench's business, not a test's.
"""

from __future__ import annotations

import json
import os
import sys

import pytest
from e2e import bench_process

from runtime.testing.demo import namespace_processes

# slow: a demo (emulator, bridge, runner), runtime zenoh, foxglove and record, with real clients
pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

ROLES = {"bridge", "zenoh", "foxglove", "record", "runner", "student", "emulator", "demo", "bench"}


def test_one_second_of_the_stack_gives_every_figure_and_leaves_nothing() -> None:
    done = bench_process("stack.py", "--seconds", "1", "--json")
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert results["seconds"] == 1 and results["rounds"] == 1
    [figures] = results["sets"]
    assert figures["label"] == "this" and figures["checkout"]["python"] == sys.executable
    [run] = figures["rounds"]

    assert run["seconds"] > 0.5  # from one stats rewrite of the bridge to the first a second later
    assert run["devices"] == 5 and run["changes"] > 0 and run["writes"] > 0
    assert set(run["processes"]) == ROLES
    for role, process in run["processes"].items():
        assert process["cpu_percent"] >= 0, role
        assert process["us_per_change"] >= 0, role
    assert run["total"]["of"] == ["bridge", "zenoh", "foxglove", "record", "runner", "student"]
    assert run["total"]["cpu_percent"] == pytest.approx(
        sum(run["processes"][role]["cpu_percent"] for role in run["total"]["of"])
    )
    deliveries = run["deliveries"]
    assert deliveries["zenoh_samples"] > 0 and deliveries["foxglove_messages"] > 0
    assert isinstance(deliveries["record_messages"], int)
    assert run["exit_status"] == {"zenoh": 0, "foxglove": 0, "record": 0, "demo": 0}
    assert set(figures["median"]) >= ROLES | {"total", "changes_per_s"}
    # Per thread: each process of the stack has one that woke up and used CPU (its main thread at least).
    assert set(run["threads"]) == set(run["total"]["of"])
    for role, threads in run["threads"].items():
        assert threads and all(row["cpu_percent"] > 0 for row in threads), role
        assert threads == sorted(threads, key=lambda row: -row["cpu_percent"]), role
    relay = [row for row in run["threads"]["foxglove"] if row["name"] == "runtime-relay"]
    assert relay and relay[0]["wakeups_per_s"] > 0  # the WebSocket client's bytes go through it

    namespace = run["namespace"]
    assert namespace.startswith("rt-stack-")
    assert run["left_over"] == {"segments": [], "processes": []}  # the demo removed its own
    assert not [entry for entry in os.listdir("/dev/shm") if entry.startswith(namespace + "-")]
    assert not namespace_processes(namespace)
