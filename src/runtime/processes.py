"""Other processes, as Linux's ``/proc`` shows them: alive or not, and what they run.

One reading for everything that names or checks a process by pid: who
serves or commands a buffer (``runtime buffers``), whether a buffer's producer
is ``runtime replay`` (a write there reaches no device), whether a port's
holder is another ``runtime bridge`` (:func:`flock_holder`), whether a segment's last producer is gone.
"""

from __future__ import annotations

import os

__all__ = ["command_line", "flock_holder", "pid_alive", "program_name", "runs_command", "zombie"]


def pid_alive(pid: int) -> bool:
    """Whether a process has this pid (another user's counts as alive; a zombie too: see :func:`zombie`).

    >>> pid_alive(os.getpid()), pid_alive(0)
    (True, False)
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def zombie(pid: int) -> bool:
    """Whether process ``pid`` has ended but not been reaped (its state in ``/proc/PID/stat`` is ``Z``)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            return file.read().rpartition(b")")[2].split()[:1] == [b"Z"]
    except OSError:
        return False


def command_line(pid: int) -> list[str]:
    """The arguments process ``pid`` was started with (empty when unknown: gone, a kernel thread...)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return [word.decode(errors="replace") for word in file.read().split(b"\0") if word]
    except OSError:
        return []


def runs_command(pid: int, command: str) -> bool:
    """Whether process ``pid`` runs ``runtime COMMAND`` (or ``python -m runtime.tools.COMMAND``).

    A global option's value may stand between ``runtime`` and the command
    (``runtime --log-level INFO bridge``).
    """
    argv = command_line(pid)
    if f"runtime.tools.{command}" in argv:
        return True
    for index, arg in enumerate(argv):
        if os.path.basename(arg) == "runtime":  # runtime COMMAND, python -m runtime COMMAND
            words = [word for word in argv[index + 1 :] if not word.startswith("-")]
            return command in words[:2]
    return False


def program_name(pid: int) -> str | None:
    """What a process runs, for people: ``runtime bridge``, ``my_robot.py``, ``python3``; None if unknown.

    From ``/proc/PID/cmdline``: the program (for Python, the script or the
    ``-m`` module) and its first word when it is a plain one (a subcommand);
    else ``/proc/PID/comm``.
    """
    argv = command_line(pid)
    if argv and os.path.basename(argv[0]).startswith("python") and len(argv) > 1:
        argv = argv[2:] if argv[1] == "-m" else argv[1:]
        if argv and argv[0].startswith("-"):  # python -c ...: the interpreter is all there is to say
            argv = []
    if argv:
        words = [os.path.basename(argv[0])]
        word = argv[1] if len(argv) > 1 else ""
        if word[:1].isalpha() and word.replace("-", "").replace("_", "").isalnum():
            words.append(argv[1])
        return " ".join(words)
    try:
        with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as file:
            return file.read().strip() or None
    except OSError:
        return None


def flock_holder(path: str) -> int | None:
    """The pid holding an ``flock`` on ``path`` (a bridge serving a port), from ``/proc/locks``.

    None when it cannot be told (no such lock, no ``/proc``).
    """
    try:
        status = os.stat(path)
        with open("/proc/locks", encoding="ascii", errors="replace") as file:
            lines = file.read().splitlines()
    except OSError:
        return None
    wanted = f"{os.major(status.st_dev):02x}:{os.minor(status.st_dev):02x}:{status.st_ino}"
    for line in lines:
        fields = line.split()
        if "->" in fields:  # a waiter's line: not the holder
            continue
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted and fields[4].isdigit():
            return int(fields[4])
    return None
