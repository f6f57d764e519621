"""--crop_mode=scale_rotate, the intensity-aware paper's "scaling, cropping, flipping and rotation"
(Xu et al., "Intensity-Aware Single-Image Deraining with Semantic and Color Regularization", IEEE TIP
2021, Section III.D): the rotations keep rain streaks near-vertical (the paper's rain falls 0, +-15,
+-30 or +-40 degrees from vertical), measured on the augmented images themselves."""

from __future__ import annotations

import numpy as np

from erl_derain.data.pipelines import paired_dataset

from .conftest import write_png

N = 32  # augmented examples looked at


def _streak_folder(root, angle_deg: float, size=(64, 64)):
    """One pair: clean = a gentle ramp (0.2 + 0.002 x + 0.001 y, asymmetric in x and y), rainy = clean
    + parallel streaks 0.6 * exp(-d^2 / 4.5) at ``angle_deg`` from vertical (top leaning right), period 12."""
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    t = np.deg2rad(angle_deg)
    u = xx * np.cos(t) + yy * np.sin(t)  # constant along a streak: direction (sin t, -cos t)
    streaks = 0.6 * np.exp(-((np.mod(u, 12.0) - 6.0) ** 2) / (2.0 * 1.5 ** 2))
    clean = 0.2 + 0.002 * xx + 0.001 * yy
    write_png(root / "rainy" / "a.png", np.repeat(np.clip(clean + streaks, 0, 1)[..., None], 3, -1))
    write_png(root / "clean" / "a.png", np.repeat(clean[..., None], 3, -1))
    return root


def _augmented(root, seed=5):
    ds = paired_dataset(f"folder:{root}", "train", batch_size=1, crop_size=24, training=True, seed=seed,
                        crop_mode="scale_rotate", flip=True)
    return [(ex["rainy"].numpy()[0, ..., 0].astype(np.float64), ex["clean"].numpy()[0, ..., 0].astype(np.float64))
            for ex in ds.take(N)]


def _gradient_orientation(image):
    """Dominant gradient direction, degrees in (-90, 90], 0 = horizontal gradient (vertical lines),
    from the structure tensor of the image."""
    gy, gx = np.gradient(image)
    jxx, jyy, jxy = (gx * gx).sum(), (gy * gy).sum(), (gx * gy).sum()
    return np.rad2deg(0.5 * np.arctan2(2 * jxy, jxx - jyy))


def test_vertical_streaks_stay_vertical(tmp_path):
    for rainy, clean in _augmented(_streak_folder(tmp_path / "v", 0.0)):
        streaks = rainy - clean
        gy, gx = np.gradient(streaks)
        assert np.abs(gx).sum() > 5 * np.abs(gy).sum()   # the streaks' gradient is still horizontal
        assert abs(_gradient_orientation(streaks)) < 5.0


def test_slanted_streaks_keep_their_angle_up_to_the_mirror(tmp_path):
    """Streaks at 30 degrees come out at +30 (unchanged, or turned by 180 degrees) or -30 (mirrored by
    the flip); a quarter turn would give +-60."""
    for rainy, clean in _augmented(_streak_folder(tmp_path / "s", 30.0), seed=6):
        assert abs(abs(_gradient_orientation(rainy - clean)) - 30.0) < 5.0


def test_rotation_and_flip_still_happen(tmp_path):
    """The clean ramp rises along +x and +y: identity (+, +), flip (-, +), half turn (-, -), flip and
    half turn (+, -). All four occur; the x slope stays the larger one (no quarter turn swaps them)."""
    signs = set()
    for _, clean in _augmented(_streak_folder(tmp_path / "r", 0.0), seed=7):
        gy, gx = np.gradient(clean)
        sx, sy = gx.mean(), gy.mean()
        assert abs(sx) > 1.5 * abs(sy)
        signs.add((np.sign(sx), np.sign(sy)))
    assert signs == {(1, 1), (-1, 1), (-1, -1), (1, -1)}
