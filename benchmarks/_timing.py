"""Timing shared by the benchmark scripts."""
from __future__ import annotations

import statistics
import time


def timeit(fn, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall-clock seconds over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)
