"""erl_derain: single-image deraining in TensorFlow 2 / Keras 3."""

__version__ = "0.1.0"


def load_pretrained(name: str = "erlnet_synthetic"):
    """The bundled pretrained de-raining network (a Keras model, NHWC float32 in [0, 1]); see
    ``erl_derain/pretrained/README.md``."""
    from erl_derain.pretrained import load_pretrained as _load

    return _load(name)
