"""Start TensorBoard (with the torch-tb-profiler plugin) on localhost for a run's ``tb/`` logdir.

One process per Python process: starting again with another logdir restarts it. It binds 127.0.0.1 only.

The TensorBoard child never outlives the process that started it:

* Normal exit (including Ctrl-C, which ends the app with ``KeyboardInterrupt``): ``atexit`` calls :func:`stop`.
* SIGTERM / SIGHUP: :func:`install_signal_handlers` (called once by the app's ``main()``, in the main thread) stops
  the child, then lets the signal do what it did before (a previous Python handler is called; a default
  disposition is restored and the signal re-raised, so the app still ends "killed by SIGTERM").
* SIGKILL, a crash, or a signal arriving before the handlers are installed: on Linux the child is started with
  ``PR_SET_PDEATHSIG = SIGTERM`` (``prctl`` from libc, set in ``preexec_fn``), so the kernel sends it SIGTERM when
  its parent dies. Elsewhere this backstop is skipped silently.

On POSIX the child is :mod:`profiling.tensorboard_guard`, a stdlib-only session leader that runs TensorBoard and,
on SIGTERM / SIGHUP or when TensorBoard ends, kills TensorBoard's whole process group after a short grace: its
helpers (data server, multiprocessing resource tracker, torch-tb-profiler's loader) do not reliably follow
TensorBoard out on a busy machine, and once the app is dead nobody else could reap them.

PDEATHSIG fires when the *thread* that forked the child exits, not the process. The app calls :func:`start` from
gradio handlers, which run in anyio worker threads that are retired after 10 idle seconds; forking there
would kill TensorBoard shortly after the click. So on Linux the fork always happens on one long-lived daemon
thread of this module ("tensorboard-spawner"), which ends only with the process (at ``exit_group`` or a fatal
signal), which is exactly when the child should go. A race with the parent dying between ``fork`` and
``prctl`` is closed by checking ``getppid()`` after ``prctl``.

The child runs in its own session (``start_new_session``): a Ctrl-C in the terminal reaches the app only (which
then stops TensorBoard in order), a terminal hang-up reaches the app only (handled as above), and :func:`stop`
can sweep TensorBoard's whole process group.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from types import FrameType

_PROC: subprocess.Popen | None = None
_STATE: dict[str, object] = {}

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_SPAWN_QUEUE: queue.SimpleQueue[tuple[Callable[[], subprocess.Popen], Future]] = queue.SimpleQueue()
_SPAWNER: threading.Thread | None = None
_SPAWNER_LOCK = threading.Lock()
_PREVIOUS_HANDLERS: dict[int, object] = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pdeathsig_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` that asks the kernel to SIGTERM the child when its parent thread dies; None off Linux."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()

    def preexec() -> None:  # runs in the forked child: resolved ctypes call and two syscalls only
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(1)

    return preexec


def _spawner_loop() -> None:
    while True:
        make, done = _SPAWN_QUEUE.get()
        if not done.set_running_or_notify_cancel():
            continue
        try:
            done.set_result(make())
        except BaseException as err:
            done.set_exception(err)


def _on_spawner_thread(make: Callable[[], subprocess.Popen]) -> subprocess.Popen:
    """Run ``make`` on the module's long-lived spawner thread (see the module docstring for why)."""
    global _SPAWNER
    with _SPAWNER_LOCK:
        if _SPAWNER is None or not _SPAWNER.is_alive():  # first use, or a fork of this process
            _SPAWNER = threading.Thread(target=_spawner_loop, name="tensorboard-spawner", daemon=True)
            _SPAWNER.start()
    done: Future = Future()
    _SPAWN_QUEUE.put((make, done))
    return done.result()


def _spawn(cmd: list[str]) -> subprocess.Popen:
    kwargs: dict = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    if os.name == "posix":
        kwargs["start_new_session"] = True
        cmd = [sys.executable, str(Path(__file__).with_name("tensorboard_guard.py")), *cmd]
    preexec = _pdeathsig_preexec()
    if preexec is None:
        return subprocess.Popen(cmd, **kwargs)
    return _on_spawner_thread(lambda: subprocess.Popen(cmd, preexec_fn=preexec, **kwargs))


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):  # nothing left in the group
        os.killpg(pgid, signal.SIGKILL)


def stop() -> None:
    """Stop the TensorBoard process (and its helper processes) if one is running."""
    global _PROC
    proc, _PROC = _PROC, None
    own_group = bool(_STATE.get("own_group"))
    _STATE.clear()
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()  # TensorBoard exits cleanly on SIGTERM and shuts its helpers down
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if own_group:
        _kill_group(proc.pid)  # helpers still lingering in TensorBoard's session


def start(logdir: str | Path, port: int | None = None, timeout_s: float = 90.0) -> int:
    """Serve ``logdir`` on 127.0.0.1 and return the port once TensorBoard answers.

    Safe to call from any thread: on Linux the child is forked on the module's spawner thread.
    """
    global _PROC
    logdir = Path(logdir).resolve()
    if not logdir.is_dir():
        raise FileNotFoundError(f"no TensorBoard logdir at {logdir}: profile a run first (--profile)")
    current = _PROC
    if current is not None and current.poll() is None and _STATE.get("logdir") == logdir:
        return int(_STATE["port"])
    stop()
    port = port or _free_port()
    cmd = [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir), "--host", "127.0.0.1",
           "--port", str(port), "--reload_interval", "2"]  # fmt: skip
    proc = _spawn(cmd)
    _PROC = proc
    _STATE.update(logdir=logdir, port=port, own_group=os.name == "posix")
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            if _PROC is proc:
                stop()
            raise RuntimeError("TensorBoard exited at start; is tensorboard with torch-tb-profiler installed?")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2).close()
            return port
        except OSError:
            time.sleep(0.5)
    if _PROC is proc:
        stop()
    raise TimeoutError(f"TensorBoard did not answer on 127.0.0.1:{port} within {timeout_s:.0f} s")


def _on_signal(signum: int, frame: FrameType | None) -> None:
    stop()
    previous = _PREVIOUS_HANDLERS.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
    elif previous == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)  # die of the signal, as without this handler


def install_signal_handlers() -> None:
    """Stop TensorBoard on SIGTERM and SIGHUP, then let the signal act as before. Call from the main thread.

    Idempotent. A signal that is ignored (e.g. SIGHUP under ``nohup``) or whose handler was not set from Python
    is left alone: the app keeps running (or cannot be chained), and PDEATHSIG still covers its death.
    """
    for name in ("SIGTERM", "SIGHUP"):
        signum = getattr(signal, name, None)
        if signum is None or signum in _PREVIOUS_HANDLERS:
            continue
        previous = signal.getsignal(signum)
        if previous is None or previous == signal.SIG_IGN or previous is _on_signal:
            continue
        _PREVIOUS_HANDLERS[signum] = previous
        signal.signal(signum, _on_signal)


atexit.register(stop)
