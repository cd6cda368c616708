"""Figures of a run folder: every view of the app, each a pure function of a run (or the run store).

Plotly figures and opencv images only, no model and no UI, so the CLI's ``report`` writes the same
figures the app shows. Modules: :mod:`viz.sparsity` (block masks, densities), :mod:`viz.reuse`
(Temporal Mask Reuse), :mod:`viz.chunks` (chunk cache timeline, KV buffer), :mod:`viz.motion`
(motion heatmaps), :mod:`viz.compare` (side by side, quality, Pareto), :mod:`viz.profile`
(profiler tables and the breakdown), :mod:`viz.report` (one HTML file of all of it).
"""
