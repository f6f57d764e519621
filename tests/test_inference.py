"""Padding to the network's multiple, cropping back, and tiled inference."""

import numpy as np
import pytest
import tensorflow as tf

from erl_derain.inference import apply_padded, derain_image, flip_ensemble, pad_to_multiple


@pytest.mark.parametrize("h,w,multiple", [(37, 53, 8), (5, 3, 8), (16, 16, 8), (321, 481, 16)])
def test_pad_to_multiple_shapes_and_content(h, w, multiple):
    x = tf.random.uniform((1, h, w, 3), seed=3)
    padded, ph, pw = pad_to_multiple(x, multiple)
    assert padded.shape[1] % multiple == 0 and padded.shape[2] % multiple == 0
    assert padded.shape[1] - h < multiple and padded.shape[2] - w < multiple
    np.testing.assert_array_equal(padded[:, :h, :w].numpy(), x.numpy())
    assert (int(ph), int(pw)) == (h, w)


def test_apply_padded_sees_multiples_and_crops_back():
    seen = []

    def model(x):
        seen.append(tuple(x.shape))
        return x * 2.0

    x = tf.fill((1, 13, 21, 3), 0.25)
    y = apply_padded(model, x, 8)
    assert seen == [(1, 16, 24, 3)]
    assert y.shape == (1, 13, 21, 3)
    np.testing.assert_allclose(y.numpy(), 0.5)
    # outputs are clipped to the valid range
    np.testing.assert_allclose(apply_padded(lambda t: t * 10.0, x, 8).numpy(), 1.0)


def test_tiled_inference_equals_whole_image_for_pointwise_model():
    rng = np.random.default_rng(0)
    image = rng.random((70, 130, 3)).astype(np.float32)
    model = lambda t: tf.sqrt(t)  # noqa: E731  (pointwise: tiles cannot change the result)
    whole = derain_image(model, image, 8, tile=0)
    tiled = derain_image(model, image, 8, tile=32, overlap=8)
    np.testing.assert_allclose(whole, np.sqrt(image), atol=1e-6)
    np.testing.assert_allclose(tiled, whole, atol=1e-6)


def test_tiled_inference_blends_local_model_close_to_whole_image():
    rng = np.random.default_rng(1)
    image = rng.random((64, 96, 3)).astype(np.float32)
    kernel = tf.ones((3, 3, 1, 1)) / 9.0

    def blur(t):  # a 3x3 box filter per channel: tile edges differ only within one pixel of the cut
        chans = [tf.nn.conv2d(t[..., c:c + 1], kernel, 1, "SAME") for c in range(3)]
        return tf.concat(chans, -1)

    whole = derain_image(blur, image, 8, tile=0)
    tiled = derain_image(blur, image, 8, tile=40, overlap=16)
    # Away from the image border, a 16-pixel overlap with linear ramps keeps the error small.
    assert np.abs(tiled - whole)[2:-2, 2:-2].max() < 0.05


def test_tiles_share_one_size_within_the_tile_and_weights_sum_to_one():
    from erl_derain.inference import tile_grid

    seen = []

    def model(t):
        seen.append(tuple(t.shape[1:3]))
        return tf.ones_like(t) * 0.7  # a constant output exposes any weight that does not sum to one

    out = derain_image(model, np.zeros((70, 131, 3), np.float32), 4, tile=32, overlap=8)
    # 3 x 6 tiles, all of one size, within the tile, a multiple of 4 (no padding)
    assert len(set(seen)) == 1 and len(seen) == 3 * 6 == np.prod(tile_grid(70, 131, 32, 8))
    assert seen[0][0] <= 32 and seen[0][0] % 4 == 0 and seen[0][1] <= 32 and seen[0][1] % 4 == 0
    np.testing.assert_allclose(out, 0.7, atol=1e-6)
    assert tile_grid(30, 32, 32, 8) == (1, 1) and tile_grid(3000, 4000, 512, 32) == (7, 9)
    with pytest.raises(ValueError, match="smaller than --tile"):
        derain_image(model, np.zeros((70, 131, 3), np.float32), 1, tile=32, overlap=32)


