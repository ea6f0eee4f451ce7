"""Micro-benchmarks of the library's hot paths.

Each workload is a named setup function that returns ``run(loops)``: a
function performing the operation ``loops`` times in a tight loop. The
harness times ``run`` with :func:`time.perf_counter_ns` (garbage collector
off) and reports nanoseconds per operation and the ratio to the interpreter's
floor: a ``dict.get`` call in the same kind of loop. Each round times the
floor, the workload and the floor again back to back; the round's ratio is the
workload over the mean of its two floors, and the median over rounds is
reported, which keeps the ratios steady on a shared, noisy machine.

To add a workload, write a setup function and append a :class:`Workload` to
:data:`WORKLOADS`.

    python bench/run.py            # table
    python bench/run.py --json     # machine-readable
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import gc
import json
import multiprocessing
import os
import platform
import statistics
import struct
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing import shared_memory
from typing import Any

from runtime.buffer import Buffer, DeviceBuffer, Parameter
from runtime.messaging import Message, ParamLayout, make_dev_data
from runtime.store import BufferStore
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


# ---- buffers -------------------------------------------------------------------

BenchDevice: type[DeviceBuffer] = DeviceBuffer.make_type(
    "bench-device",
    [Parameter(f"p{i}", ctypes.c_float, i, lower=-1e9, upper=1e9, writeable=True) for i in range(16)],
    device_id=0xBE,
)
_OPEN: list[Buffer] = []


def _segment(tag: str) -> str:
    return f"{BufferStore.namespace()}-bench-{os.getpid()}-{tag}"


def _shared_device() -> DeviceBuffer:
    """A shared-memory device buffer that lives until the benchmark exits."""
    name = _segment(f"dev{len(_OPEN)}")
    buffer = BenchDevice.attach(name)
    BenchDevice.unlink(name)  # the mapping stays; nothing is left behind
    _OPEN.append(buffer)
    return buffer


def buffer_get() -> Runner:
    get = _shared_device().get

    def run(loops: int) -> None:
        for _ in range(loops):
            get("p3")

    return run


def _served_device() -> DeviceBuffer:
    """A shared device buffer whose validity a producer owns: reads also check the producer is alive."""
    buffer = _shared_device()
    buffer.serve()
    return buffer


def buffer_get_served() -> Runner:
    get = _served_device().get

    def run(loops: int) -> None:
        for _ in range(loops):
            get("p3")

    return run


def buffer_set_served() -> Runner:
    set_ = _served_device().set

    def run(loops: int) -> None:
        for _ in range(loops):
            set_("p3", 0.5)

    return run


def buffer_set() -> Runner:
    set_ = _shared_device().set

    def run(loops: int) -> None:
        for _ in range(loops):
            set_("p3", 0.5)

    return run


def buffer_write() -> Runner:
    write = _shared_device().write

    def run(loops: int) -> None:
        for _ in range(loops):
            write("p3", 0.5)

    return run


BenchMotor: type[DeviceBuffer] = DeviceBuffer.make_type(
    "bench-motor",
    [
        Parameter("duty", ctypes.c_float, 0, lower=-1, upper=1, writeable=True, safe=0.0),
        Parameter("gain", ctypes.c_float, 1, lower=-1e9, upper=1e9, writeable=True),
    ],
    device_id=0xBF,
)


def _shared_motor() -> DeviceBuffer:
    """A shared-memory buffer of a type with an actuator (a parameter with a safe value)."""
    name = _segment(f"motor{len(_OPEN)}")
    buffer = BenchMotor.attach(name)
    BenchMotor.unlink(name)
    _OPEN.append(buffer)
    return buffer


def buffer_write_command() -> Runner:
    """write() of an actuator: the same, plus recording this process as its commander."""
    write = _shared_motor().write

    def run(loops: int) -> None:
        for _ in range(loops):
            write("duty", 0.5)

    return run


def buffer_write_configuration() -> Runner:
    """write() of a parameter without a safe value, in a type that has actuators."""
    write = _shared_motor().write

    def run(loops: int) -> None:
        for _ in range(loops):
            write("gain", 0.5)

    return run


def device_write_command() -> Runner:
    """Device.write() of an actuator: what student code calls."""
    from runtime.device import Device

    write = Device(_shared_motor()).write

    def run(loops: int) -> None:
        for _ in range(loops):
            write("duty", 0.5)

    return run


def buffer_update() -> Runner:
    buffer = _shared_device()
    update = buffer.update
    message = make_dev_data(0xFFFF, FLOATS16_LAYOUT, _floats16())

    def run(loops: int) -> None:
        for _ in range(loops):
            update(message)

    return run


def buffer_emit_dev_rw() -> Runner:
    buffer = _shared_device()
    write, emit = buffer.write, buffer.emit_dev_rw

    def run(loops: int) -> None:
        for _ in range(loops):
            write("p0", 0.1)
            write("p5", 0.2)
            write("p9", 0.3)
            write("p15", 0.4)
            list(emit())

    return run


def buffer_snapshot() -> Runner:
    snapshot = _shared_device().snapshot

    def run(loops: int) -> None:
        for _ in range(loops):
            snapshot()

    return run


def buffer_open_close() -> Runner:
    name = _segment("openclose")
    keep = BenchDevice.attach(name)  # the segment exists: measure attach + close
    _OPEN.append(keep)
    BenchDevice.unlink(name)
    name = _segment("openclose2")
    keeper = BenchDevice.attach(name)
    _OPEN.append(keeper)
    atexit.register(BenchDevice.unlink, name)  # opened by name in the loop: unlinked only at exit
    open_ = BenchDevice.open

    def run(loops: int) -> None:
        for _ in range(loops):
            with open_(name, create=False):
                pass

    return run


class _StdlibPeer:
    """The hand-rolled way: SharedMemory + struct + multiprocessing.Lock."""

    def __init__(self) -> None:
        self.memory = shared_memory.SharedMemory(create=True, size=64)
        self.memory.unlink()  # keep the mapping only
        self.lock = multiprocessing.Lock()
        self.float = struct.Struct("<f")


_PEERS: list[_StdlibPeer] = []


def stdlib_get() -> Runner:
    peer = _StdlibPeer()
    _PEERS.append(peer)
    lock, unpack, memory = peer.lock, peer.float.unpack_from, peer.memory.buf

    def run(loops: int) -> None:
        for _ in range(loops):
            with lock:
                unpack(memory, 12)[0]

    return run


def stdlib_set() -> Runner:
    peer = _StdlibPeer()
    _PEERS.append(peer)
    lock, pack, memory = peer.lock, peer.float.pack_into, peer.memory.buf

    def run(loops: int) -> None:
        for _ in range(loops):
            with lock:
                pack(memory, 12, 0.5)

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
    Workload("stdlib peer: lock + struct get", stdlib_get),
    Workload("stdlib peer: lock + struct set", stdlib_set),
    Workload("buffer get() one float", buffer_get),
    Workload("buffer set() one float", buffer_set),
    Workload("buffer get() one float, served", buffer_get_served),
    Workload("buffer set() one float, served", buffer_set_served),
    Workload("buffer write() one float", buffer_write),
    Workload("buffer write() one float, no safe value", buffer_write_configuration),
    Workload("buffer write() one float, a command", buffer_write_command),
    Workload("Device.write() one float, a command", device_write_command),
    Workload("buffer update() 16-float DEV_DATA", buffer_update),
    Workload("4 writes + list(emit_dev_rw())", buffer_emit_dev_rw),
    Workload("buffer snapshot() 16 floats", buffer_snapshot),
    Workload("Buffer.open()+close() existing", buffer_open_close),
]


# ---- scenarios: several processes, many buffers ------------------------------


def _contend(name: str, op: str, seconds: float, start: Any, results: Any) -> None:
    buffer = BenchDevice.attach(name, create=False)
    call = buffer.set if op == "set" else buffer.get
    errors = done = 0
    start.wait()
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        try:
            if op == "set":
                for value in range(100):
                    call("p3", float(value))
            else:
                for _ in range(100):
                    call("p3")
        except Exception:
            errors += 1
        done += 100
    results.put((op, done, errors))
    buffer.close()


def contention(seconds: float = 1.0) -> dict[str, Any]:
    """Two processes, one set() and one get() on one buffer as fast as they can."""
    name = _segment("contend")
    owner = BenchDevice.attach(name)
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    workers = [
        context.Process(target=_contend, args=(name, op, seconds, start, results)) for op in ("set", "get")
    ]
    try:
        for worker in workers:
            worker.start()
        time.sleep(0.5)  # let both attach before the clock starts
        start.set()
        rates = {}
        for _ in workers:
            op, done, errors = results.get(timeout=seconds + 30)
            rates[op] = {"ops_per_s": done / seconds, "errors": errors}
        last = owner.get("p3")
        return {"seconds": seconds, "rates": rates, "last_value_set": last}
    finally:
        for worker in workers:
            worker.join(timeout=5)
            if worker.is_alive():
                worker.kill()
        owner.close()
        BenchDevice.unlink(name)


def many_buffers(count: int = 1000) -> dict[str, Any]:
    """Open ``count`` buffers through one BufferStore; time and memory per buffer."""
    catalog = {"bench-device": BenchDevice}
    store = BufferStore(catalog)
    previous = os.environ.get("RUNTIME_BUFFER_NAMESPACE")
    os.environ["RUNTIME_BUFFER_NAMESPACE"] = f"rt-bench-{os.getpid()}"
    try:
        start = time.perf_counter()
        for serial in range(count):
            store.get_or_open(0xBE << 72 | serial)
        elapsed = time.perf_counter() - start
        page = mmap_page = os.sysconf("SC_PAGE_SIZE")
        sizes = {os.stat(f"/dev/shm/{BufferStore.segment_name('bench-device', 0xBE << 72 | 0)}").st_size}
        segment = BenchDevice.segment_size()
        store.close()
        return {
            "buffers": count,
            "us_per_open": elapsed / count * 1e6,
            "segment_bytes": sizes.pop(),
            "header_mutex_structure": segment,
            "pages": -(-segment // page),
            "page_size": mmap_page,
        }
    finally:
        store.close()
        store.unlink_all()
        if previous is None:
            os.environ.pop("RUNTIME_BUFFER_NAMESPACE", None)
        else:
            os.environ["RUNTIME_BUFFER_NAMESPACE"] = previous


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


def measure(
    workload: Workload, floor: Runner, floor_loops: int, repeats: int, loops: int | None, target_ns: int
) -> dict[str, object]:
    """Time ``workload`` between two floor timings in each of ``repeats`` rounds.

    The ratio of a round is the workload's time per operation over the mean of the floor's
    just before and just after it, so that a slow spell of a shared machine (another process,
    a frequency change) weighs on both sides of the ratio; the median over rounds is reported.
    """
    run = workload.setup()
    run(1000)  # warm up
    if loops is None:
        loops = calibrate(run, target_ns)
    samples: list[float] = []
    ratios: list[float] = []
    floors: list[float] = []
    for _ in range(repeats):
        before = time_once(floor, floor_loops) / floor_loops
        sample = time_once(run, loops) / loops
        after = time_once(floor, floor_loops) / floor_loops
        samples.append(sample)
        floors += (before, after)
        ratios.append(sample / ((before + after) / 2))
    return {
        "name": workload.name,
        "ns_per_op": statistics.median(samples),
        "min_ns": min(samples),
        "max_ns": max(samples),
        "ratio": statistics.median(ratios),
        "min_ratio": min(ratios),
        "max_ratio": max(ratios),
        "floor_ns": statistics.median(floors),
        "loops": loops,
        "repeats": repeats,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--repeats", type=int, default=7, help="rounds per workload (median reported)")
    parser.add_argument("--loops", type=int, default=None, help="operations per repeat (default: calibrated)")
    parser.add_argument("--target-ms", type=float, default=50.0, help="calibrated duration of one repeat")
    parser.add_argument("-k", dest="match", default="", help="only workloads whose name contains this")
    parser.add_argument(
        "--scenarios",
        choices=("auto", "yes", "no"),
        default="auto",
        help="also run the multi-process and 1000-buffer scenarios (auto: unless -k is given)",
    )
    args = parser.parse_args(argv)
    run_scenarios = args.scenarios == "yes" or (args.scenarios == "auto" and not args.match)

    selected = [w for w in WORKLOADS if w is FLOOR or args.match.lower() in w.name.lower()]
    target_ns = int(args.target_ms * 1e6)
    floor = FLOOR.setup()
    floor(1000)
    floor_loops = args.loops if args.loops is not None else calibrate(floor, target_ns)
    results = [measure(w, floor, floor_loops, args.repeats, args.loops, target_ns) for w in selected]

    scenarios = {}
    if run_scenarios:
        import bridge  # bench/bridge.py: the bridge under device traffic (ptys, a fleet of fake devices)
        import floors  # bench/floors.py: the libraries and wake-ups under the stack, alone at its load
        import notify  # bench/notify.py: change notification (processes, a pty and the bridge)
        import runner  # bench/runner.py: runtime run's period, mode change to safe motors, its CPU
        import safety  # bench/safety.py: commander death and disable to the device, through the bridge
        import stack  # bench/stack.py: the whole robot stack at the demo's load, CPU per process

        scenarios = {
            "contention": contention(),
            "many_buffers": many_buffers(),
            "notify": notify.run_all(),
            "bridge": bridge.run_all(),
            "safety": safety.run_all(),
            "runner": runner.run_all(),
            "stack": stack.run_all(),
            "floors": floors.run_rounds(floors.SECONDS, 1, with_stack=False),
        }

    if args.json:
        info = {
            "python": sys.version.split()[0],
            "implementation": platform.python_implementation(),
            "machine": platform.machine(),
            "floor": FLOOR.name,
            "results": results,
            "scenarios": scenarios,
        }
        print(json.dumps(info, indent=2))
        return 0

    width = max(len(str(r["name"])) for r in results)
    print(f"{'workload':<{width}}  {'ns/op':>9}  {'x floor':>8}  {'range':>11}")
    print(f"{'-' * width}  {'-' * 9}  {'-' * 8}  {'-' * 11}")
    for r in results:
        spread = f"{r['min_ratio']:.2f}-{r['max_ratio']:.2f}"
        print(f"{r['name']:<{width}}  {r['ns_per_op']:>9.1f}  {r['ratio']:>8.2f}  {spread:>11}")
    print(
        f"\nmedian of {args.repeats} rounds, each the workload between two floor timings "
        f"(x floor: its time over their mean; range: the rounds' lowest and highest); "
        f"Python {sys.version.split()[0]} on {platform.machine()}"
    )
    if scenarios:
        rates = scenarios["contention"]["rates"]
        print("\ntwo processes on one buffer for 1 s:")
        for op, rate in rates.items():
            print(f"  {op:<4} {rate['ops_per_s'] / 1e6:6.2f} M ops/s, {rate['errors']} errors")
        many = scenarios["many_buffers"]
        print(
            f"\n{many['buffers']} buffers through one BufferStore: {many['us_per_open']:.1f} us per open; "
            f"segment {many['segment_bytes']} bytes = header+mutex+structure+undo copy "
            f"({many['header_mutex_structure']} bytes) in {many['pages']} page(s)"
        )
        import notify

        print("\n" + notify.describe(scenarios["notify"]))
        import bridge

        print("\n" + bridge.describe(scenarios["bridge"]))
        import safety

        print("\n" + safety.describe(scenarios["safety"]))
        import runner

        print("\n" + runner.describe(scenarios["runner"]))
        import stack

        print("\n" + stack.describe(scenarios["stack"]))
        import floors

        print("\n" + floors.describe(scenarios["floors"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
