"""Plain JSON out of parameter values, and JSON files written atomically.

The bridge and emulator write ``--stats`` files that other programs (the demo,
tests, scripts) read while they are being rewritten; the CLI prints ``--json``.
Both need device values as plain JSON: float32 values in their shortest exact
form, no NaN or infinity, arrays as lists and character data as text.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import tempfile
from collections.abc import Mapping
from typing import Any

__all__ = ["jsonable", "short_float", "write_json_atomically"]


def short_float(value: float) -> float:
    """The shortest decimal that reads back as the same single-precision float.

    Device values are 4-byte floats; shown as doubles they look like
    ``-0.12300000339746475``. This gives ``-0.123``, which converts back to the
    exact same float32, so nothing is lost. Values that are not float32 are
    returned as they are.

    >>> short_float(ctypes.c_float(-0.123).value)
    -0.123
    >>> short_float(0.1)
    0.1
    """
    if not math.isfinite(value):
        return value
    single = ctypes.c_float(value).value
    if single != value:
        return value
    for digits in range(1, 10):
        candidate = float(f"{value:.{digits}g}")
        if ctypes.c_float(candidate).value == value:
            return candidate
    return value


def jsonable(value: Any) -> Any:
    """Convert a parameter value (or a structure of them) into plain JSON data.

    Floats are shortened (:func:`short_float`), non-finite floats become
    ``None`` (JSON has no infinity), ctypes arrays become lists and bytes become
    text (character arrays hold text).
    """
    if isinstance(value, bool) or value is None or isinstance(value, int | str):
        return value
    if isinstance(value, float):
        return short_float(value) if math.isfinite(value) else None
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, ctypes.Array | list | tuple | set | frozenset):
        return [jsonable(item) for item in value]
    return str(value)


def write_json_atomically(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename.

    Readers see the old file or the new one, never half of one. The temporary
    file is created by :func:`tempfile.mkstemp` in the destination's directory
    (a hidden, unpredictable name, opened with ``O_EXCL``), so a symlink that
    another user planted there is never followed; the rename replaces a
    symlink at ``path`` itself instead of writing through it. The file gets
    the usual mode (``0o666`` less the umask), as :func:`open` would give it.
    It is not fsynced: the files written here are refreshed statistics.

    Raises :class:`OSError`, or :class:`ValueError`/:class:`TypeError` (data
    that is not plain JSON); the temporary file is removed then.
    """
    directory, name = os.path.split(os.fspath(path))
    descriptor, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory or ".")
    try:
        with open(descriptor, "w", encoding="utf-8") as file:
            os.fchmod(descriptor, 0o666 & ~_umask())
            json.dump(data, file, indent=2, allow_nan=False)
            file.write("\n")
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _umask() -> int:
    """The process's umask, read without changing it (``os.umask`` would, for every thread)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    return 0o022
