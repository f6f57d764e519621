"""erl_derain.losses against hand-worked values and independent NumPy/SciPy references."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from scipy.signal import correlate2d

from erl_derain import losses

# Sobel kernels written out again here (not imported), as [row, column] cross-correlation masks.
DY = np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]], dtype=np.float64)
DX = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float64)


def _np_sobel(images: np.ndarray, padding: str = "reflect") -> np.ndarray:
    """[B,H,W,C] -> [B,H',W',2C] (dy, dx per channel) with scipy's correlate2d."""
    out = []
    for img in images:
        maps = []
        for c in range(img.shape[-1]):
            ch = img[..., c].astype(np.float64)
            if padding == "reflect":
                ch = np.pad(ch, 1, mode="reflect")
            maps.append(correlate2d(ch, DY, mode="valid"))
            maps.append(correlate2d(ch, DX, mode="valid"))
        out.append(np.stack(maps, -1))
    return np.stack(out)


def _np_gram(images: np.ndarray, k: int) -> np.ndarray:
    """space_to_depth by reshape/transpose, then X^T X per image."""
    b, h, w, c = images.shape
    x = images.astype(np.float64).reshape(b, h // k, k, w // k, k, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, (h // k) * (w // k), k * k * c)
    return np.einsum("bmi,bmj->bij", x, x)


# -- pixel losses ------------------------------------------------------------------------------------

def test_mse_l1_charbonnier_hand_values():
    y = np.array([0.0, 0.5, 1.0, 0.25], np.float32).reshape(1, 2, 2, 1)
    y_hat = np.array([0.5, 0.5, 0.0, 0.0], np.float32).reshape(1, 2, 2, 1)
    # differences 0.5, 0, 1, 0.25 -> squares 0.25, 0, 1, 0.0625 (sum 1.3125), over CHW = 4
    assert losses.mse(y, y_hat).numpy() == pytest.approx(1.3125 / 4)
    # |d| sum 1.75 over 4
    assert losses.l1(y, y_hat).numpy() == pytest.approx(1.75 / 4)
    # eps = 0.5: sqrt(0.25+0.25) + sqrt(0+0.25) + sqrt(1+0.25) + sqrt(0.0625+0.25), mean of 4
    expected = (np.sqrt(0.5) + 0.5 + np.sqrt(1.25) + np.sqrt(0.3125)) / 4
    assert losses.charbonnier(y, y_hat, eps=0.5).numpy() == pytest.approx(expected, rel=1e-6)
    # default eps 1e-3 on identical images: sqrt(eps^2) = eps
    assert losses.charbonnier(y, y).numpy() == pytest.approx(1e-3, rel=1e-4)


def test_mse_is_batch_mean_of_per_image_eq3():
    rng = np.random.default_rng(1)
    y, y_hat = rng.random((2, 2, 3, 4, 3), dtype=np.float32)
    per_image = [np.sum((y[i] - y_hat[i]) ** 2) / (3 * 4 * 3) for i in range(2)]
    assert losses.mse(y, y_hat).numpy() == pytest.approx(np.mean(per_image), rel=1e-6)


# -- Sobel maps / edge loss --------------------------------------------------------------------------

def _step_image() -> np.ndarray:
    """6x6, 3 channels: c0 = vertical step (cols 0-2 = 0, cols 3-5 = 1); c1 = the horizontal step
    (rows 0-2 = 0, rows 3-5 = 1); c2 = 0.5 * c0."""
    step = np.zeros((6, 6), np.float32)
    step[:, 3:] = 1.0
    return np.stack([step, step.T, 0.5 * step], -1)[None]


def test_sobel_maps_step_edge_by_hand():
    maps = losses.sobel_maps(_step_image()).numpy()
    assert maps.shape == (1, 6, 6, 6)
    # c0, row r, column j (reflect padding: column -1 mirrors column 1, column 6 mirrors column 4;
    # rows are constant so every row gives the same values).
    # dx(j) = 1*(I[j+1]-I[j-1]) + 2*(I[j+1]-I[j-1]) + 1*(I[j+1]-I[j-1]) = 4*(I[j+1]-I[j-1]),
    # with I = [0,0,0,1,1,1]:
    #   j=0: I1-I(-1->1) = 0-0 = 0      j=1: I2-I0 = 0       j=2: I3-I1 = 1 -> 4
    #   j=3: I4-I2 = 1 -> 4             j=4: I5-I3 = 0       j=5: I(6->4)-I4 = 0
    dx_row = np.array([0, 0, 4, 4, 0, 0], np.float32)
    # dy of c0: (row below - row above) of a column-constant image = 0 everywhere.
    np.testing.assert_array_equal(maps[0, ..., 0], np.zeros((6, 6)))           # dy(c0)
    np.testing.assert_array_equal(maps[0, ..., 1], np.tile(dx_row, (6, 1)))    # dx(c0)
    # c1 is c0 transposed: dy holds the same profile down the rows (positive: brighter below), dx = 0.
    np.testing.assert_array_equal(maps[0, ..., 2], np.tile(dx_row[:, None], (1, 6)))  # dy(c1)
    np.testing.assert_array_equal(maps[0, ..., 3], np.zeros((6, 6)))                  # dx(c1)
    # c2 = 0.5 * c0: dy 0, dx half of c0's (2 at columns 2 and 3).
    np.testing.assert_array_equal(maps[0, ..., 4], np.zeros((6, 6)))
    np.testing.assert_array_equal(maps[0, ..., 5], np.tile(0.5 * dx_row, (6, 1)))


def test_sobel_maps_valid_padding_by_hand():
    maps = losses.sobel_maps(_step_image(), padding="valid").numpy()
    # no padding: output pixel (i, j) is centred on input (i+1, j+1) -> columns 1..4 of dx_row
    assert maps.shape == (1, 4, 4, 6)
    np.testing.assert_array_equal(maps[0, ..., 1], np.tile([0, 4, 4, 0], (4, 1)))


def test_sobel_orientation_impulse_by_hand():
    # A single bright pixel at (2, 2) of a 5x5 image. Cross-correlation: out(i, j) = sum_ab
    # K[a, b] * I[i+a-1, j+b-1] = K[3-i, 3-j] for |i-2|, |j-2| <= 1.
    # dy: the row above the pixel (i=1) sees K[2, :] reversed = [1, 2, 1] (intensity rises downwards),
    #     the row below (i=3) sees K[0, :] reversed = [-1, -2, -1].
    # dx: column left of it (j=1) sees K[:, 2] reversed = [1, 2, 1], the column right -[1, 2, 1].
    img = np.zeros((1, 5, 5, 1), np.float32)
    img[0, 2, 2, 0] = 1.0
    maps = losses.sobel_maps(img).numpy()[0]
    dy = np.zeros((5, 5)); dy[1, 1:4] = [1, 2, 1]; dy[3, 1:4] = [-1, -2, -1]
    dx = np.zeros((5, 5)); dx[1:4, 1] = [1, 2, 1]; dx[1:4, 3] = [-1, -2, -1]
    np.testing.assert_array_equal(maps[..., 0], dy)
    np.testing.assert_array_equal(maps[..., 1], dx)


def test_sobel_maps_match_tf_image_sobel_edges_layout():
    # the authors' code uses tf.image.sobel_edges ([B,H,W,C,2], last axis [dy, dx])
    x = np.random.default_rng(2).random((2, 7, 5, 3), dtype=np.float32)
    ref = tf.reshape(tf.image.sobel_edges(tf.constant(x)), [2, 7, 5, 6]).numpy()
    np.testing.assert_allclose(losses.sobel_maps(x).numpy(), ref, atol=1e-5)


def test_sobel_kernel_is_constant_and_never_trainable():
    import keras

    assert not isinstance(losses.sobel_kernel(3), tf.Variable)
    x = tf.constant(np.random.default_rng(3).random((1, 6, 6, 3), dtype=np.float32))
    with tf.GradientTape() as tape:  # watches every trainable variable it touches
        loss = losses.edge_loss(x, x * 0.5)
    assert tape.watched_variables() == ()
    assert np.isfinite(loss.numpy())

    inp = keras.Input((8, 8, 3))
    out = keras.layers.Lambda(lambda t: losses.sobel_maps(t))(inp)
    model = keras.Model(inp, out)
    assert model.trainable_variables == [] and model.variables == []
    assert model(np.ones((1, 8, 8, 3), np.float32)).shape == (1, 8, 8, 6)


def test_edge_loss_identical_is_zero_and_matches_scipy():
    rng = np.random.default_rng(4)
    y = rng.random((2, 6, 7, 3), dtype=np.float32)
    y_hat = rng.random((2, 6, 7, 3), dtype=np.float32)
    assert losses.edge_loss(y, y).numpy() == 0.0
    for padding in ("reflect", "valid"):
        ref = np.mean((_np_sobel(y, padding) - _np_sobel(y_hat, padding)) ** 2)
        assert losses.edge_loss(y, y_hat, padding=padding).numpy() == pytest.approx(ref, rel=1e-5)


def test_sobel_bad_padding():
    with pytest.raises(ValueError, match="padding"):
        losses.sobel_maps(np.zeros((1, 4, 4, 3), np.float32), padding="same")


# -- texture loss --------------------------------------------------------------------------------------

def test_texture_loss_matches_numpy_eq7_and_authors_mean():
    rng = np.random.default_rng(5)
    y = rng.random((1, 8, 8, 3), dtype=np.float32)
    y_hat = rng.random((1, 8, 8, 3), dtype=np.float32)
    g_y, g_hat = _np_gram(y, 4), _np_gram(y_hat, 4)
    assert g_y.shape == (1, 48, 48)
    frob = np.mean(np.sum((g_y - g_hat) ** 2, axis=(1, 2)))
    mean = np.mean((g_y.mean(axis=(1, 2)) - g_hat.mean(axis=(1, 2))) ** 2)
    assert losses.texture_loss(y, y_hat).numpy() == pytest.approx(frob, rel=1e-5)
    assert losses.texture_loss(y, y_hat, reduction="mean").numpy() == pytest.approx(mean, rel=1e-5)
    assert losses.texture_loss(y, y).numpy() == 0.0


def test_texture_loss_batch_and_patch_size():
    rng = np.random.default_rng(6)
    y = rng.random((3, 8, 12, 3), dtype=np.float32)
    y_hat = rng.random((3, 8, 12, 3), dtype=np.float32)
    g_y, g_hat = _np_gram(y, 2), _np_gram(y_hat, 2)
    frob = np.mean(np.sum((g_y - g_hat) ** 2, axis=(1, 2)))
    assert losses.texture_loss(y, y_hat, patch=2).numpy() == pytest.approx(frob, rel=1e-5)
    assert losses.gram_matrices(y, patch=4).shape == (3, 48, 48)


def test_texture_loss_rejects_sides_not_multiple_of_patch():
    with pytest.raises(ValueError, match="multiple of the patch size 4"):
        losses.texture_loss(np.zeros((1, 8, 10, 3), np.float32), np.zeros((1, 8, 10, 3), np.float32))
    with pytest.raises(ValueError, match="reduction"):
        losses.texture_loss(np.zeros((1, 8, 8, 3), np.float32), np.zeros((1, 8, 8, 3), np.float32),
                            reduction="sum")


def test_losses_in_tf_function_with_dynamic_shapes():
    rng = np.random.default_rng(7)
    y = rng.random((2, 8, 8, 3), dtype=np.float32)
    y_hat = rng.random((2, 8, 8, 3), dtype=np.float32)
    spec = tf.TensorSpec([None, None, None, 3], tf.float32)

    @tf.function(input_signature=[spec, spec])
    def all_losses(a, b):
        return losses.task_losses("p,e,t", a, b)

    got = {k: v.numpy() for k, v in all_losses(y, y_hat).items()}
    assert list(got) == ["p", "e", "t"]
    assert got["p"] == pytest.approx(np.mean((y - y_hat) ** 2), rel=1e-5)
    assert got["e"] == pytest.approx(np.mean((_np_sobel(y) - _np_sobel(y_hat)) ** 2), rel=1e-5)
    frob = np.mean(np.sum((_np_gram(y, 4) - _np_gram(y_hat, 4)) ** 2, axis=(1, 2)))
    assert got["t"] == pytest.approx(frob, rel=1e-5)
    bad = rng.random((1, 8, 6, 3), dtype=np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError):
        all_losses(bad, bad)


def test_parse_tasks_and_registry():
    assert set(losses.TASK_LOSSES) == {"p", "e", "t"}
    assert losses.parse_tasks("p, e,t") == ("p", "e", "t")
    assert losses.parse_tasks(["p"]) == ("p",)
    for bad, msg in (("", "at least one"), ("p,x", "unknown"), ("p,p", "twice")):
        with pytest.raises(ValueError, match=f"--tasks.*{msg}"):
            losses.parse_tasks(bad)


# --------------------------------------------------------------------------------------------------
# Intensity-aware deraining losses
# --------------------------------------------------------------------------------------------------


def test_colour_cosine_ignores_brightness_and_sees_hue():
    rng = np.random.default_rng(0)
    x = tf.constant(rng.uniform(0.1, 0.9, (2, 5, 6, 3)), tf.float32)
    assert float(losses.colour_cosine(x, 0.5 * x)) == pytest.approx(0.0, abs=1e-6)  # pure brightness scaling
    hue = tf.roll(x, shift=1, axis=-1)  # R,G,B -> B,R,G: same brightness, other hue
    value = float(losses.colour_cosine(x, hue))
    xs, hs = x.numpy().reshape(-1, 3), hue.numpy().reshape(-1, 3)
    expected = 1 - np.mean(np.sum(xs * hs, 1) / (np.linalg.norm(xs, axis=1) * np.linalg.norm(hs, axis=1)))
    assert value > 0 and value == pytest.approx(expected, rel=1e-5)


def test_charbonnier_equals_the_formula():
    y = tf.constant([[[[0.0, 0.5, 1.0]]]])
    x = tf.constant([[[[0.0, 0.2, 0.6]]]])
    eps = 1e-3
    expected = np.mean(np.sqrt(np.array([0.0, 0.3, 0.4]) ** 2 + eps ** 2))
    assert float(losses.charbonnier(y, x, eps=eps)) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("k", [3, 5, 7, 9])
def test_gaussian_lowpass_matches_opencv(k):
    import cv2

    rng = np.random.default_rng(k)
    img = rng.random((1, 20, 23, 3)).astype(np.float32)
    got = losses.gaussian_lowpass(img, k).numpy()[0]
    sigma = 0.3 * ((k - 1) * 0.5 - 1) + 0.8  # OpenCV's size-to-sigma rule, worked here independently
    want = cv2.GaussianBlur(img[0], (k, k), sigma, borderType=cv2.BORDER_REFLECT_101)
    np.testing.assert_allclose(got, want, atol=1e-5)
    with pytest.raises(ValueError, match="--gaussian_kernel"):
        losses.gaussian_lowpass(img, 4)


def test_segmentation_ce_ignores_255_and_matches_numpy():
    logits = np.array([[[[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]], [[0.5, 0.5, 0.5], [3.0, 0.0, 0.0]]]], np.float32)
    labels = np.array([[[0, 1], [255, 2]]], np.int32)
    p = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    expected = -np.mean([np.log(p[0, 0, 0, 0]), np.log(p[0, 0, 1, 1]), np.log(p[0, 1, 1, 2])])
    assert float(losses.segmentation_ce(labels, logits)) == pytest.approx(expected, rel=1e-5)
    assert float(losses.segmentation_ce(np.full((1, 2, 2), 255), logits)) == 0.0
