"""bfloat16 against float32 inference for the bundled models: speed and Y-PSNR.

    python benchmarks/precision.py [--models=erlnet_natural,menet_fast] [--shared_data=../shared/data]
        [--side=512] [--repeats=5] [--json=PATH] [--markdown=docs/benchmarks.md] [--note=TEXT]

For each bundled model, the network as shipped (float32) and rebuilt as ``--precision=bfloat16``
does it (``erl_derain.precision.in_precision``: Keras' ``mixed_bfloat16`` policy, float32 weights and
float32 input/output), both through one ``tf.function`` as the CLI runs them:

* seconds per ``--side`` x ``--side`` image: the median of ``--repeats`` calls after two warm-up calls
  (``erl_derain.pretrained.card.seconds_per_image``), and the speed-up;
* mean Y-PSNR/SSIM (rounded Y, whole images) on the shared ``jorder_e_small`` and ``sirr_val20`` pairs
  (``card.evaluate_sets``), and the change bfloat16 makes.

Refuses bfloat16 where ``erl_derain.precision.bfloat16_unavailable`` says the machine lacks it (as the
CLI does). Keep the machine otherwise idle: the timings are wall time. ``--markdown`` writes the
table as the page's ``precision`` section (the rest of the page is kept).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import marked_section, shared_data_dir, write_section  # noqa: E402


def measure(name: str, shared: str, side: int, repeats: int) -> dict:
    import tensorflow as tf

    from erl_derain import precision
    from erl_derain.inference import InferenceModel
    from erl_derain.pretrained import load_pretrained_trainer
    from erl_derain.pretrained.card import evaluate_sets, seconds_per_image

    trainer, info = load_pretrained_trainer(name)
    spec = [tf.TensorSpec([None, None, None, 3], tf.float32)]
    out = {}
    for prec in precision.PRECISIONS:
        net = precision.in_precision(trainer, info["record"], prec).inference_model()
        run = InferenceModel(tf.function(net, input_signature=spec), net.pad_multiple)
        seconds = seconds_per_image(run, side=side, repeats=repeats)
        sets = evaluate_sets(run, shared)
        out[prec] = {"seconds": seconds, "sets": {k: {m: float(v[m]) for m in ("psnr_y", "ssim_y", "gain_psnr_y")}
                                                  for k, v in sets.items()}}
        print(f"{name} {prec}: {seconds:.3f} s / {side}x{side}; " + "; ".join(
            f"{k} {v['psnr_y']:.3f} dB" for k, v in out[prec]["sets"].items()), file=sys.stderr, flush=True)
    return out


def table(results: dict, side: int) -> list[str]:
    lines = [f"| model | float32 s / {side}x{side} | bfloat16 s | speed-up | `jorder_e_small` Y-PSNR float32 / "
             "bfloat16 (change) | `sirr_val20` Y-PSNR float32 / bfloat16 (change) |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        f32, b16 = r["float32"], r["bfloat16"]
        cells = [f"{f32['sets'][k]['psnr_y']:.3f} / {b16['sets'][k]['psnr_y']:.3f} "
                 f"({b16['sets'][k]['psnr_y'] - f32['sets'][k]['psnr_y']:+.3f} dB)" for k in f32["sets"]]
        lines.append(f"| `{name}` | {f32['seconds']:.3f} | {b16['seconds']:.3f} | "
                     f"{f32['seconds'] / b16['seconds']:.2f}x | " + " | ".join(cells) + " |")
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="erlnet_natural,menet_fast")
    p.add_argument("--shared_data", default=str(shared_data_dir()))
    p.add_argument("--side", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default=None)
    p.add_argument("--markdown", default=None, help="write the 'precision' section of this page")
    p.add_argument("--note", action="append", default=[], help="a line under the table")
    args = p.parse_args()
    from erl_derain import precision

    reason = precision.bfloat16_unavailable()
    if reason:
        print(f"benchmarks/precision.py: bfloat16 cannot be measured here: {reason}", file=sys.stderr)
        return 2
    for folder in ("jorder_e_small", "sirr_val20"):
        if not os.path.isdir(os.path.join(args.shared_data, folder)):
            print(f"benchmarks/precision.py: --shared_data={args.shared_data} has no {folder}/ folder", file=sys.stderr)
            return 2
    results = {name: measure(name, args.shared_data, args.side, args.repeats) for name in args.models.split(",")}
    lines = table(results, args.side)
    print("\n".join(lines))
    if args.markdown:
        command = "python benchmarks/precision.py " + " ".join(a for a in sys.argv[1:] if not a.startswith("--note"))
        text = ["`--precision=bfloat16` (`derain`, `evaluate`, `export`) against float32 for the bundled models: "
                f"the median of {args.repeats} calls on one {args.side}x{args.side} image after two warm-up calls, "
                "and the mean Y-PSNR (rounded Y, whole images) on the shared pairs.", "", *lines, "",
                *(f"* {n}" for n in args.note)]
        write_section(args.markdown, marked_section("precision", "benchmarks/precision.py",
                                                    "Inference in bfloat16 (the bundled models)", command, text))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
