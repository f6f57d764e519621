"""Tiled processing of large images in NumPy (no TensorFlow): the tile grid, the blending weights
and the blend loop, shared by local inference (``inference.derain_image``) and the TF Serving
client (``serving.client``, whose tiles run on the server).

Along each axis longer than ``tile``: the fewest tiles of at most ``tile`` pixels that overlap their
neighbours by at least ``overlap`` pixels, all of one length (rounded up to the network's
``multiple``, so no tile needs padding), spread evenly from edge to edge (4000x3000 with tile 512,
overlap 32: 7x9 tiles of 456x480). Each tile's output is weighted by a separable linear ramp over
the ``overlap`` pixels next to each neighbouring tile (full weight at the image border) and
accumulated. Because the tiles form a grid of row and column positions, the summed weight at a
pixel is ``Wy(y) * Wx(x)``: the weights are normalised per tile with two 1-D arrays, so the only
full-size buffers are the input and the output (no HxW weight map, no division copy at the end).
An image no larger than ``tile`` on both sides (or ``tile <= 0``) is run whole. Because every tile of
an image has the same size, ``tile_batch`` of them can be stacked into one network call
(``run_tiles``); the blend is the same.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

__all__ = ["axis_weights", "blend_tiles", "check_overlap", "check_tile_batch", "pad_amounts", "tile_grid", "tiles_1d"]


def pad_amounts(size: int, multiple: int) -> int:
    """Pixels added at the bottom / right to bring ``size`` to a multiple of ``multiple``."""
    return (-size) % multiple


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


def tiles_1d(size: int, tile: int, overlap: int, multiple: int = 1) -> list[tuple[int, int]]:
    """``(start, length)`` of the tiles along one axis: the fewest tiles of at most ``tile`` pixels
    that overlap their neighbours by at least ``overlap``, all of one length (rounded up to
    ``multiple`` when that stays within ``tile``), spread evenly from edge to edge."""
    if size <= tile:
        return [(0, size)]
    n = -(-(size - overlap) // (tile - overlap))  # ceil; n >= 2
    length = -(-(size + (n - 1) * overlap) // n)
    length = min(tile, -(-length // multiple) * multiple)
    return [(round(i * (size - length) / (n - 1)), length) for i in range(n)]


def axis_weights(size: int, tile: int, overlap: int, multiple: int = 1) -> list[tuple[int, int, np.ndarray]]:
    """``(start, length, weights)`` of the tiles along one axis, weights normalised so that they
    sum to one at every position (the 1-D factor of the 2-D blending weights)."""
    ramps = []
    total = np.zeros(size, np.float32)
    for s, n in tiles_1d(size, tile, overlap, multiple):
        r = _ramp(n, overlap, s > 0, s + n < size)
        ramps.append((s, n, r))
        total[s:s + n] += r
    return [(s, n, r / total[s:s + n]) for s, n, r in ramps]


def check_overlap(tile: int, overlap: int) -> None:
    if not 0 <= overlap < tile:
        raise ValueError(f"--tile_overlap ({overlap}) must be >= 0 and smaller than --tile ({tile})")


def tile_grid(height: int, width: int, tile: int = 512, overlap: int = 32) -> tuple[int, int]:
    """(rows, columns) of tiles ``blend_tiles`` runs for an image of this size; (1, 1) = whole."""
    if tile <= 0 or (height <= tile and width <= tile):
        return 1, 1
    check_overlap(tile, overlap)
    return len(tiles_1d(height, tile, overlap)), len(tiles_1d(width, tile, overlap))


def _checked(result, shape: tuple[int, int]) -> np.ndarray:
    result = np.asarray(result, np.float32)
    if result.shape != (*shape, 3):
        raise ValueError(f"the network returned shape {result.shape} for a {shape[1]}x{shape[0]} input "
                         f"(expected {(*shape, 3)})")
    return result


def check_tile_batch(tile_batch) -> int:
    if isinstance(tile_batch, bool) or int(tile_batch) != tile_batch or int(tile_batch) < 1:
        raise ValueError(f"--tile_batch={tile_batch} must be an integer of at least 1 (tiles per network call)")
    return int(tile_batch)


def blend_tiles(run_tile: Callable[[np.ndarray], np.ndarray], image: np.ndarray, tile: int = 512,
                overlap: int = 32, multiple: int = 1, *, tile_batch: int = 1,
                run_tiles: Callable[[np.ndarray], np.ndarray] | None = None) -> np.ndarray:
    """``run_tile`` (float32 HxWx3 -> HxWx3 in [0, 1], any H and W) applied to ``image`` (HxWx3)
    whole when it fits in ``tile`` x ``tile`` (or ``tile <= 0``: then the result is ``run_tile``'s,
    as float32), otherwise to overlapping tiles whose lengths are multiples of ``multiple`` where
    possible, blended with linear ramps (module docstring); the blend is clipped to [0, 1].

    ``tile_batch`` > 1 (with ``run_tiles``: float32 NxHxWx3 -> NxHxWx3): up to that many tiles (all of
    one size) stacked into each ``run_tiles`` call, row by row, the last call taking the rest."""
    tile_batch = check_tile_batch(tile_batch)
    if tile_batch > 1 and run_tiles is None:
        raise ValueError("tile_batch > 1 needs run_tiles (a callable on a stack of tiles)")
    image = np.asarray(image, np.float32)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
    h, w, _ = image.shape
    if tile <= 0 or (h <= tile and w <= tile):
        return _checked(run_tile(image), (h, w))
    check_overlap(tile, overlap)
    out = np.zeros_like(image)
    rows, cols = axis_weights(h, tile, overlap, multiple), axis_weights(w, tile, overlap, multiple)
    places = [(y0, ph, wy, x0, pw, wx) for y0, ph, wy in rows for x0, pw, wx in cols]
    for i in range(0, len(places), tile_batch):
        group = places[i:i + tile_batch]
        ph, pw = group[0][1], group[0][4]  # every tile of the grid has this size
        if tile_batch == 1:
            results = [_checked(run_tile(image[y0:y0 + ph, x0:x0 + pw]), (ph, pw)) for y0, _, _, x0, _, _ in group]
        else:
            stack = np.stack([image[y0:y0 + ph, x0:x0 + pw] for y0, _, _, x0, _, _ in group])
            got = np.asarray(run_tiles(stack), np.float32)
            if got.shape != stack.shape:
                raise ValueError(f"the network returned shape {got.shape} for {len(group)} tiles of {pw}x{ph} "
                                 f"(expected {stack.shape})")
            results = list(got)
        for (y0, ph, wy, x0, pw, wx), result in zip(group, results):
            if not result.flags.writeable:
                result = result.copy()
            result *= wy[:, None, None]
            result *= wx[None, :, None]
            out[y0:y0 + ph, x0:x0 + pw] += result
    # The weights sum to one everywhere; clip the float rounding of the blend back into [0, 1].
    return np.clip(out, 0.0, 1.0, out=out)
