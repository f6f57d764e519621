"""Running a de-raining network on images of any size.

* ``pad_to_multiple`` / crop back: the networks down-sample by a power of two, so inputs are
  reflect-padded to the network's multiple and the output is cropped to the input's size.
* ``derain_image``: whole-image inference when the image fits in ``tile`` pixels per side,
  otherwise overlapping tiles blended with linear ramps (memory stays bounded for 12 MP photos).
* ``flip_ensemble``: optional test-time averaging over mirrored views (``--self_ensemble``).
* ``derain_file``: one photo file in, one out, keeping its mode (grey, alpha), bit depth and
  orientation (``image_io.read_image`` / ``write_image``).

Tiling (``derain_image`` with ``0 < tile < max(H, W)``)
    Along each axis longer than ``tile``: the fewest tiles of at most ``tile`` pixels that overlap
    their neighbours by at least ``overlap`` pixels, all of one length (rounded up to the network's
    multiple, so no tile needs padding), spread evenly from edge to edge (4000x3000 with tile 512,
    overlap 32: 7x9 tiles of 456x480, 13.8 MP run for a 12 MP photo). Each tile's output is
    weighted by a separable linear ramp over the ``overlap`` pixels next to each neighbouring tile
    (full weight at the image border) and accumulated. Because the tiles form a grid of row and
    column positions, the summed weight at a pixel is ``Wy(y) * Wx(x)``: the weights are normalised
    per tile with two 1-D arrays, so the only full-size buffers are the input and the output (no
    HxW weight map, no division copy at the end).

    * An image no larger than ``tile`` on both sides is run whole: bit-identical to ``tile=0``.
    * Peak memory: input + output (2 x 12 bytes per pixel, 275 MiB for 4000x3000) plus one tile's
      activations, whatever the image size. ``benchmarks/large_image.py`` measures it: a 4000x3000
      photo with ERL-Net at the paper's widths peaks at ~2.3 GiB RSS with 512 tiles (TensorFlow
      and the model alone ~0.85 GiB; one whole-image run of just 1536x1024 already takes ~8 GiB).
    * Seams: a tile sees only its own pixels, and ERL-Net's receptive field is wider, so tiled
      output differs slightly from whole-image output near the blended seams. Measured with a
      trained ERL-Net (benchmark, 1536x1024 real photo): Y-PSNR(tiled, whole) > 60 dB, i.e. far
      below the 0.5 dB the tiles may cost against the ground truth.
"""

from __future__ import annotations

import os
import time

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


SELF_ENSEMBLE_VIEWS = (1, 2, 4)


def flip_ensemble(model, views: int = 1):
    """``model`` (NHWC -> NHWC) averaged over mirrored views of its input, each output mirrored back
    (test-time "self-ensemble"): 1 = the model itself, 2 = also left-right mirrored, 4 = also upside-down
    and both. Rain streaks stay rain streaks under these mirrors (their tilt only changes sign, as under
    ``--flip`` in training); 90-degree rotations would turn them horizontal, so they are not used.
    Costs ``views`` runs of the network per image or tile."""
    if views not in SELF_ENSEMBLE_VIEWS:
        raise ValueError(f"--self_ensemble must be one of {SELF_ENSEMBLE_VIEWS} views, got {views}")
    if views == 1:
        return model
    axes = ([], [2], [1], [1, 2])[:views]

    def averaged(x):
        total = None
        for ax in axes:
            y = tf.cast(model(tf.reverse(x, ax) if ax else x), tf.float32)
            y = tf.reverse(y, ax) if ax else y
            total = y if total is None else total + y
        return total / float(views)

    return averaged


def _ramp(n: int, overlap: int, before: bool, after: bool) -> np.ndarray:
    """Blending weights along one axis of a tile: linear ramps over the overlap on the sides that
    have a neighbouring tile, full weight on sides at the image border."""
    w = np.ones(n, np.float32)
    overlap = min(overlap, n)
    r = (np.arange(overlap, dtype=np.float32) + 1) / (overlap + 1)
    if before and overlap:
        w[:overlap] = r
    if after and overlap:
        w[-overlap:] = np.minimum(w[-overlap:], r[::-1])
    return w


