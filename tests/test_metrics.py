"""Tests of erl_derain.metrics, each against an independent reference.

References used: hand-worked values (written out in the comments), scikit-image's
``structural_similarity`` and ``rgb2ycbcr``, a direct 2-D ``scipy.signal.correlate2d`` 'valid'
filtering, and the reference table of ``shared/data/README.md`` for real deraining pairs.
"""

import math
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import signal
from skimage import color, data
from skimage.metrics import structural_similarity

from erl_derain import metrics

PEAK2 = 255.0 ** 2  # 65025


def _grey(value, size=4):
    return np.full((size, size, 3), value, dtype=np.uint8)


# --------------------------------------------------------------------------------------------------
# 1. Y conversion and Y-PSNR against hand-worked values
# --------------------------------------------------------------------------------------------------


def test_rgb_to_y_hand_worked_values():
    # Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 with R, G, B in 0..255.
    # Grey v: the coefficients sum to 219, so Y = 16 + 219 v / 255.
    #   v = 0   -> 16;  v = 255 -> 235;  v = 85 -> 16 + 219/3 = 89 (exact)
    #   v = 128 -> 16 + 28032/255 = 125.929411... -> rounded 126
    # Pure red (255,0,0) -> 16 + 65.481 = 81.481 -> 81; green -> 144.553 -> 145; blue -> 40.966 -> 41.
    # (5, 65, 25): 65.481*5 + 128.553*65 + 24.966*25 = 327.405 + 8355.945 + 624.15 = 9307.5,
    #   / 255 = 36.5, so Y = 52.5 exactly: a tie, which MATLAB's round sends up to 53.
    pixels = np.array(
        [[[0, 0, 0], [255, 255, 255], [85, 85, 85], [128, 128, 128]],
         [[255, 0, 0], [0, 255, 0], [0, 0, 255], [5, 65, 25]]],
        dtype=np.uint8,
    )
    unrounded = [[16.0, 235.0, 89.0, 16 + 28032 / 255], [81.481, 144.553, 40.966, 52.5]]
    rounded = [[16, 235, 89, 126], [81, 145, 41, 53]]
    y = metrics.rgb_to_y(pixels, rounded=False)
    assert y.dtype == np.float64 and y.shape == (2, 4)
    np.testing.assert_allclose(y, unrounded, rtol=0, atol=1e-12)
    y_r = metrics.rgb_to_y(pixels)  # rounded is the default
    assert y_r.dtype == np.float64
    np.testing.assert_array_equal(y_r, rounded)


def test_rgb_to_y_matches_skimage_rgb2ycbcr():
    # skimage's rgb2ycbcr uses the same ITU-R BT.601 matrix on [0, 1] input -> Y in [16, 235].
    img = data.astronaut()
    ref = color.rgb2ycbcr(img)[..., 0]
    ours = metrics.rgb_to_y(img, rounded=False)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9)
    # Rounded Y is the nearest integer (away from exact .5 ties, of which skimage knows nothing).
    not_tie = np.abs(ref - np.floor(ref) - 0.5) > 1e-6
    np.testing.assert_array_equal(metrics.rgb_to_y(img)[not_tie], np.floor(ref + 0.5)[not_tie])


def test_psnr_y_hand_worked():
    # Target: 4x4 grey 85 (Y = 89 exactly).  Prediction: same but one pixel pure red.
    target = _grey(85)
    pred = target.copy()
    pred[1, 2] = (255, 0, 0)  # Y = 81.481, rounded 81
    # Rounded: one pixel differs by 89 - 81 = 8 -> MSE = 64 / 16 = 4
    #   PSNR = 10 log10(65025 / 4) = 10 log10(16256.25) = 42.11020... dB
    assert metrics.psnr_y(pred, target) == pytest.approx(10 * math.log10(65025 / 4), abs=1e-10)
    assert metrics.psnr_y(pred, target) == pytest.approx(42.110204, abs=1e-6)
    # Unrounded: difference 89 - 81.481 = 7.519 -> MSE = 56.535361 / 16 = 3.5334600625
    #   PSNR = 10 log10(65025 / 3.5334600625) = 42.64880... dB
    expected = 10 * math.log10(65025 / (7.519 ** 2 / 16))
    assert metrics.psnr_y(pred, target, rounded=False) == pytest.approx(expected, abs=1e-9)
    assert expected == pytest.approx(42.648802, abs=1e-6)


