"""Figures for comparing deraining results, after the figures of the MENET and ERL-Net papers.

* :func:`psnr_histograms` -- per-image PSNR histograms of several runs on one test set, on shared
  bin edges (MENET Fig. 8); the counts come from :func:`histogram_counts`.
* :func:`ssim_boxplots` -- per-image SSIM boxplots of several runs (MENET Fig. 9).
* :func:`improved_proportion_bars` -- proportion of test images a candidate restores better than a
  baseline, per dataset and on the hard / easy subsets (ERL-Net Fig. 3); the proportions are those
  of ``erl_derain.metrics.improved_proportions``.
* :func:`comparison_grid` -- rows of images (e.g. rainy / baseline / candidate / clean) with
  per-cell captions such as the PSNR (ERL-Net Fig. 4).
* :func:`rim_overlay` -- the Result Indicator Map (ERL-Net Eq. 6, computed by
  ``erl_derain.metrics.result_indicator_map``) overlaid on an image, optionally split into the rain
  region and the background with their IoR / IoB (Eq. 7); the pixel colours come from the pure
  function :func:`overlay_rgb`.

Conventions:

* Images are ``H x W x 3`` RGB, either ``uint8`` (0..255) or floating point in ``[0, 1]`` (the
  package's convention, see :mod:`erl_derain.metrics`); float values outside ``[0, 1]`` are clipped
  for display, NaN/inf raise :class:`ValueError`.  :func:`comparison_grid` also shows ``H x W``
  single-channel maps in grey.
* Every plotting function writes one PNG to the ``path`` it is given, creating the parent folder,
  atomically (``erl_derain.fileio.atomic_open``: a temporary file in the same folder, then a
  rename; ``path`` may be a file-system URL), and returns the path as a ``str``.  Bad input raises :class:`ValueError` with a readable message before anything is
  written.
* Figures are built with :class:`matplotlib.figure.Figure` and the Agg canvas directly, never with
  ``pyplot``: nothing global (the user's backend, the pyplot figure list) is touched and the
  functions can be called from several threads.
* Non-finite per-image values (NaN, or ``inf`` PSNR of an image restored exactly) are left out of
  histograms and boxplots, and the legend says how many were left out; a run with no finite value
  at all is an error.
"""

from __future__ import annotations

import math
import os
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "IMPROVED_COLOR",
    "NOT_IMPROVED_COLOR",
    "histogram_counts",
    "psnr_histograms",
    "ssim_boxplots",
    "improved_proportion_bars",
    "comparison_grid",
    "overlay_rgb",
    "rim_overlay",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Default colour of improved RIM pixels (Okabe-Ito blue; readable with colour blindness).
IMPROVED_COLOR = (0.0, 0.45, 0.70)
#: Default colour of not-improved RIM pixels (Okabe-Ito orange).
NOT_IMPROVED_COLOR = (0.90, 0.60, 0.0)

# Per-run colours for histograms and boxplots (Okabe-Ito, then matplotlib's tab10).
_RUN_COLORS = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442",
               "#000000", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


# --------------------------------------------------------------------------------------------------
# Figure creation and atomic saving
# --------------------------------------------------------------------------------------------------


