"""Finding the same photograph in two collections (a training folder and an evaluation set).

Benchmarks are often built on public photo collections: the clean images of SIRR's validation pairs
and of the JORDER-E test pairs are BSDS500 photographs, for instance. A model trained on rain rendered
over those photographs would be scored on images it has seen. :func:`matching` finds them so that they
can be left out of training.

Two images are taken for the same photograph when their small thumbnails (48x32, longer side
horizontal, area-averaged) differ by less than ``tolerance`` grey levels on average, in any of the
four flips. Area averaging removes rain streaks and JPEG/PNG re-encoding almost entirely (a rainy
image of a photograph still differs from it by several levels, so ``tolerance`` must be small when
``against`` holds rainy images; pass the clean images of an evaluation set). Different photographs
differ by far more (about 15-40 levels). A hand-written check: perceptual-hash libraries (e.g.
``imagehash``) do the same with an extra dependency and a binary threshold.
"""

from __future__ import annotations

import cv2
import numpy as np

from erl_derain.data.image_io import load_rgb

THUMBNAIL = (48, 32)  # width, height (landscape)
TOLERANCE = 2.0  # mean absolute difference, 0-255 grey levels


def thumbnail(image: np.ndarray) -> np.ndarray:
    """``image`` (HxWx3 in [0, 1]) as a 32x48x3 float32 thumbnail on 0-255, turned landscape."""
    if image.shape[0] > image.shape[1]:
        image = image.transpose(1, 0, 2)
    return cv2.resize(np.asarray(image, np.float32) * 255.0, THUMBNAIL, interpolation=cv2.INTER_AREA)


def _thumbnails(paths) -> np.ndarray:
    return np.stack([thumbnail(load_rgb(p)) for p in paths]) if paths else np.zeros((0, 32, 48, 3), np.float32)


def matching(paths, against, tolerance: float = TOLERANCE) -> dict[str, str]:
    """``{path: the image of against it matches}`` for each of ``paths`` that shows the same photograph
    as an image of ``against`` (module docstring), in any flip."""
    paths, against = list(paths), list(against)
    if not paths or not against:
        return {}
    ref = _thumbnails(against)
    found = {}
    for path, t in zip(paths, _thumbnails(paths)):
        best, where = np.inf, None
        for flipped in (t, t[:, ::-1], t[::-1], t[::-1, ::-1]):
            d = np.abs(ref - flipped).mean(axis=(1, 2, 3))
            i = int(d.argmin())
            if d[i] < best:
                best, where = float(d[i]), against[i]
        if best < tolerance:
            found[path] = where
    return found
