"""Write the bundled models' card (``README.md`` here) and their before/after grid of real photos.

    python -m erl_derain.pretrained.card --shared_data=../shared/data

For each bundled model of :data:`CARDED`: Y-channel PSNR/SSIM as the papers compute them (rounded Y,
whole images) on the shared benchmark pairs (``jorder_e_small``: 5 Rain100H-style heavy-rain pairs;
``sirr_val20``: 20 SIRR validation pairs; their photographs were left out of the training data), how
far each leaves rain-free photos from themselves (Y-PSNR of the output against the input on the
validation photos Kodak24 and Val20 and on SIRR's clean images), the seconds per 512x512 image on this
machine (measured in the same run, one after the other), and six real rainy photos side by side."""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np

from erl_derain.pretrained import ALIASES, DEFAULT, HERE, read_info

# The models on the card, in its order (the default first).
CARDED = ("erlnet_natural", "menet_fast")

# rainy file pattern, clean file pattern (relative to the shared folder), name from the rainy stem
PAIRED_SETS = {
    "jorder_e_small": ("rain", lambda stem: os.path.join("norain", stem + ".png")),
    "sirr_val20": ("input_val", lambda stem: os.path.join("label_val", "norain" + stem[len("input"):] + ".png")),
}
REAL_PHOTOS = ("1.jpg", "12.jpg", "23.jpg", "45.jpg", "67.jpg", "89.jpg")


def _link_pairs(shared: str, folder: str, dest: str) -> str:
    rainy_dir, clean_of = PAIRED_SETS[folder]
    src = os.path.join(os.path.abspath(shared), folder)  # absolute: the links live in a temporary folder
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


def real_grid(models: dict, shared: str, path: str) -> str:
    """``models``: ``{column title: InferenceModel}``; one row per photo of :data:`REAL_PHOTOS`."""
    from erl_derain import plots
    from erl_derain.data.image_io import load_rgb
    from erl_derain.inference import derain_image

    rows = []
    for name in REAL_PHOTOS:
        image = load_rgb(os.path.join(shared, "real_rain", name))
        rows.append((name, {"rainy photo": image, **{title: derain_image(model, image, tile=512)
                                                     for title, model in models.items()}}))
    return plots.comparison_grid(rows, path, max_side=256, title="Real rainy photos (the shared real_rain set)")


# Rain-free photos: the validation photos of synthetic_rain/natural and SIRR's clean images.
RAIN_FREE_SETS = {"Kodak24": "clean_photos/kodak24", "Val20": "clean_photos/val20",
                  "SIRR clean": "sirr_val20/label_val"}


def rain_free(model, shared: str) -> dict:
    """``{set: (mean, lowest)}`` Y-PSNR (rounded Y, whole images) of ``model``'s output on each rain-free
    photo against the photo itself: how much a model changes what is not rain."""
    from erl_derain import metrics
    from erl_derain.data.image_io import list_images, load_rgb
    from erl_derain.inference import derain_image

    out = {}
    for title, folder in RAIN_FREE_SETS.items():
        values = []
        for path in list_images(os.path.join(shared, folder)):
            image = load_rgb(path)
            values.append(metrics.psnr_y(derain_image(model, image, tile=0), image))
        out[title] = (float(np.mean(values)), float(np.min(values)))
    return out


def seconds_per_image(model, side: int = 512, repeats: int = 5) -> float:
    """Median wall time of one ``side`` x ``side`` image through ``model`` (an InferenceModel), after
    two warm-up calls."""
    import time

    x = np.random.default_rng(0).random((side, side, 3), dtype=np.float32)
    from erl_derain.inference import derain_image

    for _ in range(2):
        derain_image(model, x, tile=0)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        derain_image(model, x, tile=0)
        times.append(time.perf_counter() - t)
    return float(np.median(times))


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
    "synthetic_rain/natural": "rain over natural photographs (`--clean_dir`: the shared `clean_photos`, 515 "
                              "photos of BSDS500, Kodak24, McMaster, Set5, Set14 and Val20), whole photos (longer "
                              "side at most 512), 6 renderings per photo in the styles of `synthetic_rain/wide` and "
                              "2 rain-free pairs (a quarter of the pairs), each scene raised to a random power in "
                              "[0.6, 1.6]; Kodak24 and Val20 are the test split (validation photos, never trained "
                              "on), and the 16 BSDS500 photos that are the clean images of `sirr_val20` and "
                              "`jorder_e_small` are left out (`--clean_exclude`)",
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
            + (f", each pair's rainy image replaced by its clean one with probability {cfg['rain_free_fraction']} "
               "(`--rain_free_fraction`)" if cfg.get("rain_free_fraction") else "")
            + (", bfloat16 mixed precision (float32 weights; the bundled model runs in float32)"
               if cfg.get("mixed_precision") else ""))


