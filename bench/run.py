"""Micro-benchmarks of the library's hot paths.

Each workload is a named setup function that returns ``run(loops)``: a
function performing the operation ``loops`` times in a tight loop. The
harness times ``run`` with :func:`time.perf_counter_ns` (garbage collector
off), takes the median over several repeats and reports nanoseconds per
operation, and the ratio to the interpreter's floor: a ``dict.get`` call in
the same kind of loop.

To add a workload, write a setup function and append a :class:`Workload` to
:data:`WORKLOADS`.

    python bench/run.py            # table
    python bench/run.py --json     # machine-readable
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from runtime.messaging import Message, ParamLayout, make_dev_data
from runtime.sync import Mutex

Runner = Callable[[int], None]


@dataclass(frozen=True)
class Workload:
    name: str
    setup: Callable[[], Runner]
    """Prepare the state; return ``run(loops)``."""


# ---- workloads -----------------------------------------------------------


def floor_dict_get() -> Runner:
    table = {"speed": 1.0}
    get = table.get

    def run(loops: int) -> None:
        for _ in range(loops):
            get("speed")

    return run


def _mutex() -> Mutex:
    mutex = Mutex(bytearray(Mutex.SIZE))
    mutex.initialize()
    return mutex


def mutex_acquire_release() -> Runner:
    mutex = _mutex()
    acquire, release = mutex.acquire, mutex.release

    def run(loops: int) -> None:
        for _ in range(loops):
            acquire()
            release()

    return run


def mutex_with() -> Runner:
    mutex = _mutex()

    def run(loops: int) -> None:
        for _ in range(loops):
            with mutex:
                pass

    return run


class Floats16(ctypes.Structure):
    _fields_ = [(f"p{i}", ctypes.c_float) for i in range(16)]


FLOATS16_LAYOUT = ParamLayout([(getattr(Floats16, f"p{i}").offset, 4) for i in range(16)])


def _floats16() -> Floats16:
    return Floats16(*(i * 0.25 - 1.5 for i in range(16)))


def dev_data_encode() -> Runner:
    encode = make_dev_data(0xFFFF, FLOATS16_LAYOUT, _floats16()).encode

    def run(loops: int) -> None:
        for _ in range(loops):
            encode()

    return run


def dev_data_decode() -> Runner:
    frame = make_dev_data(0xFFFF, FLOATS16_LAYOUT, _floats16()).encode()
    decode = Message.decode

    def run(loops: int) -> None:
        for _ in range(loops):
            decode(frame)

    return run


def dev_data_make() -> Runner:
    memory = _floats16()

    def run(loops: int) -> None:
        for _ in range(loops):
            make_dev_data(0xFFFF, FLOATS16_LAYOUT, memory)

    return run


def dev_data_read() -> Runner:
    msg = make_dev_data(0xFFFF, FLOATS16_LAYOUT, _floats16())
    read = msg.read_dev_data
    memory = Floats16()

    def run(loops: int) -> None:
        for _ in range(loops):
            read(FLOATS16_LAYOUT, memory)

    return run


FLOOR = Workload("dict.get (floor)", floor_dict_get)
WORKLOADS: list[Workload] = [
    FLOOR,
    Workload("mutex acquire()+release()", mutex_acquire_release),
    Workload("with mutex:", mutex_with),
    Workload("DEV_DATA 16 floats: encode()", dev_data_encode),
    Workload("DEV_DATA 16 floats: Message.decode()", dev_data_decode),
    Workload("DEV_DATA 16 floats: make_dev_data()", dev_data_make),
    Workload("DEV_DATA 16 floats: read_dev_data()", dev_data_read),
]


# ---- harness ---------------------------------------------------------------


def time_once(run: Runner, loops: int) -> int:
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = time.perf_counter_ns()
        run(loops)
        return time.perf_counter_ns() - start
    finally:
        if gc_was_enabled:
            gc.enable()


def calibrate(run: Runner, target_ns: int) -> int:
    """Loops needed for one repeat to last about ``target_ns``."""
    loops = 1000
    while True:
        elapsed = time_once(run, loops)
        if elapsed >= target_ns // 4 or loops >= 1 << 26:
            return max(1000, loops * target_ns // max(elapsed, 1))
        loops *= 4


def measure(workload: Workload, repeats: int, loops: int | None, target_ns: int) -> dict[str, object]:
    run = workload.setup()
    run(1000)  # warm up
    if loops is None:
        loops = calibrate(run, target_ns)
    samples = [time_once(run, loops) / loops for _ in range(repeats)]
    return {
        "name": workload.name,
        "ns_per_op": statistics.median(samples),
        "min_ns": min(samples),
        "max_ns": max(samples),
        "loops": loops,
        "repeats": repeats,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per workload (median reported)")
    parser.add_argument("--loops", type=int, default=None, help="operations per repeat (default: calibrated)")
    parser.add_argument("--target-ms", type=float, default=50.0, help="calibrated duration of one repeat")
    parser.add_argument("-k", dest="match", default="", help="only workloads whose name contains this")
    args = parser.parse_args(argv)

    selected = [w for w in WORKLOADS if w is FLOOR or args.match.lower() in w.name.lower()]
    target_ns = int(args.target_ms * 1e6)
    results = [measure(w, args.repeats, args.loops, target_ns) for w in selected]
    floor = float(results[0]["ns_per_op"])  # type: ignore[arg-type]
    for result in results:
        result["ratio"] = float(result["ns_per_op"]) / floor  # type: ignore[arg-type]

    if args.json:
        info = {
            "python": sys.version.split()[0],
            "implementation": platform.python_implementation(),
            "machine": platform.machine(),
            "floor": FLOOR.name,
            "results": results,
        }
        print(json.dumps(info, indent=2))
        return 0

    width = max(len(str(r["name"])) for r in results)
    print(f"{'workload':<{width}}  {'ns/op':>9}  {'x floor':>8}")
    print(f"{'-' * width}  {'-' * 9}  {'-' * 8}")
    for r in results:
        print(f"{r['name']:<{width}}  {r['ns_per_op']:>9.1f}  {r['ratio']:>8.2f}")
    print(f"\nmedian of {args.repeats} repeats; Python {sys.version.split()[0]} on {platform.machine()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
