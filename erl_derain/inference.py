"""Running a de-raining network on images of any size.

* ``pad_to_multiple`` / crop back: the networks down-sample by a power of two, so inputs are
  reflect-padded to the network's multiple and the output is cropped to the input's size.
* ``derain_image``: whole-image inference when the image fits in ``tile`` pixels per side,
  otherwise overlapping tiles blended with linear ramps (memory stays bounded for 12 MP photos).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def pad_amounts(size: int, multiple: int) -> int:
    return (-size) % multiple


def pad_to_multiple(x: tf.Tensor, multiple: int) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Pad an NHWC batch at the bottom/right to a multiple of ``multiple``; works in graphs with
    unknown sizes. Reflect padding needs the pad to be smaller than the side, so sides shorter than
    the multiple are padded by edge replication in a second step."""
    h, w = tf.shape(x)[1], tf.shape(x)[2]
    ph, pw = (-h) % multiple, (-w) % multiple
    rh, rw = tf.minimum(ph, h - 1), tf.minimum(pw, w - 1)
    x = tf.pad(x, [[0, 0], [0, rh], [0, rw], [0, 0]], mode="REFLECT")
    eh, ew = ph - rh, pw - rw
    x = tf.concat([x, tf.repeat(x[:, -1:], eh, axis=1)], axis=1)
    x = tf.concat([x, tf.repeat(x[:, :, -1:], ew, axis=2)], axis=2)
    return x, h, w


def apply_padded(model, x: tf.Tensor, multiple: int) -> tf.Tensor:
    """Run ``model`` on a padded copy of ``x`` and crop back; the output is clipped to [0, 1]."""
    padded, h, w = pad_to_multiple(x, multiple)
    y = model(padded)
    return tf.clip_by_value(tf.cast(y[:, :h, :w, :], tf.float32), 0.0, 1.0)


def _ramp(n: int, overlap: int, before: bool, after: bool) -> np.ndarray:
    """Blending weights along one axis of a tile: linear ramps over the overlap on the sides that
    have a neighbouring tile, full weight on sides at the image border."""
    w = np.ones(n, np.float32)
    r = (np.arange(overlap, dtype=np.float32) + 1) / (overlap + 1)
    if before and overlap:
        w[:overlap] = r
    if after and overlap:
        w[-overlap:] = np.minimum(w[-overlap:], r[::-1])
    return w


def _starts(size: int, tile: int, overlap: int) -> list[int]:
    if size <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride)) + [size - tile]
    return sorted(set(starts))


def derain_image(predict, image: np.ndarray, multiple: int, tile: int = 512, overlap: int = 32) -> np.ndarray:
    """De-rain one HxWx3 float image in [0,1] with ``predict`` (NHWC -> NHWC)."""
    image = np.asarray(image, np.float32)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
    h, w, _ = image.shape
    run = lambda a: apply_padded(predict, tf.convert_to_tensor(a[None]), multiple)[0].numpy()  # noqa: E731
    if tile <= 0 or (h <= tile and w <= tile):
        return run(image)
    if overlap >= tile:
        raise ValueError(f"--tile_overlap ({overlap}) must be smaller than --tile ({tile})")
    out = np.zeros_like(image)
    weight = np.zeros((h, w, 1), np.float32)
    ys, xs = _starts(h, tile, overlap), _starts(w, tile, overlap)
    for y0 in ys:
        for x0 in xs:
            patch = image[y0:y0 + tile, x0:x0 + tile]
            ph, pw = patch.shape[:2]
            wy = _ramp(ph, overlap, y0 > 0, y0 + ph < h)
            wx = _ramp(pw, overlap, x0 > 0, x0 + pw < w)
            wgt = (wy[:, None] * wx[None, :])[..., None]
            out[y0:y0 + ph, x0:x0 + pw] += run(patch) * wgt
            weight[y0:y0 + ph, x0:x0 + pw] += wgt
    return out / weight
