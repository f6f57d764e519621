"""Parameter counts of JRGR's seven networks and seconds per training step (paper sizes by default).

    python benchmarks/jrgr_speed.py [--size=256 --batch=1 --steps=3 --jit_compile=false]

Prints the parameters of F_s, F_r (U-Net, depth 7, 64 filters), G_r, G_s (ResNet, 9 blocks), D_B,
D_Os, D_Or (PatchGAN, 3 layers), then the time of one pre-training step, one joint step (generator
update + the three discriminator updates through the image pools) and one F_r inference.
"""

from __future__ import annotations

import argparse

import numpy as np
import tensorflow as tf
from timing import seconds_per_call

from erl_derain.methods import jrgr




def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--jit_compile", default="false")
    p.add_argument("--unet_depth", type=int, default=7)
    p.add_argument("--unet_filters", type=int, default=64)
    p.add_argument("--resnet_blocks", type=int, default=9)
    args = p.parse_args()
    jit = args.jit_compile == "true"
    t = jrgr.JRGRTrainer(strategy="proposed", unet_depth=args.unet_depth, unet_filters=args.unet_filters,
                         resnet_blocks=args.resnet_blocks, crop_size=args.size)
    shape = (args.batch, args.size, args.size, 3)
    t.build_networks(shape)
    total = 0
    for name, net in t.networks.items():
        n = jrgr.parameter_count(net)
        total += n
        print(f"{name:5s} {type(net).__name__:20s} params {n:>11,d}")
    print(f"all   {'':20s} params {total:>11,d}")
    rng = np.random.default_rng(0)
    batch = {k: tf.constant(rng.random(shape), tf.float32) for k in ("rainy", "clean", "real")}
    for si, stage in enumerate(t.stages):
        t.set_stage(si)
        step = tf.function(t.train_step, jit_compile=jit)
        sec = seconds_per_call(lambda: float(step(batch)["loss"]), args.steps, warmup=2)
        print(f"train step {stage.name:8s} {args.size}x{args.size} batch {args.batch}: {sec:.3f} s")
    model = t.inference_model()
    infer = tf.function(lambda x: model(x), jit_compile=jit)
    sec = seconds_per_call(lambda: infer(batch["real"]).numpy(), args.steps, warmup=2)
    print(f"inference F_r {args.size}x{args.size} batch {args.batch}: {sec:.3f} s")


if __name__ == "__main__":
    main()
