"""``python -m accel``: the command line (see :mod:`accel.cli`).

``env`` is answered before :mod:`accel.cli` (which imports torch) loads, so the bug-report command also works
when torch or another dependency is broken.
"""

import sys


def run() -> int:
    """The ``accel`` command (the console script, and ``python -m accel``)."""
    if sys.argv[1:2] == ["env"]:
        from accel.env import main as env

        return env(sys.argv[2:])
    from accel.cli import main

    return main()


if __name__ == "__main__":
    raise SystemExit(run())