def test_psnr_y_hand_worked_two_pixels():
    # Target grey 128 (Y = 125.929411..., rounded 126); pred has one pure green (Y 144.553 -> 145)
    # and one pure blue (Y 40.966 -> 41) pixel.
    target = _grey(128)
    pred = target.copy()
    pred[0, 0] = (0, 255, 0)
    pred[3, 3] = (0, 0, 255)
    # Rounded: (145 - 126)^2 + (41 - 126)^2 = 361 + 7225 = 7586 -> MSE = 7586 / 16 = 474.125
    assert metrics.psnr_y(pred, target) == pytest.approx(10 * math.log10(65025 / 474.125), abs=1e-10)
    # Unrounded: Y_grey = 16 + 28032/255 = 125.92941176...
    y_grey = 16 + 28032 / 255
    mse = ((144.553 - y_grey) ** 2 + (40.966 - y_grey) ** 2) / 16
    assert metrics.psnr_y(pred, target, rounded=False) == pytest.approx(
        10 * math.log10(65025 / mse), abs=1e-9
    )


def test_psnr_rgb_hand_worked():
    # Grey 85 vs one pure red pixel: squared channel errors 170^2 + 85^2 + 85^2 = 43350 over
    # 16 pixels x 3 channels = 48 values -> MSE = 903.125, and 65025 / 903.125 = 72 exactly,
    # so PSNR = 10 log10(72) = 18.5733... dB.
    target = _grey(85)
    pred = target.copy()
    pred[2, 1] = (255, 0, 0)
    assert metrics.psnr_rgb(pred, target) == pytest.approx(10 * math.log10(72), abs=1e-10)


# --------------------------------------------------------------------------------------------------
# 2. SSIM against scikit-image and a direct 2-D 'valid' filtering
# --------------------------------------------------------------------------------------------------


def _skimage_ssim(a, b):
    return structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )


def _image_pairs():
    rng = np.random.default_rng(0)
    pairs = []
    # Random images of odd sizes.
    a = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    pairs.append(("random", a, b))
    # Natural images with Gaussian noise and with a blend (structured differences).
    for name in ("astronaut", "coffee"):
        clean = getattr(data, name)()
        noisy = np.clip(clean + rng.normal(0, 12, clean.shape), 0, 255).astype(np.uint8)
        pairs.append((name + "+noise", noisy, clean))
    clean = data.chelsea()
    streaks = np.zeros(clean.shape[:2])
    streaks[:, ::7] = 80.0
    rainy = np.clip(clean + streaks[..., None], 0, 255).astype(np.uint8)
    pairs.append(("chelsea+streaks", rainy, clean))
    return pairs


@pytest.mark.parametrize("rounded", [True, False])
def test_ssim_y_matches_skimage(rounded):
    for name, a, b in _image_pairs():
        ya = metrics.rgb_to_y(a, rounded=rounded)
        yb = metrics.rgb_to_y(b, rounded=rounded)
        ref = _skimage_ssim(ya, yb)
        ours = metrics.ssim_y(a, b, rounded=rounded)
        # Same arithmetic in float64; only the summation order of the filtering differs
        # (skimage: scipy.ndimage.gaussian_filter; here: an explicit separable sum), so the
        # difference is at rounding-error level, far below the 1e-4 tolerance asked for.
        assert abs(ours - ref) < 1e-10, (name, ours, ref)


def test_ssim_rgb_matches_skimage_per_channel_mean():
    for name, a, b in _image_pairs():
        ref = np.mean([_skimage_ssim(a[..., c], b[..., c]) for c in range(3)])
        assert abs(metrics.ssim_rgb(a, b) - ref) < 1e-10, name


