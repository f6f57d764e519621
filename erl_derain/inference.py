"""Running a de-raining network on images of any size.

* ``InferenceModel``: the network as inference runs it, one Keras model that owns what every caller
  needs: float32 input, reflect padding to the network's ``pad_multiple`` (the networks down-sample
  by a power of two), the network called with ``training=False``, the output cropped back to the
  input's size, cast to float32 and clipped to [0, 1]. It works eagerly, under ``tf.function``
  with unknown sizes and inside ``tf.saved_model.save`` (``serving.export`` saves one).
* ``flip_ensemble``: optional test-time averaging over mirrored views (``--self_ensemble``).
* ``derain_image``: whole-image inference when the image fits in ``tile`` pixels per side,
  otherwise overlapping tiles blended with linear ramps (``erl_derain.tiling``: the grid, the
  weights and the blend loop, in NumPy, shared with the TF Serving client).
* ``derain_file``: one photo file in, one out, keeping its mode (grey, alpha), bit depth and
  orientation (``image_io.read_image`` / ``write_image``).

Tiling (``derain_image`` with ``0 < tile < max(H, W)``; grid and weights in ``erl_derain.tiling``)
    The tiles are all of one length, a multiple of the network's (so no tile needs padding):
    4000x3000 with tile 512, overlap 32 gives 7x9 tiles of 456x480, 13.8 MP run for a 12 MP photo.

    * An image no larger than ``tile`` on both sides is run whole: bit-identical to ``tile=0``.
    * Peak memory: input + output (2 x 12 bytes per pixel, 275 MiB for 4000x3000) plus one tile's
      activations (``tile_batch`` tiles' with ``--tile_batch``), whatever the image size. ``benchmarks/large_image.py`` measures it: a 4000x3000
      photo with ERL-Net at the paper's widths peaks at ~2.3 GiB RSS with 512 tiles (TensorFlow
      and the model alone ~0.85 GiB; one whole-image run of just 1536x1024 already takes ~8 GiB).
    * Seams: a tile sees only its own pixels, and ERL-Net's receptive field is wider, so tiled
      output differs slightly from whole-image output near the blended seams. Measured with a
      trained ERL-Net (benchmark, 1536x1024 real photo): Y-PSNR(tiled, whole) > 60 dB, i.e. far
      below the 0.5 dB the tiles may cost against the ground truth.

Transition (until every caller holds an ``InferenceModel``): ``derain_image(predict, image,
multiple)``, ``derain_file(predict, multiple, in_path, out_path)`` and ``apply_padded(predict, x,
multiple)`` still take a bare NHWC -> NHWC callable with its multiple; they run exactly what an
``InferenceModel`` runs (``apply_padded`` is its padding, cropping and clipping).
"""

from __future__ import annotations

import inspect
import os
import time

import keras
import numpy as np
import tensorflow as tf

from erl_derain.tiling import blend_tiles, pad_amounts, tile_grid  # noqa: F401  (re-exported)

SELF_ENSEMBLE_VIEWS = (1, 2, 4)
_VIEW_AXES = ([], [2], [1], [1, 2])  # identity, left-right, upside-down, both (NHWC axes)


def _padded_indices(n: tf.Tensor, pad: tf.Tensor) -> tf.Tensor:
    """Source index of each of the ``n + pad`` rows (or columns) of ``pad_to_multiple``'s output:
    ``i`` itself, then the reflection ``2 (n - 1) - i``, then row 0 (the last row the reflection
    reaches, replicated) once the reflection runs out on a side shorter than the pad."""
    i = tf.range(n + pad)
    return tf.where(i < n, i, tf.maximum(2 * (n - 1) - i, 0))


