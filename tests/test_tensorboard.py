"""The TensorBoard child of profiling.tensorboard dies with the app: SIGTERM, SIGHUP, SIGKILL, any starting thread.

Real processes: a parent ``python -c`` plays the app (installs the handlers, starts TensorBoard, prints the
child's pid and port, sleeps); the test signals the parent and polls /proc until the child's whole process
group is gone, against a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PDEATHSIG and /proc are Linux only")

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 30.0

# argv: logdir, "main" | "thread". In "thread" mode start() runs on a short-lived thread (as in a gradio handler),
# and the line is printed only once that OS thread has left /proc: a child tied to it by PDEATHSIG would have been
# signalled by then.
APP = r"""
import json, os, signal, sys, threading, time
signal.signal(signal.SIGHUP, signal.SIG_DFL)  # an app started from a terminal (the suite may run under nohup)
from profiling import tensorboard
tensorboard.install_signal_handlers()
tensorboard.install_signal_handlers()  # idempotent
logdir, where = sys.argv[1], sys.argv[2]
if where == "thread":
    out = {}
    worker = threading.Thread(target=lambda: out.update(port=tensorboard.start(logdir)))
    worker.start()
    worker.join()
    deadline = time.monotonic() + 30
    while os.path.exists(f"/proc/self/task/{worker.native_id}") and time.monotonic() < deadline:
        time.sleep(0.01)
    port = out["port"]
else:
    port = tensorboard.start(logdir)
print(json.dumps({"pid": tensorboard._PROC.pid, "port": port}), flush=True)
while True:
    time.sleep(3600)
"""

# Chaining without TensorBoard (stop() recorded): a previous Python handler is called once after stop() and the
# process lives on; an ignored SIGHUP stays ignored (no stop).
CHAIN = r"""
import json, os, signal
calls = []
signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
signal.signal(signal.SIGHUP, signal.SIG_IGN)
from profiling import tensorboard
tensorboard.stop = lambda: calls.append("stop")
tensorboard.install_signal_handlers()
tensorboard.install_signal_handlers()
assert signal.getsignal(signal.SIGHUP) == signal.SIG_IGN
os.kill(os.getpid(), signal.SIGHUP)
os.kill(os.getpid(), signal.SIGTERM)
print(json.dumps(calls))
"""


def _env() -> dict[str, str]:
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(ROOT) + (os.pathsep + path if path else "")}


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent, process group) of a live pid, None when it is gone; a zombie counts as gone (PID 1 may not reap)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rpartition(")")[2].split()  # after "pid (comm)": state ppid pgrp ...
    return None if fields[0] in "ZX" else (int(fields[1]), int(fields[2]))


def _group(pgid: int) -> list[int]:
    """Live processes in process group ``pgid``."""
    return [pid for pid, (_, group) in _live().items() if group == pgid]


def _live() -> dict[int, tuple[int, int]]:
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _stat(int(entry.name))) is not None:
            found[int(entry.name)] = stat
    return found


def _wait_for(predicate, what: str) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not predicate():
        assert time.monotonic() < deadline, f"{what} not within {DEADLINE_S:.0f} s"
        time.sleep(0.05)


def _answers(port: int) -> bool:
    try:
        urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).close()
        return True
    except OSError:
        return False


@pytest.fixture()
def app(tmp_path):
    """Launch the stand-in app; yields a function returning (parent, child pid, port). Cleans up on failure."""
    pytest.importorskip("tensorboard")
    logdir = tmp_path / "tb"
    logdir.mkdir()  # start() needs an existing directory; TensorBoard serves an empty one
    launched: list[tuple[subprocess.Popen, int | None]] = []

    def launch(where: str) -> tuple[subprocess.Popen, int, int]:
        err = (tmp_path / f"app-{len(launched)}.err").open("w")
        parent = subprocess.Popen([sys.executable, "-c", APP, str(logdir), where], cwd=ROOT, env=_env(),
                                  stdout=subprocess.PIPE, stderr=err, text=True)  # fmt: skip
        launched.append((parent, None))
        with selectors.DefaultSelector() as sel:
            sel.register(parent.stdout, selectors.EVENT_READ)
            ready = sel.select(timeout=120)
        line = parent.stdout.readline() if ready else ""
        if not line:
            parent.kill()
            parent.wait()
            pytest.fail(f"app printed no pid/port:\n{Path(err.name).read_text()[-3000:]}")
        info = json.loads(line)
        launched[-1] = (parent, info["pid"])
        return parent, info["pid"], info["port"]

    yield launch
    for parent, child in launched:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child is not None:  # a failed test leaves TensorBoard (own group or not) and its helpers behind
            for pid, (ppid, group) in _live().items():
                if child in (pid, ppid, group):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)


def _assert_child_dies(parent: subprocess.Popen, child: int, sig: int) -> None:
    assert parent.wait(timeout=DEADLINE_S) == -sig  # the app still ends "killed by <sig>"
    _wait_for(lambda: _stat(child) is None, f"TensorBoard pid {child} gone")
    _wait_for(lambda: not _group(child), f"TensorBoard's helpers (process group {child}) gone")


@pytest.mark.slow  # each starts TensorBoard (2-4 s on 2 shared cores)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_handled_signal_stops_tensorboard_and_keeps_the_exit_status(app, sig):
    parent, child, port = app("main")
    assert _stat(child) is not None and _answers(port)
    assert _stat(child)[1] == child != os.getpgid(parent.pid)  # own session: a terminal Ctrl-C reaches the app only
    parent.send_signal(sig)
    _assert_child_dies(parent, child, sig)


@pytest.mark.slow
@pytest.mark.parametrize("where", ["main", "thread"])
def test_sigkilled_app_takes_tensorboard_along(app, where):
    parent, child, port = app(where)
    # Started from a thread that has since exited: still serving (PDEATHSIG is tied to the spawner thread).
    assert _answers(port) and _stat(child) is not None
    parent.kill()
    _assert_child_dies(parent, child, signal.SIGKILL)


def test_install_signal_handlers_chains_a_python_handler_and_keeps_ignored_signals():
    out = subprocess.run([sys.executable, "-c", CHAIN], cwd=ROOT, env=_env(), capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == ["stop", signal.SIGTERM]  # stopped once, then the old handler; SIGHUP ignored


# CMD for the guard: a helper that ignores SIGTERM (as a loader still importing torch would fail to act on its
# parent's exit), then CMD itself either waits to be stopped or exits at once.
LINGERING = r"""
import subprocess, sys, time
IGNORE = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(3600)"
helper = subprocess.Popen([sys.executable, "-c", IGNORE])
print(helper.pid, flush=True)
if sys.argv[1] == "wait":
    time.sleep(3600)
"""


@pytest.mark.parametrize("how", ["SIGTERM", "exits"])
def test_guard_sweeps_helpers_that_outlive_tensorboard(how):
    guard = Path(__file__).resolve().parents[1] / "profiling" / "tensorboard_guard.py"
    cmd = [sys.executable, str(guard), sys.executable, "-c", LINGERING, "wait" if how == "SIGTERM" else "exit"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        helper = int(proc.stdout.readline())
        assert _stat(helper)[1] == proc.pid  # the helper is in the guard's group
        if how == "SIGTERM":
            proc.terminate()
        assert proc.wait(timeout=DEADLINE_S) == -signal.SIGKILL  # the guard's sweep takes the guard too
        _wait_for(lambda: not _group(proc.pid), f"the guard's group {proc.pid} gone")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