def test_valid_filtering_equals_skimage_border_crop():
    # skimage filters the whole image with reflect padding and then averages the SSIM map after
    # cropping (win - 1) / 2 = 5 pixels on each side.  Those interior values never touch the
    # padding, so they equal 'valid' filtering: compare the maps element by element.
    _, a, b = _image_pairs()[1]
    ya, yb = metrics.rgb_to_y(a), metrics.rgb_to_y(b)
    _, full_map = structural_similarity(
        ya, yb, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255,
        full=True,
    )
    ours = metrics.ssim_map(ya, yb)
    assert ours.shape == (ya.shape[0] - 10, ya.shape[1] - 10)
    np.testing.assert_allclose(ours, full_map[5:-5, 5:-5], rtol=0, atol=1e-12)
    # skimage's reported mean is the mean of exactly that cropped region.
    assert ours.mean() == pytest.approx(full_map[5:-5, 5:-5].mean(), abs=1e-12)


def test_ssim_map_matches_direct_2d_correlation():
    # Independent implementation of Wang et al.'s ssim_index.m: the 2-D window built as MATLAB's
    # fspecial('gaussian', 11, 1.5) and filter2(..., 'valid') via scipy.signal.correlate2d.
    t = np.arange(-5, 6, dtype=np.float64)
    xx, yy = np.meshgrid(t, t)
    w = np.exp(-(xx ** 2 + yy ** 2) / (2 * 1.5 ** 2))
    w /= w.sum()
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (30, 41)).astype(np.float64)
    y = np.clip(x + rng.normal(0, 20, x.shape), 0, 255)

    def f(z):
        return signal.correlate2d(z, w, mode="valid")

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mx, my = f(x), f(y)
    sx, sy, sxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
    ref = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sx + sy + c2))
    ours = metrics.ssim_map(x, y)
    assert ours.shape == ref.shape == (20, 31)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)
    assert metrics.ssim(x, y) == pytest.approx(ref.mean(), abs=1e-12)


# --------------------------------------------------------------------------------------------------
# 3. Real deraining pairs against the reference table of shared/data/README.md
# --------------------------------------------------------------------------------------------------


