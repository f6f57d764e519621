"""Parameter counts and step times of MENET and MENET-deep, and the cost of GB / LB over fixed weights.

    python benchmarks/menet_speed.py [--size=224 --batch=20 --steps=5]

One line per network (8 residual blocks with CA = MENET, 16 = MENET-deep) and weighting (fixed, gb, lb;
tasks p,e,t): seconds per training step at the paper's 224x224 crops in batches of 20, and per
inference of one 224x224 image (the paper's Table III: 0.6578 s on a Pentium G645 CPU, 0.0030 s on a
GTX Titan X). GB takes three extra gradients with respect to the last convolution's kernel only.
"""

from __future__ import annotations

import argparse

import tensorflow as tf
from timing import seconds_per_call

from erl_derain.methods import menet




def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=20)
    p.add_argument("--steps", type=int, default=5)
    args = p.parse_args()
    x = tf.random.uniform((args.batch, args.size, args.size, 3), seed=0)
    batch = {"rainy": x, "clean": tf.clip_by_value(x * 0.9, 0.0, 1.0)}
    print(f"TF {tf.__version__}, {args.size}x{args.size}, batch {args.batch}, "
          f"devices {[d.device_type for d in tf.config.list_physical_devices()]}")
    for label, blocks in (("MENET", 8), ("MENET-deep", 16)):
        times = {}
        for mode in ("fixed", "gb", "lb"):
            trainer = menet.MENETTrainer(menet.MENETConfig(blocks=blocks), task_weighting=mode)
            trainer.build_networks((1, 32, 32, 3))
            step = tf.function(trainer.train_step)
            times[mode] = seconds_per_call(lambda: float(step(batch)["loss"]), args.steps)
        net = trainer.inference_model()
        infer = tf.function(net)
        t_inf = seconds_per_call(lambda: infer(x[:1]).numpy(), args.steps)
        trainable = sum(int(tf.size(v)) for v in net.trainable_variables)
        print(f"{label:10s} params {net.count_params():,} ({trainable:,} trainable); inference {t_inf:.4f} s/image; "
              f"train step fixed {times['fixed']:.3f} s, GB {times['gb']:.3f} s "
              f"(x{times['gb'] / times['fixed']:.3f}), LB {times['lb']:.3f} s (x{times['lb'] / times['fixed']:.3f})")


if __name__ == "__main__":
    main()
