"""Shared by the benchmark scripts (run as ``python benchmarks/<name>.py``, so importable as ``timing``)."""

from __future__ import annotations

import os
import re
import resource
import time
from pathlib import Path

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


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``'s 'model name'), else what ``platform`` knows."""
    import platform

    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def shared_data_dir() -> Path:
    """The shared data folder: ``$ERL_DERAIN_SHARED_DATA``, else ``../shared/data`` beside the repository."""
    env = os.environ.get("ERL_DERAIN_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


def machine_summary() -> str:
    """'<CPU model>, N cores, TensorFlow X, load average a b c at the end' for a section's 'measured on'
    (a load average above the core count means the timings shared the machine)."""
    try:
        import tensorflow as tf

        tf_version = f"TensorFlow {tf.__version__}"
    except ImportError:
        tf_version = "no TensorFlow"
    load = " ".join(f"{v:.2f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "unknown"
    return f"{cpu_name()}, {os.cpu_count()} cores, {tf_version}, load average {load} at the end"


def marked_section(name: str, script: str, title: str, command: str, lines: list[str]) -> str:
    """A section for ``write_section``: a '## title' heading, the command that measured it, the
    machine, then ``lines`` (markdown)."""
    return "\n".join([f"<!-- {name}: begin ({script}) -->", f"## {title}", "", "Measured with", "",
                      f"    {command}", "", f"on {machine_summary()}.", "", *lines, f"<!-- {name}: end -->"])