def _shared_data_dir():
    env = os.environ.get("ERL_DERAIN_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


# (rounded Y-PSNR, rounded Y-SSIM, unrounded Y-PSNR, unrounded Y-SSIM), from the README table.
README_TABLE = {
    "jorder_e_small": {
        "rows": {
            1: (20.2456, 0.50833, 20.2419, 0.50837),
            2: (12.1808, 0.44680, 12.1811, 0.44688),
            3: (13.9642, 0.24867, 13.9643, 0.24881),
            4: (12.0426, 0.27908, 12.0427, 0.27918),
            5: (10.8179, 0.28127, 10.8177, 0.28132),
        },
        "mean": (13.8502, 0.35283, 13.8495, 0.35291),
        "count": 5,
        "pair": lambda i: (f"rain/norain-{i}.png", f"norain/norain-{i}.png"),
    },
    "rain13k_layout_sample": {
        "rows": {
            1: (17.5469, 0.57606, 17.5473, 0.57619),
            2: (22.5619, 0.69438, 22.5633, 0.69512),
            3: (25.5066, 0.88873, 25.5098, 0.88935),
        },
        "mean": (21.8718, 0.71972, 21.8735, 0.72022),
        "count": 3,
        "pair": lambda i: (f"input/{i}.png", f"target/{i}.png"),
    },
    "sirr_val20": {
        "rows": {
            1: (16.6860, 0.82676, 16.6865, 0.82737),
            5: (24.5915, 0.91609, 24.5945, 0.91674),
            13: (31.9386, 0.94126, 31.9493, 0.94150),
            20: (25.5039, 0.86585, 25.4951, 0.86643),
        },
        "mean": (22.2923, 0.87199, 22.2942, 0.87260),
        "count": 20,
        "pair": lambda i: (f"input_val/input{i}.png", f"label_val/norain{i}.png"),
    },
}

PSNR_TOL = 0.01  # dB
SSIM_TOL = 0.0005


def _load_rgb(path):
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("folder", sorted(README_TABLE))
def test_real_pairs_match_readme_table(folder):
    root = _shared_data_dir() / folder
    if not root.is_dir():
        pytest.skip(f"shared test data not found at {root} (set ERL_DERAIN_SHARED_DATA)")
    spec = README_TABLE[folder]
    per_image = []
    for i in range(1, spec["count"] + 1):
        rainy_name, clean_name = spec["pair"](i)
        rainy, clean = _load_rgb(root / rainy_name), _load_rgb(root / clean_name)
        got = (
            metrics.psnr_y(rainy, clean),
            metrics.ssim_y(rainy, clean),
            metrics.psnr_y(rainy, clean, rounded=False),
            metrics.ssim_y(rainy, clean, rounded=False),
        )
        per_image.append(got)
        if i in spec["rows"]:
            _assert_row(got, spec["rows"][i], f"{folder} {i}")
    _assert_row(tuple(np.mean(per_image, axis=0)), spec["mean"], f"{folder} mean")


def _assert_row(got, expected, label):
    for k, (g, e) in enumerate(zip(got, expected)):
        tol = PSNR_TOL if k % 2 == 0 else SSIM_TOL
        assert abs(g - e) <= tol, f"{label} column {k}: got {g:.5f}, README {e}"


# --------------------------------------------------------------------------------------------------
# 4. Input handling, crop_border, identical images
# --------------------------------------------------------------------------------------------------


def test_float_inputs_equal_uint8_inputs():
    rng = np.random.default_rng(2)
    clean = data.astronaut()[::4, ::4]
    rainy = np.clip(clean + rng.normal(0, 15, clean.shape), 0, 255).astype(np.uint8)
    expected = metrics.evaluate_pair(rainy, clean)
    expected_unrounded = metrics.evaluate_pair(rainy, clean, rounded=False)
    for dtype in (np.float32, np.float64):
        # k / 255 in float quantises back to k.
        fr, fc = (rainy / 255.0).astype(dtype), (clean / 255.0).astype(dtype)
        assert metrics.evaluate_pair(fr, fc) == expected
        assert metrics.evaluate_pair(fr, fc, rounded=False) == expected_unrounded
        # Mixed dtypes are fine too; each image is read by its own dtype.
        assert metrics.evaluate_pair(fr, clean) == expected
    # Floats are quantised as round(clip(x, 0, 1) * 255): values off the 1/255 grid by less than half
    # a step, or outside [0, 1], land on the same uint8 image.
    jitter = rng.uniform(-0.45, 0.45, rainy.shape) / 255.0
    fr = rainy / 255.0 + jitter
    fr[rainy == 0] = -0.3
    fr[rainy == 255] = 1.7
    assert metrics.evaluate_pair(fr, clean) == expected
    np.testing.assert_array_equal(metrics.to_uint8(fr), rainy)
    # Halves go away from zero: 0.5 * 255 = 127.5 -> 128 (np.round would also say 128, but
    # 2.5 -> 3 where np.round gives 2).
    np.testing.assert_array_equal(
        metrics.to_uint8(np.array([[[0.5, 2.5 / 255, 1.5 / 255]]])), [[[128, 3, 2]]]
    )


@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64, bool])
def test_unsupported_dtypes_raise(dtype):
    a = np.zeros((16, 16, 3), dtype=dtype)
    b = np.zeros((16, 16, 3), dtype=np.uint8)
    with pytest.raises(TypeError, match="dtype"):
        metrics.psnr_y(a, b)
    with pytest.raises(TypeError, match="dtype"):
        metrics.ssim_rgb(b, a)


