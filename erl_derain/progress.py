"""Progress of a long loop (training steps, video frames): a bar on a terminal, plain lines in a log.

``Progress(total, unit="step")`` then ``update(done, values)`` after each unit and ``close()``.

* On a terminal (``stream.isatty()``) it redraws one line in place with a carriage return (at most
  ``REDRAW_SECONDS`` apart, and at the end): ``  377/1500 [=====>........] 25% 2.1 steps/s 8:45 left -
  loss: 0.1623 - lr: 4.0000e-04``.
* Otherwise (CI, ``nohup``, ``> file``, a pipe) it prints one plain line per report, ``--progress_every``
  apart: ``30s`` (the default: every 30 seconds of wall time), or an integer (every that many units);
  the last unit is always reported. A quickstart log is then a few kilobytes instead of a megabyte of
  bar redraws.

The rate is counted from the first update (which includes tracing and warm-up) and the time left
is the remaining units at that rate. ``values`` are averaged over the units since the previous report
(lines) or since the start (the bar, as Keras' Progbar), except the ``stateful`` ones (the learning
rate), shown as their last value. No TensorFlow here.
"""

from __future__ import annotations

import math
import re
import sys
import time
from typing import Callable, Mapping

REDRAW_SECONDS = 0.1
DEFAULT_EVERY = "30s"


class ProgressError(ValueError):
    """A bad ``--progress_every``."""


def parse_every(value, flag: str = "--progress_every") -> tuple[str, float]:
    """``("seconds", s)`` for ``"30s"`` / ``"1.5s"``, ``("units", n)`` for ``"200"``; a ``ValueError``
    naming ``flag`` otherwise (zero or negative included)."""
    text = str(value).strip().lower()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(s|sec|seconds?)?", text)
    if not m:
        raise ProgressError(f"{flag}={value!r}: give seconds as e.g. 30s, or a number of steps as e.g. 200")
    amount = float(m.group(1))
    if amount <= 0:
        raise ProgressError(f"{flag}={value!r} must be positive")
    if m.group(2):
        return "seconds", amount
    if amount != int(amount):
        raise ProgressError(f"{flag}={value!r}: a number of steps is a whole number (seconds take an s: 30s)")
    return "units", int(amount)


def format_duration(seconds: float) -> str:
    """``8:45``, ``1:02:03``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _format_value(v: float) -> str:
    if v != v or v in (math.inf, -math.inf):
        return str(v)
    a = abs(v)
    return f"{v:.4e}" if a and (a < 1e-3 or a >= 1e4) else f"{v:.4f}"


class Progress:
    """A progress display of ``total`` units (module docstring). ``initial``: units already done (a
    resumed stage); ``prefix``: text before each line (e.g. the stage); ``unit``: "step", "frame";
    ``every``: ``--progress_every`` (lines only); ``mode``: ``"auto"`` (bar on a terminal), ``"bar"``,
    ``"lines"`` or ``"none"``; ``clock``: for tests."""

    def __init__(self, total: int | None, *, initial: int = 0, unit: str = "step", prefix: str = "",
                 every=DEFAULT_EVERY, stream=None, mode: str = "auto", stateful=("lr",),
                 clock: Callable[[], float] = time.monotonic):
        self.total = int(total) if total else None
        self.unit, self.prefix = unit, prefix
        self.stream = stream if stream is not None else sys.stdout
        if mode == "auto":
            isatty = getattr(self.stream, "isatty", None)
            mode = "bar" if isatty is not None and isatty() else "lines"
        if mode not in ("bar", "lines", "none"):
            raise ValueError(f"progress mode must be auto, bar, lines or none, got {mode!r}")
        self.mode = mode
        self.every_kind, self.every = parse_every(every)
        self.stateful = set(stateful)
        self.clock = clock
        self.done = int(initial)
        self._t_first = None  # time and count of the first update: the rate excludes warm-up before it
        self._done_first = self.done
        self._last_report_t = None
        self._last_report_done = self.done
        self._last_draw = -math.inf
        self._width = 0
        self._sums: dict = {}
        self._counts: dict = {}
        self._last: dict = {}
        self.lines_written = 0

    # -- numbers ---------------------------------------------------------------------------------------
    def rate(self) -> float | None:
        """Units per second since the first update."""
        if self._t_first is None or self.done <= self._done_first:
            return None
        dt = self.clock() - self._t_first
        return (self.done - self._done_first) / dt if dt > 0 else None

    def seconds_left(self) -> float | None:
        r = self.rate()
        if r is None or self.total is None:
            return None
        return max(0, self.total - self.done) / r

    # -- updates ---------------------------------------------------------------------------------------
    def update(self, done: int, values: Mapping[str, float] | None = None) -> None:
        """``done`` units are finished; ``values`` of the last unit (losses, learning rate)."""
        now = self.clock()
        if self._t_first is None:
            self._t_first, self._done_first = now, int(done)
            self._last_report_t = now
        self.done = int(done)
        for k, v in (values or {}).items():
            v = float(v)
            self._last[k] = v
            self._sums[k] = self._sums.get(k, 0.0) + v
            self._counts[k] = self._counts.get(k, 0) + 1
        if self.mode == "none":
            return
        last = self.total is not None and self.done >= self.total
        if self.mode == "bar":
            if last or now - self._last_draw >= REDRAW_SECONDS:
                self._draw(now)
            return
        due = (now - self._last_report_t >= self.every if self.every_kind == "seconds"
               else self.done - self._last_report_done >= self.every)
        if due or last:
            self._line(now)

    def _values_text(self) -> str:
        parts = []
        for k in self._last:
            v = self._last[k] if k in self.stateful or not self._counts.get(k) else self._sums[k] / self._counts[k]
            parts.append(f"{k}: {_format_value(v)}")
        return (" - " + " - ".join(parts)) if parts else ""

    def _count_text(self) -> str:
        if self.total is None:
            return f"{self.done}"
        n = len(str(self.total))
        return f"{self.done:>{n}}/{self.total}"

    def _rate_text(self) -> str:
        r = self.rate()
        if r is None:
            return f"? {self.unit}s/s"
        return f"{r:.2f} {self.unit}s/s" if r >= 0.1 else f"{1.0 / r:.1f} s/{self.unit}"

    def _draw(self, now: float) -> None:
        bar = ""
        if self.total:
            frac = min(1.0, self.done / self.total)
            filled = int(frac * 20)
            bar = " [" + "=" * filled + (">" if filled < 20 else "") + "." * max(0, 19 - filled) + f"] {frac:4.0%}"
        text = (f"{self.prefix}{self._count_text()}{bar} {self._rate_text()} "
                f"{format_duration(self.seconds_left())} left{self._values_text()}")
        pad = max(0, self._width - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._width = len(text)
        self._last_draw = now

    def _line(self, now: float) -> None:
        pct = f" ({self.done / self.total:.0%})" if self.total else ""
        left = f", {format_duration(self.seconds_left())} left" if self.total else ""
        self.stream.write(f"{self.prefix}{self.unit} {self._count_text()}{pct}, {self._rate_text()}{left}"
                          f"{self._values_text()}\n")
        self.stream.flush()
        self.lines_written += 1
        self._last_report_t, self._last_report_done = now, self.done
        self._sums = {k: 0.0 for k in self._sums}
        self._counts = {k: 0 for k in self._counts}

    def close(self) -> None:
        """End the bar's line (lines need nothing)."""
        if self.mode == "bar" and self._width:
            self.stream.write("\n")
            self.stream.flush()
            self._width = 0