def _tiles_1d(size: int, tile: int, overlap: int, multiple: int = 1) -> list[tuple[int, int]]:
    """``(start, length)`` of the tiles along one axis: the fewest tiles of at most ``tile`` pixels
    that overlap their neighbours by at least ``overlap``, all of one length (rounded up to
    ``multiple`` when that stays within ``tile``), spread evenly from edge to edge."""
    if size <= tile:
        return [(0, size)]
    n = -(-(size - overlap) // (tile - overlap))  # ceil; n >= 2
    length = -(-(size + (n - 1) * overlap) // n)
    length = min(tile, -(-length // multiple) * multiple)
    return [(round(i * (size - length) / (n - 1)), length) for i in range(n)]


def _axis_weights(size: int, tile: int, overlap: int, multiple: int = 1) -> list[tuple[int, int, np.ndarray]]:
    """``(start, length, weights)`` of the tiles along one axis, weights normalised so that they
    sum to one at every position (the 1-D factor of the 2-D blending weights)."""
    ramps = []
    total = np.zeros(size, np.float32)
    for s, n in _tiles_1d(size, tile, overlap, multiple):
        r = _ramp(n, overlap, s > 0, s + n < size)
        ramps.append((s, n, r))
        total[s:s + n] += r
    return [(s, n, r / total[s:s + n]) for s, n, r in ramps]


def _check_overlap(tile: int, overlap: int) -> None:
    if not 0 <= overlap < tile:
        raise ValueError(f"--tile_overlap ({overlap}) must be >= 0 and smaller than --tile ({tile})")


def tile_grid(height: int, width: int, tile: int = 512, overlap: int = 32) -> tuple[int, int]:
    """(rows, columns) of tiles ``derain_image`` runs for an image of this size; (1, 1) = whole."""
    if tile <= 0 or (height <= tile and width <= tile):
        return 1, 1
    _check_overlap(tile, overlap)
    return len(_tiles_1d(height, tile, overlap)), len(_tiles_1d(width, tile, overlap))


def derain_image(predict, image: np.ndarray, multiple: int, tile: int = 512, overlap: int = 32) -> np.ndarray:
    """De-rain one HxWx3 float image in [0,1] with ``predict`` (NHWC -> NHWC); returns float32
    HxWx3 in [0, 1]. ``tile <= 0`` or an image within ``tile`` x ``tile``: one whole-image run;
    otherwise overlapping tiles blended with linear ramps (module docstring)."""
    image = np.asarray(image, np.float32)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
    h, w, _ = image.shape
    run = lambda a: apply_padded(predict, tf.convert_to_tensor(a[None]), multiple)[0].numpy()  # noqa: E731
    if tile <= 0 or (h <= tile and w <= tile):
        return run(image)
    _check_overlap(tile, overlap)
    out = np.zeros_like(image)
    rows, cols = _axis_weights(h, tile, overlap, multiple), _axis_weights(w, tile, overlap, multiple)
    for y0, ph, wy in rows:
        for x0, pw, wx in cols:
            result = run(image[y0:y0 + ph, x0:x0 + pw])
            result *= wy[:, None, None]
            result *= wx[None, :, None]
            out[y0:y0 + ph, x0:x0 + pw] += result
    # The weights sum to one everywhere; clip the float rounding of the blend back into [0, 1].
    return np.clip(out, 0.0, 1.0, out=out)


def derain_file(predict, multiple: int, in_path: str, out_path: str, *, tile: int = 512, overlap: int = 32,
                quality: int = 95) -> dict:
    """De-rain the photo ``in_path`` into ``out_path`` keeping what it is.

    Reads with ``image_io.read_image`` (upright, RGB for the network), checks that ``out_path``'s
    format can hold the result *before* running the network (``ValueError`` naming it otherwise),
    runs ``derain_image`` and writes with ``image_io.write_image`` (grey sources back to grey, alpha
    unchanged, 16 bits kept, no orientation tag; atomic). Returns a dict describing the run:
    ``input``, ``output``, ``width``, ``height``, ``mode``, ``bit_depth``, ``orientation``,
    ``tiles`` (rows, columns; (1, 1) = whole image) and ``seconds`` (read + de-rain + write)."""
    from erl_derain.data import image_io

    t0 = time.perf_counter()
    in_path, out_path = os.fspath(in_path), os.fspath(out_path)
    image, meta = image_io.read_image(in_path)
    image_io.check_writable(out_path, meta)
    h, w = image.shape[:2]
    result = derain_image(predict, image, multiple, tile=tile, overlap=overlap)
    del image
    image_io.write_image(out_path, result, meta, quality=quality)
    return {"input": in_path, "output": out_path, "width": w, "height": h, "mode": meta.mode,
            "bit_depth": meta.bit_depth, "orientation": meta.orientation,
            "tiles": tile_grid(h, w, tile, overlap), "seconds": time.perf_counter() - t0}
