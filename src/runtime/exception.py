"""The root of the library's exceptions: a message plus structured context."""

import difflib
from collections.abc import Iterable
from typing import Any

__all__ = ["RuntimeBaseException", "closest", "did_you_mean"]


class RuntimeBaseException(Exception):
    """Base of every exception this library raises on purpose.

    The keyword arguments are kept in :attr:`context` so callers (and logs) get
    the facts of the failure as data, not only as prose.

    >>> exc = RuntimeBaseException('no such parameter', param='speed')
    >>> exc.context
    {'param': 'speed'}
    >>> exc
    RuntimeBaseException('no such parameter', param='speed')
    >>> str(exc)
    "no such parameter (param='speed')"
    """

    def __init__(self, message: str, /, **context: Any) -> None:
        super().__init__(message, *context.values())
        self.message = message
        self.context = context

    def __str__(self) -> str:
        if not self.context:
            return self.message
        details = ", ".join(f"{key}={value!r}" for key, value in self.context.items())
        return f"{self.message} ({details})"

    def __repr__(self) -> str:
        parts = [repr(self.message), *(f"{key}={value!r}" for key, value in self.context.items())]
        return f"{type(self).__name__}({', '.join(parts)})"

    def __reduce__(self) -> Any:
        return _rebuild, (type(self), self.message, self.context)


def _rebuild(cls: type[RuntimeBaseException], message: str, context: dict[str, Any]) -> RuntimeBaseException:
    """Unpickle an exception, keyword context included (for multiprocessing)."""
    exc = cls.__new__(cls)
    RuntimeBaseException.__init__(exc, message, **context)
    return exc


def closest(word: object, choices: Iterable[str], n: int = 3) -> list[str]:
    """The choices that look most like ``word``, closest first (none when nothing is close).

    The one helper behind every "did you mean" of the library and its tools.

    >>> closest("duty_cyle", ["enc_pos", "duty_cycle", "pid_pos_kp"])
    ['duty_cycle']
    """
    if not isinstance(word, str):
        return []
    return difflib.get_close_matches(word, sorted(choices), n=n)


def did_you_mean(word: object, choices: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest choice, or an empty string.

    >>> did_you_mean("gampad", ["gamepad", "yogi-bear"]), did_you_mean("toaster", ["gamepad"])
    (" (did you mean 'gamepad'?)", '')
    """
    close = closest(word, choices, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""
