"""Table IV of the intensity-aware paper (Xu et al., "Intensity-Aware Single-Image Deraining with
Semantic and Color Regularization", IEEE TIP 2021, Section IV.C "Network design study"): each
network ablation has the structure the paper's words give it. References are written here from the
paper's description: parameter counts worked out by hand, outputs recomputed with plain
``tf.nn.conv2d`` from the layers' weights, and the checkpoint names of the default network."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from erl_derain.methods import iadn
from erl_derain.nn.php import PHPBlock

TINY = iadn.IADNConfig(width=8, blocks=1, refine_blocks=1, groups=2, num_classes=5)


def _conv(x, layer, dilation: int = 1):
    """A 'same' 3x3 (or 1x1) convolution with ``layer``'s kernel and bias, computed independently."""
    return tf.nn.conv2d(x, layer.kernel, strides=1, padding="SAME", dilations=dilation) + layer.bias


def _randomise_biases(layer, seed=0):
    rng = np.random.default_rng(seed)
    for w in layer.weights:
        if w.path.endswith("bias"):
            w.assign(rng.normal(0.0, 0.1, tuple(w.shape)).astype("float32"))


def _x(shape=(1, 11, 9, 4), seed=1):
    return tf.constant(np.random.default_rng(seed).normal(0.0, 1.0, shape).astype("float32"))


def _conv_params(k, c_in, c_out):
    return k * k * c_in * c_out + c_out


# ----------------------------------------------------------------------------- Parallel Only

def test_parallel_only_is_plain_parallel_dilated_convolutions():
    """"Parallel Only": "only considers spatial-varying contextual information", the parallel dilated
    convolutions of [25], [26]: k parallel dilated 3x3 convs whose outputs are only concatenated (no
    top-down aggregation, no reweighting T, no hierarchy), fused, added to the input."""
    w, k = 4, 4
    block = PHPBlock(w, groups=3, k=k, mode="parallel_only")
    block.build((None, None, None, w))
    # by hand: k branches 3x3 w->w, pyramid fuse 3x3 k*w->w, block fuse 3x3 w->w; no depthwise T.
    assert block.count_params() == k * _conv_params(3, w, w) + _conv_params(3, k * w, w) + _conv_params(3, w, w) \
        == 1320
    _randomise_biases(block)
    x = _x()
    (pyramid,) = block.stages
    assert [tuple(b.dilation_rate) for b in pyramid.branches] == [(d, d) for d in range(1, k + 1)]
    branches = [tf.nn.relu(_conv(x, b, d)) for b, d in zip(pyramid.branches, range(1, k + 1))]
    expected = x + _conv(tf.nn.relu(_conv(tf.concat(branches, -1), pyramid.fuse)), block.fuse)
    np.testing.assert_allclose(block(x).numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)


def test_parallel_only_branches_do_not_feed_each_other():
    """Without top-down aggregation, zeroing the smallest-dilation branch changes only that branch's
    share of the output: the output moves by exactly what the fuse makes of the removed features."""
    w = 4
    block = PHPBlock(w, groups=3, k=4, mode="parallel_only")
    x = _x(seed=2)
    _randomise_biases(block, seed=3)
    before = block(x).numpy()
    (pyramid,) = block.stages
    c1 = tf.nn.relu(_conv(x, pyramid.branches[0], 1))
    others = [tf.nn.relu(_conv(x, b, d)) for b, d in zip(pyramid.branches[1:], (2, 3, 4))]
    pyramid.branches[0].kernel.assign(tf.zeros_like(pyramid.branches[0].kernel))
    pyramid.branches[0].bias.assign(tf.zeros_like(pyramid.branches[0].bias))
    after = block(x).numpy()
    fuse_in = tf.concat([tf.zeros_like(c1)] + others, -1)
    np.testing.assert_allclose(after, (x + _conv(tf.nn.relu(_conv(fuse_in, pyramid.fuse)), block.fuse)).numpy(),
                               rtol=1e-4, atol=1e-4)
    assert np.abs(after - before).max() > 1e-3  # the branch mattered


