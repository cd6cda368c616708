"""Benchmarks that print tables: synthetic-truth quality, head-wise ablation, chunk caches, recorder cost."""
