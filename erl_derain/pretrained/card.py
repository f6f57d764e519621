"""Write the bundled model's card (``README.md`` here) and its before/after grid of real photos.

    python -m erl_derain.pretrained.card --shared_data=../shared/data

Evaluates the bundled model as the papers do (Y-channel PSNR/SSIM, rounded Y, whole images) on the
shared real benchmark pairs (``jorder_e_small``: 5 Rain100H-style heavy-rain pairs; ``sirr_val20``: 20
SIRR validation pairs), none of which it has seen, and derains six real rainy photos."""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

from erl_derain.pretrained import DEFAULT, HERE, read_info

# rainy file pattern, clean file pattern (relative to the shared folder), name from the rainy stem
PAIRED_SETS = {
    "jorder_e_small": ("rain", lambda stem: os.path.join("norain", stem + ".png")),
    "sirr_val20": ("input_val", lambda stem: os.path.join("label_val", "norain" + stem[len("input"):] + ".png")),
}
REAL_PHOTOS = ("1.jpg", "12.jpg", "23.jpg", "45.jpg", "67.jpg", "89.jpg")


def _link_pairs(shared: str, folder: str, dest: str) -> str:
    rainy_dir, clean_of = PAIRED_SETS[folder]
    src = os.path.join(shared, folder)
    for sub in ("rainy", "clean"):
        os.makedirs(os.path.join(dest, sub), exist_ok=True)
    for entry in sorted(os.listdir(os.path.join(src, rainy_dir))):
        stem = os.path.splitext(entry)[0]
        os.symlink(os.path.join(src, rainy_dir, entry), os.path.join(dest, "rainy", stem + ".png"))
        os.symlink(os.path.join(src, clean_of(stem)), os.path.join(dest, "clean", stem + ".png"))
    return dest


def evaluate_sets(model, shared: str) -> dict:
    """Y-PSNR/SSIM of ``model`` (an InferenceModel) on the shared benchmark pairs."""
    from erl_derain import evaluation
    from erl_derain.data import pipelines

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for folder in PAIRED_SETS:
            data = _link_pairs(shared, folder, os.path.join(tmp, folder))
            ds = pipelines.paired_dataset(f"folder:{data}", "test", batch_size=1, training=False)
            rows = evaluation.evaluate(model, ds, progress=False)
            results[folder] = evaluation.summarize(rows)
    return results


def real_grid(model, shared: str, path: str) -> str:
    from erl_derain import plots
    from erl_derain.data.image_io import load_rgb
    from erl_derain.inference import derain_image

    rows = []
    for name in REAL_PHOTOS:
        image = load_rgb(os.path.join(shared, "real_rain", name))
        rows.append((name, {"rainy photo": image, "bundled model": derain_image(model, image, tile=512)}))
    return plots.comparison_grid(rows, path, max_side=256, title="Real rainy photos (the shared real_rain set)")


DATA_TEXT = {
    "synthetic_rain": "scikit-image's bundled photos, rain from light to heavy with several streak layers and the "
                      "accumulation veil at the heavy end",
    "synthetic_rain/varied": "scikit-image's bundled photos at two scales (longer side 768 and 480), 8 renderings "
                             "per 256x256 tile, rain from light to heavy in two styles chosen at random: the "
                             "paper's short streaks (several layers and the accumulation veil when heavy) and long "
                             "soft Photoshop-style streaks (40-220 px)",
    "synthetic_rain/mixed": "scikit-image's bundled photos at two scales (longer side 768 and 480), 8 renderings "
                            "per 256x256 tile, rain from light to heavy in three styles chosen at random: the "
                            "paper's short streaks (several layers and the accumulation veil when heavy), long "
                            "soft Photoshop-style streaks (40-220 px) and dense, wide, faint streaks (40-200 px) "
                            "whose brightness varies smoothly over the image, with an additive haze, 5-55 grey "
                            "levels in all; plus one rain-free pair per tile",
    "synthetic_rain/dense": "as `synthetic_rain/mixed`, with half the renderings in the dense style and a quarter "
                            "in each of the other two",
    "synthetic_rain/wide": "as `synthetic_rain/mixed`, with a third of the renderings in the dense style, a third in "
                           "the wide style (separate 4-7 px wide bright streaks when light, dimmer drops when "
                           "heavy) and a sixth in each of the other two; each train scene raised to a random power "
                           "in [0.6, 1.6] (lighter and darker)",
}


def _schedule(cfg: dict) -> str:
    steps = [int(s) for s in cfg["stage_steps"]]
    stages = ", ".join(f"{name} {n}" for name, n in zip(("I", "II", "III"), steps) if n)
    text = f"stage{'s' if sum(n > 0 for n in steps) > 1 else ''} {stages} steps, Adam {cfg['lr']}"
    if cfg.get("lr_decay_steps"):
        return text + (f", learning rate x{cfg['lr_decay_factor']} after step "
                       f"{', '.join(str(s) for s in cfg['lr_decay_steps'])}")
    factor = cfg.get("lr_plateau_factor", 0.1)
    return text + (", learning rate divided by 10" if factor == 0.1 else f", learning rate x{factor}") + \
        " on loss plateaus"


