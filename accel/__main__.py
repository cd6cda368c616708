"""``python -m accel``: the command line (see :mod:`accel.cli`)."""

from accel.cli import main

raise SystemExit(main())
