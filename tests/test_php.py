"""PHP block, parallel pyramid and contrast-aware pooling (Xu et al. TIP 2021, Sec. III.B, Table IV)."""

from __future__ import annotations

import numpy as np
import pytest
import keras
import tensorflow as tf
from keras import ops

from erl_derain.nn.php import PHP_MODES, ContrastAwarePooling, ParallelPyramid, PHPBlock


def _rand(shape, seed=0):
    return np.random.default_rng(seed).random(shape).astype("float32")


def _streak_image():
    """1x16x16x3: dark background 0.2 and one bright 1-pixel vertical streak (0.9) in column 8."""
    y = np.full((1, 16, 16, 3), 0.2, "float32")
    y[:, :, 8, :] = 0.9
    return y


# ----------------------------------------------------------------------------- contrast-aware pooling

def test_contrast_attention_detects_streak_and_keeps_background():
    y = _streak_image()
    cap = ContrastAwarePooling()
    c_a = ops.convert_to_numpy(cap.attention(y))
    y_c = ops.convert_to_numpy(cap.select_background(y))
    assert c_a.shape == y.shape and y_c.shape == y.shape
    assert (c_a[:, :, 8, :] > 0.5).all()          # streak: 10*(0.9-0.433)-4 = 0.67 -> 0.66
    off = np.ones(16, bool)
    off[8] = False
    assert (c_a[:, :, off, :] < 0.02).all()       # background: sigmoid(<= -4)
    np.testing.assert_allclose(y_c[:, :, off, :], y[:, :, off, :], rtol=0.03)
    assert (y_c[:, :, 8, :] < 0.5 * y[:, :, 8, :]).all()   # the streak is suppressed in Y_c
    out = ops.convert_to_numpy(cap(y))
    assert out.shape == y.shape                    # pooled, stride 1, 'same'
    # 3x3 average of Y_c, away from the streak and the border: the background value.
    np.testing.assert_allclose(out[:, 4:12, 2:5, :], y_c[:, 4:12, 2:5, :], rtol=1e-5)


def test_contrast_borders_not_mistaken_for_rain():
    # Replicate padding: a flat bright image has no contrast anywhere, borders included.
    c_a = ops.convert_to_numpy(ContrastAwarePooling().attention(np.full((1, 7, 9, 3), 0.9, "float32")))
    np.testing.assert_allclose(c_a, 1.0 / (1.0 + np.exp(4.0)), rtol=1e-4)


def test_contrast_pooling_trainable_and_modes():
    cap = ContrastAwarePooling()
    cap(_rand((1, 5, 5, 3)))
    # f_d1: 3*3 + 3, f_d2: 9*3*3 + 3
    assert sum(int(np.prod(w.shape)) for w in cap.trainable_weights) == 12 + 84
    y = _rand((2, 9, 11, 3), seed=1)
    mx = ContrastAwarePooling("max")
    out = ops.convert_to_numpy(mx(y))
    assert out.shape == y.shape and not mx.trainable_weights
    np.testing.assert_allclose(out[0, 4, 5], y[0, 3:6, 4:7].max(axis=(0, 1)))
    for bad in ("none", "avg"):
        with pytest.raises(ValueError, match="--contrast_pooling"):
            ContrastAwarePooling(bad)


# ----------------------------------------------------------------------------- parallel pyramid

def test_parallel_pyramid_param_count_by_hand():
    # Input C_in = 6, width w = 4, k = 4 branches:
    #   branches: k * (3*3*C_in*w + w)  = 4 * (216 + 4)   = 880
    #   T:        2 * (3*3*k*w + k*w)   = 2 * (144 + 16)  = 320   (depthwise, multiplier 1, with bias)
    #   fuse:     3*3*(k*w)*w + w       = 576 + 4         = 580
    #   total                                            = 1780
    pp = ParallelPyramid(4)
    pp.build((None, None, None, 6))
    assert pp.count_params() == 1780
    # Without reweighting T disappears: 1780 - 320.
    pp2 = ParallelPyramid(4, reweight=False)
    pp2.build((None, None, None, 6))
    assert pp2.count_params() == 1460


@pytest.mark.parametrize("hw", [(7, 9), (5, 13)])
def test_parallel_pyramid_shapes_odd_sizes(hw):
    x = _rand((2, *hw, 5))
    out, feats = ParallelPyramid(4)(x, return_branches=True)
    assert tuple(out.shape) == (2, *hw, 4)
    assert len(feats) == 4 and all(tuple(f.shape) == (2, *hw, 4) for f in feats)