# ----------------------------------------------------------------------------- Standard Convolution

def test_standard_convolution_is_densely_connected():
    """"Standard Convolution": "a normal densely-connected network": conv i (1-based) sees the
    concatenation of the block input and the i-1 earlier outputs, i * width channels (DenseNet)."""
    w, groups, k = 4, 3, 4
    n = groups * k
    block = PHPBlock(w, groups=groups, k=k, mode="standard")
    block.build((None, None, None, w))
    assert len(block.stages) == n
    for i, conv in enumerate(block.stages, start=1):
        assert tuple(conv.kernel.shape) == (3, 3, w * i, w), i
        assert tuple(conv.dilation_rate) == (1, 1)
    # by hand: sum_i (9 * (i*w) * w + w) + fuse 9 * (n*w) * w + w = 144 * 78 + 48 + 1732
    assert block.count_params() == sum(_conv_params(3, i * w, w) for i in range(1, n + 1)) \
        + _conv_params(3, n * w, w) == 13012
    _randomise_biases(block, seed=4)
    x = _x(seed=5)
    hs = []
    for conv in block.stages:
        hs.append(tf.nn.relu(_conv(tf.concat([x] + hs, -1), conv)))
    expected = x + _conv(tf.concat(hs, -1), block.fuse)
    np.testing.assert_allclose(block(x).numpy(), expected.numpy(), rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------- the other rows (unchanged)

def test_hierarchical_only_and_php_concatenation_counts_by_hand():
    """"Hierarchical Only": single convs stacked with increasing dilation; "PHP-concatenation": the
    PHP stack with its branches only concatenated (no aggregation, no T)."""
    w, groups, k = 4, 3, 4
    hier = PHPBlock(w, groups=groups, k=k, mode="hierarchical_only")
    hier.build((None, None, None, w))
    assert [tuple(c.dilation_rate) for c in hier.stages] == [(1, 1), (2, 2), (4, 4)]
    assert hier.count_params() == groups * _conv_params(3, w, w) + _conv_params(3, groups * w, w) == 880
    concat = PHPBlock(w, groups=groups, k=k, mode="php_concat")
    concat.build((None, None, None, w))
    pyramid = k * _conv_params(3, w, w) + _conv_params(3, k * w, w)
    assert concat.count_params() == groups * pyramid + _conv_params(3, groups * w, w) == 3952
    php = PHPBlock(w, groups=groups, k=k, mode="php")
    php.build((None, None, None, w))
    t = 2 * (9 * k * w + k * w)  # two depthwise 3x3 convs with bias on the k*w concatenation
    assert php.count_params() == groups * (pyramid + t) + _conv_params(3, groups * w, w)


@pytest.mark.parametrize("pooling, extra_in, pool_params", [
    ("contrast", 3, (1 * 1 * 3 * 3 + 3) + (3 * 3 * 3 * 3 + 3)),  # f_d1 1x1, f_d2 3x3 (Eq. 2)
    ("max", 3, 0),      # "Contrast-aware pooling -> Max-pooling": max-pooled Y, nothing to learn
    ("none", 0, 0),     # "w/o. Contrast-aware pooling": only the first conv's features
], ids=["contrast", "max", "none"])
def test_contrast_pooling_rows_by_hand(pooling, extra_in, pool_params):
    w = TINY.width
    cfg = dataclasses.replace(TINY, contrast_pooling=pooling)
    sub = iadn.SubNetwork(cfg, 1, contrast_pooling=pooling, name="sub")
    sub(tf.zeros((1, 8, 8, 3)))
    block = PHPBlock(w, groups=cfg.groups, k=cfg.k)
    block.build((None, None, None, w))
    expected = (_conv_params(3, 3, w) + pool_params + _conv_params(3, w + extra_in, w) + block.count_params()
                + _conv_params(1, w, 3))
    assert sub.count_params() == expected
    assert tuple(sub.fuse.kernel.shape) == (3, 3, w + extra_in, w)


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    clean = rng.uniform(0.1, 0.9, (1, 16, 16, 3)).astype(np.float32)
    rainy = np.clip(clean + 0.5 * (rng.random((1, 16, 1, 1)) > 0.8), 0, 1).astype(np.float32)
    return {"rainy": tf.constant(rainy), "clean": tf.constant(clean)}


def _charbonnier(a, b, eps=1e-3):
    return float(np.mean(np.sqrt((np.asarray(a) - np.asarray(b)) ** 2 + eps ** 2)))


def _cosine_loss(target, output):
    t, o = np.asarray(target), np.asarray(output)
    return float(1.0 - np.mean(np.sum(t * o, -1) / (np.linalg.norm(t, axis=-1) * np.linalg.norm(o, axis=-1))))


def test_unfiltered_gt_supervises_x_c_with_the_clean_image():
    """"X_f^gt -> X^gt": the first sub-network's accuracy term uses the original clean image."""
    t = iadn.IADNTrainer(TINY, filtered_gt=False)
    t.build_networks((1, 16, 16, 3))
    b = _batch(1)
    x_c, x = t.net(b["rainy"])
    logs = t.compute_losses(b["rainy"], b["clean"])
    assert float(logs["l_acc_c"]) == pytest.approx(_charbonnier(b["clean"], x_c), rel=1e-5)
    assert float(logs["l_acc"]) == pytest.approx(_charbonnier(b["clean"], x), rel=1e-5)


def test_without_refinement_x_c_is_the_output():
    """"w/o. X": no second sub-network; X^c is the output, Eq. 5 loses its lambda_2 term."""
    cfg = dataclasses.replace(TINY, refinement=False)
    t = iadn.IADNTrainer(cfg)
    t.build_networks((1, 16, 16, 3))
    full = iadn.IADN(TINY)
    full(tf.zeros((1, 8, 8, 3)))
    assert t.net.count_params() == full.sub1.count_params()
    b = _batch(2)
    x_c, x = t.net(b["rainy"])
    np.testing.assert_array_equal(x_c.numpy(), x.numpy())
    np.testing.assert_allclose(t.inference_model()(b["rainy"]).numpy(), np.clip(x_c.numpy(), 0, 1))
    logs = t.compute_losses(b["rainy"], b["clean"])
    assert set(logs) == {"loss", "l_acc_c", "l_col"}
    assert float(logs["loss"]) == pytest.approx(float(logs["l_acc_c"]) + 0.1 * _cosine_loss(b["clean"], x_c),
                                                rel=1e-5)


# ----------------------------------------------------------------------------- checkpoint compatibility

def _expected_paths(prefix: str, groups: int, k: int, pooling: bool, blocks: int) -> set[str]:
    """The variable paths of a sub-network as named since the first release (the default "php" mode)."""
    names = ["first"] + (["contrast_pooling/f_d1", "contrast_pooling/f_d2"] if pooling else []) + ["fuse"]
    for b in range(blocks):
        for g in range(groups):
            names += [f"php_{b}/pyramid{g}/branch{i}_d{(g + 1) * (i + 1)}" for i in range(k)]
            names += [f"php_{b}/pyramid{g}/t_dwconv{j}" for j in range(2)] + [f"php_{b}/pyramid{g}/fuse"]
        names.append(f"php_{b}/fuse")
    names.append("last")
    return {f"{prefix}/{n}/{v}" for n in names for v in ("kernel", "bias")}


def test_default_network_keeps_its_checkpoint_names():
    net = iadn.IADN(TINY, name="iadn")
    net(tf.zeros((1, 8, 8, 3)))
    expected = (_expected_paths("iadn/sub1", TINY.groups, TINY.k, True, TINY.blocks)
                | _expected_paths("iadn/sub2", TINY.groups, TINY.k, False, TINY.refine_blocks))
    assert {v.path for v in net.weights} == expected
