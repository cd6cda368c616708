"""``torch.profiler`` around a run: a wait / warm-up / active schedule over transformer calls, named ranges,
a Chrome/Perfetto trace, a TensorBoard profiler logdir, and tidy tables.

One profiler step is one transformer call (a CFG branch of a denoising step, or one chunk forward), so
traces stay small: only the ``active`` calls after ``wait + warmup`` are recorded. While active, the
methods' :func:`profiling.ranges.named_range` phases and per-call (``denoise.step``) / per-block
(``layer``) ranges appear in the trace.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from profiling.ranges import RANGES, set_active


class RunProfiler:
    """Profile part of a run; :meth:`save` writes ``trace.json.gz``, ``tb/`` and the tables into a folder."""

    def __init__(self, work_dir: str | Path, wait: int = 1, warmup: int = 1, active: int = 2, run_name: str = "run"):
        self.work = Path(work_dir)
        self.work.mkdir(parents=True, exist_ok=True)
        self.tb_dir = self.work / "tb" / run_name
        self.schedule = {"wait": wait, "warmup": warmup, "active": active}
        self.cuda = torch.cuda.is_available()
        self.ready = False
        self._hooks: list[Any] = []
        self._open: list[Any] = []
        self.prof: torch.profiler.profile | None = None

    def _on_ready(self, prof: torch.profiler.profile) -> None:
        # a trace exports once: into the TensorBoard run folder under the name torch-tb-profiler reads,
        # then a gzipped copy for Perfetto / chrome://tracing
        self.tb_dir.mkdir(parents=True, exist_ok=True)
        raw = self.tb_dir / f"{socket.gethostname()}_{os.getpid()}.{int(time.time() * 1000)}.pt.trace.json"
        prof.export_chrome_trace(str(raw))
        with open(raw, "rb") as src, gzip.open(self.work / "trace.json.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
        self.ready = True

    def attach(self, transformer: torch.nn.Module) -> None:
        """Step the schedule on every transformer call; open ``denoise.step`` and ``layer`` ranges."""

        def enter(name: str):
            def pre(module, args, kwargs=None):
                rf = torch.profiler.record_function(name)
                rf.__enter__()
                self._open.append(rf)

            return pre

        def leave(module, args, output):
            if self._open:
                self._open.pop().__exit__(None, None, None)

        def leave_call(module, args, output):
            leave(module, args, output)
            self.prof.step()  # profiler step i == transformer call i

        self._hooks.append(transformer.register_forward_pre_hook(enter("denoise.step")))
        self._hooks.append(transformer.register_forward_hook(leave_call))
        for block in getattr(transformer, "blocks", []):
            self._hooks.append(block.register_forward_pre_hook(enter("layer")))
            self._hooks.append(block.register_forward_hook(leave))

    def __enter__(self) -> RunProfiler:
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.cuda:
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self.prof = torch.profiler.profile(
            activities=activities,
            schedule=torch.profiler.schedule(**self.schedule, repeat=1),
            on_trace_ready=self._on_ready,
            profile_memory=True,
        )
        self.prof.__enter__()
        set_active(True)
        return self

    def __exit__(self, *exc) -> None:
        set_active(False)
        for h in self._hooks:
            h.remove()
        self._hooks.clear()
        while self._open:
            self._open.pop().__exit__(None, None, None)
        self.prof.__exit__(*exc)

    def tables(self, wall_s: float) -> dict[str, pd.DataFrame]:
        """Time per named range, top kernels/ops by self time, and peak memory."""
        events = self.prof.key_averages()
        rows = []
        for e in events:
            device_us = getattr(e, "device_time_total", 0.0) or 0.0
            rows.append({
                "name": e.key, "calls": e.count, "cpu_total_ms": e.cpu_time_total / 1e3,
                "self_cpu_ms": e.self_cpu_time_total / 1e3, "device_total_ms": device_us / 1e3,
                "self_device_ms": (getattr(e, "self_device_time_total", 0.0) or 0.0) / 1e3,
            })  # fmt: skip
        df = pd.DataFrame(rows)
        ranges = df[df["name"].isin(RANGES)].copy()
        ranges["total_ms"] = ranges[["cpu_total_ms", "device_total_ms"]].max(axis=1)
        ranges["share_of_wall"] = ranges["total_ms"] / (wall_s * 1e3)
        ops = df[~df["name"].isin(RANGES)].copy()
        key = "self_device_ms" if self.cuda else "self_cpu_ms"
        ops = ops.sort_values(key, ascending=False).head(30)
        ops["mean_ms"] = ops[key] / ops["calls"].clip(lower=1)
        ops["share"] = ops[key] / max(ops[key].sum(), 1e-12)
        mem = {"cuda_peak_bytes": int(torch.cuda.max_memory_allocated()) if self.cuda else 0,
               "cpu_peak_bytes": int(max((getattr(e, "cpu_memory_usage", 0) for e in events), default=0))}  # fmt: skip
        return {"ranges": ranges.reset_index(drop=True), "kernels": ops.reset_index(drop=True), "memory": mem}

    def save(self, dest: Path, wall_s: float) -> str:
        """Copy the trace, the TensorBoard logdir and the tables into ``dest`` (a run folder being written).

        Returns what was saved, or why nothing was: a run too short for the schedule keeps its other outputs.
        """
        if not self.ready:
            return f"not captured: fewer transformer calls than the schedule {self.schedule} needs"
        shutil.copy2(self.work / "trace.json.gz", dest / "trace.json.gz")
        shutil.copytree(self.work / "tb", dest / "tb")
        t = self.tables(wall_s)
        t["ranges"].to_parquet(dest / "profile_ranges.parquet")
        t["kernels"].to_parquet(dest / "profile_kernels.parquet")
        (dest / "profile_memory.json").write_text(json.dumps(t["memory"]))
        return "trace.json.gz, tb/, profile_ranges.parquet, profile_kernels.parquet, profile_memory.json"
