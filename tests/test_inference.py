"""InferenceModel (padding to the network's multiple, cropping back, clipping, float32, training=False,
tf.function and SavedModel), flip ensembles, and tiled inference."""

import numpy as np
import pytest
import tensorflow as tf

from erl_derain.inference import InferenceModel, apply_padded, derain_image, flip_ensemble, pad_to_multiple


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
    model = InferenceModel(tf.sqrt, 8)  # pointwise: tiles cannot change the result
    whole = derain_image(model, image, tile=0)
    tiled = derain_image(model, image, tile=32, overlap=8)
    np.testing.assert_allclose(whole, np.sqrt(image), atol=1e-6)
    np.testing.assert_allclose(tiled, whole, atol=1e-6)


def test_tiled_inference_blends_local_model_close_to_whole_image():
    rng = np.random.default_rng(1)
    image = rng.random((64, 96, 3)).astype(np.float32)
    kernel = tf.ones((3, 3, 1, 1)) / 9.0

    def blur(t):  # a 3x3 box filter per channel: tile edges differ only within one pixel of the cut
        chans = [tf.nn.conv2d(t[..., c:c + 1], kernel, 1, "SAME") for c in range(3)]
        return tf.concat(chans, -1)

    whole = derain_image(InferenceModel(blur, 8), image, tile=0)
    tiled = derain_image(InferenceModel(blur, 8), image, tile=40, overlap=16)
    # Away from the image border, a 16-pixel overlap with linear ramps keeps the error small.
    assert np.abs(tiled - whole)[2:-2, 2:-2].max() < 0.05


def test_tiles_share_one_size_within_the_tile_and_weights_sum_to_one():
    from erl_derain.inference import tile_grid

    seen = []

    def model(t):
        seen.append(tuple(t.shape[1:3]))
        return tf.ones_like(t) * 0.7  # a constant output exposes any weight that does not sum to one

    out = derain_image(InferenceModel(model, 4), np.zeros((70, 131, 3), np.float32), tile=32, overlap=8)
    # 3 x 6 tiles, all of one size, within the tile, a multiple of 4 (no padding)
    assert len(set(seen)) == 1 and len(seen) == 3 * 6 == np.prod(tile_grid(70, 131, 32, 8))
    assert seen[0][0] <= 32 and seen[0][0] % 4 == 0 and seen[0][1] <= 32 and seen[0][1] % 4 == 0
    np.testing.assert_allclose(out, 0.7, atol=1e-6)
    assert tile_grid(30, 32, 32, 8) == (1, 1) and tile_grid(3000, 4000, 512, 32) == (7, 9)
    with pytest.raises(ValueError, match="smaller than --tile"):
        derain_image(InferenceModel(model, 1), np.zeros((70, 131, 3), np.float32), tile=32, overlap=32)


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

    return InferenceModel(predict, trainer.pad_multiple), predict


def _scene(h, w):
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([0.5 + 0.3 * np.sin(xx / 7), 0.4 + 0.3 * np.cos(yy / 5), 0.5 + 0.2 * np.sin((xx + yy) / 9)], -1)
    return np.clip(img + 0.05 * np.random.default_rng(0).random((h, w, 3)), 0, 1).astype(np.float32)


def test_erlnet_tiled_equals_whole_image_within_a_tile_and_is_close_beyond(tiny_erlnet):
    model, predict = tiny_erlnet
    small = _scene(45, 62)  # within one tile: the same single run, bit for bit
    np.testing.assert_array_equal(derain_image(model, small, tile=64, overlap=16),
                                  derain_image(model, small, tile=0))
    image = _scene(100, 150)  # 2 x 3 tiles of 64 with 16-pixel blended overlaps
    whole = derain_image(model, image, tile=0)
    tiled = derain_image(model, image, tile=64, overlap=16)
    err = np.abs(tiled - whole)[4:-4, 4:-4]  # the borders differ by padding (whole image: reflect to x4)
    assert err.mean() < 0.01 and err.max() < 0.15, (err.mean(), err.max())  # measured: 0.004, 0.05
    # The transition form (a bare network and its multiple) runs exactly the same.
    np.testing.assert_array_equal(derain_image(predict, image, model.pad_multiple, tile=64, overlap=16), tiled)
    with pytest.raises(ValueError, match=f"pad_multiple is {model.pad_multiple}"):
        derain_image(model, image, 2 * model.pad_multiple)


