"""What each tab of the app shows for a run, as plain values (figures, images, tables, text, pickers).

Every function takes a run (or the store) and the user's current picks and returns what the tab displays;
a :class:`Pick` is a picker's options and the value chosen among them (a pick the run does not have falls
back to the first option). ``accel/ui`` only wires these to widgets. No gradio and no torch here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go

from accel import methods, tempdirs
from accel.errors import UserError
from accel.runs import DamagedRunError, Run, RunInfo, RunStore
from accel.schema import Event, read_index
from accel.video import write_h264
from viz import chunks, compare, motion, profile, reuse, sparsity, speed
from viz.common import branches, empty_figure

CELL = 16  # pixels per decision in the clickable reuse grid


@dataclass(frozen=True)
class Pick:
    """A picker: its options and the chosen value."""

    options: list[Any]
    value: Any


def _pick(options: list[Any], wanted: Any, nearest: bool = False) -> Pick:
    """``wanted`` if it is an option; else (``nearest``, numeric options) the closest one, or the first."""
    if wanted in options or not options:
        return Pick(options, wanted if wanted in options else None)
    if nearest and wanted is not None:
        return Pick(options, min(options, key=lambda o: (abs(o - wanted), o)))
    return Pick(options, options[0])


def run_choices(store: RunStore) -> list[tuple[str, str]]:
    """(display, run id) of every stored run, newest first."""
    return [(f"{i.run_id.split('-', 2)[1]} · {i.config.get('label') or i.run_id} · {i.run_id[-6:]}", i.run_id)
            for i in store.list()]  # fmt: skip


def open_run(store: RunStore, run_id: str | None) -> Run:
    """A run of ``store`` by id; never a user's path (the app shows only its own store).

    The last few runs opened are kept with what they decoded (telemetry, arrays), so moving a step slider does
    not re-read the run; a kept run is reused only while every file of its folder is unchanged (name, size,
    modification time), so a run damaged or replaced since is read (and refused) afresh.
    """
    if not run_id:
        raise UserError("no run selected: generate one or open one in the Runs tab")
    if Path(run_id).name != run_id:
        raise UserError(f"invalid run id {run_id!r}: pick a run of the store")
    return _load(str(store.root), run_id, _fingerprint(store.root / run_id))


def _fingerprint(folder: Path) -> tuple:
    """Name, size and modification time of every file in a run folder (empty if it cannot be listed)."""
    try:
        return tuple(sorted((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(folder)))
    except OSError:
        return ()


@lru_cache(maxsize=8)
def _load(root: str, run_id: str, fingerprint: tuple) -> Run:
    return RunStore(root).load(run_id)


def headline_rows(store: RunStore | None, run: Run) -> list[tuple[str, str]]:
    """The numbers a user looks at first, as (metric, value) rows: time, speed against dense and how far to trust
    it (with a store: :func:`viz.speed.rows`), density, reuse, the cache's saving, tokens, device and kernels."""
    m = run.metrics
    rows = [("wall time", _wall_time(run))]
    if store is not None:
        rows += speed.rows(store, run)
    if "density_mean_sparse" in m:
        rows.append(("mean density (sparse steps)", f"{m['density_mean_sparse']:.3f}"))
    if m.get("dense_head_frac"):
        rows.append(("heads run on dense SDPA (denser than the crossover)", f"{m['dense_head_frac']:.1%}"))
    if m.get("mask_skip_frac") is not None:
        rows.append(("mask reuse rate (TMR; both CFG branches, every layer)", f"{m['mask_skip_frac']:.1%}"))
    rows += _cache_rows(run.config.get("method"), m)
    rows.append(("tokens · device", f"{m.get('tokens')} · {m.get('device')} {m.get('dtype', '')}"))
    rows.append(("kernel backend", _kernels(run)))
    par = m.get("parallel")
    if par:  # a context-parallel run (accel generate --parallel, under torchrun): shown, never set, in the app
        rows.append(("context parallel", f"{par['kind']} × {par['degree']} ranks ({par['backend']}); each attends "
                     f"{m.get('heads', 0) // par['degree']} of {m.get('heads')} heads over every token"))  # fmt: skip
        balance = m.get("head_balance")
        if balance:
            rows.append(("head assignment", _assignment(balance)))
    return rows


