"""The tile grid, the blending weights and the blend loop (erl_derain.tiling, NumPy only), worked by
hand, and the same blend on the local path (InferenceModel) and on the TF Serving client's."""

import numpy as np
import pytest

from erl_derain import tiling


def test_tile_grid_worked_by_hand():
    # 70 pixels, tiles of <= 32 overlapping by >= 8, lengths a multiple of 4: n = ceil((70 - 8) / (32 - 8)) = 3
    # tiles of ceil((70 + 2 * 8) / 3) = 29 -> 32 (multiple of 4), starts round(i * (70 - 32) / 2) = 0, 19, 38.
    assert tiling.tiles_1d(70, 32, 8, 4) == [(0, 32), (19, 32), (38, 32)]
    assert tiling.tiles_1d(70, 32, 8) == [(0, 29), (20, 29), (41, 29)]  # multiple 1: 29; round(20.5) = 20
    assert tiling.tiles_1d(30, 32, 8, 4) == [(0, 30)]  # fits: one tile, whatever the multiple
    assert tiling.tile_grid(3000, 4000, 512, 32) == (7, 9) and tiling.tile_grid(30, 32, 32, 8) == (1, 1)
    assert tiling.tile_grid(5000, 5000, 0) == (1, 1)
    assert [tiling.pad_amounts(s, 8) for s in (16, 17, 23)] == [0, 7, 1]
    with pytest.raises(ValueError, match="smaller than --tile"):
        tiling.tile_grid(100, 100, 32, 32)


def test_axis_weights_worked_by_hand():
    """Tiles (0, 32), (19, 32), (38, 32) with ramps r = k/9 (k = 1..8) over the 8 pixels next to a
    neighbour. At 19 the first tile has weight 1 and the second 1/9: normalised 0.9 and 0.1; at 24
    the first is on its falling ramp (8/9), the second at 6/9: 8/14 and 6/14; at 10 only the first."""
    (s0, n0, w0), (s1, n1, w1), (s2, n2, w2) = tiling.axis_weights(70, 32, 8, 4)
    assert (s0, s1, s2) == (0, 19, 38) and n0 == n1 == n2 == 32
    assert w0.dtype == np.float32
    np.testing.assert_allclose([w0[19], w1[19 - 19]], [0.9, 0.1], rtol=1e-6)
    np.testing.assert_allclose([w0[24], w1[24 - 19]], [8 / 14, 6 / 14], rtol=1e-6)
    assert w0[10] == 1.0 and w2[-1] == 1.0 and w0[0] == 1.0  # full weight at the image border
    total = np.zeros(70)
    for s, n, w in ((s0, n0, w0), (s1, n1, w1), (s2, n2, w2)):
        total[s:s + n] += w
    np.testing.assert_allclose(total, 1.0, rtol=1e-6)


def test_blend_tiles_worked_by_hand():
    """Each tile answers a constant (0.1, 0.2, 0.3 left to right, height within one tile): the blend
    is the normalised weights times those constants."""
    calls = []

    def run_tile(a):
        calls.append(a.shape)
        return np.full(a.shape, 0.1 * len(calls), np.float32)

    out = tiling.blend_tiles(run_tile, np.zeros((10, 70, 3), np.float32), tile=32, overlap=8, multiple=4)
    assert calls == [(10, 32, 3)] * 3 and out.dtype == np.float32 and out.shape == (10, 70, 3)
    np.testing.assert_allclose(out[:, 10], 0.1, rtol=1e-6)
    np.testing.assert_allclose(out[:, 19], 0.9 * 0.1 + 0.1 * 0.2, rtol=1e-6)
    np.testing.assert_allclose(out[:, 24], (8 * 0.1 + 6 * 0.2) / 14, rtol=1e-6)
    np.testing.assert_allclose(out[:, 69], 0.3, rtol=1e-6)
    # Whole images: one call, the callable's answer as float32 (read-only answers are fine too).
    image = np.random.default_rng(0).random((20, 30, 3))
    whole = tiling.blend_tiles(lambda a: np.sqrt(a), image, tile=32, overlap=8)
    assert whole.dtype == np.float32
    np.testing.assert_array_equal(whole, np.sqrt(image.astype(np.float32)))
    frozen = np.ones((70, 131, 3), np.float32) * 0.5
    frozen.flags.writeable = False
    np.testing.assert_allclose(tiling.blend_tiles(lambda a: frozen[:a.shape[0], :a.shape[1]], frozen, 32, 8), 0.5,
                               rtol=1e-6)
    with pytest.raises(ValueError, match="HxWx3"):
        tiling.blend_tiles(run_tile, np.zeros((10, 70)), 32, 8)
    with pytest.raises(ValueError, match=r"returned shape \(2, 2, 3\)"):
        tiling.blend_tiles(lambda a: np.zeros((2, 2, 3)), np.zeros((10, 70, 3)), 32, 8)


