"""``python -m accel.bench_parallel``: the same as ``python -m accel.bench.parallel`` (context parallelism)."""

from accel.bench.parallel import main

if __name__ == "__main__":
    main()
