"""Shared by the benchmark scripts (run as ``python benchmarks/<name>.py``, so importable as ``timing``)."""

from __future__ import annotations

import os
import re
import resource
import time

# A section of a generated page that another script writes: <!-- NAME: begin (script) --> ... <!-- NAME: end -->
_SECTION = re.compile(r"<!-- ([\w-]+): begin \([^)]*\) -->.*?<!-- \1: end -->", re.S)


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


def write_page(path: str, text: str) -> None:
    """Write the generated markdown page ``text`` to ``path``, keeping the marked sections of the page
    already there that ``text`` lacks (another script's, e.g. ``export_formats.py``'s), at its end."""
    old = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
    have = {m.group(1) for m in _SECTION.finditer(text)}
    kept = [m.group(0) for m in _SECTION.finditer(old) if m.group(1) not in have]
    if kept:
        text = text.rstrip() + "\n\n" + "\n\n".join(kept) + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_section(path: str, section: str) -> None:
    """Replace the marked ``section`` (``_SECTION``'s form) of the page ``path``, or append it; the
    rest of the page is kept."""
    match = _SECTION.fullmatch(section.strip())
    if match is None:
        raise ValueError("section must be one <!-- NAME: begin (script) --> ... <!-- NAME: end --> block")
    old = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
    same = [m for m in _SECTION.finditer(old) if m.group(1) == match.group(1)]
    if same:
        text = old[:same[0].start()] + section.strip() + old[same[0].end():]
    else:
        text = old.rstrip() + "\n\n" + section.strip() + "\n"
    write_page(path, text)
