"""Set-up shared by the fuzz harnesses (imported first by each of them).

Puts the instrumented package (build/fuzz/pkg, made by fuzz/build.py) first on
sys.path, checks that the ASan runtime is loaded and that ``runtime._core`` is
the instrumented copy, and silences the clamp warnings the harnesses provoke on
purpose. ``FUZZ_ALLOW_UNINSTRUMENTED=1`` skips the checks, to replay an input
against the normal build (``python fuzz/fuzz_decode.py crash-file`` in .venv
with atheris installed).
"""

from __future__ import annotations

import ctypes
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "build" / "fuzz" / "pkg"

if os.environ.get("FUZZ_ALLOW_UNINSTRUMENTED") != "1":
    sys.path.insert(0, str(PKG))

warnings.simplefilter("ignore")  # clamping warns; the harnesses clamp on purpose


def check_instrumented(core: ModuleType) -> None:
    """Refuse to fuzz the uninstrumented core, or without the sanitizer runtime."""
    if os.environ.get("FUZZ_ALLOW_UNINSTRUMENTED") == "1":
        return
    problems = []
    if not str(core.__file__).startswith(str(PKG)):
        problems.append(f"runtime._core comes from {core.__file__}, not {PKG} (run fuzz/build.py)")
    if not hasattr(ctypes.CDLL(None), "__asan_init"):
        problems.append(
            "the ASan runtime is not loaded (LD_PRELOAD atheris's asan_with_fuzzer.so; see fuzz/run.py)"
        )
    if os.environ.get("PYTHONMALLOC") != "malloc":
        problems.append("PYTHONMALLOC=malloc is not set: pymalloc would hide overflows from ASan")
    if problems:
        sys.exit("fuzz harness: " + "; ".join(problems))


def cobs_encode(data: bytes) -> bytes:
    """Canonical COBS, as the spec states it (the harnesses' model; seeds use it too): a code byte per
    block of up to 254 nonzero bytes."""
    out = bytearray()
    block = bytearray()
    for byte in data:
        if byte == 0:
            out.append(len(block) + 1)
            out += block
            block.clear()
            continue
        block.append(byte)
        if len(block) == 254:
            out.append(0xFF)
            out += block
            block.clear()
    out.append(len(block) + 1)
    out += block
    return bytes(out)


class Input:
    """Reads choices from a fuzz input, front to back; zeros once it runs out.

    The harnesses use this instead of atheris.FuzzedDataProvider so that the
    committed corpus keeps its meaning whatever atheris version runs it.
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def exhausted(self) -> bool:
        return self.pos >= len(self.data)

    def take(self, n: int) -> bytes:
        """Up to `n` bytes (fewer when the input runs out)."""
        chunk = self.data[self.pos : self.pos + max(0, n)]
        self.pos += len(chunk)
        return chunk

    def uint(self, nbytes: int) -> int:
        chunk = self.take(nbytes)
        return int.from_bytes(chunk, "little")

    def signed(self, nbytes: int) -> int:
        value = self.uint(nbytes)
        return value - (1 << (8 * nbytes)) if value >> (8 * nbytes - 1) else value

    def int_in(self, low: int, high: int) -> int:
        """An integer in low..high (inclusive)."""
        span = high - low + 1
        if span <= 1:
            return low
        return low + self.uint((span - 1).bit_length() + 7 >> 3) % span

    def flag(self) -> bool:
        return bool(self.uint(1) & 1)

    def pick(self, items: Any) -> Any:
        return items[self.int_in(0, len(items) - 1)]


def model_values(payload: bytes, entries: list[tuple[int, int]]) -> int | None:
    """The params bitmap of a DEV_DATA/DEV_WRITE payload that fits `entries`, else None."""
    if len(payload) < 2:
        return None
    params = payload[0] | payload[1] << 8
    size = 2
    for i in range(16):
        if params >> i & 1:
            if i >= len(entries) or entries[i][1] == 0:
                return None
            size += entries[i][1]
    return params if size == len(payload) else None


def fuzz(core: ModuleType, test_one_input: Callable[[bytes], None]) -> None:
    """Check that ``core`` is the instrumented build, then run libFuzzer on ``test_one_input``."""
    import atheris

    check_instrumented(core)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
