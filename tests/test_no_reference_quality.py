"""No-reference quality (erl_derain.quality): NIQE and BRISQUE against their published reference values,
their estimators against independent references, and `evaluate` / `compare` on a folder without clean images."""

import csv
import hashlib
import json
import math

import cv2
import numpy as np
import pytest
from scipy import ndimage, stats

from erl_derain import quality

from .conftest import TINY_FLAGS, make_folder_dataset, shared_data_dir

DATA = shared_data_dir()
needs_data = pytest.mark.skipif(DATA is None, reason="shared data folder (../shared/data) not found")

# The feature vector and the svm-scale'd vector that the BRISQUE release's own run left in its folder
# (files `test_ind` and `test_ind_scaled` of BRISQUE_release.zip, LIVE, UT Austin, 2011: what its
# brisquescore.m wrote for an image and what LibSVM's svm-scale made of it), and the score its
# svm-predict wrote (`output`).
BRISQUE_RELEASE_FEATURES = [
    1.428, 0.174561, 0.523, 0.044864, 0.03435, 0.070442, 0.518, 0.053687, 0.030459, 0.073333, 0.55, -0.010225,
    0.047448, 0.040005, 0.547, -0.008175, 0.04689, 0.04091, 1.523, 0.194561, 0.546, 0.033648, 0.049966, 0.079721,
    0.539, 0.046306, 0.040889, 0.080459, 0.557, -0.024918, 0.067494, 0.046934, 0.555, -0.021312, 0.065964, 0.048341]
BRISQUE_RELEASE_SCALED = [
    -0.774374, -0.601329, -0.59175, 0.0326853, -0.903966, -0.704477, -0.607731, 0.171398, -0.914665, -0.6921,
    -0.539051, 0.0607876, -0.861772, -0.853385, -0.556408, 0.108949, -0.86372, -0.850558, -0.246688, -0.473459,
    -0.207729, -0.0895638, -0.773999, -0.614272, -0.226829, 0.164454, -0.816031, -0.605616, -0.141743, -0.14371,
    -0.746315, -0.751337, -0.141732, -0.0852692, -0.751215, -0.744244]
BRISQUE_RELEASE_SCORE = 19.9357

# NIQE of BasicSR's tests/data/baboon.png (= Set14's baboon, its first 492 columns) by the NIQE release's
# MATLAB code in MATLAB R2021a, as BasicSR records it (basicsr/metrics/niqe.py, calculate_niqe docstring),
# on the Y channel of MATLAB's rgb2ycbcr.
NIQE_BABOON_MATLAB = 5.72957338

MODEL_SHA256 = {"niqe_pristine.npz": "8ec8ffd04870061dc6ee7b875c0e5d421d644b28ee0c61f43e0b165c0e986d03",
                "brisque_live.npz": "21d4744fde6b523e3d319b44cc11ccd9dd066fdd378241bd1de94aa4f0634b85"}


