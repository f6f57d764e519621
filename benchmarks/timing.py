"""Shared by the benchmark scripts (run as ``python benchmarks/<name>.py``, so importable as ``timing``)."""

from __future__ import annotations

import time


def seconds_per_call(fn, steps: int, warmup: int = 1) -> float:
    """Mean wall time of ``fn()`` over ``steps`` calls after ``warmup`` calls (tracing, caches).
    ``fn`` must force its result (``float(...)``, ``.numpy()``) so that the time covers the work."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps
