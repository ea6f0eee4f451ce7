"""The floors under the robot stack: what its libraries and this machine cost at the demo's load alone.

``bench/stack.py`` measures the stack. What no change to the runtime can take
away is what the libraries it calls, and the wake-ups it needs, cost at the
same load. Each floor is a process of its own that runs only the library, with
payloads encoded before it starts, at the rates and the pace the stack runs at:

* ``zenoh``: a Zenoh peer on loopback (the runtime's session configuration)
  putting JSON payloads on one key per buffer (non-express publishers, as
  ``runtime zenoh`` declares them), in batches every
  :data:`runtime.watch.BATCH_WINDOW`; this process subscribes to them with a
  raw Zenoh session, as the stack bench does;
* ``foxglove``: the Foxglove SDK's WebSocket server (one Tokio worker, as
  ``runtime foxglove`` runs it) logging them on one channel per buffer, at the
  same pace; this process's WebSocket client subscribes to every channel (no
  origin gate in between: the gate is runtime code);
* ``record``: the Foxglove SDK's MCAP writer with the recorder's options
  (zstd, no message index), flushed every
  :data:`runtime.recorder.FLUSH_INTERVAL`, logging in batches every
  :data:`runtime.watch.RECORD_BATCH`;
* ``student``: a loop that sleeps out a 50 Hz period and does nothing else
  (the demo's student code runs at 50 Hz).

The bridge has no floor here: its frame and write paths are already the
compiled core's threads (see ``bench/stack.py --threads``).

The rates default to the stack's deliveries at the demo's load; with
``--with-stack`` one round of ``bench/stack.py`` runs first, its deliveries
set the rates, and both are printed side by side with what the stack spends
above its floors. Each process's CPU is read from ``/proc`` at the two ends of
the window (the nanoseconds of its threads' ``schedstat``).

    python bench/floors.py [--seconds 10] [--with-stack] [--json]

Run through ``bench/run.py`` (scenarios), or alone.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from stack import STACK, FoxgloveClient, ZenohClient, free_port, run_all, thread_times

from runtime.live import FOXGLOVE_WORKERS
from runtime.recorder import FLUSH_INTERVAL
from runtime.testing.robot import read_lines
from runtime.testing.waiting import wait_for
from runtime.watch import BATCH_WINDOW, RECORD_BATCH

SECONDS = 10.0
"""The measuring window."""
START_TIMEOUT = 30.0
"""Seconds every floor has to come up and its client to receive data."""
STUDENT_PERIOD = 0.02
"""The demo's student loop: 50 Hz."""
BUFFERS = 8
"""Keys (channels) the payloads are spread over: the demo's five devices, the runner, the field, a gamepad."""
RATES = {"zenoh": 126.0, "foxglove": 126.0, "record": 226.0}
"""Messages a second of each floor unless ``--with-stack`` measures them: the stack's deliveries at the
demo's load (Zenoh samples, Foxglove messages, records written, in ten seconds of ``bench/stack.py``)."""
PACES = {"zenoh": BATCH_WINDOW, "foxglove": BATCH_WINDOW, "record": RECORD_BATCH, "student": STUDENT_PERIOD}
"""Seconds between two wake-ups of each floor: the stack's change feeds' paces, the student's period."""
ROLES = ("zenoh", "foxglove", "record", "student")
LABELS = {
    "zenoh": "Zenoh puts, a raw subscriber",
    "foxglove": "Foxglove SDK server logs, a client on every channel",
    "record": "Foxglove SDK MCAP writer logs",
    "student": "a 50 Hz loop that only sleeps",
}


# ---- the floors, each in a process of its own ------------------------------------------------------


def payloads() -> list[bytes]:
    """JSON payloads like the stack's (a few readable values, shortest floats), one per buffer."""
    return [
        json.dumps(
            {"valid": True, "values": {f"value{k}": round(0.125 * (n + k), 3) for k in range(3)}}
        ).encode()
        for n in range(BUFFERS)
    ]


def paced(send: Callable[[int], None], rate: float, pace: float, stopping: Callable[[], bool]) -> None:
    """Wake every ``pace`` seconds, ``send`` what ``rate`` owes since the last wake-up; until ``stopping``."""
    owed, sent = 0.0, 0
    due = time.monotonic()
    while not stopping():
        due += pace
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            due = time.monotonic()  # late (a busy machine): no burst to catch up
        owed += rate * pace
        while owed >= 1.0:
            send(sent)
            sent += 1
            owed -= 1.0


