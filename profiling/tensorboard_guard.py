"""Session leader for TensorBoard: ``python -m profiling.tensorboard_guard CMD...`` runs CMD and, when asked to
stop (SIGTERM / SIGHUP, including the PDEATHSIG that :mod:`profiling.tensorboard` sets on it), sweeps CMD's
whole process group.

TensorBoard exits cleanly on SIGTERM, but its helpers (the Rust data server, the multiprocessing resource
tracker, torch-tb-profiler's loader process) are separate processes that only notice their parent's death
later, or not at all while they are still importing torch on a busy machine. Once the app is gone nobody would
reap them, so this guard, which started in its own session, does: SIGTERM to CMD, up to
``GRACE_S`` seconds for it to exit, then SIGKILL to the whole group, the guard included. When CMD exits on its
own, the guard sweeps the group the same way. The guard always ends killed by SIGKILL.

Imports only the standard library, so it adds a few tens of milliseconds to TensorBoard's start.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from types import FrameType

GRACE_S = 5.0


class _Stop(Exception):
    """Raised by the signal handler to break the main thread out of ``wait``."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def _sweep(child: subprocess.Popen | None) -> None:
    """SIGTERM ``child``, wait up to ``GRACE_S``, then SIGKILL this process group (this process included)."""
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)  # a second stop must not interrupt this one
    if child is not None and child.poll() is None:
        child.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=GRACE_S)
    os.killpg(os.getpgrp(), signal.SIGKILL)


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: python -m profiling.tensorboard_guard CMD [ARGS...]", file=sys.stderr)
        return 2
    child = None
    try:
        for signum in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, _stop)
        child = subprocess.Popen(argv)
        child.wait()  # CMD ended by itself: its helpers go too
    except _Stop:
        pass
    _sweep(child)
    return 1  # not reached: the sweep kills this process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