def _network(cfg: dict, parameters: int) -> str:
    if cfg["method"] == "erlnet":
        return (f"ERL-Net, schedule {cfg['erl_schedule'].upper()}, entanglement {cfg['erl_entanglement'].upper()}, "
                f"widths {list(cfg['erl_widths'])}, bottleneck {cfg['erl_bottleneck_width']}, dense blocks of "
                f"{cfg['erl_dense_layers']} layers (growth {cfg['erl_growth']}); {parameters:,} parameters in the "
                "bundled de-raining network (the clean autoencoder is training-only and not shipped)")
    if cfg["method"] == "menet":
        return (f"MENET, trunk width {cfg['menet_width']}, first level {cfg['menet_skip_width']}, "
                f"{cfg['menet_blocks']} residual blocks, channel attention {'on' if cfg['menet_ca'] else 'off'}; "
                f"tasks {','.join(cfg['menet_tasks'])} with {cfg['menet_task_weighting'].upper()} weighting; "
                f"{parameters:,} parameters")
    return f"{cfg['method']}; {parameters:,} parameters"


def _flagfile(name: str) -> str:
    return f"flags/pretrained/{name}.flags"


def model_section(name: str, info: dict) -> list[str]:
    from erl_derain.run_config import record_from_dict

    cfg = record_from_dict(info["config"], where=f"{name}.json").flat()
    base = info.get("init_config")  # the model is a fine-tune of that run / bundled model
    base = record_from_dict(base, where=f"{name}.json init_config").flat() if base else None
    alias = [a for a, n in ALIASES.items() if n == name]
    use = "erl-derain derain photo.jpg" + (f" --pretrained={alias[0]}" if name != DEFAULT and alias else "")
    commands = []
    if info.get("init_model"):
        commands.append(f"# first: the model {info['init_model']} (its flagfiles, below)")
    commands += [f"erl-derain train --flagfile={_flagfile(name)}",
                 f"python -m erl_derain.pretrained.package runs/pretrained_{name} --name={name} "
                 "--train_seconds=<s>"]
    start = f"the bundled model `{info['init_model']}`" if info.get("init_model") else "that run"
    lines = [f"## `{name}`" + (" (the default)" if name == DEFAULT else ""), "", f"Used by `{use}`.", "",
             *[f"    {c}" for c in commands], "",
             f"* network: {_network(cfg, info['parameters'])};",
             *([f"* started from: {_data(base)}; {_schedule(base)};",
                f"* fine-tune (`--init_from` {start}, optimisers afresh): {_data(cfg)}; {_schedule(cfg)};"]
               if base else [f"* data: {_data(cfg)};", f"* schedule: {_schedule(cfg)};"]),
             (f"* wall time: {info['train_seconds'] / 60:.1f} minutes on 2 CPU cores"
              + (" (this run; the model it started from took "
                 f"{info['init_train_seconds'] / 60:.1f})" if info.get("init_train_seconds") else "") + ";"
              if info.get("train_seconds") else "* wall time: see the closing note of the session that trained it;"),
             *([f"* history: {info['history']}"] if info.get("history") else []),
             f"* weights: `{name}.npz`, SHA-256 `{info['sha256']}` (checked at every load).", ""]
    return lines