def _assignment(balance: dict) -> str:
    """A parallel run's head assignment and the attention imbalance it ran with (slowest rank over the mean)."""
    if balance.get("balance") == "off":
        return f"contiguous ranges (balance off): imbalance {balance['imbalance']:.2f}"
    moved = sum(order != sorted(order) for order in balance.get("orders", {}).values())
    return (f"balanced by density: imbalance {balance['imbalance']:.2f} (contiguous ranges: "
            f"{balance['imbalance_contiguous']:.2f}); {moved} layer(s) permuted, "
            f"{balance['rebalances']} re-balance(s)")  # fmt: skip


def _wall_time(run: Run) -> str:
    """The run's time, how many passes it is the median of, and whether a profiler ran during it."""
    walls = compare.speed_samples(run, "wall")
    timing = run.metrics.get("timing") or {}
    denoise = compare.seconds(run, "denoise") or 0.0
    spread = f"median of {len(walls)} passes: {min(walls):.2f}-{max(walls):.2f} s; " if len(walls) > 1 else ""
    if timing.get("profiled_pass_wall_s") is not None:
        n = len(walls)
        spread += (f"{n} timed pass{'es' if n > 1 else ''}: the profiled first pass "
                   f"({timing['profiled_pass_wall_s']:.2f} s) is left out; ")  # fmt: skip
    elif profile.is_profiled(run):
        spread += "timed while profiling (the profiler slows it; with 2+ timing repeats a pass without it is timed); "
    return f"{compare.seconds(run, 'wall') or 0:.2f} s ({spread}denoise {denoise:.2f} s)"


def _kernels(run: Run) -> str:
    """Which backend ran the sparse attention calls, in words where every head ran dense SDPA."""
    calls = {k.partition("/")[2]: v for k, v in (run.metrics.get("kernel_calls") or {}).items()
             if k.startswith("block_sparse")}  # fmt: skip
    if calls and set(calls) == {"dense"}:
        return f"all heads ran dense SDPA ({sum(calls.values())} attention calls; no head was sparse enough to pay off)"
    return profile.backends_ran(run) or run.metrics.get("kernel_backend") or "n/a"


