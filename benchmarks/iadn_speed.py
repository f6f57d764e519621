"""Parameters, training step time and inference time of the intensity-aware network.

    python benchmarks/iadn_speed.py [--crop=256 --size=512 --steps=3]

The paper's headline: 0.008 s per 512x512 image on a GTX 1080Ti (Table I). Prints the deraining
network's parameters (the segmentation network, used only in training, separately), seconds per
training step at batch 1 with and without labels, and seconds per 512x512 inference.
"""

from __future__ import annotations

import argparse

import tensorflow as tf
from timing import seconds_per_call

from erl_derain.methods import iadn




def main():
    p = argparse.ArgumentParser()
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--size", type=int, default=512)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    trainer = iadn.IADNTrainer(iadn.IADNConfig())
    trainer.build_networks((1, 32, 32, 3))
    x = tf.random.uniform((1, args.crop, args.crop, 3), seed=0)
    labels = tf.cast(tf.random.uniform((1, args.crop, args.crop, 1), maxval=19, dtype=tf.int32), tf.uint8)
    step = tf.function(trainer.train_step)
    t_plain = seconds_per_call(lambda: float(step({"rainy": x, "clean": x})["loss"]), args.steps)
    t_seg = seconds_per_call(lambda: float(step({"rainy": x, "clean": x, "segmentation": labels})["loss"]), args.steps)
    infer = tf.function(trainer.inference_model())
    big = tf.random.uniform((1, args.size, args.size, 3), seed=1)
    t_inf = seconds_per_call(lambda: infer(big).numpy(), args.steps)
    print(f"TF {tf.__version__}, devices {[d.device_type for d in tf.config.list_physical_devices()]}")
    print(f"iadn params {trainer.net.count_params():,} (segmentation network {trainer.seg_net.count_params():,}, "
          f"training only); train step {args.crop}x{args.crop} batch 1: {t_plain:.3f} s without labels, "
          f"{t_seg:.3f} s with L_seg; inference {args.size}x{args.size}: {t_inf:.3f} s/image")


if __name__ == "__main__":
    main()
