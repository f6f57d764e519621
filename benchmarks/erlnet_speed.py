"""Parameter counts and training/inference step times of MEMD and ERL-Net (paper sizes by default).

    python benchmarks/erlnet_speed.py [--size=320 --batch=1 --steps=5 --jit_compile=false]

Prints one line per network and stage: parameters of the de-raining network (the clean autoencoder
is counted separately: it is used in training only), seconds per training step and per inference of
one size x size image. The ERL-Net rebuttal reports 0.46 s per 320x320 inference on a Tesla P100.
"""

from __future__ import annotations

import argparse
import time

import tensorflow as tf

from erl_derain.methods import make_trainer


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=320)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--jit_compile", default="false")
    p.add_argument("--widths", default="64,128,256")
    p.add_argument("--bottleneck_width", type=int, default=256)
    args = p.parse_args()
    jit = args.jit_compile == "true"
    widths = [int(w) for w in args.widths.split(",")]
    x = tf.random.uniform((args.batch, args.size, args.size, 3))
    batch = {"rainy": x, "clean": x}
    print(f"TF {tf.__version__}, {args.size}x{args.size}, batch {args.batch}, jit_compile={jit}, "
          f"devices {[d.device_type for d in tf.config.list_physical_devices()]}")
    for method, strategy in (("memd", "memd"), ("erlnet", "ma_d")):
        trainer = make_trainer({"method": method, "erl_strategy": strategy, "widths": widths,
                                "bottleneck_width": args.bottleneck_width})
        trainer.build_networks((1, 64, 64, 3))
        model = trainer.inference_model()
        model(tf.zeros((1, 64, 64, 3)))
        n_params = model.count_params()
        ae = trainer.clean_ae.count_params() if trainer.clean_ae is not None else 0
        infer = tf.function(model, jit_compile=jit)
        infer(x[:1])
        t0 = time.perf_counter()
        for _ in range(args.steps):
            infer(x[:1]).numpy()
        t_inf = (time.perf_counter() - t0) / args.steps
        print(f"{method:7s} params {n_params:,} (clean autoencoder {ae:,}); inference {t_inf:.3f} s/image")
        for i, stage in enumerate(trainer.stages):
            trainer.set_stage(i)
            step = tf.function(trainer.train_step, jit_compile=jit)
            step(batch)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                float(step(batch)["loss"])
            dt = (time.perf_counter() - t0) / args.steps
            print(f"{method:7s} stage {stage.name:3s} trains {'+'.join(stage.train):14s} {dt:.3f} s/step")


if __name__ == "__main__":
    main()
