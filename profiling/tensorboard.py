"""Start TensorBoard (with the torch-tb-profiler plugin) on localhost for a run's ``tb/`` logdir.

One process per Python process: starting again with another logdir restarts it. The process is
stopped at interpreter exit. It binds 127.0.0.1 only.
"""

from __future__ import annotations

import atexit
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

_PROC: subprocess.Popen | None = None
_STATE: dict[str, object] = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop() -> None:
    """Stop the TensorBoard process if one is running."""
    global _PROC
    if _PROC is not None and _PROC.poll() is None:
        _PROC.terminate()
        try:
            _PROC.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _PROC.kill()
    _PROC = None
    _STATE.clear()


def start(logdir: str | Path, port: int | None = None, timeout_s: float = 90.0) -> int:
    """Serve ``logdir`` on 127.0.0.1 and return the port once TensorBoard answers."""
    global _PROC
    logdir = Path(logdir).resolve()
    if not logdir.is_dir():
        raise FileNotFoundError(f"no TensorBoard logdir at {logdir}: profile a run first (--profile)")
    if _PROC is not None and _PROC.poll() is None and _STATE.get("logdir") == logdir:
        return int(_STATE["port"])
    stop()
    port = port or _free_port()
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
           "--port", str(port), "--reload_interval", "2"]  # fmt: skip
    _PROC = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _STATE.update(logdir=logdir, port=port)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if _PROC.poll() is not None:
            stop()
            raise RuntimeError("TensorBoard exited at start; is tensorboard with torch-tb-profiler installed?")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
            return port
        except OSError:
            time.sleep(0.5)
    stop()
    raise TimeoutError(f"TensorBoard did not answer on 127.0.0.1:{port} within {timeout_s:.0f} s")


atexit.register(stop)
