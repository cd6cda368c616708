"""Error-guided Budgeted Calibration (METHODS 1.4): per-head thresholds under a global sparsity budget.

1. Dense trajectories: run the dense pipeline on calibration prompts and keep, at sampled steps
   (one per quarter of the sparse part of the schedule), each transformer call's input latents,
   timestep, text context and dense output, per CFG branch.
2. Single-head probes: for every (layer, head, candidate) sparsify that one head, everything else
   dense, and record the output error and the head's sparsity. Probes of one layer run as one
   batch (batch element = one (head, candidate)); blocks before the layer are skipped by replaying
   their dense outputs (they are unchanged by a later head), the rest runs through the real model.
3. Error: ``eps = y_sparse - y_dense``; orthonormal 3-D FFT over (T, H, W); four bands (temporal
   low/high x spatial low/high, "low" = |fftfreq| < 0.25, spatial-low needs both spatial axes low);
   ``r_q = sum_band |F eps|^2 / (sum |F y_dense|^2 + 1e-12)``; ``e = sum_q w_q r_q`` with
   ``(LL, LH, HL, HH) = (1, 0.5, 0.01, 0.01)`` (secondhand; settings).
4. ``scipy.optimize.milp``: minimise ``sum e_hk x_hk`` with one candidate per head and mean sparsity
   ``>= S_min``, the mean sparsity of the uniform reference threshold (the method's default: 0.9, SpargeAttn
   0.98), per CFG branch.

Modules: :mod:`accel.ebc.spec` (what to calibrate), :mod:`accel.ebc.probe` (steps 1-3), :mod:`accel.ebc.calibrate`
(step 4 and the table). It runs pipelines with the methods installed, so it sits above the implementations.
"""
