"""Drive a motor: run a yogi-bear motor controller for a moment, and see its encoder count.

    python examples/drive_a_motor.py                    # the first motor found, at half speed for 1 s
    python examples/drive_a_motor.py --speed -0.3 --seconds 2

A write goes into the buffer's write block; the bridge sends it to the device,
and the device's next report shows the value it took. A speed beyond the
duty cycle's bounds is clamped (with a warning) and the motor runs at the
bound. The write is this program's *command*: when the program ends, however
it ends (Ctrl-C, an exception, kill -9), the bridge puts the motor back to its
safe value (a duty cycle of 0), so a motor never outlives the code that drives
it. The bridge must be running (see student_code.py to try it without a robot).
"""

from __future__ import annotations

import argparse
import sys
import time

from runtime import catalog
from runtime.store import BufferStore, namespace_hint


def main() -> int:
    parser = argparse.ArgumentParser(description="Run a motor for a moment; print how far it turned.")
    parser.add_argument("--speed", type=float, default=0.5, help="duty cycle, -1.0 to 1.0 (default 0.5)")
    parser.add_argument("--seconds", type=float, default=1.0, help="how long to run it (default 1)")
    parser.add_argument(
        "--namespace", help="the buffers' namespace (default: $RUNTIME_BUFFER_NAMESPACE, else rt)"
    )
    args = parser.parse_args()

    # the namespace's buffers: those of a bridge (or the demo) run with the same namespace
    with BufferStore.use_namespace(args.namespace), BufferStore(catalog.load()) as store:
        motors = [info.uid for info in store.discover() if info.type_name == "yogi-bear" and info.valid]
        if not motors:
            hint = namespace_hint(f"python {sys.argv[0]}")  # where the buffers are, if not here
            print("no motor found: is the bridge running?" + (f"; {hint}" if hint else ""), file=sys.stderr)
            return 1
        motor = store.get_or_open(motors[0])
        start = motor.get("enc_pos")

        speed = motor.params["duty_cycle"].clamp(args.speed)  # out of bounds: the bound, with a warning
        motor.write("duty_cycle", speed)  # the bridge sends it to the motor
        deadline = time.monotonic() + 2.0
        while abs(motor.get("duty_cycle") - speed) > 1e-3:  # until the motor reports it
            if time.monotonic() > deadline:
                print("the motor did not take the new duty cycle", file=sys.stderr)
                return 1
            time.sleep(0.01)
        print(f"motor {motors[0]:#x} runs at duty cycle {speed:g}")
        time.sleep(args.seconds)
        moved = motor.get("enc_pos") - start
        print(f"the encoder moved {moved:+.0f} ticks in {args.seconds:g} s")
    # Leaving the store closes the motor's buffer: the command ends and the bridge stops the motor.
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
