"""JSON files written atomically.

The bridge, the emulator and the runner write ``--stats`` files that other
programs (the demo, tests, scripts) read while they are being rewritten: a
reader sees the old file or the new one, never half of one. Values in them are
plain JSON by :func:`runtime.values.jsonable`, encoded by
:func:`runtime.values.encode_json` (orjson, indented).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any

from .values import encode_json

__all__ = ["write_json_atomically"]


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
    text = encode_json(data, indent=True) + b"\n"  # before any file: bad data leaves nothing behind
    directory, name = os.path.split(os.fspath(path))
    descriptor, temporary = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=directory or ".")
    try:
        with open(descriptor, "wb") as file:
            os.fchmod(descriptor, 0o666 & ~_umask())
            file.write(text)
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
