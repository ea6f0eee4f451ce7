"""``python -m runtime``: the ``runtime`` console script (see :mod:`runtime.tools.cli`)."""

from .tools.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
