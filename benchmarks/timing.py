"""Shared by the benchmark scripts (run as ``python benchmarks/<name>.py``, so importable as ``timing``)."""

from __future__ import annotations

import resource
import time


def peak_rss_mib() -> float:
    """This process's peak resident memory so far (``ru_maxrss``: process-wide and monotone)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def seconds_per_call(fn, steps: int, warmup: int = 1) -> float:
    """Mean wall time of ``fn()`` over ``steps`` calls after ``warmup`` calls (tracing, caches).
    ``fn`` must force its result (``float(...)``, ``.numpy()``) so that the time covers the work."""
    for _ in range(warmup):
        fn()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - t0) / steps


def time_calls(fn, steps: int, warmup: int = 1) -> dict:
    """Wall time of each call of ``fn()``: ``warmup`` calls first, then ``steps`` timed calls.

    Returns ``first_s`` (the very first call: tracing, XLA compilation, oneDNN primitive creation),
    ``times`` (the ``steps`` timed calls), ``mean_s``, ``median_s`` and ``min_s``. With ``warmup=0``
    the first call is also the first timed one. ``fn`` must force its result (see ``seconds_per_call``)."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    first = None
    for _ in range(warmup):
        t0 = time.perf_counter()
        fn()
        if first is None:
            first = time.perf_counter() - t0
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    ordered = sorted(times)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else 0.5 * (ordered[mid - 1] + ordered[mid])
    return {"first_s": times[0] if first is None else first, "times": times,
            "mean_s": sum(times) / len(times), "median_s": median, "min_s": ordered[0]}
