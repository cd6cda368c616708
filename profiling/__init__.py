"""torch.profiler wrappers, named ranges, kernel tables and trace export (see the profiling issue)."""
