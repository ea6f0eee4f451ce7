"""``python -m runtime``: the same program as the ``runtime`` console script (see :mod:`runtime.cli`)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