@pytest.mark.parametrize("aggregate", [True, False])
def test_top_down_aggregation(aggregate):
    x = _rand((1, 9, 9, 3), seed=2)
    pp = ParallelPyramid(4, aggregate=aggregate)
    before = [ops.convert_to_numpy(f) for f in pp.branch_features(x)]
    assert before[0].max() > 0
    pp.branches[0].kernel.assign(np.zeros(pp.branches[0].kernel.shape, "float32"))
    pp.branches[0].bias.assign(np.zeros(pp.branches[0].bias.shape, "float32"))
    after = [ops.convert_to_numpy(f) for f in pp.branch_features(x)]
    assert np.abs(after[0]).max() == 0.0
    for b, a in zip(before[1:], after[1:]):
        if aggregate:   # f_i = c_i + f_{i-1}: every larger branch loses f_1's contribution
            assert np.abs(b - a).max() > 1e-4
        else:
            np.testing.assert_array_equal(b, a)


def test_reweighting_matches_separate_computation():
    x = _rand((1, 7, 8, 4), seed=3)
    pp = ParallelPyramid(3)
    out = ops.convert_to_numpy(pp(x))
    c = [ops.convert_to_numpy(conv(x)) for conv in pp.branches]
    f = np.concatenate(np.cumsum(np.stack(c), axis=0), axis=-1)      # [c1, c1+c2, ...]
    t = f
    for dw in pp.t_convs:
        t = ops.convert_to_numpy(ops.selu(dw(t)))
    f_out = f * (1.0 / (1.0 + np.exp(-t)))
    np.testing.assert_allclose(ops.convert_to_numpy(pp.reweight_features(f)), f_out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out, ops.convert_to_numpy(pp.fuse(f_out)), rtol=1e-5, atol=1e-5)
    # reweight=False: the fuse sees the plain concatenation.
    pp2 = ParallelPyramid(3, reweight=False)
    out2 = ops.convert_to_numpy(pp2(x))
    f2 = np.concatenate([ops.convert_to_numpy(g) for g in pp2.branch_features(x)], axis=-1)
    np.testing.assert_allclose(out2, ops.convert_to_numpy(pp2.fuse(f2)), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- PHP block and Table IV

@pytest.mark.parametrize("mode", PHP_MODES)
def test_php_block_modes_build_and_run(mode):
    x = _rand((1, 11, 7, 4), seed=4)
    block = PHPBlock(4, groups=3, k=4, mode=mode)
    out = ops.convert_to_numpy(block(x))
    assert out.shape == x.shape and np.isfinite(out).all()
    expected = {"php": [(1, 2, 3, 4), (2, 4, 6, 8), (3, 6, 9, 12)],
                "php_concat": [(1, 2, 3, 4), (2, 4, 6, 8), (3, 6, 9, 12)],
                "parallel_only": [(1, 2, 3, 4)],
                "hierarchical_only": [(1,), (2,), (4,)],
                "standard": [(1,)] * 12}[mode]
    assert block.group_dilations == expected
    if mode == "php":
        assert all(s.aggregate and s.reweight for s in block.stages)
    if mode in ("php_concat", "parallel_only"):  # the branches are only concatenated (Table IV)
        assert not any(s.aggregate or s.reweight for s in block.stages)
    # Identity residual: with the fuse zeroed the block is the identity.
    block.fuse.kernel.assign(np.zeros(block.fuse.kernel.shape, "float32"))
    block.fuse.bias.assign(np.zeros(block.fuse.bias.shape, "float32"))
    np.testing.assert_allclose(ops.convert_to_numpy(block(x)), x)


def test_php_block_param_count():
    # width w = 8, groups 3, k 4: each pyramid (C_in = w) = 4*(9*w*w + w) + 2*(9*4w + 4w) + (9*4w*w + w)
    # = 2336 + 640 + 2312 = 5288; final fuse 9*(3w)*w + w = 1736; total 3*5288 + 1736 = 17600.
    block = PHPBlock(8)
    block.build((None, None, None, 8))
    assert block.count_params() == 17600


def test_invalid_php_mode_and_width():
    with pytest.raises(ValueError, match="--php_mode"):
        PHPBlock(4, mode="nonlocal")
    with pytest.raises(ValueError, match="identity residual"):
        PHPBlock(4)(_rand((1, 5, 5, 3)))


# -- a dilated convolution as one op (erl_derain.nn.blocks.DilatedConv2D) ------------------------------

def _real_crop(side: int):
    from erl_derain.data import image_io

    from .conftest import shared_data_dir

    shared = shared_data_dir()
    if shared is None or not (shared / "real_rain" / "147.jpg").exists():
        pytest.skip("../shared/data/real_rain is absent: the real-photo comparison needs it")
    image, _ = image_io.read_image(str(shared / "real_rain" / "147.jpg"))
    return tf.constant(image[None, :side, :side].astype("float32"))


def test_dilated_conv_one_op_equals_keras_path_on_a_real_photo(monkeypatch):
    """The intensity-aware network (paper widths) on a real rainy photo: the single-op dilated
    convolutions give Keras's SpaceToBatchND path's output to 1e-5, and the graph has no reshuffle left."""
    from erl_derain.methods import iadn
    from erl_derain.nn import blocks

    if not blocks._one_op_dilation():
        pytest.skip("no oneDNN and no GPU: the single op has no gradient here, Keras's path is used")
    keras.utils.set_random_seed(3)
    net = iadn.IADN(iadn.IADNConfig())
    y = _real_crop(160)
    ops_of = lambda f: {op.type for op in f.get_concrete_function(y).graph.get_operations()}  # noqa: E731
    fast = tf.function(lambda t: net(t)[1])
    out_fast = fast(y).numpy()
    monkeypatch.setattr(blocks, "_one_op_dilation", lambda: False)
    slow = tf.function(lambda t: net(t)[1])
    out_slow = slow(y).numpy()
    assert "SpaceToBatchND" in ops_of(slow) and "SpaceToBatchND" not in ops_of(fast)
    assert np.abs(out_fast - out_slow).max() < 1e-5
    assert np.abs(out_fast - y.numpy()).max() > 1e-3  # the network does something


def test_dilated_conv_one_op_gradients_equal_keras_path(monkeypatch):
    from erl_derain.nn import blocks

    if not blocks._one_op_dilation():
        pytest.skip("no oneDNN and no GPU: the single op has no gradient here")
    keras.utils.set_random_seed(4)
    conv = blocks.DilatedConv2D(6, 3, padding="same", dilation_rate=3)
    x = tf.random.uniform((2, 23, 19, 5), seed=1)

    def grads():
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_sum(conv(x) ** 2)
        return [g.numpy() for g in tape.gradient(loss, [x, conv.kernel, conv.bias])]

    fast = grads()
    monkeypatch.setattr(blocks, "_one_op_dilation", lambda: False)
    slow = grads()
    for a, b in zip(fast, slow):
        assert np.abs(a - b).max() <= 1e-5 * max(1.0, np.abs(b).max())


def test_reweighting_activations_run_in_float32_under_bfloat16():
    """Under mixed_bfloat16 the convolutions compute in bfloat16 but T(f)'s SELUs and the sigmoid in
    float32 (TensorFlow's CPU kernels for both are scalar in bfloat16); the output stays bfloat16 and
    within bfloat16 rounding of the float32 pyramid with the same weights."""
    x = _rand((1, 24, 20, 8), seed=5)
    pp32 = ParallelPyramid(8)
    want = ops.convert_to_numpy(pp32(x))
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        pp16 = ParallelPyramid(8)
        pp16(x)
        pp16.set_weights(pp32.get_weights())
        fn = tf.function(lambda a: pp16(a)).get_concrete_function(tf.TensorSpec(x.shape, tf.float32))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    nodes = fn.graph.as_graph_def().node
    selu = [n for n in nodes if n.op == "Selu"]
    sigmoid = [n for n in nodes if n.op == "Sigmoid"]
    assert len(selu) == 2 and {n.attr["T"].type for n in selu} == {tf.float32.as_datatype_enum}
    assert len(sigmoid) == 1 and sigmoid[0].attr["T"].type == tf.float32.as_datatype_enum
    convs = [n for n in nodes if n.op in ("Conv2D", "DepthwiseConv2dNative")]
    assert len(convs) > 2 and {n.attr["T"].type for n in convs} == {tf.bfloat16.as_datatype_enum}
    got = fn(tf.constant(x))
    assert got.dtype == tf.bfloat16
    np.testing.assert_allclose(tf.cast(got, tf.float32).numpy(), want, rtol=0.03, atol=0.03)