def serve_floor(role: str, rate: float, pace: float, where: str) -> None:
    """Run one floor until SIGTERM; print ``ready`` (and what a client needs) once it runs."""
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    data = payloads()
    closing: list[Callable[[], Any]] = []
    try:
        if role == "zenoh":
            import zenoh

            from runtime.remote.session import make_config, open_session

            session = open_session(make_config(mode="peer", listen=[where]))
            closing.append(session.close)
            publishers = [
                session.declare_publisher(
                    f"runtime/floor/buffer/{n:#x}", encoding=zenoh.Encoding.APPLICATION_JSON, express=False
                )
                for n in range(BUFFERS)
            ]

            def send(n: int) -> None:
                publishers[n % BUFFERS].put(data[n % BUFFERS])

        elif role == "foxglove":
            os.environ.setdefault("TOKIO_WORKER_THREADS", str(FOXGLOVE_WORKERS))
            import foxglove

            context = foxglove.Context()
            server = foxglove.start_server(host="127.0.0.1", port=0, context=context)
            closing.append(server.stop)
            channels = [
                foxglove.Channel(f"/runtime/buffer/{n:#x}", message_encoding="json", context=context)
                for n in range(BUFFERS)
            ]
            where = f"ws://127.0.0.1:{server.port}"

            def send(n: int) -> None:
                channels[n % BUFFERS].log(data[n % BUFFERS])

        elif role == "record":
            import foxglove
            from foxglove.mcap import MCAPCompression, MCAPWriteOptions

            context = foxglove.Context()
            options = MCAPWriteOptions(
                compression=MCAPCompression.Zstd, emit_message_indexes=False, disable_seeking=True
            )
            writer = foxglove.open_mcap(where, context=context, writer_options=options, allow_overwrite=True)
            closing.append(writer.close)
            channels = [
                foxglove.Channel(f"/runtime/buffer/{n:#x}", message_encoding="json", context=context)
                for n in range(BUFFERS)
            ]
            flushed = [time.monotonic()]

            def send(n: int) -> None:
                channels[n % BUFFERS].log(data[n % BUFFERS], log_time=time.time_ns())
                if time.monotonic() - flushed[0] >= FLUSH_INTERVAL:
                    writer.flush()
                    flushed[0] = time.monotonic()

        else:

            def send(n: int) -> None:
                pass

        print(f"ready {where}", flush=True)
        paced(send, rate, pace, lambda: stop[0])
    finally:
        for close in reversed(closing):
            with contextlib.suppress(Exception):
                close()


# ---- measuring them ---------------------------------------------------------------------------------


def cpu_nanoseconds(pid: int) -> int:
    """CPU of a process's threads so far (``schedstat``: nanoseconds, where ``stat`` counts 10 ms ticks,
    too coarse for a loop that costs a few hundredths of a percent)."""
    return sum(nanoseconds for _, _, nanoseconds in thread_times(pid).values())


def run_floors(seconds: float, rates: dict[str, float]) -> dict[str, Any]:
    """Start every floor, let the clients receive, measure ``seconds``; stop everything; the figures."""
    directory = tempfile.mkdtemp(prefix=f"rt-floors-{os.getpid()}-")
    processes: dict[str, subprocess.Popen[bytes]] = {}
    zenoh_client: ZenohClient | None = None
    fox_client: FoxgloveClient | None = None
    result: dict[str, Any] = {"seconds": seconds, "rates": dict(rates), "paces": dict(PACES)}
    try:
        deadline = time.monotonic() + START_TIMEOUT
        places = {
            "zenoh": f"tcp/127.0.0.1:{free_port()}",
            "foxglove": "",
            "record": os.path.join(directory, "floor.mcap"),
            "student": "",
        }
        for role in ROLES:
            rate = rates.get(role, 0.0)
            argv = [sys.executable, __file__, "--role", role, "--rate", f"{rate}", "--pace", f"{PACES[role]}"]
            processes[role] = subprocess.Popen(
                [*argv, "--where", places[role]], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
            )
        ready = {}
        for role, process in processes.items():
            assert process.stdout is not None
            line = " ".join(read_lines(process.stdout, 1, deadline))
            if not line.startswith("ready"):
                raise RuntimeError(f"the {role} floor did not start: {line!r} (exit {process.poll()})")
            ready[role] = line.split(" ", 1)[1] if " " in line else ""
        zenoh_client = ZenohClient(places["zenoh"], max(0.1, deadline - time.monotonic()))
        fox_client = FoxgloveClient(ready["foxglove"])
        wait_for(
            lambda: zenoh_client.samples > 0 and fox_client.messages > 0,
            max(0.1, deadline - time.monotonic()),
            "the floors' clients to receive data",
            every=0.05,
        )
        first = {role: cpu_nanoseconds(process.pid) for role, process in processes.items()}
        counts = (zenoh_client.samples, fox_client.messages)
        started = time.monotonic()
        time.sleep(seconds)
        window = time.monotonic() - started
        last = {role: cpu_nanoseconds(process.pid) for role, process in processes.items()}
        result["seconds"] = window
        result["processes"] = {
            role: {"cpu_percent": 100 * (last[role] - first[role]) * 1e-9 / window} for role in ROLES
        }
        result["total"] = {"cpu_percent": sum(item["cpu_percent"] for item in result["processes"].values())}
        result["deliveries"] = {
            "zenoh_samples": zenoh_client.samples - counts[0],
            "foxglove_messages": fox_client.messages - counts[1],
        }
        result["load_average"] = os.getloadavg()[0]
    finally:
        for client in (fox_client, zenoh_client):
            if client is not None:
                client.close()
        statuses = {}
        for role, process in processes.items():
            process.terminate()
            try:
                statuses[role] = process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                statuses[role] = process.wait()
            if process.stdout is not None:
                process.stdout.close()
        result["exit_status"] = statuses
        with contextlib.suppress(OSError):
            for name in os.listdir(directory):
                os.unlink(os.path.join(directory, name))
            os.rmdir(directory)
    return result