def test_derain_file_tiles_large_images(tiny_erlnet, tmp_path):
    from PIL import Image

    from erl_derain.inference import derain_file

    model, predict = tiny_erlnet
    image = _scene(100, 150)
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(tmp_path / "in.png")
    info = derain_file(model, str(tmp_path / "in.png"), str(tmp_path / "out.png"), tile=64, overlap=16)
    assert info["tiles"] == (2, 3) and (info["width"], info["height"]) == (150, 100)
    expected = derain_image(model, np.round(image * 255) / np.float32(255), tile=64, overlap=16)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out.png")), np.floor(expected * 255 + 0.5))
    # the transition form: derain_file(predict, multiple, in_path, out_path)
    derain_file(predict, model.pad_multiple, str(tmp_path / "in.png"), str(tmp_path / "out2.png"), tile=64, overlap=16)
    assert (tmp_path / "out2.png").read_bytes() == (tmp_path / "out.png").read_bytes()


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
    np.testing.assert_allclose(derain_image(flip_ensemble(InferenceModel(tf.sqrt, 8), 4), image, tile=32, overlap=8),
                               np.sqrt(image), atol=1e-6)
    with pytest.raises(ValueError, match="--self_ensemble"):
        flip_ensemble(model, 3)


# --------------------------------------------------------------------------------------------------
# InferenceModel
# --------------------------------------------------------------------------------------------------


def test_inference_model_pads_crops_and_clips_worked_by_hand():
    """A 1x2x3 image, multiple 4: rows padded 2 -> 4 by one reflected row (r0 r1 | r0) and one
    replicated (| r0), columns 3 -> 4 by one reflected column (c0 c1 c2 | c1). A network adding 0.5
    sees exactly that, and the output is the input + 0.5 cropped back and clipped to [0, 1]."""
    x = np.array([[0.0, 0.1, 0.2], [0.6, 0.7, 0.8]], np.float32)[None, :, :, None].repeat(3, -1)
    seen = []

    def network(t):
        seen.append(t.numpy())
        return t + 0.5

    model = InferenceModel(network, 4)
    y = model(tf.constant(x)).numpy()
    want_padded = np.array([[0.0, 0.1, 0.2, 0.1], [0.6, 0.7, 0.8, 0.7], [0.0, 0.1, 0.2, 0.1], [0.0, 0.1, 0.2, 0.1]],
                           np.float32)
    assert len(seen) == 1 and seen[0].shape == (1, 4, 4, 3)
    np.testing.assert_array_equal(seen[0][0, ..., 1], want_padded)
    assert y.dtype == np.float32 and y.shape == (1, 2, 3, 3)
    np.testing.assert_allclose(y[0, ..., 0], [[0.5, 0.6, 0.7], [1.0, 1.0, 1.0]], atol=1e-7)  # 1.1 .. 1.3 clipped
    np.testing.assert_allclose(InferenceModel(lambda t: t - 0.3, 4)(x).numpy()[0, ..., 2],
                               [[0.0, 0.0, 0.0], [0.3, 0.4, 0.5]], atol=1e-7)  # clipped at 0; numpy input
    # Sizes already multiples are not padded; integer and float64 inputs are cast to float32 first.
    seen.clear()
    model(tf.zeros((2, 8, 12, 3), tf.float64))
    assert seen[0].shape == (2, 8, 12, 3) and seen[0].dtype == np.float32
    assert model.pad_multiple == 4 and model.views == 1 and model.network is network


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_inference_model_output_is_float32_for_low_precision_networks(dtype):
    import keras

    x = tf.random.uniform((1, 13, 21, 3), seed=1)
    bare = InferenceModel(lambda t: tf.cast(t, dtype) * 2.0, 8)  # a callable answering in `dtype`
    layer = keras.Sequential([keras.Input((None, None, 3)),
                              keras.layers.Conv2D(3, 1, dtype=f"mixed_{dtype}", kernel_initializer="ones")])
    for model in (bare, InferenceModel(layer, 8)):
        assert layer(tf.zeros((1, 8, 8, 3))).dtype == dtype
        y = model(x)
        assert y.dtype == tf.float32 and y.shape == (1, 13, 21, 3)
        assert 0.0 <= float(tf.reduce_min(y)) and float(tf.reduce_max(y)) <= 1.0