def pad_to_multiple(x: tf.Tensor, multiple: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Pad an NHWC batch at the bottom/right to a multiple of ``multiple``; works in graphs with
    unknown sizes. Reflect padding needs the pad to be smaller than the side, so sides shorter than
    the multiple continue by edge replication of the reflected part (what ``tf.pad(mode="REFLECT")``
    followed by replicating the last row and column gives).

    Written as two gathers with non-negative integer arithmetic, so that the ONNX and LiteRT
    converters (``serving.formats``) take it with dynamic sizes: ``tf.pad`` with computed paddings
    loses the static channel count (LiteRT's converter then keeps the first convolution as a
    TensorFlow op), a ``tf.repeat`` by zero becomes a failing ONNX Reshape, and ``(-h) % m`` is
    truncated, not floored, by ONNX Runtime."""
    h, w = tf.shape(x)[1], tf.shape(x)[2]
    ph, pw = (multiple - h % multiple) % multiple, (multiple - w % multiple) % multiple
    x = tf.gather(x, _padded_indices(h, ph), axis=1)
    x = tf.gather(x, _padded_indices(w, pw), axis=2)
    return x, h, w


def apply_padded(model, x: tf.Tensor, multiple: int) -> tf.Tensor:
    """Run ``model`` (NHWC -> NHWC) on a copy of ``x`` (cast to float32) padded to ``multiple`` and
    crop back; the output is cast to float32 and clipped to [0, 1]. ``InferenceModel.call``."""
    padded, h, w = pad_to_multiple(tf.cast(x, tf.float32), multiple)
    y = model(padded)
    return tf.clip_by_value(tf.cast(y[:, :h, :w, :], tf.float32), 0.0, 1.0)


def _check_views(views: int) -> int:
    if views not in SELF_ENSEMBLE_VIEWS:
        raise ValueError(f"--self_ensemble must be one of {SELF_ENSEMBLE_VIEWS} views, got {views}")
    return int(views)


def _mirrored_mean(model, x, views: int):
    """The mean of ``model`` over ``views`` mirrored copies of ``x``, each output mirrored back."""
    total = None
    for ax in _VIEW_AXES[:views]:
        y = tf.cast(model(tf.reverse(x, ax) if ax else x), tf.float32)
        y = tf.reverse(y, ax) if ax else y
        total = y if total is None else total + y
    return total / float(views)


def _accepts_training(network) -> bool:
    """Whether ``network`` is called as ``network(x, training=False)``: Keras layers, and Python
    callables with a ``training`` parameter (not a ``tf.function`` with a fixed input signature)."""
    if isinstance(network, keras.Layer):
        return True
    if getattr(network, "input_signature", None) is not None:
        return False
    fn = getattr(network, "python_function", network)
    if isinstance(fn, keras.Layer):
        return True
    try:
        param = inspect.signature(fn).parameters.get("training")
    except (TypeError, ValueError):
        return False
    return param is not None and param.kind in (param.POSITIONAL_OR_KEYWORD, param.KEYWORD_ONLY)


class InferenceModel(keras.Model):
    """A de-raining network as inference runs it: ``call(x)`` casts ``x`` (NHWC, RGB in [0, 1], any
    height and width) to float32, reflect-pads it to ``pad_multiple`` (``pad_to_multiple``), runs
    ``network`` (with ``training=False`` when it takes that argument), crops back, casts to float32
    and clips to [0, 1]. ``views`` (1, 2 or 4; ``flip_ensemble``) averages the network over mirrored
    copies of the padded input, each output mirrored back, before cropping.

    ``network``: a Keras model or any callable NHWC -> NHWC (float16 / bfloat16 outputs are fine).
    Attributes ``network``, ``pad_multiple``, ``views``. The model is float32 whatever the global
    dtype policy (the network keeps its own). A ``training`` argument is accepted and ignored."""

    def __init__(self, network, pad_multiple: int = 1, *, views: int = 1, name: str | None = None, **kwargs):
        if isinstance(network, InferenceModel):
            raise TypeError(f"{network.name} is already an InferenceModel (it pads and clips): pass its .network")
        if not callable(network):
            raise TypeError(f"network must be a Keras model or a callable NHWC -> NHWC, got {type(network).__name__}")
        if isinstance(pad_multiple, bool) or int(pad_multiple) != pad_multiple or int(pad_multiple) < 1:
            raise ValueError(f"pad_multiple must be a positive integer, got {pad_multiple!r}")
        kwargs.setdefault("dtype", "float32")
        super().__init__(name=name, **kwargs)
        self.network = network
        self.pad_multiple = int(pad_multiple)
        self.views = _check_views(views)
        self._network_takes_training = _accepts_training(network)

    def build(self, input_shape=None):  # nothing of its own to build; the network builds on its first call
        self.built = True

    def run_network(self, x):
        """The bare network on an already padded float32 batch (``training=False`` when accepted)."""
        return self.network(x, training=False) if self._network_takes_training else self.network(x)

    def _network_views(self, x):
        return self.run_network(x) if self.views == 1 else _mirrored_mean(self.run_network, x, self.views)

    def call(self, x, training=None):
        return apply_padded(self._network_views, x, self.pad_multiple)

    def compute_output_spec(self, x, training=None):
        return keras.KerasTensor(x.shape, dtype="float32")


def as_inference_model(model, multiple: int | None = None) -> InferenceModel:
    """``model`` as an ``InferenceModel``: itself, or a network wrapped with ``multiple`` (default
    its ``pad_multiple`` attribute, as the bundled model has). A ``multiple`` that contradicts an
    InferenceModel's own is a ``ValueError``; a network without either a ``TypeError``.
    ``as_inference_model(trainer.inference_model(), trainer.pad_multiple)`` works whether or not the
    method already returns an ``InferenceModel``."""
    if isinstance(model, InferenceModel):
        if multiple is not None and int(multiple) != model.pad_multiple:
            raise ValueError(f"multiple {multiple} given for {model.name}, whose pad_multiple is {model.pad_multiple}")
        return model
    if multiple is None:
        multiple = getattr(model, "pad_multiple", None)
        if multiple is None:
            raise TypeError("an InferenceModel is needed (or a network with its multiple): "
                            "InferenceModel(trainer.inference_model(), trainer.pad_multiple)")
    return InferenceModel(model, multiple)


def flip_ensemble(model, views: int = 1):
    """``model`` averaged over mirrored views of its input, each output mirrored back (test-time
    "self-ensemble"): 1 = the model itself, 2 = also left-right mirrored, 4 = also upside-down and
    both. Rain streaks stay rain streaks under these mirrors (their tilt only changes sign, as under
    ``--flip`` in training); 90-degree rotations would turn them horizontal, so they are not used.
    Costs ``views`` runs of the network per image or tile.

    An ``InferenceModel`` gives an ``InferenceModel`` with ``views`` (the network's views mirror the
    input padded to its multiple; cropping and clipping follow the mean). Any other callable NHWC ->
    NHWC gives a callable averaging it over mirrored copies of its input."""
    views = _check_views(views)
    if isinstance(model, InferenceModel):
        if model.views != 1:
            raise ValueError(f"{model.name} already averages {model.views} views")
        if views == 1:
            return model
        return InferenceModel(model.network, model.pad_multiple, views=views, name=f"{model.name}_x{views}")
    if views == 1:
        return model
    return lambda x: _mirrored_mean(model, x, views)


def _runner(model, multiple):
    """NHWC -> float32 NHWC in [0, 1] of ``model``: an InferenceModel as it is, a bare callable
    through ``apply_padded`` with ``multiple`` (the transition form); and the multiple used."""
    if isinstance(model, InferenceModel):
        as_inference_model(model, multiple)  # checks a contradicting multiple
        return model, model.pad_multiple
    if multiple is None:
        multiple = getattr(model, "pad_multiple", None)
        if multiple is None:
            raise TypeError("derain_image needs an InferenceModel (or a network and its multiple)")
    multiple = int(multiple)
    return (lambda x: apply_padded(model, x, multiple)), multiple


def _blend(run, image, tile: int, overlap: int, multiple: int, tile_batch: int) -> np.ndarray:
    """``tiling.blend_tiles`` with ``run`` (NHWC -> NHWC): one tile per call, or ``tile_batch`` stacked."""
    def run_tiles(stack):
        return run(tf.convert_to_tensor(stack)).numpy()

    return blend_tiles(lambda a: run_tiles(a[None])[0], image, tile, overlap, multiple, tile_batch=tile_batch,
                       run_tiles=run_tiles)


def derain_image(model, image: np.ndarray, multiple: int | None = None, *, tile: int = 512,
                 overlap: int = 32, tile_batch: int = 1) -> np.ndarray:
    """De-rain one HxWx3 float image in [0,1] with ``model`` (an ``InferenceModel``); returns
    float32 HxWx3 in [0, 1]. ``tile <= 0`` or an image within ``tile`` x ``tile``: one whole-image
    run; otherwise overlapping tiles blended with linear ramps (``tiling.blend_tiles``), up to
    ``tile_batch`` of them per network call (more memory, fewer calls; the same result).

    Transition: ``derain_image(predict, image, multiple)`` with a bare NHWC -> NHWC callable."""
    run, multiple = _runner(model, multiple)
    return _blend(run, image, tile, overlap, multiple, tile_batch)


def derain_file(model, in_path: str, out_path: str, *legacy, tile: int = 512, overlap: int = 32,
                quality: int = 95, tile_batch: int = 1) -> dict:
    """De-rain the photo ``in_path`` into ``out_path`` keeping what it is (``model``: an
    ``InferenceModel``).

    Reads with ``image_io.read_image`` (upright, RGB for the network), checks that ``out_path``'s
    format can hold the result *before* running the network (``ValueError`` naming it otherwise),
    runs ``derain_image`` (``tile``, ``overlap``, ``tile_batch``) and writes with ``image_io.write_image`` (grey sources back to grey, alpha
    unchanged, 16 bits kept, no orientation tag; atomic). Returns a dict describing the run:
    ``input``, ``output``, ``width``, ``height``, ``mode``, ``bit_depth``, ``orientation``,
    ``tiles`` (rows, columns; (1, 1) = whole image) and ``seconds`` (read + de-rain + write).

    Transition: ``derain_file(predict, multiple, in_path, out_path)`` with a bare callable."""
    from erl_derain.data import image_io

    multiple = None
    if legacy:  # derain_file(predict, multiple, in_path, out_path)
        if len(legacy) != 1:
            raise TypeError("derain_file(model, in_path, out_path) (or, transitionally, (predict, multiple, "
                            "in_path, out_path))")
        multiple, in_path, out_path = in_path, out_path, legacy[0]
    run, multiple = _runner(model, multiple)
    t0 = time.perf_counter()
    in_path, out_path = os.fspath(in_path), os.fspath(out_path)
    image, meta = image_io.read_image(in_path)
    image_io.check_writable(out_path, meta)
    h, w = image.shape[:2]
    result = _blend(run, image, tile, overlap, multiple, tile_batch)
    del image
    image_io.write_image(out_path, result, meta, quality=quality)
    return {"input": in_path, "output": out_path, "width": w, "height": h, "mode": meta.mode,
            "bit_depth": meta.bit_depth, "orientation": meta.orientation,
            "tiles": tile_grid(h, w, tile, overlap), "seconds": time.perf_counter() - t0}