def _new_figure(figsize, layout: Optional[str] = "constrained"):
    """A Figure bound to its own Agg canvas (no pyplot, no global backend change)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: PathLike, dpi: float = 100) -> str:
    """Write ``fig`` as a PNG to ``path`` atomically; create the parent folder; return the path."""
    from erl_derain.fileio import atomic_open

    path = os.fspath(path)
    with atomic_open(path, "wb", make_parents=True, fsync=False) as f:
        fig.savefig(f, format="png", dpi=dpi)
    return path


# --------------------------------------------------------------------------------------------------
# Input validation
# --------------------------------------------------------------------------------------------------


def _check_mapping(obj, what: str) -> None:
    if not isinstance(obj, Mapping):
        raise ValueError(f"{what} must be a mapping (e.g. a dict), got {type(obj).__name__}")
    if len(obj) == 0:
        raise ValueError(f"{what} is empty: nothing to plot")


def _values_1d(values, what: str) -> np.ndarray:
    """``values`` as a 1-D float64 array (all values, finite or not); error if empty/non-numeric."""
    if isinstance(values, (str, bytes)):
        raise ValueError(f"{what} must be a sequence of numbers, got a string")
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{what} must be a sequence of numbers: {e}") from None
    if arr.ndim != 1:
        raise ValueError(f"{what} must be a 1-D sequence of numbers, got an array of shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{what} is empty")
    return arr


def _finite_runs(runs, what: str) -> Tuple[Dict[str, np.ndarray], Dict[str, int]]:
    """Per run: its finite values and how many non-finite values were left out."""
    _check_mapping(runs, what)
    finite, dropped = {}, {}
    for name, values in runs.items():
        arr = _values_1d(values, f"{what}[{name!r}]")
        ok = np.isfinite(arr)
        if not ok.any():
            raise ValueError(
                f"{what}[{name!r}] has no finite value ({arr.size} values, all NaN or infinite)"
            )
        finite[str(name)] = arr[ok]
        dropped[str(name)] = int(arr.size - ok.sum())
    if len(finite) != len(runs):
        raise ValueError(f"{what} has run names that coincide once converted to str: {list(runs)}")
    return finite, dropped


def _as_float_image(img, what: str, *, allow_gray: bool = False) -> np.ndarray:
    """An image as float32 in ``[0, 1]``: ``H x W x 3`` (or ``H x W`` if ``allow_gray``)."""
    arr = np.asarray(img)
    if arr.ndim == 3 and arr.shape[-1] == 1 and allow_gray:
        arr = arr[..., 0]
    if not ((arr.ndim == 3 and arr.shape[-1] == 3) or (allow_gray and arr.ndim == 2)):
        expected = "(H, W, 3) or (H, W)" if allow_gray else "(H, W, 3)"
        raise ValueError(f"{what} must be an image of shape {expected}, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{what} is empty (shape {arr.shape})")
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / np.float32(255.0)
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.floating):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{what} contains NaN or infinite values")
        return np.clip(arr.astype(np.float32), 0.0, 1.0)
    raise ValueError(
        f"{what} has dtype {arr.dtype}: pass uint8 (0..255) or floating point in [0, 1]"
    )


def _as_binary_map(m, what: str, shape: Tuple[int, int]) -> np.ndarray:
    """A binary ``H x W`` map (bool, or numbers that are all 0 or 1) as a bool array."""
    arr = np.asarray(m)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"{what} must be an H x W binary map, got shape {arr.shape}")
    if arr.shape != tuple(shape):
        raise ValueError(f"{what} has shape {arr.shape} but the image is {tuple(shape)}")
    if arr.dtype == np.bool_:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{what} has dtype {arr.dtype}: pass a bool or 0/1 numeric map")
    bad = ~((arr == 0) | (arr == 1))
    if bad.any():
        raise ValueError(
            f"{what} must contain only 0 and 1 (or be bool); found {int(bad.sum())} other values, "
            f"e.g. {arr[bad].flat[0]!r}"
        )
    return arr == 1


def _color(c, what: str) -> np.ndarray:
    try:
        arr = np.asarray(c, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be an (r, g, b) triple in [0, 1], got {c!r}") from None
    if arr.shape != (3,) or not np.all(np.isfinite(arr)) or arr.min() < 0 or arr.max() > 1:
        raise ValueError(f"{what} must be an (r, g, b) triple in [0, 1], got {c!r}")
    return arr


def _pct(x: float) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100.0 * x:.1f}%"


# --------------------------------------------------------------------------------------------------
# Per-image PSNR histograms (MENET Fig. 8) and SSIM boxplots (MENET Fig. 9)
# --------------------------------------------------------------------------------------------------


def histogram_counts(runs: Mapping[str, Sequence[float]],
                     bins: Union[int, str, Sequence[float]] = 20
                     ) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
    """Histogram counts of each run on bin edges shared by all runs.

    Args:
      runs: ``{run name: per-image values}``.  Non-finite values are left out.
      bins: number of bins or a numpy bin rule such as ``"auto"`` (the edges then span the finite
        values of all runs together, as :func:`numpy.histogram_bin_edges` computes them), or the
        edges themselves (strictly increasing; values outside them are not counted).

    Returns:
      ``(edges, {run name: counts})``; ``counts[i]`` is ``numpy.histogram(values, edges)[0][i]``
      (int64), so each counts array has ``len(edges) - 1`` entries.
    """
    finite, _ = _finite_runs(runs, "runs")
    edges = _shared_edges(finite, bins)
    return edges, {name: np.histogram(v, bins=edges)[0].astype(np.int64) for name, v in finite.items()}


def _shared_edges(finite: Mapping[str, np.ndarray], bins) -> np.ndarray:
    if isinstance(bins, (bool, np.bool_)):
        raise ValueError(f"bins must be a positive int, a numpy bin rule or bin edges, got {bins!r}")
    if isinstance(bins, (int, np.integer)):
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        return np.histogram_bin_edges(np.concatenate(list(finite.values())), bins=int(bins))
    if isinstance(bins, str):
        try:
            return np.histogram_bin_edges(np.concatenate(list(finite.values())), bins=bins)
        except ValueError as e:
            raise ValueError(f"bad bins rule {bins!r}: {e}") from None
    edges = _values_1d(bins, "bins (bin edges)")
    if edges.size < 2 or not np.all(np.isfinite(edges)) or np.any(np.diff(edges) <= 0):
        raise ValueError(f"bin edges must be at least 2 finite, strictly increasing values, got {bins!r}")
    return edges


def psnr_histograms(runs: Mapping[str, Sequence[float]], path: PathLike, *,
                    bins: Union[int, str, Sequence[float]] = 20, title: Optional[str] = None,
                    xlabel: str = "PSNR (dB)", dpi: float = 100) -> str:
    """Overlaid histograms of per-image PSNR, one per run, on shared bin edges (MENET Fig. 8).

    Each run is drawn as a translucent filled step histogram with its outline, plus a dashed
    vertical line at its mean; the legend gives the mean and the number of images (and how many
    non-finite values were left out).  Overlaying reads best for the 2-6 runs of a comparison: a
    better method shows as a shift to the right.

    Args:
      runs: ``{run name: per-image PSNR}`` in legend order, e.g. ``{"MEMD": [...], "ERL-Net": [...]}``.
      path: PNG to write.
      bins: as in :func:`histogram_counts` (the plotted counts are exactly its counts).
      title: figure title.
      xlabel: x axis label (the y axis is the number of images).
      dpi: resolution of the PNG.

    Returns:
      ``path`` as a ``str``.
    """
    finite, dropped = _finite_runs(runs, "runs")
    edges, counts = histogram_counts(runs, bins)
    fig = _new_figure((7.0, 4.2))
    ax = fig.add_subplot()
    for i, (name, c) in enumerate(counts.items()):
        color = _RUN_COLORS[i % len(_RUN_COLORS)]
        v = finite[name]
        label = f"{name} (mean {v.mean():.2f}, n={v.size}"
        label += f", {dropped[name]} non-finite left out)" if dropped[name] else ")"
        ax.stairs(c, edges, fill=True, alpha=0.25, color=color)
        ax.stairs(c, edges, color=color, linewidth=1.6, label=label)
        ax.axvline(float(v.mean()), color=color, linestyle="--", linewidth=1.0)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("number of images")
    ax.set_xlim(edges[0], edges[-1])
    ax.set_ylim(bottom=0)
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    if title:
        ax.set_title(title)
    return _save(fig, path, dpi)


def ssim_boxplots(runs: Mapping[str, Sequence[float]], path: PathLike, *,
                  title: Optional[str] = None, ylabel: str = "SSIM", dpi: float = 100) -> str:
    """Boxplots of per-image SSIM, one box per run, in the mapping's order (MENET Fig. 9).

    Boxes span the quartiles with the median line; whiskers reach the furthest value within 1.5
    IQR, beyond which points are drawn individually; a white diamond marks the mean.  The median is
    written above each box.  Also usable for any per-image metric via ``ylabel``.

    Returns:
      ``path`` as a ``str``.
    """
    finite, dropped = _finite_runs(runs, "runs")
    names = list(finite)
    fig = _new_figure((max(4.0, 1.1 * len(names) + 2.0), 4.5))
    ax = fig.add_subplot()
    positions = np.arange(1, len(names) + 1)
    bp = ax.boxplot([finite[n] for n in names], positions=positions, widths=0.55,
                    patch_artist=True, showmeans=True,
                    meanprops=dict(marker="D", markerfacecolor="white", markeredgecolor="black",
                                   markersize=5),
                    medianprops=dict(color="black", linewidth=1.5),
                    flierprops=dict(marker="o", markersize=3, alpha=0.6))
    for i, box in enumerate(bp["boxes"]):
        box.set_facecolor(_RUN_COLORS[i % len(_RUN_COLORS)])
        box.set_alpha(0.55)
    labels = []
    for n in names:
        lab = f"{n}\n(n={finite[n].size}"
        lab += f", {dropped[n]} left out)" if dropped[n] else ")"
        labels.append(lab)
    ax.set_xticks(positions)
    ax.set_xticklabels(labels, rotation=20 if len(names) > 4 else 0, fontsize="small")
    for p, n in zip(positions, names):
        med = float(np.median(finite[n]))
        ax.annotate(f"{med:.4f}", (p, float(finite[n].max())), xytext=(0, 4),
                    textcoords="offset points", ha="center", va="bottom", fontsize="x-small")
    ax.set_ylabel(ylabel)
    ax.margins(y=0.08)
    ax.grid(True, axis="y", alpha=0.3)
    if title:
        ax.set_title(title)
    return _save(fig, path, dpi)


# --------------------------------------------------------------------------------------------------
# Improved proportions (ERL-Net Fig. 3)
# --------------------------------------------------------------------------------------------------


def _proportion(entry: Mapping, key: str, dataset: str) -> float:
    if key not in entry:
        raise ValueError(f"results[{dataset!r}] has no {key!r} proportion (keys: {sorted(entry)})")
    try:
        v = float(entry[key])
    except (TypeError, ValueError):
        raise ValueError(f"results[{dataset!r}][{key!r}] must be a number, got {entry[key]!r}") from None
    if not math.isnan(v) and not 0.0 <= v <= 1.0:
        raise ValueError(f"results[{dataset!r}][{key!r}] = {v} is not a proportion in [0, 1] (or NaN)")
    return v


def improved_proportion_bars(results: Mapping[str, Mapping[str, float]], path: PathLike, *,
                             candidate: str = "candidate", baseline: str = "baseline",
                             title: Optional[str] = None, dpi: float = 100) -> str:
    """Bars of the proportion of improved test images per dataset, as ERL-Net Fig. 3.

    Left panel: the proportion over each whole test set; right panel: the proportion on its hard
    and easy subsets side by side.  A dashed line marks 0.5 (as many improved as not).  A NaN
    proportion (empty subset) draws no bar and is labelled "n/a".

    Args:
      results: ``{dataset: {"all": p, "hard": p_hard, "easy": p_easy}}`` with proportions in
        ``[0, 1]`` or NaN, e.g. the output of ``metrics.improved_proportions``; its optional
        ``"num_all"``, ``"num_hard"``, ``"num_easy"`` image counts are written under the bars
        (other keys are ignored).
      path: PNG to write.
      candidate, baseline: method names for the axis label.
      title: figure title.

    Returns:
      ``path`` as a ``str``.
    """
    _check_mapping(results, "results")
    datasets = [str(d) for d in results]
    vals = {}
    counts = {}
    for d, entry in zip(datasets, results.values()):
        if not isinstance(entry, Mapping):
            raise ValueError(f"results[{d!r}] must be a mapping with 'all', 'hard' and 'easy' keys")
        vals[d] = {k: _proportion(entry, k, d) for k in ("all", "hard", "easy")}
        counts[d] = {k: entry.get(f"num_{k}") for k in ("all", "hard", "easy")}

    x = np.arange(len(datasets), dtype=np.float64)
    fig = _new_figure((max(8.0, 2.2 * len(datasets) + 3.0), 4.2))
    ax_all, ax_sub = fig.subplots(1, 2, sharey=True)

    def bars(ax, xs, width, key, color, label):
        heights = [vals[d][key] for d in datasets]
        drawn = [0.0 if math.isnan(h) else h for h in heights]
        ax.bar(xs, drawn, width, color=color, alpha=0.85, label=label, edgecolor="black",
               linewidth=0.5)
        for xi, h, d in zip(xs, heights, datasets):
            ax.text(xi, (0.0 if math.isnan(h) else h) + 0.015, _pct(h), ha="center", va="bottom",
                    fontsize="x-small")
            n = counts[d][key]
            if n is not None:
                ax.text(xi, 0.015, f"n={n}", ha="center", va="bottom", fontsize="xx-small",
                        color="white" if not math.isnan(h) and h > 0.1 else "black")

    bars(ax_all, x, 0.6, "all", _RUN_COLORS[0], "all images")
    bars(ax_sub, x - 0.2, 0.38, "hard", _RUN_COLORS[1], "hard (baseline PSNR < mean)")
    bars(ax_sub, x + 0.2, 0.38, "easy", _RUN_COLORS[2], "easy (baseline PSNR > mean)")
    for ax, sub in ((ax_all, "whole test set"), (ax_sub, "hard / easy subsets")):
        ax.axhline(0.5, color="black", linestyle="--", linewidth=1.0, alpha=0.7)
        ax.set_xticks(x)
        ax.set_xticklabels(datasets, rotation=20 if len(datasets) > 4 else 0)
        ax.set_ylim(0.0, 1.2)
        ax.set_yticks(np.linspace(0.0, 1.0, 6))
        ax.set_title(f"Improved images: {sub}", fontsize="medium")
        ax.grid(True, axis="y", alpha=0.3)
    ax_all.set_ylabel(f"proportion improved by {candidate}\nover {baseline} (PSNR)")
    ax_sub.legend(fontsize="x-small", loc="upper center", ncols=2)
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi)


# --------------------------------------------------------------------------------------------------
# Image comparison grid (ERL-Net Fig. 4)
# --------------------------------------------------------------------------------------------------


def _display_uint8(img, what: str, max_side: int, *, allow_gray: bool = False) -> np.ndarray:
    """An image as uint8 for display, downscaled (Lanczos) so its longer side is <= ``max_side``.

    ``uint8`` input is used as is (no float copy of a large image); other input goes through
    :func:`_as_float_image` and is rounded to uint8.
    """
    from PIL import Image

    arr = np.asarray(img)
    if arr.dtype == np.uint8 and arr.ndim == 3 and arr.shape[-1] == 1 and allow_gray:
        arr = arr[..., 0]
    if arr.dtype == np.uint8 and ((arr.ndim == 3 and arr.shape[-1] == 3) or (allow_gray and arr.ndim == 2)) \
            and arr.shape[0] > 0 and arr.shape[1] > 0:
        u8 = arr
    else:
        u8 = np.floor(_as_float_image(arr, what, allow_gray=allow_gray) * 255.0 + 0.5).astype(np.uint8)
    h, w = u8.shape[:2]
    if max(h, w) <= max_side:
        return u8
    s = max_side / float(max(h, w))
    size = (max(1, round(w * s)), max(1, round(h * s)))
    small = Image.fromarray(np.ascontiguousarray(u8)).resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)
    return np.asarray(small)


def comparison_grid(rows: Sequence[Tuple[str, Mapping[str, object]]], path: PathLike, *,
                    captions: Optional[Mapping[str, Mapping[str, Union[str, float]]]] = None,
                    max_side: int = 512, title: Optional[str] = None, dpi: float = 100) -> str:
    """A grid of images: one row per test image, one column per version (rainy, baseline, ...).

    Args:
      rows: ``[(image name, {column label: image}), ...]``.  The column labels are the mapping keys
        in their order of first appearance across rows; a row lacking a column leaves that cell
        empty.  Images are ``H x W x 3`` (uint8 or float in [0, 1]) or ``H x W`` maps (grey).
      path: PNG to write.
      captions: optional ``{image name: {column label: caption}}`` written under the column label
        of that cell; a number is formatted as a PSNR, ``"31.42 dB"``.  Image names must then be
        unique.
      max_side: images are downscaled (Lanczos) so their longer side is at most this many pixels
        before plotting, and each cell is sized to show them about 1:1 at ``dpi``; so the PNG size
        depends on the number of cells, not on the image resolution.
      title: figure title.

    Returns:
      ``path`` as a ``str``.
    """
    if isinstance(max_side, (bool, np.bool_)) or not isinstance(max_side, (int, np.integer)) or max_side < 16:
        raise ValueError(f"max_side must be an int >= 16, got {max_side!r}")
    if isinstance(rows, Mapping) or isinstance(rows, (str, bytes)):
        raise ValueError("rows must be a sequence of (name, {column: image}) pairs, not a mapping/string")
    rows = list(rows)
    if not rows:
        raise ValueError("rows is empty: nothing to plot")
    columns: List[str] = []
    cells: List[Tuple[str, Dict[str, np.ndarray]]] = []
    for i, row in enumerate(rows):
        if not (isinstance(row, (tuple, list)) and len(row) == 2 and isinstance(row[1], Mapping)):
            raise ValueError(f"rows[{i}] must be a (name, {{column: image}}) pair, got {type(row).__name__}")
        name, images = str(row[0]), row[1]
        if not images:
            raise ValueError(f"row {name!r} has no images")
        shown = {}
        for col, img in images.items():
            col = str(col)
            if col not in columns:
                columns.append(col)
            shown[col] = _display_uint8(img, f"image {col!r} of row {name!r}", int(max_side),
                                        allow_gray=True)
        cells.append((name, shown))
    names = [n for n, _ in cells]
    if captions is not None:
        if not isinstance(captions, Mapping):
            raise ValueError("captions must be a mapping {image name: {column: caption}}")
        if len(set(names)) != len(names):
            raise ValueError(f"image names must be unique when captions are given, got {names}")
        for n, caps in captions.items():
            if str(n) not in names:
                raise ValueError(f"captions given for {n!r}, which is not a row (rows: {names})")
            if not isinstance(caps, Mapping):
                raise ValueError(f"captions[{n!r}] must be a mapping {{column: caption}}")
            for col in caps:
                if str(col) not in columns:
                    raise ValueError(f"captions[{n!r}] names column {col!r}, not one of {columns}")

    def caption(name, col):
        if captions is None:
            return None
        caps = {str(k): v for k, v in captions.items()}.get(name)
        if caps is None:
            return None
        v = {str(k): v for k, v in caps.items()}.get(col)
        if v is None:
            return None
        if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
            return "inf dB" if math.isinf(v) else f"{float(v):.2f} dB"
        return str(v)

    box_w = max(im.shape[1] for _, s in cells for im in s.values())
    box_h = max(im.shape[0] for _, s in cells for im in s.values())
    ncols, nrows = len(columns), len(cells)
    has_caption = captions is not None
    text_in = 0.25 + (0.2 if has_caption else 0.0)
    fig_w = ncols * max(box_w / dpi, 1.2) + 0.6
    fig_h = nrows * (max(box_h / dpi, 0.8) + text_in) + (0.4 if title else 0.1)
    fig = _new_figure((fig_w, fig_h))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for r, (name, shown) in enumerate(cells):
        for c, col in enumerate(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c == 0:
                ax.set_ylabel(name, fontsize="small")
            lines = [col] if (r == 0 or has_caption) else []
            cap = caption(name, col)
            if cap:
                lines.append(cap)
            if lines:
                ax.set_title("\n".join(lines), fontsize="small")
            im = shown.get(col)
            if im is None:
                ax.text(0.5, 0.5, "(missing)", ha="center", va="center", transform=ax.transAxes,
                        fontsize="small", color="gray")
                continue
            if im.ndim == 2:
                ax.imshow(im, cmap="gray", vmin=0, vmax=255, interpolation="antialiased")
            else:
                ax.imshow(im, interpolation="antialiased")
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi)


# --------------------------------------------------------------------------------------------------
# Result Indicator Map (ERL-Net Eq. 6-7, Fig. 5)
# --------------------------------------------------------------------------------------------------


def _improved_fraction(rim: np.ndarray, mask: Optional[np.ndarray]) -> float:
    """``sum(rim & mask) / sum(mask)`` of bool maps (Eq. 7: IoR / IoB); NaN for an empty mask."""
    n = rim.size if mask is None else int(mask.sum())
    k = int(rim.sum()) if mask is None else int((rim & mask).sum())
    return k / n if n else float("nan")


def overlay_rgb(image, rim, *, alpha: float = 0.5,
                improved_color: Sequence[float] = IMPROVED_COLOR,
                not_improved_color: Sequence[float] = NOT_IMPROVED_COLOR,
                mask=None, dim: float = 0.35) -> np.ndarray:
    """The RIM blended over an image: float32 ``H x W x 3`` in ``[0, 1]``.

    With ``x`` the image as float in [0, 1] (uint8 divided by 255, floats clipped, not quantised):

    * where ``rim == 1``: ``(1 - alpha) * x + alpha * improved_color``;
    * where ``rim == 0``: ``(1 - alpha) * x + alpha * not_improved_color``;
    * if ``mask`` (an ``H x W`` binary map, e.g. the rain region) is given, pixels outside it are
      not coloured but shown as the dimmed grey ``dim * (0.299 R + 0.587 G + 0.114 B)`` of ``x``
      in all three channels, so that the RIM of that region alone stands out.
    """
    x = _as_float_image(image, "image")
    r = _as_binary_map(rim, "rim", x.shape[:2])
    a = float(alpha)
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    d = float(dim)
    if not 0.0 <= d <= 1.0:
        raise ValueError(f"dim must be in [0, 1], got {dim!r}")
    m = None if mask is None else _as_binary_map(mask, "mask", x.shape[:2])
    # float32 throughout: a 12 MP image stays at ~150 MB per intermediate.
    ci = (a * _color(improved_color, "improved_color")).astype(np.float32)
    cn = (a * _color(not_improved_color, "not_improved_color")).astype(np.float32)
    out = x * np.float32(1.0 - a)
    out += np.where(r[..., None], ci, cn)
    if m is not None:
        grey = x @ (d * np.array([0.299, 0.587, 0.114])).astype(np.float32)
        out = np.where(m[..., None], out, grey[..., None])
    return np.clip(out, 0.0, 1.0, out=out)


def rim_overlay(image, rim, path: PathLike, *, rain_map=None, alpha: float = 0.5,
                improved_color: Sequence[float] = IMPROVED_COLOR,
                not_improved_color: Sequence[float] = NOT_IMPROVED_COLOR,
                title: Optional[str] = None, max_side: int = 768, dpi: float = 100) -> str:
    """The RIM overlaid on an image (ERL-Net Fig. 5), with the improved fraction in the titles.

    One panel, the RIM over the whole image (:func:`overlay_rgb`).  With ``rain_map`` (the binary
    rain-region map BMR, 1 on rain pixels) two more panels show the RIM on the rain region only
    and on the background only (the rest dimmed), titled with the image's IoR and IoB
    (``sum(rim & region) / sum(region)``, as ``metrics.intersection_over_region``).  A legend
    names the two colours.

    Args:
      image: the image under the map (the clean or the derained image), ``H x W x 3``.
      rim: ``H x W`` binary map (bool or 0/1), 1 where the candidate improved
        (``metrics.result_indicator_map``).
      path: PNG to write.
      rain_map: optional ``H x W`` binary rain-region map.
      alpha: opacity of the RIM colours.
      max_side: the panels are downscaled so their longer side is at most this many pixels.

    Returns:
      ``path`` as a ``str``.
    """
    from matplotlib.patches import Patch

    x = _as_float_image(image, "image")
    r = _as_binary_map(rim, "rim", x.shape[:2])
    if isinstance(max_side, (bool, np.bool_)) or not isinstance(max_side, (int, np.integer)) or max_side < 16:
        raise ValueError(f"max_side must be an int >= 16, got {max_side!r}")
    masks = [("all pixels", None)]
    if rain_map is not None:
        rain = _as_binary_map(rain_map, "rain_map", x.shape[:2])
        masks += [("rain region (IoR)", rain), ("background (IoB)", ~rain)]
    panels = []
    for label, m in masks:  # one full-size overlay at a time, downscaled at once
        over = overlay_rgb(x, r, alpha=alpha, improved_color=improved_color,
                           not_improved_color=not_improved_color, mask=m)
        panels.append((label, _improved_fraction(r, m), _display_uint8(over, "overlay", int(max_side))))
        del over
    h, w = panels[0][2].shape[:2]
    fig = _new_figure((len(panels) * max(w / dpi, 2.0) + 0.4, max(h / dpi, 1.5) + 1.1))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (label, frac, im) in zip(axes, panels):
        ax.imshow(im, interpolation="antialiased")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{label}: {_pct(frac)} improved", fontsize="small")
    fig.legend(handles=[Patch(color=tuple(_color(improved_color, "improved_color")), label="improved (RIM = 1)"),
                        Patch(color=tuple(_color(not_improved_color, "not_improved_color")),
                              label="not improved (RIM = 0)")],
               loc="outside lower center", ncols=2, fontsize="small", frameon=False)
    if title:
        fig.suptitle(title)
    return _save(fig, path, dpi)
