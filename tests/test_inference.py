"""Padding to the network's multiple, cropping back, and tiled inference."""

import numpy as np
import pytest
import tensorflow as tf

from erl_derain.inference import apply_padded, derain_image, pad_to_multiple


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
