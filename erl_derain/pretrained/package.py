"""Package a trained run as the bundled model: ``python -m erl_derain.pretrained.package <model_dir>``.

Writes ``<name>.npz`` (the de-raining network's variables by path) and ``<name>.json`` (the training
configuration, the weights' SHA-256, steps and wall time) into this package folder. A run trained with
``--init_from`` (a fine-tune) also records the configuration of the run it started from."""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from erl_derain.fileio import atomic_open, atomic_write_text
from erl_derain.pretrained import DEFAULT, HERE, paths, sha256_of


def package(model_dir: str, name: str = DEFAULT, directory: str = HERE, extra: dict | None = None) -> tuple[str, str]:
    from erl_derain.training import PRETRAINED_PREFIX, load_trainer, read_config

    trainer, record = load_trainer(model_dir)
    config = record.to_dict()
    start = record.run.init_from
    if start and start.split(":")[0] == PRETRAINED_PREFIX:  # a fine-tune of a bundled model: its card's config
        from erl_derain.pretrained import read_info

        base = start.split(":", 1)[1] if ":" in start else DEFAULT
        started = read_info(base, directory)
        extra = {"init_config": started["config"], "init_model": base,
                 **({"init_train_seconds": started["train_seconds"]} if started.get("train_seconds") else {}),
                 **(extra or {})}
    elif start:  # a fine-tune: the card also describes the run it started from
        extra = {"init_config": read_config(start).to_dict(), **(extra or {})}
    variables = {v.path: np.asarray(v.numpy()) for v in trainer.inference_model().weights}
    info_path, weights_path = paths(name, directory)
    with atomic_open(weights_path, "wb") as f:
        np.savez_compressed(f, **variables)
    info = {"name": name, "config": config, "sha256": sha256_of(weights_path),
            "parameters": int(sum(v.size for v in variables.values())), **(extra or {})}
    atomic_write_text(info_path, json.dumps(info, indent=2, sort_keys=True))
    return info_path, weights_path


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("model_dir")
    p.add_argument("--name", default=DEFAULT)
    p.add_argument("--train_seconds", type=float, default=None,
                   help="wall time of the training run, with that of the run it started from if any (model card)")
    p.add_argument("--history", default=None, help="how the run went if not in one go, e.g. settings changed on "
                                                   "resume (model card)")
    args = p.parse_args()
    extra = {"train_seconds": args.train_seconds} if args.train_seconds else {}
    if args.history:
        extra["history"] = args.history
    for path in package(args.model_dir, args.name, extra=extra):
        print(f"wrote {path} ({os.path.getsize(path) / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()
