"""SavedModel export size and per-image latency of the serving signatures (random weights).

    python benchmarks/serving_latency.py [--size=512 --reps=3 --methods=erlnet,memd]

For each method at the paper's widths (64,128,256 / bottleneck 256, 4 dense layers, growth 32):
exports with ``erl_derain.serving.export_saved_model`` into a temporary folder, prints the export's
size on disk (total and variables), reloads it with ``tf.saved_model.load`` and times one
``size`` x ``size`` image through ``serving_default`` (float32 in and out) and ``derain_image``
(a JPEG in, PNG bytes out: decode + network + encode), after one warm-up call, against the Keras
model under ``tf.function`` (the same network without the signature's checks, padding and
codecs). Latency is in-process: no TF Serving and no network.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import tensorflow as tf

from erl_derain import serving
from erl_derain.methods import make_trainer


def dir_size(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def timed(fn, reps: int) -> tuple[float, float]:
    fn()  # warm-up: tracing, oneDNN primitive creation
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), float(np.min(times))


def test_image(size: int) -> np.ndarray:
    """A smooth photo-like image (a random-noise JPEG would be unrealistically large)."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([0.5 + 0.4 * np.sin(6 * xx + 2 * yy), 0.5 + 0.3 * np.cos(5 * yy), 0.4 + 0.3 * xx * yy], -1)
    return np.clip(rgb + 0.03 * np.random.default_rng(0).random((size, size, 3)), 0, 1).astype(np.float32)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--methods", default="erlnet,memd")
    p.add_argument("--widths", default="64,128,256")
    p.add_argument("--bottleneck_width", type=int, default=256)
    args = p.parse_args()
    image = test_image(args.size)
    jpeg = tf.io.encode_jpeg(tf.cast(tf.round(image * 255), tf.uint8), quality=90).numpy()
    print(f"TF {tf.__version__}, {os.cpu_count()} CPU(s), devices "
          f"{[d.device_type for d in tf.config.list_physical_devices()]}; {args.size}x{args.size}, batch 1, "
          f"median (min) of {args.reps} after a warm-up; request JPEG {len(jpeg) / 1024:.0f} KiB")
    widths = [int(w) for w in args.widths.split(",")]
    for method in args.methods.split(","):
        config = {"method": method, "widths": widths, "bottleneck_width": args.bottleneck_width}
        trainer = make_trainer(config)
        trainer.build_networks((1, 64, 64, 3))
        model = trainer.inference_model()
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            path = serving.export_saved_model(model, os.path.join(tmp, method),
                                              metadata={"method": method, "config": config})
            t_export = time.perf_counter() - t0
            total, variables = dir_size(path), dir_size(os.path.join(path, "variables"))
            loaded = tf.saved_model.load(path)
            serve, derain = loaded.signatures["serving_default"], loaded.signatures["derain_image"]
            x = tf.constant(image[None])
            keras_fn = tf.function(lambda t: model(t, training=False))
            t_keras = timed(lambda: keras_fn(x).numpy(), args.reps)
            t_serve = timed(lambda: serve(images=x)["derained"].numpy(), args.reps)
            t_bytes = timed(lambda: derain(image_bytes=tf.constant([jpeg]))["derained_png_bytes"].numpy(), args.reps)
            png = derain(image_bytes=tf.constant([jpeg]))["derained_png_bytes"].numpy()[0]
        params = model.count_params()
        print(f"{method:7s} params {params:,}; export {total / 2**20:.1f} MiB (variables {variables / 2**20:.1f} MiB, "
              f"written in {t_export:.1f} s)")
        print(f"{'':7s} keras tf.function {t_keras[0]:.3f} s ({t_keras[1]:.3f}) | serving_default {t_serve[0]:.3f} s "
              f"({t_serve[1]:.3f}) | derain_image {t_bytes[0]:.3f} s ({t_bytes[1]:.3f}); PNG answer "
              f"{len(png) / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
