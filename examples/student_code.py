"""Student code: drive the robot's motors, and stop them while the limit switch is pressed.

This is what a robot program looks like: it finds its devices (the buffers the
bridge serves), then 20 times a second reads the sensors and writes the
motors. A device can go away at any time (a loose cable, the bridge
restarting): its buffer turns invalid, and every read or write of it raises
DeviceBufferError. The program then waits for the device to come back instead
of acting on a stale value. It never leaves a motor running when it ends:
its writes are its commands, and when it ends, however it ends (Ctrl-C, an
exception, kill -9), the bridge puts every motor it drove back to its safe
value (a duty cycle of 0).

Try it without a robot (each command in its own terminal, or with &):

    runtime emulate yogi-bear limit-switch --link /tmp/devices
    runtime bridge --glob '/tmp/devices/*'
    python examples/student_code.py             # Ctrl-C to stop
"""

from __future__ import annotations

import argparse
import math
import sys
import time

from runtime import catalog
from runtime.buffer import Buffer, DeviceBufferError
from runtime.store import BufferStore, namespace_hint

SPEED = 0.5
"""Duty cycle of the motors while no switch is pressed (-1.0 to 1.0)."""
RATE = 20
"""Control cycles per second."""


def control(switches: list[Buffer], motors: list[Buffer]) -> str:
    """One control cycle: read the switches, write the motors; what the robot does now."""
    pressed = any(switch.get("switch0") for switch in switches)
    for motor in motors:
        motor.write("duty_cycle", 0.0 if pressed else SPEED)
    return "stopped: a switch is pressed" if pressed else "driving"


def main() -> int:
    parser = argparse.ArgumentParser(description="Drive the motors; stop while the limit switch is pressed.")
    parser.add_argument("--seconds", type=float, help="stop after this many seconds (default: at Ctrl-C)")
    parser.add_argument(
        "--namespace", help="the buffers' namespace (default: $RUNTIME_BUFFER_NAMESPACE, else rt)"
    )
    args = parser.parse_args()

    # the namespace's buffers: those of a bridge (or the demo) run with the same namespace
    with BufferStore.use_namespace(args.namespace), BufferStore(catalog.load()) as store:
        found = store.discover()  # the device buffers in shared memory
        switches = [store.get_or_open(info.key) for info in found if info.type_name == "limit-switch"]
        motors = [store.get_or_open(info.key) for info in found if info.type_name == "yogi-bear"]
        print(f"found {len(switches)} limit switch(es) and {len(motors)} motor(s)", flush=True)
        if not motors:
            hint = namespace_hint(f"python {sys.argv[0]}")  # where the buffers are, if not here
            print("no motor to drive: is the bridge running?" + (f"; {hint}" if hint else ""))
            return 1

        end = time.monotonic() + args.seconds if args.seconds else math.inf
        cycles = 0
        state = ""
        try:
            while time.monotonic() < end:
                try:
                    now = control(switches, motors)
                except DeviceBufferError:  # a device is gone: its buffer is invalid
                    now = "waiting: a device is gone"
                if now != state:
                    print(now, flush=True)
                    state = now
                cycles += 1
                time.sleep(1 / RATE)
        except KeyboardInterrupt:
            pass
        print(f"stopped after {cycles} cycles")  # the store closes: the commands end, the motors stop
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
