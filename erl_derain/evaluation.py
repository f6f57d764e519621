"""Evaluation of a trained network on a dataset split, as the deraining papers report it.

Full-size test images (no cropping to the training patch), padded to the network's multiple and
cropped back; per-image Y-channel and RGB PSNR/SSIM of the output and of the rainy input (the
baseline every paper's table starts from), written as CSV (per image) and JSON (means).
``evaluate_ten_crop`` is the MENET authors' protocol instead (``--eval_protocol=ten_crop_rgb``): the
ten 224x224 crops of every test image, scored on RGB without rounding.

A pair that cannot be scored (too small for SSIM or the ten crops, shapes that differ) is a failure
of that pair only: it is named in ``failures`` and the others go on. ``on_row`` receives each row as
it is computed (``RowWriter`` keeps ``per_image.csv`` up to date, so an interrupted or failed
evaluation keeps what it finished). Every file is written atomically (``erl_derain.fileio``), into
a local folder or a file-system URL (``gs://bucket/eval``; what is atomic where: ``fileio``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import sys
import time

import numpy as np
import tensorflow as tf

from erl_derain import fileio, metrics
from erl_derain.fileio import atomic_write_text
from erl_derain.inference import as_inference_model, derain_image

METRIC_KEYS = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")

#: the side of SSIM's window: the smallest image (after ``crop_border``) the metrics can score
SSIM_WINDOW = 11


def min_side(crop_border: int = 0) -> int:
    """The smallest image side ``evaluate`` can score with ``crop_border`` removed from each side."""
    return SSIM_WINDOW + 2 * int(crop_border)


def _check_pair(name: str, rainy: np.ndarray, clean: np.ndarray, side: int, why: str) -> None:
    h, w = rainy.shape[:2]
    if rainy.shape != clean.shape:
        raise ValueError(f"{name}: rainy is {w}x{h} (WxH) but clean is {clean.shape[1]}x{clean.shape[0]}")
    if min(h, w) < side:
        raise ValueError(f"{name}: {w}x{h} (WxH) is smaller than the {side}x{side} pixels {why}")


def _failed(failures, name: str, error: Exception, progress: bool) -> None:
    message = str(error)
    if failures is None:
        raise error
    failures.append((name, message))
    if progress:
        print(f"  FAILED {name}: {message}", file=sys.stderr, flush=True)


def _csv_text(rows: list[dict], fields: list[str] | None = None, **kw) -> str:
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=fields or list(rows[0].keys()), **kw)
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


class RowWriter:
    """``per_image.csv`` rewritten (atomically) after each row: ``on_row`` of ``evaluate``, so the
    rows computed so far survive a failure or Ctrl-C."""

    def __init__(self, path: str):
        self.path, self.rows = path, []

    def __call__(self, row: dict) -> None:
        self.rows.append(row)
        atomic_write_text(self.path, _csv_text(self.rows), make_parents=True, fsync=False)


def _pairs(dataset, max_images: int | None, input_key: str = "rainy"):
    """(name, network input HxWx3, clean HxWx3) of the first ``max_images`` examples of a batch-1 dataset."""
    for i, ex in enumerate(dataset):
        if max_images is not None and i >= max_images:
            break
        name = ex["name"].numpy()[0].decode() if "name" in ex else str(i)
        yield name, ex[input_key].numpy()[0], ex["clean"].numpy()[0]


def evaluate(model, dataset, *, rounded: bool = True, crop_border: int = 0,
             tile: int = 0, tile_overlap: int = 32, tile_batch: int = 1, max_images: int | None = None,
             progress: bool = True, input_key: str = "rainy", on_row=None, failures: list | None = None) -> list[dict]:
    """``model``: an :class:`erl_derain.inference.InferenceModel` (it pads to its multiple, crops
    back and clips). ``dataset`` yields dicts with ``rainy``, ``clean`` (float32 [1,H,W,3]) and
    ``name``. The network reads ``ex[input_key]`` (the ``input_`` columns score that input): ``"clean"`` for a network that
    translates clean images (ERL-Net's clean-to-clean autoencoder, the introduction's experiment).

    ``failures``: a list that receives ``(name, message)`` of each pair that cannot be scored (smaller
    than SSIM's window after ``crop_border``, rainy and clean of different sizes); the others go on.
    None: such a pair raises its ``ValueError`` (naming it). ``on_row(row)`` is called as each row is
    finished (``RowWriter``)."""
    model = as_inference_model(model)
    rows = []
    side = min_side(crop_border)
    why = "SSIM needs" + (f" with --crop_border={crop_border}" if crop_border else "")
    for name, rainy, clean in _pairs(dataset, max_images, input_key):
        try:
            _check_pair(name, rainy, clean, side, why)
            t0 = time.time()
            out = derain_image(model, rainy, tile=tile, overlap=tile_overlap, tile_batch=tile_batch)
            seconds = time.time() - t0
            row = {"name": name, "height": rainy.shape[0], "width": rainy.shape[1], "seconds": seconds}
            for prefix, img in (("", out), ("input_", rainy)):
                for k, v in metrics.evaluate_pair(img, clean, rounded=rounded, crop_border=crop_border).items():
                    row[prefix + k] = v
        except ValueError as e:
            _failed(failures, name, e, progress)
            continue
        rows.append(row)
        if on_row is not None:
            on_row(row)
        if progress:
            print(f"  {name}: Y-PSNR {row['input_psnr_y']:.2f} -> {row['psnr_y']:.2f} dB, "
                  f"Y-SSIM {row['input_ssim_y']:.4f} -> {row['ssim_y']:.4f}", flush=True)
    if not rows:
        raise ValueError("no image of the evaluation split could be scored" if failures else
                         "the evaluation split holds no images")
    return rows


# --------------------------------------------------------------------------------------------------
# MENET's protocol: the ten crops of every test image, RGB, unrounded
# --------------------------------------------------------------------------------------------------

#: ``--eval_protocol``: whole images on the Y channel (``evaluate``), or the MENET authors' ten crops.
PROTOCOLS = ("full_y", "ten_crop_rgb")
TEN_CROP_KEYS = ("psnr_rgb", "ssim_rgb")


def ten_crop_boxes(height: int, width: int, crop_size: int) -> list[tuple[bool, int, int]]:
    """``(mirrored, top, left)`` of the ten crops, in the order of the authors' ``FiveCrop(crop,
    horizontal_flip=True)`` (SumiHui/MENET ``heavy/utils/transforms.py``): top-left, top-right,
    bottom-left, bottom-right and centre of the image, then the same of its left-right mirror
    (``left`` counted on the mirrored image). The centre starts at Python's ``round((h - c) / 2)``
    (halves to even), as theirs."""
    if crop_size < 1 or crop_size > min(height, width):
        raise ValueError(f"--eval_crop_size={crop_size}: the ten crops need test images of at least that size, "
                         f"got one of {width}x{height} (WxH)")
    dh, dw = height - crop_size, width - crop_size
    corners = [(0, 0), (0, dw), (dh, 0), (dh, dw), (int(round(dh / 2)), int(round(dw / 2)))]
    return [(mirrored, top, left) for mirrored in (False, True) for top, left in corners]


def ten_crops(image: np.ndarray, crop_size: int) -> np.ndarray:
    """The ten ``crop_size`` crops of an ``H x W x C`` image (:func:`ten_crop_boxes`): ``[10, c, c, C]``."""
    image = np.asarray(image)
    out = []
    for mirrored, top, left in ten_crop_boxes(image.shape[0], image.shape[1], crop_size):
        source = image[:, ::-1] if mirrored else image
        out.append(source[top:top + crop_size, left:left + crop_size])
    return np.stack(out)


def _rgb_metrics(pred: np.ndarray, target: np.ndarray) -> dict:
    """PSNR and SSIM (mean of the per-channel SSIMs) of two float images on the 0..255 scale,
    unrounded: what ``tf.image.psnr`` / ``tf.image.ssim`` with ``max_val=255`` compute (11x11 Gaussian,
    sigma 1.5, K1 0.01, K2 0.03, valid filtering), here in float64."""
    return {"psnr_rgb": metrics.psnr(pred, target),
            "ssim_rgb": float(np.mean([metrics.ssim(pred[..., c], target[..., c]) for c in range(pred.shape[-1])]))}


def evaluate_ten_crop(model, dataset, *, crop_size: int = 224, max_images: int | None = None,
                      progress: bool = True, input_key: str = "rainy", on_row=None,
                      failures: list | None = None) -> list[dict]:
    """The MENET authors' protocol (``--eval_protocol=ten_crop_rgb``): each test image is cut into its
    ten ``crop_size`` crops (:func:`ten_crops`; their ``heavy/build_h5_dataset.py`` with
    ``horizontal_flip``), the network runs on every crop (BatchNorm with its moving averages, as their
    ``Model("eval")``), and PSNR / SSIM are taken on RGB in [0, 255] without rounding the output
    (their ``heavy/validation.py``: ``tf.image.psnr`` / ``tf.image.ssim``, ``max_val=255``). One row per
    image holds the means over its ten crops; the mean over the images is then the mean over all
    crops, the number their tables report (they average over batches of 20 crops, leaving out a last
    partial batch; with 100 test images there is none).

    ``model``: an InferenceModel; ``dataset`` yields dicts with ``rainy``, ``clean`` (float32 [1,H,W,3]
    in [0, 1]) and ``name``. ``on_row`` and ``failures`` as for :func:`evaluate` (an image smaller
    than the crop is a failure of that image)."""
    model = as_inference_model(model)
    rows = []
    for name, rainy, clean in _pairs(dataset, max_images, input_key):
        try:
            _check_pair(name, rainy, clean, max(crop_size, SSIM_WINDOW),
                        f"the ten crops need (--eval_crop_size={crop_size})")
            rainy_crops, clean_crops = ten_crops(rainy, crop_size), ten_crops(clean, crop_size)
            t0 = time.time()
            out = model(tf.constant(rainy_crops, tf.float32)).numpy()
            seconds = time.time() - t0
            per_crop = {}
            for prefix, images in (("", out), ("input_", rainy_crops)):
                for pred, target in zip(images, clean_crops):
                    for k, v in _rgb_metrics(pred.astype(np.float64) * 255.0,
                                             target.astype(np.float64) * 255.0).items():
                        per_crop.setdefault(prefix + k, []).append(v)
        except ValueError as e:
            _failed(failures, name, e, progress)
            continue
        row = {"name": name, "height": rainy.shape[0], "width": rainy.shape[1], "crops": len(clean_crops),
               "seconds": seconds}
        row.update({k: float(np.mean(v)) for k, v in per_crop.items()})
        rows.append(row)
        if on_row is not None:
            on_row(row)
        if progress:
            print(f"  {name}: RGB-PSNR {row['input_psnr_rgb']:.2f} -> {row['psnr_rgb']:.2f} dB, "
                  f"RGB-SSIM {row['input_ssim_rgb']:.4f} -> {row['ssim_rgb']:.4f} (mean of {row['crops']} crops)",
                  flush=True)
    if not rows:
        raise ValueError("no image of the evaluation split could be scored" if failures else
                         "the evaluation split holds no images")
    return rows


def summarize(rows: list[dict]) -> dict:
    """Means over the images (finite values only, see ``metrics.summarize``) and the gains over the
    rainy input (on Y, or on RGB for rows of :func:`evaluate_ten_crop`, which have no Y columns)."""
    means = metrics.summarize(rows)
    out = {"num_images": means["num_images"]}
    for prefix in ("", "input_"):
        for k in METRIC_KEYS:
            if prefix + k not in means:  # the ten-crop protocol scores RGB only
                continue
            out[prefix + k] = means[prefix + k]
            if k.startswith("psnr"):
                out[f"{prefix}{k}_num_inf"] = means.get(f"{prefix}{k}_num_inf", 0)
    for k in ("psnr_y", "ssim_y") if "psnr_y" in out else TEN_CROP_KEYS:
        out[f"gain_{k}"] = out[k] - out[f"input_{k}"]
    if "crops" in means:
        out["num_crops"] = int(sum(r["crops"] for r in rows))
    out["seconds_per_image"] = means["seconds"]
    return out


def write_results(rows: list[dict], summary: dict, output_dir: str, extra: dict | None = None) -> tuple[str, str]:
    """``per_image.csv`` (the rows) and ``metrics.json`` (``extra`` and ``summary``) in
    ``output_dir``, each written atomically."""
    fileio.makedirs(output_dir)
    csv_path = os.path.join(output_dir, "per_image.csv")
    atomic_write_text(csv_path, _csv_text(rows))
    json_path = os.path.join(output_dir, "metrics.json")
    write_json(json_path, {**(extra or {}), **summary})
    return csv_path, json_path


def _json_safe(value):
    """NaN/inf become null/strings so the file is standard JSON (``json.dump`` writes bare NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_json(path: str, data: dict) -> str:
    """Standard JSON (NaN -> null, inf -> "inf"), sorted keys, written atomically."""
    atomic_write_text(path, json.dumps(_json_safe(data), indent=2, sort_keys=True, allow_nan=False) + "\n")
    return path


# --------------------------------------------------------------------------------------------------
# ERL-Net's dissection: a candidate against a baseline on one test set (Section 4.3)
# --------------------------------------------------------------------------------------------------

COMPARE_KEYS = ("psnr_y", "ssim_y")


def compare(baseline, candidate, dataset, *,
            rounded: bool = True, crop_border: int = 0, tile: int = 0, tile_overlap: int = 32, tile_batch: int = 1,
            max_images: int | None = None, keep_images: int = 4, progress: bool = True) -> tuple[list[dict], list[dict]]:
    """Run both networks (InferenceModels) on every image of ``dataset`` (dicts with ``rainy``, ``clean``, ``name`` and
    optionally ``rain_mask``/``has_rain_mask``, batch 1) and dissect the difference.

    Returns ``(rows, kept)``: one row per image with both networks' Y/RGB PSNR/SSIM, the rainy
    input's, IoR/IoB (Eq. 7) and the share of improved pixels; and, for the first ``keep_images``
    images, the arrays the figures need (rainy, baseline, candidate, clean, rim, rain_map).
    """
    baseline, candidate = as_inference_model(baseline), as_inference_model(candidate)
    rows, kept = [], []
    for i, ex in enumerate(dataset):
        if max_images is not None and i >= max_images:
            break
        rainy, clean = ex["rainy"].numpy()[0], ex["clean"].numpy()[0]
        name = ex["name"].numpy()[0].decode() if "name" in ex else str(i)
        mask = None
        if "rain_mask" in ex and bool(ex["has_rain_mask"].numpy()[0] if "has_rain_mask" in ex else True):
            mask = ex["rain_mask"].numpy()[0]
        base = derain_image(baseline, rainy, tile=tile, overlap=tile_overlap, tile_batch=tile_batch)
        cand = derain_image(candidate, rainy, tile=tile, overlap=tile_overlap, tile_batch=tile_batch)
        row = {"name": name, "height": rainy.shape[0], "width": rainy.shape[1]}
        for prefix, img in (("baseline_", base), ("candidate_", cand), ("input_", rainy)):
            for k, v in metrics.evaluate_pair(img, clean, rounded=rounded, crop_border=crop_border).items():
                row[prefix + k] = v
        c = crop_border
        crop = (lambda a: a[c:a.shape[0] - c, c:a.shape[1] - c]) if c else (lambda a: a)  # noqa: E731
        d = metrics.dissect_pair(crop(cand), crop(base), crop(rainy), crop(clean),
                                 rain_mask=None if mask is None else crop(mask), rounded=rounded)
        row.update(ior=d["ior"], iob=d["iob"], improved_pixels=d["improved_pixels"],
                   rain_map="dataset_mask" if mask is not None else "threshold",
                   rain_fraction=float(d["rain_map"].mean()))
        rows.append(row)
        if len(kept) < keep_images:
            kept.append({"name": name, "rainy": rainy, "baseline": base, "candidate": cand, "clean": clean,
                         "rim": d["rim"], "rain_map": d["rain_map"], "row": row})
        if progress:
            print(f"  {name}: Y-PSNR baseline {row['baseline_psnr_y']:.2f}, candidate {row['candidate_psnr_y']:.2f} dB; "
                  f"IoR {row['ior']:.3f}, IoB {row['iob']:.3f}", flush=True)
    if not rows:
        raise ValueError("the evaluation split holds no images")
    prop = metrics.improved_proportions([r["baseline_psnr_y"] for r in rows], [r["candidate_psnr_y"] for r in rows])
    for r in rows:
        r["hard"] = r["baseline_psnr_y"] < prop["baseline_mean_psnr"]
        r["improved"] = r["candidate_psnr_y"] > r["baseline_psnr_y"]
    return rows, kept


def summarize_comparison(rows: list[dict]) -> dict:
    """Improved proportions (all/hard/easy, on Y-PSNR), mIoR/mIoB (Eq. 8; images whose rain or
    background region is empty are left out and counted) and both networks' means."""
    prop = metrics.improved_proportions([r["baseline_psnr_y"] for r in rows], [r["candidate_psnr_y"] for r in rows])
    means = metrics.summarize(rows)
    out = {"num_images": len(rows), "improved_proportion": prop["all"], "improved_proportion_hard": prop["hard"],
           "improved_proportion_easy": prop["easy"], "hard_threshold_psnr_y": prop["baseline_mean_psnr"]}
    for key in ("num_all", "num_hard", "num_easy", "num_all_improved", "num_hard_improved", "num_easy_improved"):
        out[key] = prop[key]
    out["mIoR"], out["mIoB"] = means["ior"], means["iob"]
    out["num_images_without_rain_region"] = sum(1 for r in rows if r["ior"] != r["ior"])
    out["num_images_without_background"] = sum(1 for r in rows if r["iob"] != r["iob"])
    out["improved_pixels"] = means["improved_pixels"]
    out["rain_maps"] = sorted({r["rain_map"] for r in rows})
    for prefix in ("baseline_", "candidate_", "input_"):
        for k in METRIC_KEYS:
            out[prefix + k] = means[prefix + k]
    return out


# --------------------------------------------------------------------------------------------------
# Cross-dataset table (ERL-Net rebuttal Table R2): trained-on x tested-on
# --------------------------------------------------------------------------------------------------


def cross_dataset_table(results: dict, output_dir: str, *, digits: int = 2) -> tuple[str, str]:
    """Write ``results[(trained_on, tested_on)] = summary`` as ``cross_dataset.md`` (cells
    ``PSNR / SSIM`` on Y, rows trained-on, columns tested-on) and ``cross_dataset.csv`` (one line per
    cell with every metric). Returns both paths."""
    rows = list(dict.fromkeys(k[0] for k in results))
    cols = list(dict.fromkeys(k[1] for k in results))
    fileio.makedirs(output_dir)
    md = ["| trained on \\ tested on | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            s = results.get((r, c))
            p, q = ("psnr_y", "ssim_y") if not s or "psnr_y" in s else TEN_CROP_KEYS  # ten-crop: RGB only
            cells.append(f"{s[p]:.{digits}f} / {s[q]:.4f}" if s else "")
        md.append(f"| {r} | " + " | ".join(cells) + " |")
    md.append("")
    if any("psnr_y" not in s for s in results.values()):
        md.append("RGB PSNR (dB) / SSIM, unrounded, mean over the ten crops of every test image (MENET's protocol).")
    else:
        md.append("Y-channel PSNR (dB) / SSIM of the derained test images, mean over each test set.")
    md_path = os.path.join(output_dir, "cross_dataset.md")
    csv_path = os.path.join(output_dir, "cross_dataset.csv")
    fields = ["trained_on", "tested_on", "num_images"] + [p + k for p in ("", "input_") for k in METRIC_KEYS]
    table = _csv_text([{"trained_on": r, "tested_on": c, **s} for (r, c), s in results.items()], fields,
                      extrasaction="ignore")
    atomic_write_text(md_path, "\n".join(md) + "\n")
    atomic_write_text(csv_path, table)
    return md_path, csv_path


def comparison_figures(rows: list[dict], kept: list[dict], summary: dict, output_dir: str, *,
                       dataset: str = "", baseline: str = "baseline", candidate: str = "candidate") -> list[str]:
    """The figures of a comparison (PNG, in ``output_dir``): per-image Y-PSNR histograms and Y-SSIM
    boxplots of rainy input / baseline / candidate (MENET Figs. 8-9), the improved proportions over
    all, hard and easy images (ERL-Net Fig. 3), a rainy / baseline / candidate / clean grid of the
    kept images and their RIM overlays on the clean image (ERL-Net Fig. 5)."""
    from erl_derain import plots  # matplotlib only when figures are drawn

    def per_image(key):
        return {"rainy input": [r["input_" + key] for r in rows], baseline: [r["baseline_" + key] for r in rows],
                candidate: [r["candidate_" + key] for r in rows]}

    label = dataset or "test set"
    paths = [
        plots.psnr_histograms(per_image("psnr_y"), os.path.join(output_dir, "psnr_histogram.png"),
                              title=f"Per-image Y-PSNR on {label}"),
        plots.ssim_boxplots(per_image("ssim_y"), os.path.join(output_dir, "ssim_boxplot.png"),
                            title=f"Per-image Y-SSIM on {label}"),
        plots.improved_proportion_bars(
            {label: {"all": summary["improved_proportion"], "hard": summary["improved_proportion_hard"],
                     "easy": summary["improved_proportion_easy"]}},
            os.path.join(output_dir, "improved_proportion.png"), candidate=candidate, baseline=baseline),
    ]
    if kept:
        grid = [(k["name"], {"rainy": k["rainy"], baseline: k["baseline"], candidate: k["candidate"],
                             "clean": k["clean"]}) for k in kept]
        captions = {k["name"]: {"rainy": k["row"]["input_psnr_y"], baseline: k["row"]["baseline_psnr_y"],
                                candidate: k["row"]["candidate_psnr_y"]} for k in kept}
        paths.append(plots.comparison_grid(grid, os.path.join(output_dir, "grid.png"), captions=captions))
        for k in kept:
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in k["name"])
            paths.append(plots.rim_overlay(
                k["clean"], k["rim"], os.path.join(output_dir, f"rim_{safe}.png"), rain_map=k["rain_map"],
                title=f"{k['name']}: IoR {k['row']['ior']:.3f}, IoB {k['row']['iob']:.3f}"))
    return paths


# --------------------------------------------------------------------------------------------------
# Real rain: no clean images, no-reference quality (NIQE, BRISQUE) of the input and the output
# --------------------------------------------------------------------------------------------------

def _photos(files, max_images: int | None):
    from erl_derain.data.image_io import load_rgb

    for i, path in enumerate(files):
        if max_images is not None and i >= max_images:
            break
        yield os.path.splitext(os.path.basename(path))[0], load_rgb(path)


def _quality_text(row: dict, prefix: str, names) -> str:
    return ", ".join(f"{n.upper()} {row[prefix + n]:.3f}" for n in names)


def evaluate_no_reference(model, files, *, tile: int = 0, tile_overlap: int = 32, tile_batch: int = 1, max_images: int | None = None,
                          keep_images: int = 0, names=None, progress: bool = True) -> tuple[list[dict], list[dict]]:
    """De-rain each photo of ``files`` (no clean images: real rain) with ``model`` (an InferenceModel)
    and score the photo and the output with the no-reference metrics ``names`` (default NIQE and
    BRISQUE, :mod:`erl_derain.quality`; lower is better), both as the uint8 image a saved PNG holds.
    Returns ``(rows, kept)``: one row per photo (``input_<metric>``, ``<metric>``, sizes, seconds) and
    the arrays of the first ``keep_images`` for the before/after grid."""
    from erl_derain import quality

    names = tuple(names or quality.METRICS)
    model = as_inference_model(model)
    rows, kept = [], []
    for name, rainy in _photos(files, max_images):
        t0 = time.time()
        out = derain_image(model, rainy, tile=tile, overlap=tile_overlap, tile_batch=tile_batch)
        seconds = time.time() - t0
        row = {"name": name, "height": rainy.shape[0], "width": rainy.shape[1], "seconds": seconds}
        for prefix, img in (("input_", rainy), ("", out)):
            row.update({prefix + k: v for k, v in quality.score(img, names).items()})
        rows.append(row)
        if len(kept) < keep_images:
            kept.append({"name": name, "rainy": rainy, "derained": out, "row": row})
        if progress:
            print(f"  {name}: {_quality_text(row, 'input_', names)} -> {_quality_text(row, '', names)}", flush=True)
    if not rows:
        raise ValueError("the folder holds no images")
    return rows, kept


def summarize_no_reference(rows: list[dict], prefixes=("input_", "")) -> dict:
    """Means over the photos (finite values only) of every metric column, for each prefix, and the
    gains ``gain_<metric> = input - output`` (positive: the output scores better, as lower is better)."""
    from erl_derain import quality

    means = metrics.summarize(rows)
    out = {"num_images": means["num_images"], "seconds_per_image": means.get("seconds", float("nan"))}
    present = [k for k in quality.METRICS if any(p + k in rows[0] for p in prefixes)]
    for k in present:
        for p in prefixes:
            if p + k in means:
                out[p + k] = means[p + k]
                out[f"{p}{k}_num_finite"] = sum(1 for r in rows if math.isfinite(r.get(p + k, float("nan"))))
        for p in prefixes:
            if p != "input_" and p + k in out and "input_" + k in out:
                out[f"gain_{p}{k}"] = out["input_" + k] - out[p + k]
    out["metrics"] = present
    return out


def compare_no_reference(baseline, candidate, files, *, tile: int = 0, tile_overlap: int = 32, tile_batch: int = 1,
                         max_images: int | None = None, keep_images: int = 4, names=None,
                         progress: bool = True) -> tuple[list[dict], list[dict]]:
    """Both networks on each photo of ``files`` (no clean images): the no-reference scores of the photo
    (``input_``), the baseline's and the candidate's output (``baseline_``, ``candidate_``) and, per
    metric, whether the candidate scores better (``<metric>_improved``: lower). Returns ``(rows, kept)``
    as :func:`evaluate_no_reference` (kept: rainy, baseline, candidate)."""
    from erl_derain import quality

    names = tuple(names or quality.METRICS)
    baseline, candidate = as_inference_model(baseline), as_inference_model(candidate)
    rows, kept = [], []
    for name, rainy in _photos(files, max_images):
        base = derain_image(baseline, rainy, tile=tile, overlap=tile_overlap, tile_batch=tile_batch)
        cand = derain_image(candidate, rainy, tile=tile, overlap=tile_overlap, tile_batch=tile_batch)
        row = {"name": name, "height": rainy.shape[0], "width": rainy.shape[1]}
        for prefix, img in (("input_", rainy), ("baseline_", base), ("candidate_", cand)):
            row.update({prefix + k: v for k, v in quality.score(img, names).items()})
        for k in names:
            row[f"{k}_improved"] = bool(row["candidate_" + k] < row["baseline_" + k])
        rows.append(row)
        if len(kept) < keep_images:
            kept.append({"name": name, "rainy": rainy, "baseline": base, "candidate": cand, "row": row})
        if progress:
            print(f"  {name}: input {_quality_text(row, 'input_', names)}; baseline "
                  f"{_quality_text(row, 'baseline_', names)}; candidate {_quality_text(row, 'candidate_', names)}",
                  flush=True)
    if not rows:
        raise ValueError("the folder holds no images")
    return rows, kept


def summarize_no_reference_comparison(rows: list[dict]) -> dict:
    """Means of the three versions, and per metric the share of photos the candidate scores better on."""
    out = summarize_no_reference(rows, prefixes=("input_", "baseline_", "candidate_"))
    for k in out["metrics"]:
        finite = [r for r in rows if math.isfinite(r["baseline_" + k]) and math.isfinite(r["candidate_" + k])]
        out[f"{k}_improved_proportion"] = (sum(r[f"{k}_improved"] for r in finite) / len(finite)) if finite else float("nan")
        out[f"num_{k}_improved"] = sum(r[f"{k}_improved"] for r in finite)
    return out


def no_reference_grid(kept: list[dict], path: str, columns: dict, names=None, title: str | None = None) -> str:
    """The before/after grid of photos without clean images: one row per kept photo, one column per
    ``columns`` entry (``{label: (key in kept, score prefix)}``), each cell captioned with its scores."""
    from erl_derain import plots, quality

    names = tuple(names or quality.METRICS)
    grid = [(k["name"], {label: k[key] for label, (key, _) in columns.items()}) for k in kept]
    captions = {k["name"]: {label: ", ".join(f"{n.upper()} {k['row'][prefix + n]:.2f}" for n in names)
                            for label, (_, prefix) in columns.items()} for k in kept}
    return plots.comparison_grid(grid, path, captions=captions, title=title)


def no_reference_evaluation(model, files, out_dir: str, *, extra: dict | None = None, tile: int = 0,
                            tile_overlap: int = 32, tile_batch: int = 1, max_images: int | None = None, figures: int = 4) -> dict:
    """``evaluate`` on photos without clean images: :func:`evaluate_no_reference`, then ``per_image.csv``,
    ``metrics.json`` and the rainy/de-rained grid of the first ``figures`` photos (``grid.png``) in
    ``out_dir``; prints the means. Returns the summary."""
    rows, kept = evaluate_no_reference(model, files, tile=tile, tile_overlap=tile_overlap, tile_batch=tile_batch, max_images=max_images,
                                       keep_images=figures)
    summary = summarize_no_reference(rows)
    csv_path, json_path = write_results(rows, summary, out_dir, extra={**(extra or {}), "reference": "none"})
    paths = [no_reference_grid(kept, os.path.join(out_dir, "grid.png"),
                               {"rainy": ("rainy", "input_"), "derained": ("derained", "")})] if kept else []
    scores = "; ".join(f"{k.upper()} {summary['input_' + k]:.3f} (rainy) -> {summary[k]:.3f}" for k in summary["metrics"])
    print(f"Mean over {summary['num_images']} images without clean images (no-reference, lower is better): {scores}")
    print(f"Per-image results: {csv_path}; summary: {json_path}" + (f"; grid: {paths[0]}" if paths else ""), flush=True)
    return summary


def no_reference_comparison(baseline, candidate, files, out_dir: str, *, extra: dict | None = None, tile: int = 0,
                            tile_overlap: int = 32, tile_batch: int = 1, max_images: int | None = None, figures: int = 4) -> dict:
    """``compare`` on photos without clean images: :func:`compare_no_reference`, then ``per_image.csv``,
    ``metrics.json`` and the rainy/baseline/candidate grid (``grid.png``) in ``out_dir``; prints the means
    and the share of photos the candidate scores better on. Returns the summary."""
    rows, kept = compare_no_reference(baseline, candidate, files, tile=tile, tile_overlap=tile_overlap, tile_batch=tile_batch,
                                      max_images=max_images, keep_images=figures)
    summary = summarize_no_reference_comparison(rows)
    csv_path, json_path = write_results(rows, summary, out_dir, extra={**(extra or {}), "reference": "none"})
    paths = [no_reference_grid(kept, os.path.join(out_dir, "grid.png"),
                               {"rainy": ("rainy", "input_"), "baseline": ("baseline", "baseline_"),
                                "candidate": ("candidate", "candidate_")})] if kept else []
    for k in summary["metrics"]:
        print(f"{k.upper()} (lower is better): rainy {summary['input_' + k]:.3f}, baseline {summary['baseline_' + k]:.3f}, "
              f"candidate {summary['candidate_' + k]:.3f}; the candidate scores better on {summary[f'num_{k}_improved']}/"
              f"{summary['num_images']} images ({summary[f'{k}_improved_proportion']:.1%})")
    print(f"Per-image results: {csv_path}; summary: {json_path}" + (f"; grid: {paths[0]}" if paths else ""), flush=True)
    return summary