def test_local_and_client_tiles_are_bit_identical():
    """The same photo through derain_image (InferenceModel, multiple 1) and through the TF Serving
    client's tiling (serving_default per tile, here a stand-in calling the same network)."""
    import tensorflow as tf

    from erl_derain.inference import InferenceModel, derain_image
    from erl_derain.serving.client import derain_tiled

    kernel = tf.ones((3, 3, 1, 1)) / 9.0

    def blur(t):  # not pointwise: the blend matters
        return tf.concat([tf.nn.conv2d(t[..., c:c + 1], kernel, 1, "SAME") for c in range(3)], -1) * 1.2 - 0.05

    image = np.random.default_rng(1).random((50, 83, 3)).astype(np.float32)
    local = derain_image(InferenceModel(blur, 1), image, tile=32, overlap=8)

    def predict(server, model_name, images=None, version=None, timeout=None):  # predict_rest's answer
        return {"derained": blur(tf.constant(images)).numpy()}

    np.testing.assert_array_equal(derain_tiled(predict, "host:8501", "m", image, 32, 8), local)


def test_tile_batch_stacks_tiles_and_blends_the_same():
    """Three 10x32 tiles (tile 32, overlap 8, multiple 4): tile_batch=2 runs a stack of two, then
    one; the blend equals one tile per call exactly (each tile answers a function of its pixels)."""
    image = np.random.default_rng(2).random((10, 70, 3)).astype(np.float32)
    calls = []

    def run_tiles(stack):
        calls.append(stack.shape)
        return np.sqrt(stack) * 0.9

    single = tiling.blend_tiles(lambda a: np.sqrt(a) * 0.9, image, tile=32, overlap=8, multiple=4)
    batched = tiling.blend_tiles(None, image, tile=32, overlap=8, multiple=4, tile_batch=2, run_tiles=run_tiles)
    assert calls == [(2, 10, 32, 3), (1, 10, 32, 3)]
    np.testing.assert_array_equal(batched, single)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="--tile_batch"):
            tiling.blend_tiles(run_tiles, image, 32, 8, tile_batch=bad, run_tiles=run_tiles)
    with pytest.raises(ValueError, match=r"returned shape \(2, 10, 32, 1\) for 2 tiles"):
        tiling.blend_tiles(None, image, 32, 8, 4, tile_batch=2, run_tiles=lambda s: s[..., :1])


def test_tile_batch_with_a_tiny_network_matches_one_tile_per_call():
    """A tiny ERL-Net (random weights) on a 70x90 image in 3x4 = 12 tiles of 32: 3 and 5 tiles per
    network call give the one-tile-per-call output within 1e-5; batching is real (fewer calls)."""
    import tensorflow as tf

    from erl_derain.inference import InferenceModel, derain_image
    from erl_derain.methods import get_method, make_trainer
    from erl_derain.run_config import RunConfig, make_record

    tf.keras.utils.set_random_seed(0)
    trainer = make_trainer(make_record("erlnet", RunConfig(crop_size=32), **dict(get_method("erlnet").tiny)))
    trainer.build_networks((1, 32, 32, 3))
    network = trainer.inference_model()
    network = network.network if isinstance(network, InferenceModel) else network
    batches = []

    def counted(x, training=False):
        batches.append(int(x.shape[0]))
        return network(x, training=False)

    model = InferenceModel(counted, trainer.pad_multiple)
    image = np.random.default_rng(3).random((70, 90, 3)).astype(np.float32)
    one = derain_image(model, image, tile=32, overlap=8)
    assert batches == [1] * 12
    for tile_batch, expected in ((3, [3, 3, 3, 3]), (5, [5, 5, 2])):
        batches.clear()
        out = derain_image(model, image, tile=32, overlap=8, tile_batch=tile_batch)
        assert batches == expected
        np.testing.assert_allclose(out, one, atol=1e-5, rtol=0)
    # an image within one tile is still one whole-image call
    batches.clear()
    whole = derain_image(model, image[:32, :32], tile=32, overlap=8, tile_batch=3)
    assert batches == [1] and whole.shape == (32, 32, 3)


def test_derain_cli_tile_batch_gives_the_same_photo(run_cli, tmp_path):
    """`erl-derain derain --tile_batch=4` (the bundled model, a 16-bit 60x50 photo in 2x3 tiles of 32:
    calls of 4 and 2 tiles) writes the photo --tile_batch=1 writes, within one 16-bit step."""
    import cv2

    rng = np.random.default_rng(4)
    photo = tmp_path / "in" / "photo.png"
    photo.parent.mkdir()
    assert cv2.imwrite(str(photo), (rng.random((50, 60, 3)) * 65535).astype(np.uint16))
    outputs = []
    for tile_batch in (1, 4):
        out_dir = tmp_path / f"out{tile_batch}"
        code, out, err = run_cli("derain", f"--output_dir={out_dir}", "--tile=32", "--tile_overlap=8",
                                 f"--tile_batch={tile_batch}", "--jit_compile=false", str(photo))
        assert code == 0, err
        assert "2x3 tiles" in out, out
        outputs.append(cv2.imread(str(out_dir / "photo.png"), cv2.IMREAD_UNCHANGED).astype(np.int64))
    assert outputs[0].shape == (50, 60, 3)
    assert np.abs(outputs[0] - outputs[1]).max() <= 1
