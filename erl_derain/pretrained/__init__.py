"""The bundled models: `erl-derain derain photo.jpg` works right after `pip install`.

The package ships the weights of networks trained by the package itself (flagfiles in
``flags/pretrained/``; the model card is ``README.md`` next to this file): ``erlnet_natural``, the
default (alias ``erlnet``), and ``menet_fast`` for CPUs (alias ``fast``), both trained on rain over
natural photographs; ``erlnet_synthetic``, the earlier default trained on scikit-image's photos, from
which ``erlnet_natural`` was fine-tuned, and ``menet_fast_base``, the first run of ``menet_fast``, from
which it was fine-tuned with more rain-free pairs. Nothing is downloaded. Files:

* ``<name>.json``: the training configuration (``config``), the SHA-256 of the weights file and what
  the card reports (steps, wall time);
* ``<name>.npz``: the de-raining network's variables by path (no training-only parts).

:func:`load_pretrained` rebuilds the network from the configuration, checks the checksum and every
variable's presence and shape, and returns the Keras inference model.
"""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np

DEFAULT = "erlnet_natural"
HERE = os.path.dirname(os.path.abspath(__file__))
# Short names of ``--pretrained``: the de-raining quality one and the fast one for CPUs.
ALIASES = {"erlnet": DEFAULT, "fast": "menet_fast"}


def available(directory: str | None = None) -> list[str]:
    """The bundled models' names (a ``<name>.json`` card next to a ``<name>.npz``)."""
    directory = directory or HERE
    return sorted(f[:-5] for f in os.listdir(directory)
                  if f.endswith(".json") and os.path.exists(os.path.join(directory, f[:-5] + ".npz")))


def resolve(name: str | None, directory: str | None = None) -> str:
    """A bundled model's name from ``--pretrained``'s value (an alias, a name; empty: the default);
    :class:`PretrainedError` listing what exists otherwise."""
    if not name or name in ("true", "1"):
        return DEFAULT
    name = ALIASES.get(name, name)
    have = available(directory)
    if name not in have:
        short = [a for a, n in ALIASES.items() if n in have]
        raise PretrainedError(f"--pretrained={name}: no such bundled model; there are {', '.join(short + have)}")
    return name


class PretrainedError(ValueError):
    """Missing or damaged bundled weights; the message says which file and what to do."""


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def paths(name: str = DEFAULT, directory: str | None = None) -> tuple[str, str]:
    directory = directory or HERE
    return os.path.join(directory, f"{name}.json"), os.path.join(directory, f"{name}.npz")


def info_path_of(name: str = DEFAULT, directory: str | None = None) -> str:
    return paths(name, directory)[0]


def read_info(name: str = DEFAULT, directory: str | None = None) -> dict:
    info_path, _ = paths(name, directory)
    if not os.path.exists(info_path):
        raise PretrainedError(f"no bundled model {name!r}: {info_path} is missing (reinstall erl_derain, or give "
                              f"--model_dir of a trained run)")
    with open(info_path, encoding="utf-8") as f:
        return json.load(f)


def load_pretrained_trainer(name: str = DEFAULT, directory: str | None = None):
    """``(trainer, info)`` with the bundled weights in the trainer's de-raining network."""
    from erl_derain.methods import make_trainer

    info = read_info(name, directory)
    weights_path = checked_weights_path(name, directory, info)
    from erl_derain.run_config import record_from_dict

    record = record_from_dict(info["config"], where=info_path_of(name, directory))
    info = {**info, "record": record}
    trainer = make_trainer(record)
    trainer.build_networks()
    assign_weights(trainer.inference_model(), weights_path)
    return trainer, info


def assign_weights(model, weights_path: str) -> None:
    """Set every variable of ``model`` (an inference network) from a bundled ``.npz``, by path; a
    missing variable or another shape raises :class:`PretrainedError` naming the file."""
    with np.load(weights_path) as stored:
        variables = {v.path: v for v in model.weights}
        missing = sorted(set(variables) - set(stored.files))
        if missing:
            raise PretrainedError(f"{weights_path} lacks {len(missing)} variable(s) of the network, e.g. {missing[:3]}")
        for path, var in variables.items():
            value = stored[path]
            if tuple(value.shape) != tuple(var.shape):
                raise PretrainedError(f"{weights_path}: {path} has shape {value.shape}, the network {tuple(var.shape)}")
            var.assign(value)


def checked_weights_path(name: str = DEFAULT, directory: str | None = None, info: dict | None = None) -> str:
    """The weights file of a bundled model, after its checksum was checked against its card (``info``:
    its ``read_info``, when the caller has it)."""
    info = info or read_info(name, directory)
    _, weights_path = paths(name, directory)
    if not os.path.exists(weights_path):
        raise PretrainedError(f"{weights_path} is missing (reinstall erl_derain)")
    digest = sha256_of(weights_path)
    if digest != info["sha256"]:
        raise PretrainedError(f"{weights_path} is damaged: its SHA-256 is {digest}, the model card's "
                              f"{info['sha256']} (reinstall erl_derain)")
    return weights_path


def load_pretrained(name: str = DEFAULT, directory: str | None = None):
    """The bundled de-raining network as a Keras model: NHWC float32 in [0, 1] -> de-rained image
    (inputs are padded to ``model.pad_multiple``-multiples by ``erl_derain.inference.apply_padded``)."""
    trainer, _ = load_pretrained_trainer(name, directory)
    return trainer.inference_model()
