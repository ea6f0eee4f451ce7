"""``bench/floors.py`` end to end: one second of each floor, with real clients, and nothing of it left.

Only the output's shape and the counts' sense are checked, never the figures:
speed is the bench's business, not a test's.
"""

from __future__ import annotations

import json

import pytest
from e2e import bench_process

# slow: four processes (a Zenoh peer, the Foxglove SDK's server and MCAP writer, a sleep loop) and clients
pytestmark = [pytest.mark.slow, pytest.mark.timeout(60)]

ROLES = {"zenoh", "foxglove", "record", "student"}


def test_one_second_of_the_floors_gives_every_figure_and_stops_every_floor() -> None:
    done = bench_process("floors.py", "--seconds", "1", "--json")
    assert done.returncode == 0, done.stderr
    results = json.loads(done.stdout)
    assert results["seconds"] == 1
    [run] = results["rounds"]
    assert run["seconds"] >= 1
    assert set(run["processes"]) == ROLES
    for role, process in run["processes"].items():
        assert process["cpu_percent"] > 0, role  # each woke up and worked (schedstat: nanoseconds)
    assert run["total"]["cpu_percent"] == pytest.approx(
        sum(process["cpu_percent"] for process in run["processes"].values())
    )
    assert run["rates"]["zenoh"] > 0 and run["paces"]["record"] < run["paces"]["zenoh"]
    # The clients received what the floors sent: at about their rate (a second's worth, give or take).
    assert run["deliveries"]["zenoh_samples"] > run["rates"]["zenoh"] / 2
    assert run["deliveries"]["foxglove_messages"] > run["rates"]["foxglove"] / 2
    assert run["exit_status"] == {role: 0 for role in ROLES}  # each ended on SIGTERM, cleanly


def test_the_table_names_every_floor() -> None:
    done = bench_process("floors.py", "--seconds", "0.5")
    assert done.returncode == 0, done.stderr
    assert "| **all floors** |" in done.stdout
    for label in ("Zenoh puts", "Foxglove SDK server", "MCAP writer", "50 Hz loop"):
        assert label in done.stdout


def test_bad_arguments_are_refused() -> None:
    done = bench_process("floors.py", "--rounds", "0", timeout=30)
    assert done.returncode == 2 and "--rounds" in done.stderr
