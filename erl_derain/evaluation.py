"""Evaluation of a trained network on a dataset split, as the deraining papers report it.

Full-size test images (no cropping to the training patch), padded to the network's multiple and
cropped back; per-image Y-channel and RGB PSNR/SSIM of the output and of the rainy input (the
baseline every paper's table starts from), written as CSV (per image) and JSON (means).
"""

from __future__ import annotations

import csv
import json
import os
import time

from erl_derain import metrics
from erl_derain.inference import derain_image

METRIC_KEYS = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb")


def evaluate(predict, multiple: int, dataset, *, rounded: bool = True, crop_border: int = 0,
             tile: int = 0, tile_overlap: int = 32, max_images: int | None = None,
             progress: bool = True) -> list[dict]:
    """``dataset`` yields dicts with ``rainy``, ``clean`` (float32 [1,H,W,3]) and ``name``."""
    rows = []
    for i, ex in enumerate(dataset):
        if max_images is not None and i >= max_images:
            break
        rainy = ex["rainy"].numpy()[0]
        clean = ex["clean"].numpy()[0]
        name = ex["name"].numpy()[0].decode() if "name" in ex else str(i)
        t0 = time.time()
        out = derain_image(predict, rainy, multiple, tile=tile, overlap=tile_overlap)
        seconds = time.time() - t0
        row = {"name": name, "height": rainy.shape[0], "width": rainy.shape[1], "seconds": seconds}
        for prefix, img in (("", out), ("input_", rainy)):
            for k, v in metrics.evaluate_pair(img, clean, rounded=rounded, crop_border=crop_border).items():
                row[prefix + k] = v
        rows.append(row)
        if progress:
            print(f"  {name}: Y-PSNR {row['input_psnr_y']:.2f} -> {row['psnr_y']:.2f} dB, "
                  f"Y-SSIM {row['input_ssim_y']:.4f} -> {row['ssim_y']:.4f}", flush=True)
    if not rows:
        raise ValueError("the evaluation split holds no images")
    return rows


def summarize(rows: list[dict]) -> dict:
    """Means over the images (finite values only, see ``metrics.summarize``) and the gains over the
    rainy input."""
    means = metrics.summarize(rows)
    out = {"num_images": means["num_images"]}
    for prefix in ("", "input_"):
        for k in METRIC_KEYS:
            out[prefix + k] = means[prefix + k]
            if k.startswith("psnr"):
                out[f"{prefix}{k}_num_inf"] = means.get(f"{prefix}{k}_num_inf", 0)
    out["gain_psnr_y"] = out["psnr_y"] - out["input_psnr_y"]
    out["gain_ssim_y"] = out["ssim_y"] - out["input_ssim_y"]
    out["seconds_per_image"] = means["seconds"]
    return out


def write_results(rows: list[dict], summary: dict, output_dir: str, extra: dict | None = None) -> tuple[str, str]:
    os.makedirs(output_dir, exist_ok=True)
    csv_path = os.path.join(output_dir, "per_image.csv")
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
    json_path = os.path.join(output_dir, "metrics.json")
    with open(json_path, "w", encoding="utf-8") as f:
        json.dump({**(extra or {}), **summary}, f, indent=2, sort_keys=True)
    return csv_path, json_path
