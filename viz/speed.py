"""Whether a run's speedup over dense can be trusted, and the headline rows that say so.

A ratio of two times is only a speedup when both were timed alike. :func:`verdict` compares a run with its dense
reference and flags the ratio when

* the two were timed under different machine load: other processes' average busy cores (:mod:`accel.load`)
  differ by more than :data:`LOAD_GAP_CORES`;
* it is above the most the run's work allows (:func:`work_bound`, an Amdahl-style bound from what the method
  skipped; with both runs profiled, the breakdown's bound from attention's share of a dense call), by more than
  :data:`viz.profile.BOUND_SLACK`.

A run re-timed against dense (:mod:`accel.retime`, both sides alternated in one process) is judged on those
times instead. A run that computed what dense computes (the same frames, or a bound of 1) reads as equal to dense.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from statistics import median

from accel.load import OTHER_CORES_WARN
from accel.retime import retimed
from accel.runs import DamagedRunError, Run, RunInfo, RunStore
from profiling import breakdown
from viz import compare, profile

LOAD_GAP_CORES = OTHER_CORES_WARN  # default: runs whose other-process load differs by more were timed differently
RETIME_HINT = "Press **Re-time both, interleaved** (below) for a ratio whose two sides were timed alike."


@dataclass(frozen=True)
class Bound:
    """The most speedup a run's work allows over dense (``ratio``) and why (``why``)."""

    ratio: float
    why: str


@dataclass
class Verdict:
    """A run's ratios to its dense reference, how they were timed, and what makes them doubtful (``flags``)."""

    reference: RunInfo  # the dense run
    wall: float | None
    denoise: float | None
    timed: str  # how: "separate runs" or "re-timed interleaved with dense, 3 rounds, <when>"
    retimed: bool  # timed by accel.retime (both sides alike), not as two separate runs
    loads: tuple[float | None, float | None]  # other processes' busy cores: this run, dense
    cpus: int | None
    bound: Bound | None
    same_video: bool  # the same frames as dense
    flags: list[str] = field(default_factory=list)  # what makes the ratios doubtful, in full
    short: list[str] = field(default_factory=list)  # the same, in a few words (tables)

    @property
    def equal_to_dense(self) -> bool:
        """The run did dense's work: same frames, or nothing skipped."""
        return self.same_video or (self.bound is not None and self.bound.ratio <= 1.0 + 1e-9)


def _load(metrics: dict) -> dict:
    """The :class:`accel.load.LoadMeter` result a run stored (empty if none)."""
    return (metrics.get("timing") or {}).get("load") or {}


def other_cores(metrics: dict) -> float | None:
    """Other processes' average busy cores while the run was timed (from the load average where the CPU counters
    were not readable); None if the run recorded neither."""
    return _busy(_load(metrics))


def _busy(load: dict) -> float | None:
    """Other processes' busy cores in a :class:`accel.load.LoadMeter` result."""
    if isinstance(load.get("other_cores"), (int, float)):
        return float(load["other_cores"])
    avg = [v for v in (load.get("loadavg_start"), load.get("loadavg_end")) if isinstance(v, (int, float))]
    own = load.get("own_cores") if isinstance(load.get("own_cores"), (int, float)) else 0.0
    return max(0.0, max(avg) - own) if avg else None


def _cpus(load: dict) -> int | None:
    return load["cpus"] if isinstance(load.get("cpus"), int) else None


def work_bound(metrics: dict, method: str | None) -> Bound | None:
    """The most speedup over dense the work a run skipped can give, were the skipped part all of the time: sparse
    attention skips at most its sparse steps' share of ``1 - density`` (and nothing on heads it ran on dense
    SDPA); a cache skips its share of token-weighted block work. None where the metrics do not say."""
    if method == "dense":
        return Bound(1.0, "dense computes everything")
    calls, dense_calls = metrics.get("attn_calls"), metrics.get("attn_calls_dense") or 0
    if metrics.get("density_mean_sparse") is not None and calls:
        dense_heads = metrics.get("dense_head_frac") or 0.0
        if dense_heads >= 1.0:
            return Bound(1.0, "every head ran dense SDPA")
        sparse_share = 1.0 - dense_calls / calls
        skipped = sparse_share * min(1.0 - metrics["density_mean_sparse"], 1.0 - dense_heads)
        if skipped <= 0:
            return Bound(1.0, f"no attention work skipped: mean density {metrics['density_mean_sparse']:.3f}")
        return Bound(1.0 / max(1.0 - skipped, 1e-9), f"at most {skipped:.0%} of the attention work skipped")
    done = metrics.get("block_executions")
    possible = metrics.get("block_executions_uncached")
    units, units_possible = metrics.get("unit_executions"), metrics.get("unit_executions_possible")
    if possible is None and units_possible:  # a diffusers cache: a bound only where whole blocks were skipped
        possible = metrics.get("block_executions_possible")
        if possible and abs(units / units_possible - (done or 0) / possible) > 1e-3:
            return None  # some blocks skipped a unit and ran the rest: their cost split is not known
    if done is not None and possible:
        skipped = 1.0 - done / possible
        if skipped <= 0:
            return Bound(1.0, "no block work skipped")
        return Bound(possible / max(done, 1e-9), f"{skipped:.0%} of the block work skipped")
    return None


def _profile_bound(run: Run, ref: RunInfo) -> Bound | None:
    """Amdahl's bound from the profiled breakdown when both runs were profiled (None otherwise)."""
    if not (profile.is_profiled(run) and profile.is_profiled(ref.path)):
        return None
    try:
        amdahl = breakdown.compare(run, Run(ref.path))[1]
    except DamagedRunError:
        return None
    return Bound(amdahl["transformer_speedup_bound"],
                 f"attention {amdahl['attention_fraction']:.0%} of a dense call, "
                 f"{profile.times(amdahl['attention_speedup'])} as fast (profiles)")  # fmt: skip


