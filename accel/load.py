"""How busy the machine was while a run was timed: other processes' CPU use and the load average.

Timings on a shared machine move with what else runs (two identical dense runs took 97.5 s and 79.2 s). A
:class:`LoadMeter` around a timed region reads the kernel's CPU counters (``/proc/stat``, Linux) and this
process's own CPU time (``os.times``, all threads and waited-for children) before and after, so what other
processes used is ``(busy - own) / wall`` cores on average. Elsewhere only the load average is known.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

OTHER_CORES_WARN = 0.5  # default: warn when other processes kept more than half a core busy on average


def _busy_seconds() -> float | None:
    """CPU seconds all cores spent busy since boot (``/proc/stat``: user, nice, system, irq, softirq, steal)."""
    try:
        with open("/proc/stat") as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def _loadavg() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


@dataclass
class LoadMeter:
    """Measure other processes' CPU use over a ``with`` block; :meth:`result` and :meth:`warning` after it."""

    warn_cores: float = OTHER_CORES_WARN
    combine: Callable[[float], float] | None = None  # own CPU seconds -> the run's (context parallelism: all ranks)
    _start: tuple[float, float | None, float, float | None] | None = field(default=None, repr=False)
    _stats: dict[str, float | int | None] = field(default_factory=dict, repr=False)

    def __enter__(self) -> LoadMeter:
        self._start = (time.perf_counter(), _busy_seconds(), _own_seconds(), _loadavg())
        return self

    def __exit__(self, *exc) -> None:
        t0, busy0, own0, load0 = self._start
        wall = max(time.perf_counter() - t0, 1e-9)
        busy1, own = _busy_seconds(), _own_seconds() - own0
        own = self.combine(own) if self.combine is not None else own
        other = None if busy0 is None or busy1 is None else max(0.0, (busy1 - busy0) - own) / wall
        self._stats = {"cpus": os.cpu_count(), "other_cores": other, "own_cores": own / wall,
                       "loadavg_start": load0, "loadavg_end": _loadavg()}  # fmt: skip

    def result(self) -> dict[str, float | int | None]:
        """CPUs, other processes' and this process's average busy cores, the 1-minute load average at both ends."""
        return dict(self._stats)

    def warning(self) -> str | None:
        """One line when the machine was loaded by others during the block (None otherwise)."""
        return load_warning(self._stats, self.warn_cores)


def load_warning(stats: dict, warn_cores: float = OTHER_CORES_WARN) -> str | None:
    """The warning for :meth:`LoadMeter.result` ``stats``: other processes above ``warn_cores`` busy cores on
    average, or (without CPU counters) a load average above the CPU count."""
    other, cpus = stats.get("other_cores"), stats.get("cpus") or 1
    if other is not None:
        if other <= warn_cores:
            return None
        return (f"other processes kept {other:.1f} of {cpus} CPU cores busy on average while this run was timed: "
                f"its times are inflated and noisy; compare ratios from runs made side by side")  # fmt: skip
    load = max((v for v in (stats.get("loadavg_start"), stats.get("loadavg_end")) if v is not None), default=None)
    if load is not None and load > cpus:
        return f"the load average was {load:.1f} on {cpus} CPU cores while this run was timed: its times are noisy"
    return None