@pytest.fixture(scope="module")
def tiny_erlnet():
    import keras

    from erl_derain.methods import make_trainer

    keras.utils.set_random_seed(0)  # the tiled-vs-whole error depends on the (random) weights
    trainer = make_trainer({"method": "erlnet", "erl_strategy": "ma_d", "widths": [8, 16], "bottleneck_width": 16,
                            "dense_layers": 2, "growth": 8, "se_ratio": 2})
    trainer.build_networks((1, 32, 32, 3))
    model = trainer.inference_model()

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    def predict(x):
        return model(x)

    return predict, trainer.pad_multiple


def _scene(h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([0.5 + 0.3 * np.sin(xx / 7), 0.4 + 0.3 * np.cos(yy / 5), 0.5 + 0.2 * np.sin((xx + yy) / 9)], -1)
    return np.clip(img + 0.05 * np.random.default_rng(0).random((h, w, 3)), 0, 1).astype(np.float32)


def test_erlnet_tiled_equals_whole_image_within_a_tile_and_is_close_beyond(tiny_erlnet):
    predict, multiple = tiny_erlnet
    small = _scene(45, 62)  # within one tile: the same single run, bit for bit
    np.testing.assert_array_equal(derain_image(predict, small, multiple, tile=64, overlap=16),
                                  derain_image(predict, small, multiple, tile=0))
    image = _scene(100, 150)  # 2 x 3 tiles of 64 with 16-pixel blended overlaps
    whole = derain_image(predict, image, multiple, tile=0)
    tiled = derain_image(predict, image, multiple, tile=64, overlap=16)
    err = np.abs(tiled - whole)[4:-4, 4:-4]  # the borders differ by padding (whole image: reflect to x4)
    assert err.mean() < 0.01 and err.max() < 0.15, (err.mean(), err.max())  # measured: 0.004, 0.05


def test_derain_file_tiles_large_images(tiny_erlnet, tmp_path):
    from PIL import Image

    from erl_derain.inference import derain_file

    predict, multiple = tiny_erlnet
    image = _scene(100, 150)
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(tmp_path / "in.png")
    info = derain_file(predict, multiple, str(tmp_path / "in.png"), str(tmp_path / "out.png"), tile=64, overlap=16)
    assert info["tiles"] == (2, 3) and (info["width"], info["height"]) == (150, 100)
    expected = derain_image(predict, np.round(image * 255) / np.float32(255), multiple, tile=64, overlap=16)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.png")), np.floor(expected * 255 + 0.5))


def test_flip_ensemble_averages_mirrored_views_worked_by_hand():
    """A model that adds 0.01*column + 0.001*row sees the ramps mirrored in the mirrored views; mirrored
    back and averaged, the column ramp j (left-right view: W-1-j) averages to (W-1)/2 and the row ramp
    likewise with the upside-down views: x + 0.01*(W-1)/2 + 0.001*(H-1)/2 with 4 views, the row ramp
    untouched with 2 views, the model itself with 1."""
    h, w = 6, 10
    rows, cols = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = tf.constant((0.01 * cols + 0.001 * rows)[None, :, :, None])
    model = lambda t: t + ramp  # noqa: E731
    x = tf.random.uniform((2, h, w, 3), seed=5)
    assert flip_ensemble(model, 1) is model
    two = flip_ensemble(model, 2)(x).numpy()
    np.testing.assert_allclose(two, x.numpy() + (0.01 * (w - 1) / 2 + 0.001 * rows)[None, :, :, None], atol=1e-6)
    four = flip_ensemble(model, 4)(x).numpy()
    np.testing.assert_allclose(four, x.numpy() + 0.01 * (w - 1) / 2 + 0.001 * (h - 1) / 2, atol=1e-6)
    # Through padding and tiles: a pointwise model is its own ensemble.
    image = np.random.default_rng(2).random((37, 70, 3)).astype(np.float32)
    np.testing.assert_allclose(derain_image(flip_ensemble(tf.sqrt, 4), image, 8, tile=32, overlap=8),
                               np.sqrt(image), atol=1e-6)
    with pytest.raises(ValueError, match="--self_ensemble"):
        flip_ensemble(model, 3)