def test_shipped_models_are_the_converted_release_files():
    for name, digest in MODEL_SHA256.items():
        with open(f"{quality.MODEL_DIR}/{name}", "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == digest, name
    mu, cov = quality.niqe_model()
    assert mu.shape == (36,) and cov.shape == (36, 36)
    assert np.array_equal(cov, cov.T) and np.linalg.eigvalsh(cov).min() > -1e-9
    m = quality.brisque_model()
    assert m["support_vectors"].shape == (774, 36) and float(m["gamma"]) == 0.05 and float(m["rho"]) == -153.591


@needs_data
def test_niqe_of_baboon_matches_matlab():
    bgr = cv2.imread(str(DATA / "clean_photos" / "set14" / "baboon.bmp"))
    rgb = bgr[:, :492, ::-1]
    # Within the estimator's own resolution: the AGGD shape is picked on a 0.001 grid, and a shape
    # that sits on a near-tie flips with the floating-point order of the filtering (measured: the
    # float32 MSCN gives 5.72958, float64 5.72996).
    assert quality.niqe(rgb) == pytest.approx(NIQE_BABOON_MATLAB, abs=1e-3)
    # The release's own conversion (rgb2gray) is another image, and another score.
    assert abs(quality.niqe(rgb, convert="gray") - NIQE_BABOON_MATLAB) > 0.01


def test_brisque_scaling_and_svr_reproduce_the_release_run():
    scaled = quality.brisque_scale(np.array(BRISQUE_RELEASE_FEATURES))
    # svm-scale prints 6 significant digits
    np.testing.assert_allclose(scaled, BRISQUE_RELEASE_SCALED, rtol=1e-5, atol=2e-6)
    assert quality.brisque_score_features(np.array(BRISQUE_RELEASE_FEATURES)) == pytest.approx(
        BRISQUE_RELEASE_SCORE, abs=1e-3)


@pytest.mark.parametrize("shape", [0.6, 1.0, 2.0, 3.0])
def test_ggd_fit_recovers_the_shape_of_generalised_gaussian_samples(shape):
    x = stats.gennorm.rvs(shape, scale=0.7, size=400_000, random_state=np.random.default_rng(1))
    a, sigma = quality.ggd_fit(x)
    assert a == pytest.approx(shape, rel=0.03)
    assert sigma == pytest.approx(math.sqrt(stats.gennorm.var(shape, scale=0.7)), rel=0.01)


@pytest.mark.parametrize("shape,left,right", [(0.8, 1.0, 0.5), (1.5, 0.3, 0.9), (2.0, 1.0, 1.0)])
def test_aggd_fit_recovers_an_asymmetric_generalised_gaussian(shape, left, right):
    rng = np.random.default_rng(2)
    g = np.abs(stats.gennorm.rvs(shape, size=400_000, random_state=rng))
    negative = rng.random(g.size) < left / (left + right)  # the AGGD's mass on each side
    x = np.where(negative, -left * g, right * g)
    a, lstd, rstd = quality.aggd_fit(x)
    assert a == pytest.approx(shape, rel=0.04)
    # the stds are the root mean squares of each side: scale * sqrt(E[g^2])
    e_g2 = stats.gennorm.moment(2, shape)
    assert lstd == pytest.approx(left * math.sqrt(e_g2), rel=0.01)
    assert rstd == pytest.approx(right * math.sqrt(e_g2), rel=0.01)


def test_aggd_fit_of_one_sided_data_is_nan():
    assert math.isnan(quality.aggd_fit(np.abs(np.arange(1.0, 50.0)))[0])


def test_imresize_half_keeps_linear_ramps_and_constants():
    """MATLAB's antialiased bicubic kernel is symmetric and sums to one, so it reproduces a linear
    function in the interior: output i (0-based) sits at input position 2 i + 0.5."""
    y, x = np.mgrid[0:41, 0:30].astype(np.float64)
    out = quality.imresize(3 * x - 2 * y, 0.5)
    assert out.shape == (21, 15)
    i, j = np.mgrid[0:21, 0:15]
    np.testing.assert_allclose(out[3:-3, 3:-3], (3 * (2 * j + 0.5) - 2 * (2 * i + 0.5))[3:-3, 3:-3], atol=1e-10)
    np.testing.assert_allclose(quality.imresize(np.full((17, 9), 7.5), 0.5), 7.5, atol=1e-12)


def test_mscn_against_a_direct_sum():
    rng = np.random.default_rng(3)
    im = rng.random((20, 20)) * 255
    coeffs, sigma = quality.mscn(im, "constant")
    g = np.exp(-(np.arange(-3, 4) ** 2) / (2 * (7 / 6) ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    patch = im[7:14, 5:12]  # the 7x7 neighbourhood of (10, 8)
    mu = (w * patch).sum()
    s = math.sqrt(abs((w * patch ** 2).sum() - mu ** 2))
    assert sigma[10, 8] == pytest.approx(s, rel=1e-10)
    assert coeffs[10, 8] == pytest.approx((im[10, 8] - mu) / (s + 1), rel=1e-10)
    # zero padding (BRISQUE's filter2) at a corner: only the in-image part of the window counts
    assert quality.mscn(im, "constant")[1][0, 0] != pytest.approx(quality.mscn(im, "nearest")[1][0, 0])
    np.testing.assert_allclose(ndimage.correlate(im, w, mode="nearest")[3:-3, 3:-3],
                               ndimage.correlate(im, w, mode="constant")[3:-3, 3:-3])


@needs_data
@pytest.mark.parametrize("photo", ["kodak24/kodim05.png", "set14/monarch.bmp"])
def test_blur_and_noise_raise_both_scores_monotonically(photo):
    im = cv2.imread(str(DATA / "clean_photos" / photo))[..., ::-1].astype(np.float32) / 255
    im = im[:384, :480]
    rng = np.random.default_rng(0)
    blurred = [quality.score(cv2.GaussianBlur(im, (0, 0), s) if s else im) for s in (0, 1, 2, 3)]
    noisy = [quality.score(np.clip(im + rng.normal(0, s / 255, im.shape), 0, 1)) for s in (0, 5, 10, 20)]
    for series in (blurred, noisy):
        for name in quality.METRICS:
            values = [d[name] for d in series]
            assert values == sorted(values) and values[-1] > values[0] + 1, (name, values)


def test_too_small_images_score_nan_and_bad_metric_names_are_refused():
    small = np.zeros((50, 200, 3), np.uint8)
    assert math.isnan(quality.score(small)["niqe"])
    with pytest.raises(ValueError, match="unknown no-reference metric 'psnr'"):
        quality.score(small, ["psnr"])


@needs_data
def test_evaluate_and_compare_on_a_folder_without_clean_images(run_cli, tmp_path):
    data = make_folder_dataset(tmp_path / "data", n=2, size=(24, 24))
    for run in ("a", "b"):
        code, _, err = run_cli("train", f"--model_dir={tmp_path / run}", f"--dataset=folder:{data}", "--crop_size=16",
                               "--batch_size=2", "--jit_compile=false", "--noevaluate_after", "--method=memd",
                               "--stage_steps=1", f"--seed={ord(run)}", *TINY_FLAGS)
        assert code == 0, err
    photos = tmp_path / "real"
    photos.mkdir()
    for name in ("1", "10"):  # two real rainy photos, cut to 160x120 to keep the test fast
        img = cv2.imread(str(DATA / "real_rain" / f"{name}.jpg"))
        assert cv2.imwrite(str(photos / f"p{name}.png"), img[:120, :160])
    code, out, err = run_cli("evaluate", f"--model_dir={tmp_path / 'a'}", f"--dataset=folder:{photos}",
                             f"--output={tmp_path / 'ev'}", "--figures=2")
    assert code == 0, err
    assert "no-reference" in out and "NIQE" in out
    rows = list(csv.DictReader(open(tmp_path / "ev" / "per_image.csv")))
    summary = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert [r["name"] for r in rows] == ["p1", "p10"]
    for r in rows:  # the input columns: the metrics of the files themselves
        rgb = cv2.imread(str(photos / f"{r['name']}.png"))[..., ::-1]
        assert float(r["input_niqe"]) == pytest.approx(quality.niqe(rgb), abs=1e-9)
        assert float(r["input_brisque"]) == pytest.approx(quality.brisque(rgb), abs=1e-9)
        assert math.isfinite(float(r["niqe"])) and math.isfinite(float(r["brisque"]))
    assert summary["reference"] == "none" and summary["niqe"] == pytest.approx(
        np.mean([float(r["niqe"]) for r in rows]))
    assert summary["gain_niqe"] == pytest.approx(summary["input_niqe"] - summary["niqe"])
    assert (tmp_path / "ev" / "grid.png").stat().st_size > 0

    code, out, err = run_cli("compare", f"--baseline={tmp_path / 'a'}", f"--candidate={tmp_path / 'b'}",
                             f"--dataset=folder:{photos}", f"--output={tmp_path / 'cmp'}", "--figures=1")
    assert code == 0, err
    rows = list(csv.DictReader(open(tmp_path / "cmp" / "per_image.csv")))
    summary = json.loads((tmp_path / "cmp" / "metrics.json").read_text())
    for r in rows:
        assert r["niqe_improved"] == str(float(r["candidate_niqe"]) < float(r["baseline_niqe"]))
    assert summary["niqe_improved_proportion"] == pytest.approx(np.mean([r["niqe_improved"] == "True" for r in rows]))
    assert (tmp_path / "cmp" / "grid.png").exists() and "candidate scores better" in out

    # The cross-dataset table is of PSNR: a folder without clean images is refused there, by name.
    code, _, err = run_cli("evaluate", f"--model_dir={tmp_path / 'a'},{tmp_path / 'b'}", f"--dataset=folder:{photos}")
    assert code == 2 and f"--dataset=folder:{photos} has no clean images" in err