def headline(store: RunStore, run: Run) -> str:
    """Markdown of :func:`headline_rows` under the run's label, then its warnings."""
    lines = [f"**{run.config.get('label')}** · run `{run.run_id}`", "", "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in headline_rows(store, run)]
    lines += [f"\n**Warning**: {warning}" for warning in run.metrics.get("warnings") or []]
    return "\n".join(lines)


def _per_token(method: str | None) -> bool:
    """Whether ``method`` recomputes a share of a chunk's tokens (it declares ``chunk_partial`` events, as
    MotionCache does); a method no longer registered is not."""
    record = methods.REGISTRY.get(method or "")
    return record is not None and Event.CHUNK_PARTIAL in record.events


def _cache_rows(method: str | None, m: dict) -> list[tuple[str, str]]:
    """Headline rows of a cache: what it saved in its own terms (MotionCache: tokens; FlowCache: chunk steps; a
    diffusers baseline cache: blocks and attention/FFN units) and the block work (token-weighted block executions)
    against the uncached run."""
    if m.get("block_executions_possible") is not None:  # a hook cache (diffusers' baselines, TeaCache)
        return _baseline_rows(m)
    possible = m.get("block_executions_uncached") or 0
    saved = f"{1 - (m.get('block_executions') or 0) / possible:.1%}" if possible else None
    if _per_token(method) and m.get("tokens_recomputed") is not None:
        scheduled = m.get("tokens_scheduled")
        rows = [("tokens recomputed", f"{m['tokens_recomputed']:,}" + (f" of {scheduled:,}" if scheduled else ""))]
    else:
        steps = (m.get("chunk_computes") or 0) + (m.get("chunk_reuses") or 0) + (m.get("chunk_partials") or 0)
        rows = [("chunk steps reused", f"{(m.get('chunk_reuses') or 0) / steps:.1%} of {steps}")] if steps else []
    if saved is not None and rows:
        rows.append(("block work saved (token-weighted; attention FLOPs save more)", saved))
    return rows


def _baseline_rows(m: dict) -> list[tuple[str, str]]:
    """What a diffusers cache hook (FasterCache, PAB, FBC, MagCache, TaylorSeer) skipped: whole block executions,
    and units (self-attention, cross-attention, FFN) inside the blocks it ran."""
    rows = []
    for what, done, possible in (
        ("block executions skipped (token-weighted)", m.get("block_executions"), m.get("block_executions_possible")),
        ("units skipped (self-attention, cross-attention, FFN)", m.get("unit_executions"),
         m.get("unit_executions_possible")),
    ):  # fmt: skip
        if isinstance(done, (int, float)) and isinstance(possible, (int, float)) and possible > 0:
            rows.append((what, f"{possible - done:,.0f} of {possible:,.0f} ({1 - done / possible:.1%})"))
    return rows


def _int_or_none(value: Any) -> int | None:
    return None if value in (None, "") else int(value)


def sparsity_panel(run: Run, branch: str | None = None, step: Any = None, layer: Any = None):
    """Branch, step and layer pickers, the heads' masks there, density heatmaps, and a note on warm-up."""
    branch_pick = _pick(branches(run, Event.DENSITY) or ["cond"], branch)
    idx = sparsity.mask_index(run)
    idx = idx[idx["branch"] == branch_pick.value] if len(idx) else idx
    step_pick = _pick(sorted(int(s) for s in idx["step"].unique()) if len(idx) else [], _int_or_none(step), True)
    layers = sorted(int(x) for x in idx.loc[idx["step"] == step_pick.value, "layer"].unique()) if len(idx) else []
    layer_pick = _pick(layers, _int_or_none(layer), True)
    masks = (
        sparsity.head_masks(run, step_pick.value, layer_pick.value, branch_pick.value)
        if step_pick.value is not None
        else empty_figure("no masks recorded in this run (a dense or cache-only run, or --no-masks)")
    )
    warm = sparsity.warmup_note(run, branch_pick.value)
    note = f"{warm[0].upper()}{warm[1:]}." if warm else "No dense warm-up recorded."
    note += f" Masks are kept for {len(step_pick.options)} steps (evenly spaced within the recording budget)."
    mark = (step_pick.value, layer_pick.value) if step_pick.value is not None and layer_pick.value is not None else None
    density = sparsity.density_heatmaps(run, branch_pick.value, mark)
    return branch_pick, step_pick, layer_pick, masks, density, note


def reuse_panel(run: Run, branch: str | None = None, heads: list[str] | None = None):
    """Branch picker, the refresh/reuse grid as a clickable image, head picker, drift curves and a note."""
    branch_pick = _pick(branches(run, Event.MASK_REFRESH) or ["cond"], branch)
    grid = reuse.reuse_matrix(run, branch_pick.value)
    options = [f"l{int(layer)}h{int(h)}" for layer, h in grid.columns] if not grid.empty else []
    chosen = [h for h in (heads or []) if h in options] or options[:4]
    pairs = [(int(h[1 : h.index("h")]), int(h[h.index("h") + 1 :])) for h in chosen]
    rate = "" if grid.empty else f"Reuse rate of this branch ({branch_pick.value}) {reuse.reuse_rate(grid):.1%}. "
    return (
        branch_pick,
        reuse.reuse_grid_image(run, branch_pick.value, CELL),
        Pick(options, chosen),
        reuse.drift_curves(run, pairs, branch_pick.value),
        f"{rate}Grid rows: denoising steps (top = first); columns: layer·head, a dark line between layers (red "
        "refresh, blue reuse, grey no decision). Click a cell: its mask appears beside it, the cell outlined.",
    )


def reuse_cell(run: Run, branch: str, x: int, y: int) -> tuple[go.Figure, str, Any]:
    """The mask the head under pixel ``(x, y)`` of the reuse grid used at that step, what happened, and the grid
    with that cell outlined."""
    cell = reuse.cell_at(run, x, y, branch, CELL)
    if cell is None:
        return empty_figure("click inside the grid"), "", reuse.reuse_grid_image(run, branch, CELL)
    step, layer, head, refreshed = cell
    grid = reuse.reuse_grid_image(run, branch, CELL, highlight=(y // CELL, x // CELL))
    key = reuse.mask_in_effect(run, step, layer, head, branch)
    what = "refreshed" if refreshed == 1 else "reused" if refreshed == 0 else "no decision"
    text = f"step {step}, layer {layer}, head {head}: {what}; mask `{key or 'not recorded'}`"
    if key is None:
        return empty_figure("this head's mask was not recorded at that step"), text, grid
    fig = go.Figure(sparsity.mask_heatmap(sparsity.mask_image(run, key, head), f"l{layer}h{head}", True))
    sparsity.square_axes(fig, 1, "clusters" if "q_offsets" in read_index(run.arrays)[key] else "blocks")
    fig.update_layout(title=f"l{layer}h{head} at step {step} ({what})", height=420,
                      margin={"l": 50, "r": 20, "t": 50, "b": 40})  # fmt: skip
    return fig, text, grid


def chunks_panel(run: Run, branch: str | None = None):
    """Branch picker, chunk timeline, accumulators and KV buffer."""
    branch_pick = _pick(branches(run, *chunks.EVENT_STATE) or ["cond"], branch)
    b = branch_pick.value
    return branch_pick, chunks.chunk_timeline(run, b), chunks.accumulators(run, b), chunks.kv_buffer(run)


def motion_panel(run: Run, frame: Any = 0, source: str = "method"):
    """Frame count and the frame shown, the motion source used (MotionCache's weights if the run has them,
    else optical flow), the heatmap over that frame, and token update counts."""
    n = len(run.frames())
    frame = min(max(int(frame or 0), 0), n - 1)
    if source == "method" and motion.token_maps(run, "weights") is None:
        source = "flow"
    if source == "flow" and frame == 0 and n > 1:  # optical flow starts at frame 1
        frame = 1
    return n, frame, source, motion.motion_overlay(run, frame, source), motion.update_counts(run)


def compare_panel(store: RunStore, run: Run):
    """Comparable runs (the dense one first) with the dense reference and the run picked, the Pareto plot, a note."""
    infos = compare.comparable_runs(store, run)
    infos.sort(key=lambda i: i.config.get("method") != "dense")
    options = [(f"{i.config.get('label')} · {i.run_id[-6:]}", i.run_id) for i in infos]
    ref = compare.dense_reference(store, run)
    chosen = [i for i in ([ref.run_id] if ref else []) + [run.run_id] if i]
    note = "" if ref or run.config.get("method") == "dense" else "No dense reference yet: run one."
    return Pick(options, chosen), compare.pareto(store, run), note


def compare_runs_panel(runs: list[Run]):
    """Side-by-side and difference videos (H.264 files in a new temporary folder, which replaces this process's
    previous one: the app has copied those files into its cache by then), the difference gain, per-frame quality
    curves and the table; the first run is the reference."""
    if len(runs) < 2:
        raise UserError("pick at least two runs (the first is the reference)")
    both = compare.side_by_side(runs)
    diff, gain = compare.difference_video(runs[0], runs[1])
    fps = int(runs[0].config.get("fps") or 16)
    out_dir = tempdirs.latest("compare")
    write_h264(both, out_dir / "side_by_side.mp4", fps=fps)
    write_h264(diff, out_dir / "difference.mp4", fps=fps)
    table = compare.quality(runs[0], runs[1:]).round(3)
    if runs[0].config.get("method") == "dense":  # how far to trust each speedup (viz.speed)
        ref = runs[0].info()
        table["timing"] = [speed.table_note(r, ref) if r.config.get("method") != "dense" else "" for r in runs[1:]]
    curves = compare.quality_curves(runs[0], runs[1:])
    return out_dir / "side_by_side.mp4", out_dir / "difference.mp4", gain, curves, table


def note_table(text: str) -> pd.DataFrame:
    """A one-cell table saying why a table is empty (an empty frame shows placeholder columns 1 2 3)."""
    return pd.DataFrame({"note": [text]})


def _breakdown(run: Run, ref: RunInfo | None, profiled: bool) -> tuple[go.Figure, pd.DataFrame, pd.DataFrame]:
    """The phase breakdown beside the dense reference and its Amdahl numbers, or why there is none (a reference
    that cannot be read is named; this run's own damage is raised)."""
    why = "profile this run and its dense reference (same prompt and seed) to see the breakdown"
    if run.config.get("method") == "dense":
        why = "this run is dense: the breakdown shows a method's profiled run beside its profiled dense reference"
    try:
        if ref is not None and profiled and profile.is_profiled(ref.path):
            fig, phases, amdahl = profile.breakdown_chart(run, ref.path)
            amdahl_df = pd.DataFrame([{"quantity": k, "value": round(v, 3)} for k, v in amdahl.items()])
            return fig, phases.round(3), amdahl_df
    except DamagedRunError as exc:
        if exc.run_id == run.run_id:
            raise
        why = f"no breakdown: {compare.skipped(exc)}"
    return empty_figure(why), note_table(why), note_table(why)


def profile_panel(store: RunStore, run: Run):
    """Range and kernel charts and tables, peak memory, the breakdown beside the dense reference, the trace, and
    whether the run was profiled (TensorBoard has something to show)."""
    profiled = profile.is_profiled(run)
    t = profile.profile_tables(run)
    fig, phases, amdahl_df = _breakdown(run, compare.dense_reference(store, run), profiled)
    unprofiled = "not profiled: tick 'Profile' (or --profile) and generate again"
    tables = [t[k].round(r) if profiled else note_table(unprofiled) for k, r in (("ranges", 3), ("kernels", 3),
                                                                                  ("memory", 1))]  # fmt: skip
    trace = run.data_file("trace.json.gz")  # never a symbolic link
    return (
        profile.range_chart(run),
        profile.kernel_chart(run),
        *tables,
        fig,
        phases,
        amdahl_df,
        str(trace) if trace is not None else None,
        profiled,
    )


# short columns first: at 1400 px the long prompt is the one that runs off the screen
RUN_COLUMNS = ["run", "status", "method", "wall_s", "device", "kernels", "model", "seed", "prompt"]


def _device(metrics: dict) -> str | None:
    """The run's device, with its context-parallel layout (``cpu · ulysses×2``) where it had one."""
    par = metrics.get("parallel")
    return f"{metrics.get('device')} · {par['kind']}×{par['degree']}" if par else metrics.get("device")


def runs_table(store: RunStore) -> pd.DataFrame:
    """One row per stored run, newest first; a run that cannot be read is listed as damaged, with why
    (it can be deleted, not opened)."""
    rows = [
        {
            "run": i.run_id,
            "status": f"damaged: {i.damaged}" if i.damaged else "ok",
            "method": i.config.get("label"),
            "model": i.config.get("model"),
            "prompt": i.config.get("prompt"),
            "seed": i.config.get("seed"),
            "wall_s": round(float(i.metrics.get("wall_s") or 0), 2),
            "device": _device(i.metrics),
            "kernels": i.metrics.get("kernel_backend"),
        }
        for i in store.list(damaged=True)
    ]
    return pd.DataFrame(rows, columns=RUN_COLUMNS)