def _tightest(*bounds: Bound | None) -> Bound | None:
    given = [b for b in bounds if b is not None]
    return min(given, key=lambda b: b.ratio) if given else None


def verdict(store: RunStore, run: Run) -> Verdict | None:
    """``run``'s speedup over its dense reference and how far to trust it; None for a dense run or without a
    comparable dense run."""
    if run.config.get("method") == "dense":
        return None
    ref = compare.dense_reference(store, run)
    return judge(run, ref) if ref is not None else None


def judge(run: Run, ref: RunInfo) -> Verdict:
    """``run``'s ratios to the dense run ``ref`` (its re-timing where it has one) and what makes them doubtful."""
    again = retimed(run)
    if again is not None:
        wall, den = (median(again[k]["dense"]) / median(again[k]["run"]) for k in ("wall_s", "denoise_s"))
        load = again.get("load") or {}
        loads, cpus = (_busy(load),) * 2, _cpus(load)
        timed = f"re-timed interleaved with dense, {again['rounds']} rounds, {again.get('created') or ''}".strip()
    else:
        wall, den = compare.speedup(ref, run, "wall"), compare.speedup(ref, run, "denoise")
        loads, cpus = (other_cores(run.metrics), other_cores(ref.metrics)), _cpus(_load(run.metrics))
        timed = "separate runs"
    bound = _tightest(work_bound(run.metrics, run.config.get("method")), _profile_bound(run, ref))
    sha = run.metrics.get("frames_sha256")
    same = bool(sha) and sha == ref.metrics.get("frames_sha256")
    v = Verdict(ref, wall, den, timed, again is not None, loads, cpus, bound, same)
    if again is None and None not in loads and abs(loads[0] - loads[1]) > LOAD_GAP_CORES:
        v.flags.append(
            f"timed under different load: other processes kept {loads[0]:.1f} of {cpus or '?'} cores busy during "
            f"this run, {loads[1]:.1f} during dense `{ref.run_id}`"
        )
        v.short.append(f"timed under different load ({loads[0]:.1f} vs dense {loads[1]:.1f} busy cores)")
    best = max((r for r in (wall, den) if r is not None), default=None)
    if bound is not None and best is not None and profile.above_bound(best, bound.ratio):
        v.flags.append(
            f"{_x(best)} is above the most this run's work allows ({_x(bound.ratio)}: {bound.why}): the "
            "difference is timing noise"
        )
        v.short.append(f"{_x(best)} is above its work bound {_x(bound.ratio)}: noise")
    return v


def table_note(run: Run, ref: RunInfo) -> str:
    """How far to trust ``run``'s ratios in a comparison against the dense run ``ref``, in a few words."""
    v = judge(run, ref)
    if v.short:
        return "⚠ " + "; ".join(v.short)
    if v.equal_to_dense:
        return "did dense's work: no speedup to expect"
    return "re-timed interleaved" if v.retimed else "timed alike (similar load)"


def rows(store: RunStore, run: Run) -> list[tuple[str, str]]:
    """Headline rows on speed against dense: the ratios (or why there are none), the machine load of both sides,
    the bound, and what makes the ratio doubtful."""
    method = run.config.get("method")
    if method == "dense":
        return _dense_rows(store, run)
    v = verdict(store, run)
    if v is None:
        return [("speedup vs dense", "no dense run of this prompt and seed yet (Compare tab)")]
    measured = f"{_x(v.wall)} wall, {_x(v.denoise)} denoise ({v.timed})"
    if v.equal_to_dense:
        what = "the same video as dense" if v.same_video else v.bound.why
        value = f"**none: this run did dense's work** ({what}); measured {measured}"
    elif v.flags:
        value = f"**not a trustworthy speedup**: measured {measured}"
    else:
        value = measured
        band = None if v.retimed else compare.noise_band(store, v.reference, "wall")
        value += f"; dense itself varies {band[0]:.2f}-{band[1]:.2f}x" if band else ""
    out = [("speedup vs dense (re-timed in one process)" if v.retimed else f"speedup vs dense `{v.reference.run_id}`",
            value)]  # fmt: skip
    cpus = f" of {v.cpus}" if v.cpus else ""
    if not v.retimed:
        shown = [f"{c:.1f}{cpus}" if c is not None else "not recorded" for c in v.loads]
        out.append(("other processes' busy cores while timed", f"this run {shown[0]} · dense {shown[1]}"))
    elif v.loads[0] is not None:
        out.append(("other processes' busy cores while re-timed", f"{v.loads[0]:.1f}{cpus} (both sides alike)"))
    if v.bound is not None:
        out.append(("most speedup this run's work allows", f"{_x(v.bound.ratio)} ({v.bound.why})"))
    if v.flags:
        out.append(("⚠ why not to trust it", "<br>".join(f"• {flag}" for flag in v.flags) + f"<br>{RETIME_HINT}"))
    return out


def _dense_rows(store: RunStore, run: Run) -> list[tuple[str, str]]:
    """A dense run is the reference: how far other dense runs of its video stray from it, not a speedup."""
    band = compare.noise_band(store, run, "wall")
    if band is None:
        return [("dense reference", "this run is the reference the methods of its video are timed against")]
    return [("dense reference", f"other dense runs of this video took {1 / band[1]:.2f}-{1 / band[0]:.2f}x its "
                                f"time ({band[2]} timed passes): the spread of timing alone")]  # fmt: skip


def _x(ratio: float | None) -> str:
    return "n/a" if ratio is None else f"{ratio:.2f}x"