def test_inference_model_calls_the_network_in_inference_mode():
    import keras

    seen = []

    def with_training(t, training=True):
        seen.append(training)
        return t

    InferenceModel(with_training, 2)(tf.zeros((1, 3, 3, 3)))
    assert seen == [False]
    InferenceModel(lambda t: t, 2)(tf.zeros((1, 3, 3, 3)))  # no training argument: called without one
    fixed = tf.function(lambda t: t * 0.5, input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)])
    np.testing.assert_allclose(InferenceModel(fixed, 2)(tf.ones((1, 3, 3, 3))).numpy(), 0.5)
    net = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Dropout(0.5)])
    model = InferenceModel(net, 2)
    x = tf.ones((1, 5, 7, 3)) * 0.5
    np.testing.assert_array_equal(model(x).numpy(), x.numpy())  # Dropout off
    np.testing.assert_array_equal(model(x, training=True).numpy(), x.numpy())  # (ignored: inference only)
    with pytest.raises(TypeError, match="already an InferenceModel"):
        InferenceModel(model, 2)
    with pytest.raises(ValueError, match="positive integer"):
        InferenceModel(net, 0)


def test_inference_model_in_tf_function_and_saved_model(tmp_path):
    import keras

    keras.utils.set_random_seed(3)
    net = keras.Sequential([keras.Input((None, None, 3)), keras.layers.Conv2D(4, 3, strides=2, padding="same"),
                            keras.layers.Conv2DTranspose(3, 3, strides=2, padding="same", activation="sigmoid")])
    model = InferenceModel(net, 2, name="tiny")
    spec = tf.TensorSpec([None, None, None, 3], tf.float32)
    fn = tf.function(model, input_signature=[spec])
    for shape in ((1, 7, 9, 3), (2, 4, 5, 3)):  # odd sizes: one trace for unknown sizes
        x = tf.random.uniform(shape, seed=sum(shape))
        want = apply_padded(lambda t: net(t, training=False), x, 2)
        np.testing.assert_array_equal(fn(x).numpy(), want.numpy())
    assert fn.experimental_get_tracing_count() == 1

    module = tf.Module()
    module.model = model
    module.run = tf.function(lambda x: {"derained": module.model(x)}, input_signature=[spec])
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.run})
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    x = tf.random.uniform((1, 11, 6, 3), seed=7)
    np.testing.assert_allclose(loaded.signatures["serving_default"](x=x)["derained"].numpy(), model(x).numpy(),
                               atol=1e-6)
    saved = [k for k, _ in tf.train.list_variables(str(tmp_path / "sm" / "variables" / "variables"))
             if k.endswith("VARIABLE_VALUE")]
    assert len(saved) == len(net.variables) == 4  # the network's variables, nothing of its own


def test_flip_ensemble_of_an_inference_model_mirrors_the_padded_input():
    """As the CLI runs --self_ensemble (a flip-averaged network inside the padding): bit for bit."""
    h, w = 5, 7  # padded to 8 x 8
    ramp = tf.constant((0.01 * np.arange(8, dtype=np.float32)[None, :] + 0.001 * np.arange(8)[:, None])[None, ..., None],
                       tf.float32)
    net = lambda t: t * 0.5 + ramp  # noqa: E731  (position dependent: the views differ)
    x = tf.random.uniform((1, h, w, 3), seed=9)
    model = InferenceModel(net, 8)
    assert flip_ensemble(model, 1) is model
    four = flip_ensemble(model, 4)
    assert isinstance(four, InferenceModel) and four.views == 4 and four.pad_multiple == 8 and four.network is net
    np.testing.assert_array_equal(four(x).numpy(), InferenceModel(flip_ensemble(net, 4), 8)(x).numpy())
    np.testing.assert_allclose(four(x).numpy(), np.clip(x.numpy() * 0.5 + 0.01 * 3.5 + 0.001 * 3.5, 0, 1), atol=1e-6)
    with pytest.raises(ValueError, match="already averages 4 views"):
        flip_ensemble(four, 2)


def test_as_inference_model():
    from erl_derain.inference import as_inference_model

    model = InferenceModel(tf.sqrt, 4)
    assert as_inference_model(model) is model and as_inference_model(model, 4) is model
    with pytest.raises(ValueError, match="pad_multiple is 4"):
        as_inference_model(model, 8)
    wrapped = as_inference_model(tf.sqrt, 2)
    assert isinstance(wrapped, InferenceModel) and wrapped.pad_multiple == 2

    class Bundled:  # as erl_derain.load_pretrained returns: a network with its pad_multiple attribute
        pad_multiple = 8

        def __call__(self, x):
            return x

    assert as_inference_model(Bundled()).pad_multiple == 8
    with pytest.raises(TypeError, match="InferenceModel"):
        as_inference_model(tf.sqrt)
