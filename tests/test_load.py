"""accel.load: other processes' CPU use while a run is timed, and the warning it gives."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from accel.load import LoadMeter, load_warning

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")


@pytest.mark.slow  # in the full suite, not the quick subset
def test_a_busy_neighbour_is_measured_and_warned_about():
    """A process spinning one core beside a sleeping block counts as about one other busy core."""
    spin = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 30: pass"])
    try:
        time.sleep(0.5)  # it is running
        with LoadMeter() as meter:
            time.sleep(1.5)
    finally:
        spin.kill()
        spin.wait()
    stats = meter.result()
    assert stats["other_cores"] > 0.6 and stats["own_cores"] < 0.2, stats
    assert "other processes kept" in meter.warning()


def test_warnings_follow_the_thresholds():
    assert load_warning({"cpus": 4, "other_cores": 0.2}) is None
    assert "1.5 of 4" in load_warning({"cpus": 4, "other_cores": 1.5})
    assert load_warning({"cpus": 4, "other_cores": 1.5}, warn_cores=2.0) is None
    assert "load average was 6.0" in load_warning({"cpus": 4, "other_cores": None, "loadavg_end": 6.0})
    assert load_warning({"cpus": 4, "other_cores": None, "loadavg_start": 2.0}) is None
