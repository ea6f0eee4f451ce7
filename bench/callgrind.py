"""One buffer operation N times, for instruction counts under callgrind.

    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.set .venv/bin/python bench/callgrind.py set 100000
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.0 .venv/bin/python bench/callgrind.py set 0

The difference of the two totals ("summary:" in the output files, or what
callgrind prints as "Collected"), divided by N, is the instructions of one
operation: ``get``, ``set``, ``write`` or ``update`` (a DEV_DATA message) on a
``servo-motor`` buffer of the packaged catalog, or ``encode`` and ``decode`` of
the 16-float DEV_DATA message that ``bench/run.py`` times. The buffer lives in a
private namespace and is unlinked at the end.
"""

from __future__ import annotations

import os
import struct
import sys

OPERATIONS = ("get", "set", "write", "update", "encode", "decode")


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in OPERATIONS or not argv[2].isdigit():
        print(f"usage: {argv[0]} {{{','.join(OPERATIONS)}}} ITERATIONS", file=sys.stderr)
        return 2
    operation, iterations = argv[1], int(argv[2])
    os.environ["RUNTIME_BUFFER_NAMESPACE"] = f"rt-callgrind-{os.getpid()}"

    from runtime import catalog
    from runtime.messaging import Message, MessageType, ParamLayout, make_dev_data
    from runtime.store import BufferStore

    servo = catalog.load()["servo-motor"]
    name = f"{BufferStore.namespace()}-servo"
    buffer = servo.attach(name)
    try:
        message = Message(MessageType.DEV_DATA, struct.pack("<Hf", 0b01, 0.25))
        floats16 = bytearray(struct.pack("<16f", *(i * 0.25 - 1.5 for i in range(16))))
        dev_data16 = make_dev_data(0xFFFF, ParamLayout([(4 * i, 4) for i in range(16)]), floats16)
        frame16 = dev_data16.encode()
        # The same work before the loop in every run, so that 0 iterations leaves only the loop out.
        buffer.get("servo0")
        buffer.set("servo0", 0.5)
        buffer.write("servo0", 0.5)
        buffer.update(message)
        Message.decode(frame16)
        if operation == "get":
            get = buffer.get
            for _ in range(iterations):
                get("servo0")
        elif operation == "set":
            set_ = buffer.set
            for _ in range(iterations):
                set_("servo0", 0.5)
        elif operation == "write":
            write = buffer.write
            for _ in range(iterations):
                write("servo0", 0.5)
        elif operation == "update":
            update = buffer.update
            for _ in range(iterations):
                update(message)
        elif operation == "encode":
            encode = dev_data16.encode
            for _ in range(iterations):
                encode()
        else:
            decode = Message.decode
            for _ in range(iterations):
                decode(frame16)
    finally:
        buffer.close()
        servo.unlink(name)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