def _data(cfg: dict) -> str:
    return (f"`{cfg['dataset']}` ({DATA_TEXT.get(cfg['dataset'], 'see the flagfile')}); {cfg['crop_size']}x"
            f"{cfg['crop_size']} crops, batch {cfg['batch_size']}, flips"
            + (", RGB channel orders shuffled" if cfg.get("channel_shuffle") else "")
            + (", bfloat16 mixed precision (float32 weights; the bundled model runs in float32)"
               if cfg.get("mixed_precision") else ""))


def main():
    import tensorflow as tf

    from erl_derain.inference import InferenceModel, flip_ensemble
    from erl_derain.pretrained import load_pretrained_trainer

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shared_data", required=True)
    args = p.parse_args()
    trainer, info = load_pretrained_trainer()
    model = trainer.inference_model()
    spec = [tf.TensorSpec([None, None, None, 3], tf.float32)]

    def compiled(m):
        return InferenceModel(tf.function(m, input_signature=spec), m.pad_multiple)

    results = evaluate_sets(compiled(model), args.shared_data)
    ensembled = evaluate_sets(compiled(flip_ensemble(model, 4)), args.shared_data)
    grid = real_grid(compiled(model), args.shared_data, os.path.join(HERE, "before_after.png"))
    from erl_derain.run_config import record_from_dict

    cfg = record_from_dict(info["config"], where="the bundled model's config").flat()
    base = info.get("init_config")  # the model is a fine-tune of that run
    base = record_from_dict(base, where="the bundled model's init_config").flat() if base else None
    commands = ["erl-derain train --flagfile=flags/pretrained/erlnet_synthetic.flags"]
    run_dir = "runs/pretrained_erlnet_synthetic"
    if base:
        commands.append("erl-derain train --flagfile=flags/pretrained/erlnet_synthetic_finetune.flags")
        run_dir += "_finetune"
    lines = [
        f"# Model card: `{DEFAULT}` (the bundled model)",
        "",
        "What `erl-derain derain photo.jpg` uses when no `--model_dir` is given, and what",
        "`erl_derain.load_pretrained()` returns. Trained by this package on its embedded synthetic default; no",
        "image of the evaluation sets below was seen in training.",
        "",
        "## Training",
        "",
        *[f"    {c}" for c in commands],
        f"    python -m erl_derain.pretrained.package {run_dir}",
        "    python -m erl_derain.pretrained.card --shared_data=../shared/data",
        "",
        f"* network: ERL-Net, schedule {cfg['erl_schedule'].upper()}, entanglement {cfg['erl_entanglement'].upper()}, "
        f"widths {list(cfg['erl_widths'])}, bottleneck {cfg['erl_bottleneck_width']}, dense blocks of "
        f"{cfg['erl_dense_layers']} layers (growth {cfg['erl_growth']}); {info['parameters']:,} parameters in the bundled de-raining network (the clean autoencoder "
        "is training-only and not shipped);",
        *([f"* training: {_data(base)}; {_schedule(base)};",
           f"* fine-tune (`--init_from` that run, optimisers afresh): {_data(cfg)}; {_schedule(cfg)};"] if base else
          [f"* data: {_data(cfg)};", f"* schedule: {_schedule(cfg)};"]),
        (f"* wall time: {info['train_seconds'] / 60:.1f} minutes on 2 CPU cores"
         + (" (both runs);" if base else ";") if info.get("train_seconds") else
         "* wall time: see the closing note of the session that trained it;"),
        *([f"* history: {info['history']}"] if info.get("history") else []),
        f"* weights: `{DEFAULT}.npz`, SHA-256 `{info['sha256']}` (checked at every load).",
        "",
        "## Evaluation (Y-channel PSNR/SSIM, MATLAB rounded Y, whole images)",
        "",
        "| set | images | rainy input Y-PSNR / SSIM | bundled model Y-PSNR / SSIM | gain |",
        "|---|---|---|---|---|",
    ]
    for folder, s in results.items():
        lines.append(f"| `{folder}` | {s['num_images']} | {s['input_psnr_y']:.2f} / {s['input_ssim_y']:.4f} | "
                     f"{s['psnr_y']:.2f} / {s['ssim_y']:.4f} | {s['gain_psnr_y']:+.2f} dB |")
    lines += ["", "With `--self_ensemble=4` (`derain`, `evaluate`: each image also run mirrored left-right, upside-down",
              "and both, the four outputs mirrored back and averaged; four times the time):",
              "; ".join(f"`{folder}` {s['psnr_y']:.2f} / {s['ssim_y']:.4f} ({s['gain_psnr_y']:+.2f} dB)"
                          for folder, s in ensembled.items()) + "."]
    lines += ["", "## Real photos", "", f"![before and after](before_after.png)",
              "", f"Six photos of `../shared/data/real_rain` ({', '.join(REAL_PHOTOS)}), de-rained in 512-pixel tiles.",
              "", "Limits: a small network trained on synthetic streaks; real rain with fog, drops on the lens or motion",
              "blur is out of its reach.", ""]
    with open(os.path.join(HERE, "README.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    for folder, s in results.items():
        print(f"{folder}: {s['input_psnr_y']:.2f} -> {s['psnr_y']:.2f} dB ({s['gain_psnr_y']:+.2f})")
    print(f"wrote {os.path.join(HERE, 'README.md')} and {grid} ({os.path.getsize(grid) / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()
