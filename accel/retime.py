"""Re-time a run against dense, interleaved in one process: a speedup that machine load cannot fake.

Two runs timed apart (minutes apart, another process, other programs busy in between) give a ratio that moves
with what else ran: on a shared CPU two identical dense runs took 97.5 s and 79.2 s. :func:`retime` loads the
model once, runs each side once untimed (a warm-up), then alternates dense and the run's method for ``rounds``
rounds, the side that goes first swapping every round (dense, method, method, dense, ...). Each pass is timed as
:func:`accel.runner.generate` times one and recorded as it records one, all under one
:class:`accel.load.LoadMeter`, as ``docs/measurements/cpu_e2e.py`` does. The passes' seconds are added to the
run as ``retimed.json`` (:data:`FILE`, :meth:`RunStore.amend`); :mod:`viz.speed` prefers them over the two runs'
own times. Nothing else of the run changes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from accel.config import RunConfig
from accel.errors import UserError
from accel.runs import DamagedRunError, Run, RunStore
from accel.schema import SECONDS, integer, list_of, record, text

FILE = "retimed.json"
ROUNDS = 3  # default rounds: each side timed 3 times, medians compared
MAX_ROUNDS = 10
SIDES = ("dense", "run")
# (step, steps, what is running: "round 2 of 3: dense")
RetimeProgress = Callable[[int, int, str], None]
_TIMES = record({side: SECONDS for side in SIDES})
CHECK = record(
    {"rounds": integer(1), "wall_s": _TIMES, "denoise_s": _TIMES, "order": list_of(text)},
    {"created": text, "device": text, "load": record()},
)


def configs(run: Run) -> dict[str, RunConfig]:
    """The two sides of a re-timing: ``dense`` (the run's config with the dense method: same prompt, seed, model,
    sampling, device, dtype and kernels) and ``run`` itself, each timed once per round."""
    config = run.config
    if config.get("method") == "dense":
        raise UserError(f"{run.run_id} is a dense run: re-time a method's run, it is timed against dense")
    if config.get("parallel"):
        raise UserError(
            f"{run.run_id} ran context parallel: time it under torchrun (accel generate --parallel ... --repeats N) "
            "beside a dense run made the same way"
        )
    own = dataclasses.replace(RunConfig.from_dict(config), repeats=1)
    dense = dataclasses.replace(RunConfig.from_dict({**config, "method": "dense", "settings": {}}), repeats=1)
    return {"dense": dense, "run": own}


def retime(
    run: Run, rounds: int = ROUNDS, progress: RetimeProgress | None = None, limits=None, warmup: bool = True
) -> dict[str, Any]:
    """Time ``run`` and dense ``rounds`` times each, interleaved, and add the result to the run (:data:`FILE`, in
    the store that holds it).

    With ``warmup`` (default) each side first runs once untimed, so neither pays the first call's costs
    (allocations, kernel compiles). Every check :func:`accel.runner.generate` makes comes first (one-line
    refusals); out of memory is a :class:`accel.runner.RunError`. Returns what was written: per side the passes'
    ``wall_s`` and ``denoise_s``, the order they ran in, the machine load over all of them, the device and when.
    """
    from accel import models, runner
    from accel.load import LoadMeter
    from accel.telemetry import Recorder, RecordPolicy

    if not isinstance(rounds, int) or isinstance(rounds, bool) or not 1 <= rounds <= MAX_ROUNDS:
        raise UserError(f"rounds must be a whole number from 1 to {MAX_ROUNDS}, got {rounds!r}")
    sides = configs(run)
    checked = {side: runner.checked(cfg, limits, RecordPolicy()) for side, cfg in sides.items()}
    resolved = {side: c[0] for side, c in checked.items()}  # the model's defaults filled in
    _, spec, device_name, *_ = checked["run"]
    t0 = time.perf_counter()
    pipe = models.load_pipeline(sides["run"].model, device_name, sides["run"].dtype)
    order = [s for r in range(rounds) for s in (SIDES if r % 2 == 0 else SIDES[::-1])]
    times: dict[str, dict[str, list[float]]] = {k: {side: [] for side in SIDES} for k in ("wall_s", "denoise_s")}
    device = pipe.transformer.device

    def one_pass(side: str, when: str) -> dict[str, float]:
        cfg = resolved[side]
        what = f"{when}: {'dense' if side == 'dense' else cfg.label()}"
        steps = (lambda i, n: progress(i, n, what)) if progress is not None else None
        return runner.timed_pass(pipe, cfg, spec, Recorder(RecordPolicy()), steps)[1]

    with runner.out_of_memory_as_run_error(device, sides["run"]):
        for side in SIDES if warmup else ():  # untimed: first-call costs (allocations, kernel compiles) go here
            one_pass(side, "warm-up")
        with LoadMeter() as load:
            for k, side in enumerate(order):
                seconds = one_pass(side, f"round {k // 2 + 1} of {rounds}")
                for key in times:
                    times[key][side].append(seconds[key])
    result = {
        "rounds": rounds,
        "order": order,
        **times,
        "load": load.result(),
        "device": str(device),
        "created": datetime.now().isoformat(timespec="seconds"),
        "took_s": round(time.perf_counter() - t0, 3),
    }
    RunStore(run.path.parent).amend(run.run_id, FILE, result)
    return result


def retimed(run: Run) -> dict[str, Any] | None:
    """The run's re-timing (:data:`FILE`), None if it has none; one that is not what :func:`retime` writes is a
    :class:`~accel.runs.DamagedRunError` naming the run and the file."""
    if run.data_file(FILE) is None:
        return None
    data = run.read_json(FILE)
    why = CHECK(data)
    if why is not None:
        raise DamagedRunError(run.run_id, FILE, f"retimed{why}")
    if any(len(data[k][side]) != data["rounds"] for k in ("wall_s", "denoise_s") for side in SIDES):
        raise DamagedRunError(run.run_id, FILE, f"not {data['rounds']} passes per side as its rounds say")
    return data
