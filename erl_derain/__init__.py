"""erl_derain: single-image deraining in TensorFlow 2 / Keras 3."""

from __future__ import annotations

__version__ = "0.1.0"


def load_pretrained(name: str | None = None):
    """A bundled de-raining network (a Keras model, NHWC float32 in [0, 1]): ``None`` or ``"erlnet"``
    the default ERL-Net, ``"fast"`` the MENET for CPUs, or a full name; see
    ``erl_derain/pretrained/README.md``."""
    from erl_derain.pretrained import load_pretrained as _load, resolve

    return _load(resolve(name))
