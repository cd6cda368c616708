"""Sparse-VideoGen2 (METHODS 1.2): k-means on Q and K per head, size-weighted top-p cluster pairs, semantic
permutation; with Temporal Mask Reuse and Error-guided Budgeted Calibration. The algorithm is
:mod:`accel.attention.svg2`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from accel.methods import by_size
from accel.methods.headwise import headwise_method
from accel.settings import HeadwiseSettings, check_int, check_unit, meta

if TYPE_CHECKING:
    from accel.attention.svg2 import SVG2
    from accel.models import ModelSpec
    from accel.telemetry import Recorder

# Query / key clusters and TMR refresh threshold per model size: Wan2.1 300 / 1000 (the reference's) and TMR delta 8
# (secondhand, raw drift); the embedded models' few tokens take fewer clusters and the measured delta 3.0.
MODEL_DEFAULTS = {
    "tiny": {"clusters": (20, 40), "tmr_delta": 3.0},
    "pocket": {"clusters": (10, 20), "tmr_delta": 3.0},
    "1.3b": {"clusters": (300, 1000), "tmr_delta": 8.0},
    "14b": {"clusters": (300, 1000), "tmr_delta": 8.0},
}


@dataclass(frozen=True)
class SVG2Settings(HeadwiseSettings):
    """Sparse-VideoGen2: k-means semantic permutation + size-weighted top-p cluster pairs (METHODS 1.2)."""

    method: ClassVar[str] = "svg2"
    threshold_name: ClassVar[str] = "top_p"
    top_p: float = field(
        default=0.9,
        metadata=meta(
            "Cumulative share of the size-weighted cluster-pair map kept per query cluster (the pair that crosses it "
            "is kept); 1 keeps every pair (the reference's bf16 running sum can round past 1 and drop tail pairs "
            "below its rounding error: the bench keeps them)."
        ),
    )
    query_clusters: int | None = field(
        default=None,
        metadata=meta("Query clusters qc per head; empty = the model's (Wan2.1 300; the app shows each).", abbrev="qc"),
    )
    key_clusters: int | None = field(
        default=None,
        metadata=meta("Key clusters kc per head; empty = the model's (Wan2.1 1000; the app shows each).", abbrev="kc"),
    )
    min_kc_ratio: float = field(
        default=0.10, metadata=meta("Always keep at least floor(ratio * kc) key clusters per query cluster.")
    )
    first_times_fp: float = field(
        default=0.2,
        metadata=meta("Leading fraction of denoising steps computed densely: floor(fraction x steps).", abbrev="ft"),
    )
    first_layers_fp: float = field(
        default=0.03,
        metadata=meta(
            "Leading fraction of layers computed densely: floor(fraction x layers) as the reference rounds "
            "(0.03: 0 of 30 layers, 1 of 40).",
            abbrev="fl",
        ),
    )
    kmeans_init_iters: int = field(default=50, metadata=meta("k-means iterations on the first sparse step."))
    kmeans_warm_iters: int = field(
        default=2, metadata=meta("k-means iterations on later steps, warm-started from the last centroids.")
    )

    def check(self) -> None:
        check_unit("top_p", self.top_p)
        for name in ("query_clusters", "key_clusters"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name), 1)
        check_unit("min_kc_ratio", self.min_kc_ratio, open_low=False)
        check_unit("first_times_fp", self.first_times_fp, open_low=False)
        check_unit("first_layers_fp", self.first_layers_fp, open_low=False)
        check_int("kmeans_init_iters", self.kmeans_init_iters, 1)
        check_int("kmeans_warm_iters", self.kmeans_warm_iters, 1)
        self._check_headwise()

    def dense_steps(self, num_steps: int) -> int:
        """``floor(first_times_fp * steps)``, as the reference rounds (0.2 of 50 steps -> 10)."""
        return math.floor(self.first_times_fp * num_steps + 1e-9)

    def dense_layers(self, num_layers: int) -> int:
        """``floor(first_layers_fp * layers)``, as the reference rounds: 0.03 of 30 layers -> 0, of 40 -> 1."""
        return math.floor(self.first_layers_fp * num_layers + 1e-9)


model_defaults = by_size(MODEL_DEFAULTS)


def _build(settings: SVG2Settings, spec: ModelSpec, recorder: Recorder | None = None, seed: int = 0) -> SVG2:
    from accel.attention.svg2 import SVG2

    d = model_defaults(spec)
    return SVG2(settings, d["clusters"], recorder, seed=seed, model=spec.name, tmr_delta=d["tmr_delta"])


def _note(spec: ModelSpec) -> str:
    d = model_defaults(spec)
    return f"SVG2 clusters {d['clusters'][0]}/{d['clusters'][1]}, TMR delta {d['tmr_delta']:g}"


METHOD = headwise_method(
    SVG2Settings,
    _build,
    20,
    "k-means on Q and K per head, size-weighted top-p cluster pairs, semantic permutation",
    model_defaults,
    _note,
    "#ff7f0e",
)