def test_shape_mismatch_names_both_shapes():
    a = np.zeros((20, 30, 3), dtype=np.uint8)
    b = np.zeros((30, 20, 3), dtype=np.uint8)
    for fn in (metrics.psnr_y, metrics.ssim_y, metrics.psnr_rgb, metrics.ssim_rgb,
               metrics.evaluate_pair):
        with pytest.raises(ValueError) as err:
            fn(a, b)
        assert "(20, 30, 3)" in str(err.value) and "(30, 20, 3)" in str(err.value)


def test_bad_images_raise():
    with pytest.raises(ValueError, match=r"\(16, 16\)"):
        metrics.psnr_y(np.zeros((16, 16), np.uint8), np.zeros((16, 16), np.uint8))
    nan_img = np.zeros((16, 16, 3), np.float32)
    nan_img[3, 3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        metrics.psnr_rgb(nan_img, np.zeros((16, 16, 3), np.float32))
    with pytest.raises(ValueError, match="11x11"):
        metrics.ssim_y(np.zeros((10, 40, 3), np.uint8), np.zeros((10, 40, 3), np.uint8))
    with pytest.raises(ValueError, match="crop_border"):
        metrics.psnr_y(_grey(0, 8), _grey(0, 8), crop_border=4)
    with pytest.raises(ValueError, match="crop_border"):
        metrics.psnr_y(_grey(0, 8), _grey(0, 8), crop_border=-1)


def test_crop_border_hand_worked():
    # 8x8 grey 85 (Y 89); pred has a red pixel on the border (0, 0) and one inside (3, 4),
    # each 8 off in rounded Y (81).
    target = _grey(85, size=8)
    pred = target.copy()
    pred[0, 0] = (255, 0, 0)
    pred[3, 4] = (255, 0, 0)
    # No crop: 2 * 64 / 64 pixels -> MSE 2 -> 10 log10(65025 / 2).
    assert metrics.psnr_y(pred, target) == pytest.approx(10 * math.log10(65025 / 2), abs=1e-10)
    # crop_border=1 leaves the inner 6x6 = 36 pixels with one error: MSE = 64 / 36.
    assert metrics.psnr_y(pred, target, crop_border=1) == pytest.approx(
        10 * math.log10(65025 * 36 / 64), abs=1e-10
    )
    # RGB: inner 36 pixels x 3 channels, errors 170^2 + 85^2 + 85^2 = 43350 -> MSE = 43350 / 108.
    assert metrics.psnr_rgb(pred, target, crop_border=1) == pytest.approx(
        10 * math.log10(65025 * 108 / 43350), abs=1e-10
    )
    # Cropping past the interior pixel leaves identical images.
    only_border = target.copy()
    only_border[0, :] = 0
    assert metrics.psnr_y(only_border, target, crop_border=1) == math.inf


def test_crop_border_ssim_equals_cropped_images():
    _, a, b = _image_pairs()[3]
    c = 7
    cropped = metrics.evaluate_pair(a[c:-c, c:-c], b[c:-c, c:-c], rounded=False)
    assert metrics.evaluate_pair(a, b, crop_border=c, rounded=False) == cropped
    assert metrics.ssim_y(a, b, crop_border=c) != metrics.ssim_y(a, b)


def test_identical_images():
    img = data.coffee()[:64, :80]
    for im in (img, img / 255.0):
        m = metrics.evaluate_pair(im, img)
        assert m["psnr_y"] == math.inf and m["psnr_rgb"] == math.inf
        assert m["ssim_y"] == pytest.approx(1.0, abs=1e-12)
        assert m["ssim_rgb"] == pytest.approx(1.0, abs=1e-12)
        assert metrics.psnr_y(im, img, rounded=False) == math.inf
        assert metrics.ssim_y(im, img, rounded=False) == pytest.approx(1.0, abs=1e-12)
    # Images different in RGB may still have the same rounded Y (inf) but not the same unrounded Y.
    a, b = _grey(85), _grey(85)
    b[0, 0] = (86, 85, 85)  # Y 89 -> 89.2568 (rounded 89)
    assert metrics.psnr_y(a, b) == math.inf
    assert metrics.psnr_y(a, b, rounded=False) == pytest.approx(
        10 * math.log10(65025 * 16 / (65.481 / 255) ** 2), abs=1e-9
    )


# --------------------------------------------------------------------------------------------------
# 5. The MIRNet pitfall: a float image in [0, 1] is never read as 0..255
# --------------------------------------------------------------------------------------------------


def test_float_image_in_unit_range_is_scaled_not_read_as_0_255():
    # MIRNet-style code decides the scale from the data (e.g. "max <= 1 -> multiply by 255"); here
    # the dtype alone decides.  A dark float image with values that are all tiny, and a prediction
    # one grey level (1/255) brighter everywhere: after quantisation every value differs by exactly
    # 1, so MSE = 1 and PSNR_rgb = 10 log10(65025) = 48.1308 dB.  Read as 0..255 data, a 1/255
    # difference would instead give 10 log10(65025 / (1/255)^2) = 96.26 dB.
    target = np.full((32, 32, 3), 3 / 255, dtype=np.float32)
    target[::2] = 10 / 255
    pred = target + np.float32(1 / 255)
    assert metrics.psnr_rgb(pred, target) == pytest.approx(10 * math.log10(65025), abs=1e-10)
    # Y (unrounded) of a grey shift of 1 level changes by 219 / 255 everywhere.
    assert metrics.psnr_y(pred, target, rounded=False) == pytest.approx(
        10 * math.log10(65025 / (219 / 255) ** 2), abs=1e-9
    )


def test_small_float_noise_psnr_matches_hand_formula():
    # Gaussian noise of sigma 2/255 on a mid-grey float image in [0, 1]: compute the expected PSNR
    # by hand from the quantised values (x * 255 rounded) and compare.
    rng = np.random.default_rng(3)
    target = np.full((40, 40, 3), 0.5)
    pred = target + rng.normal(0, 2 / 255, target.shape)
    q_pred = np.floor(np.clip(pred, 0, 1) * 255 + 0.5)
    q_target = np.full(target.shape, 128.0)  # 0.5 * 255 = 127.5 -> 128
    mse = np.mean((q_pred - q_target) ** 2)
    expected = 10 * math.log10(65025 / mse)
    assert metrics.psnr_rgb(pred, target) == pytest.approx(expected, abs=1e-10)
    assert 40 < expected < 50  # about 20 log10(255 / 2), not ~90 dB as a 0..255 reading would give


# --------------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------------


def test_summarize_ignores_inf_and_counts_it():
    rows = [
        {"psnr_y": 30.0, "ssim_y": 0.9, "name": "a"},
        {"psnr_y": math.inf, "ssim_y": 1.0, "name": "b"},
        {"psnr_y": 20.0, "ssim_y": 0.8, "name": "c"},
    ]
    s = metrics.summarize(rows)
    assert s["num_images"] == 3
    assert s["psnr_y"] == pytest.approx(25.0)
    assert s["psnr_y_num_inf"] == 1
    assert s["ssim_y"] == pytest.approx(0.9)
    assert "ssim_y_num_inf" not in s and "name" not in s
    assert metrics.summarize([])["num_images"] == 0


def test_metric_accumulator():
    a, b = _grey(85, 16), _grey(85, 16)
    b[3, 4] = (255, 0, 0)
    acc = metrics.MetricAccumulator()
    acc.add(a, a, name="same")
    m = acc.add(b, a, name="diff")
    assert len(acc) == 2 and acc.rows[1]["name"] == "diff"
    res = acc.result()
    assert res["num_images"] == 2
    assert res["psnr_y"] == pytest.approx(m["psnr_y"]) and res["psnr_y_num_inf"] == 1
    assert res["psnr_rgb_num_inf"] == 1
    assert res["ssim_y"] == pytest.approx((1.0 + m["ssim_y"]) / 2)
    acc.reset()
    assert len(acc) == 0


# --------------------------------------------------------------------------------------------------
# ERL-Net's dissection (Section 4.3), checked on hand-worked maps and lists
# --------------------------------------------------------------------------------------------------


def _grey_rgb(values) -> np.ndarray:
    """uint8 RGB image with R = G = B = values: its MATLAB Y is round(16 + 219 * v / 255)."""
    v = np.asarray(values, np.uint8)
    return np.repeat(v[..., None], 3, axis=-1)


def test_intersection_over_region_hand_worked_4x4():
    rim = np.zeros((4, 4), bool)
    rim[0, :] = True                      # improved: the whole first row (4 pixels)
    rain = np.zeros((4, 4), bool)
    rain[:2, :2] = True                   # rain: the top-left 2x2 block (4 pixels)
    # rain AND rim = (0,0), (0,1) -> IoR = 2/4; background = 12 pixels, of which (0,2), (0,3) improved.
    assert metrics.intersection_over_region(rim, rain) == pytest.approx(0.5)
    assert metrics.intersection_over_region(rim, ~rain) == pytest.approx(2 / 12)
    assert np.isnan(metrics.intersection_over_region(rim, np.zeros((4, 4), bool)))


def test_result_indicator_map_and_rain_map_hand_worked():
    # Grey levels -> MATLAB Y: 100 -> 101.88 -> 102, 140 -> 136.24 -> 136, 120 -> 119.06 -> 119,
    # 60 -> 67.53 -> 68, 90 -> 93.29 -> 93.
    clean = _grey_rgb([[100, 100], [100, 100]])
    baseline = _grey_rgb([[140, 140], [100, 90]])
    candidate = _grey_rgb([[120, 60], [100, 100]])
    # |c - g| vs |b - g|: (0,0) 17 < 34 improved; (0,1) 34 = 34 tie -> not; (1,0) 0 = 0 tie -> not;
    # (1,1) 0 < 9 improved.
    rim = metrics.result_indicator_map(candidate, baseline, clean)
    np.testing.assert_array_equal(rim, [[True, False], [False, True]])
    # Rain map: |Y(rainy) - Y(clean)| = [[34, 0], [9, 0]], mean 10.75 -> only (0,0) is rain.
    rainy = _grey_rgb([[140, 100], [90, 100]])
    np.testing.assert_array_equal(metrics.rain_region_map(rainy, clean), [[True, False], [False, False]])
    d = metrics.dissect_pair(candidate, baseline, rainy, clean)
    assert d["ior"] == pytest.approx(1.0)          # the one rain pixel is improved
    assert d["iob"] == pytest.approx(1 / 3)        # 1 of 3 background pixels improved
    assert d["improved_pixels"] == pytest.approx(0.5)
    # A dataset mask replaces the thresholded map: rain = bottom row (mask values 255).
    mask = np.array([[0, 0], [255, 255]], np.uint8)[..., None]
    d = metrics.dissect_pair(candidate, baseline, rainy, clean, rain_mask=mask)
    assert d["ior"] == pytest.approx(0.5) and d["iob"] == pytest.approx(0.5)


def test_improved_proportions_hard_easy_hand_worked():
    baseline = [20.0, 25.0, 30.0, 35.0]      # mean 27.5: hard = {20, 25}, easy = {30, 35}
    candidate = [21.0, 26.0, 29.0, 35.0]     # improves 20 and 25; 30 gets worse; 35 ties (not improved)
    p = metrics.improved_proportions(baseline, candidate)
    assert p["baseline_mean_psnr"] == pytest.approx(27.5)
    assert (p["all"], p["hard"], p["easy"]) == (0.5, 1.0, 0.0)
    assert (p["num_hard"], p["num_easy"], p["num_all_improved"]) == (2, 2, 2)
    # All equal: nothing is below the mean, so the hard subset is empty.
    p = metrics.improved_proportions([30.0, 30.0], [31.0, 29.0])
    assert np.isnan(p["hard"]) and p["easy"] == 0.5
    with pytest.raises(ValueError, match="equally long"):
        metrics.improved_proportions([1.0, 2.0], [1.0])