def stack_rates(stack: dict[str, Any]) -> dict[str, float]:
    """The floors' rates from a stack round's deliveries (a second's worth of each)."""
    window = stack["seconds"]
    delivered = stack["deliveries"]
    rates = dict(RATES)
    for role, key in (
        ("zenoh", "zenoh_samples"),
        ("foxglove", "foxglove_messages"),
        ("record", "record_messages"),
    ):
        if delivered.get(key):
            rates[role] = delivered[key] / window
    return rates


def stack_cpu(stack: dict[str, Any]) -> dict[str, float]:
    """Each process of a stack round as % of one core, summed over its threads' ``schedstat`` (the
    measure the floors use; ``bench/stack.py``'s own figures count 10 ms ticks)."""
    return {role: sum(row["cpu_percent"] for row in rows) for role, rows in stack["threads"].items()}


def run_rounds(seconds: float, rounds: int, with_stack: bool) -> dict[str, Any]:
    """``rounds`` of the floors (each after a round of the stack, whose deliveries set its rates)."""
    results: list[dict[str, Any]] = []
    for number in range(rounds):
        rates, stack = dict(RATES), None
        if with_stack:
            print(f"bench/floors.py: round {number + 1}/{rounds}: the stack", file=sys.stderr)
            stack = run_all(seconds)["sets"][0]["rounds"][0]
            rates = stack_rates(stack)
        print(f"bench/floors.py: round {number + 1}/{rounds}: the floors", file=sys.stderr)
        floors = run_floors(seconds, rates)
        if stack is not None:
            floors["stack"] = stack_cpu(stack)
            floors["stack_total"] = sum(floors["stack"].get(role, 0.0) for role in STACK)
            floors["stack_load_average"] = stack["load_average"]
        results.append(floors)
    return {"seconds": seconds, "rounds": results}


def describe(results: dict[str, Any]) -> str:
    """A Markdown table of the medians: each floor's CPU (and the stack's process, and the difference)."""
    rounds = results["rounds"]
    with_stack = "stack" in rounds[0]
    loads = ", ".join(f"{each['load_average']:.1f}" for each in rounds)
    lines = [
        f"The floors at the stack's load: CPU as % of one core (threads' schedstat), median of "
        f"{len(rounds)} round(s) of {results['seconds']:g} s; load average {loads}",
        "",
        "| floor | rate | pace | floor CPU |"
        + (" the stack's process | above its floor |" if with_stack else ""),
        "|---|---|---|---|" + ("---|---|" if with_stack else ""),
    ]
    for role in ROLES:
        cpu = statistics.median(each["processes"][role]["cpu_percent"] for each in rounds)
        rate = statistics.median(each["rates"].get(role, 0.0) for each in rounds)
        shown = f"{rate:.0f}/s" if rate else "-"
        row = f"| {LABELS[role]} | {shown} | {PACES[role] * 1000:.0f} ms | {cpu:.2f} % |"
        if with_stack:
            mine = statistics.median(each["stack"].get(role, 0.0) for each in rounds)
            above = statistics.median(
                each["stack"].get(role, 0.0) - each["processes"][role]["cpu_percent"] for each in rounds
            )
            row += f" {mine:.2f} % | {above:+.2f} % |"
        lines.append(row)
    total = statistics.median(each["total"]["cpu_percent"] for each in rounds)
    if not with_stack:
        lines.append(f"| **all floors** | | | **{total:.2f} %** |")
        return "\n".join(lines)
    unfloored = statistics.median(
        each["stack"].get("bridge", 0.0) + each["stack"].get("runner", 0.0) for each in rounds
    )
    lines.append(f"| runtime bridge and runner (no floor: see above) | | | | {unfloored:.2f} % | |")
    whole = statistics.median(each["stack_total"] for each in rounds)
    above = statistics.median(
        sum(each["stack"].get(role, 0.0) - each["processes"][role]["cpu_percent"] for role in ROLES)
        for each in rounds
    )
    lines.append(f"| **all** | | | **{total:.2f} %** | **{whole:.2f} %** | {above:+.2f} % |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=SECONDS, help="the measuring window (default 10)")
    parser.add_argument("--rounds", type=int, default=1, help="rounds, for medians (default 1)")
    parser.add_argument(
        "--with-stack", action="store_true", help="before each round, a round of the stack; take its rates"
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--role", choices=ROLES, help=argparse.SUPPRESS)  # a floor's own process
    parser.add_argument("--rate", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--pace", type=float, default=0.02, help=argparse.SUPPRESS)
    parser.add_argument("--where", default="", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role is not None:
        serve_floor(args.role, args.rate, args.pace, args.where)
        return 0
    if args.seconds <= 0 or args.rounds < 1:
        parser.error("--seconds must be positive and --rounds at least 1")
    results = run_rounds(args.seconds, args.rounds, args.with_stack)
    print(json.dumps(results, indent=1) if args.json else describe(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