def main():
    import tensorflow as tf

    from erl_derain.inference import InferenceModel, flip_ensemble
    from erl_derain.pretrained import load_pretrained_trainer

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--shared_data", required=True)
    args = p.parse_args()
    spec = [tf.TensorSpec([None, None, None, 3], tf.float32)]

    def compiled(m):
        return InferenceModel(tf.function(m, input_signature=spec), m.pad_multiple)

    measured, sections, grid_models = {}, [], {}
    for name in CARDED:
        trainer, info = load_pretrained_trainer(name)
        model = trainer.inference_model()
        run = compiled(model)
        measured[name] = {"sets": evaluate_sets(run, args.shared_data),
                          "ensemble": evaluate_sets(compiled(flip_ensemble(model, 4)), args.shared_data),
                          "rain_free": rain_free(run, args.shared_data), "seconds": seconds_per_image(run),
                          "parameters": info["parameters"]}
        sections += model_section(name, info)
        grid_models[name] = run
        print(name, measured[name], flush=True)
    grid = real_grid(grid_models, args.shared_data, os.path.join(HERE, "before_after.png"))
    first = measured[CARDED[0]]
    lines = [
        "# Model card: the bundled models",
        "",
        "What `erl-derain derain photo.jpg` uses when no `--model_dir` is given (`erlnet_natural`), what",
        "`--pretrained=fast` selects (`menet_fast`, for CPUs), and what `erl_derain.load_pretrained(name)`",
        "returns. Trained by this package on rain rendered over natural photographs; no image of the",
        "evaluation sets below, and none of their photographs, was seen in training.",
        "",
        "## Evaluation",
        "",
        "Y-channel PSNR/SSIM (MATLAB rounded Y, whole images). Rain-free: Y-PSNR of the model's output on",
        "a photo without rain against that photo (mean, lowest in brackets): how much the model changes what",
        "is not rain. Speed: one 512x512 image on this machine's 2 CPU cores, float32, measured in one run.",
        "",
        "| model | parameters | s / 512x512 | speed-up | `jorder_e_small` Y-PSNR / SSIM (gain) | `sirr_val20` Y-PSNR / SSIM "
        "(gain) | rain-free: " + " / ".join(RAIN_FREE_SETS) + " |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, m in measured.items():
        sets = [f"{s['psnr_y']:.2f} / {s['ssim_y']:.4f} ({s['gain_psnr_y']:+.2f} dB)" for s in m["sets"].values()]
        free = " / ".join(f"{mean:.1f} ({low:.1f})" for mean, low in m["rain_free"].values())
        lines.append(f"| `{name}` | {m['parameters']:,} | {m['seconds']:.3f} | {first['seconds'] / m['seconds']:.1f}x | "
                     + " | ".join(sets) + f" | {free} |")
    inputs = first["sets"]
    lines += ["", "The rainy inputs: " + "; ".join(f"`{k}` {s['input_psnr_y']:.2f} / {s['input_ssim_y']:.4f}"
                                               for k, s in inputs.items()) + ".", ""]
    gains = {n: np.mean([s["gain_psnr_y"] for s in m["sets"].values()]) for n, m in measured.items()}
    if len(measured) > 1:
        lines += [", ".join(f"`{n}` keeps {100 * g / gains[CARDED[0]]:.0f}% of `{CARDED[0]}`'s mean Y-PSNR gain"
                            for n, g in gains.items() if n != CARDED[0]) + " over the two sets.", ""]
    lines += ["With `--self_ensemble=4` (`derain`, `evaluate`: each image also run mirrored left-right, upside-down",
              "and both, the four outputs mirrored back and averaged; four times the time):", ""]
    for name, m in measured.items():
        lines.append(f"* `{name}`: " + "; ".join(f"`{k}` {s['psnr_y']:.2f} / {s['ssim_y']:.4f} ({s['gain_psnr_y']:+.2f} dB)"
                                                for k, s in m["ensemble"].items()) + ".")
    lines += ["", "## Real photos", "", "![before and after](before_after.png)", "",
              f"Six photos of `../shared/data/real_rain` ({', '.join(REAL_PHOTOS)}), de-rained in 512-pixel tiles, "
              "by each model.", "", *LIMITS, "", *sections,
              "## Reproducing this card", "", "    python -m erl_derain.pretrained.card --shared_data=../shared/data",
              ""]
    with open(os.path.join(HERE, "README.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    print(f"wrote {os.path.join(HERE, 'README.md')} and {grid} ({os.path.getsize(grid) / 2**20:.2f} MiB)")


# What the card says is left (written from looking at the grid; update it with the models).
LIMITS = ["What is left (from the grid at full size and the table): no colour casts and no smeared texture at",
          "this scale, but both models remove only part of heavy real rain (23.jpg, 89.jpg keep many streaks) and",
          "the fog-like veil of 12.jpg, and `menet_fast`, fine-tuned to leave rain-free content alone, leaves more",
          "of it than `erlnet_natural` (67.jpg, 89.jpg). `erlnet_natural` darkens a photo slightly (45.jpg), as it",
          "does rain-free photos (by 1-5 grey levels on three Val20 photos measured), and softens fine texture: its",
          "rain-free photos come back at 33-37 dB; `menet_fast`'s at 36.7-40.2 dB, with Val20's wheat field",
          "(01084, whose bright awns look like streaks) at 28 dB. Both are short of the 38 dB the package aims for",
          "on Val20. Drops on the lens and motion blur are out of their reach."]


if __name__ == "__main__":
    main()
