"""Read a sensor: print what a limit switch's three switches say, a few times a second.

    python examples/read_a_sensor.py                      # the first limit switch found
    python examples/read_a_sensor.py 0xa0000000000c0ffee  # the limit switch with this UID

The bridge must be running (see student_code.py to try it without a robot).
"""

from __future__ import annotations

import argparse
import sys
import time

from runtime import catalog
from runtime.buffer import DeviceBufferError
from runtime.store import BufferStore, namespace_hint


def main() -> int:
    parser = argparse.ArgumentParser(description="Print a limit switch's readings.")
    parser.add_argument("uid", nargs="?", type=lambda text: int(text, 0), help="the switch's UID (0x...)")
    parser.add_argument("--count", type=int, default=10, help="how many readings (default 10)")
    parser.add_argument("--every", type=float, default=0.2, help="seconds between readings (default 0.2)")
    parser.add_argument(
        "--namespace", help="the buffers' namespace (default: $RUNTIME_BUFFER_NAMESPACE, else rt)"
    )
    args = parser.parse_args()

    # the namespace's buffers: those of a bridge (or the demo) run with the same namespace
    with BufferStore.use_namespace(args.namespace), BufferStore(catalog.load()) as store:
        uid = args.uid
        if uid is None:  # look for one among the buffers the bridge serves
            switches = [info.uid for info in store.discover() if info.type_name == "limit-switch"]
            if not switches:
                hint = namespace_hint(f"python {sys.argv[0]}")  # where the buffers are, if not here
                print(
                    "no limit switch found: is the bridge running?" + (f"; {hint}" if hint else ""),
                    file=sys.stderr,
                )
                return 1
            uid = switches[0]
        switch = store.get_or_open(uid)  # a Smart Device's UID says its type: a limit switch
        print(f"limit switch {uid:#x}")
        for _ in range(args.count):
            try:
                with switch.transaction():  # the three values from the same moment
                    values = [switch.get(name) for name in ("switch0", "switch1", "switch2")]
            except DeviceBufferError:  # invalid: the device is gone, or no bridge serves it
                print("not connected")
            else:
                words = [f"switch{i}={'pressed' if value else 'free'}" for i, value in enumerate(values)]
                print("  ".join(words))
            time.sleep(args.every)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
