"""Building blocks of the intensity-aware deraining network: the PHP block and contrast-aware pooling.

Xu et al., "Intensity-Aware Single-Image Deraining with Semantic and Color Regularization", IEEE TIP
2021, Section III.B ("PHP block", "Contrast-aware pooling"), Fig. 3, Eq. 2 and Section IV.C ("Network
design study", Table IV). The authors released no code, so the paper is the spec; where
it is silent the choices below are ours (each is marked "ours" in the docstrings):

* :class:`ParallelPyramid` -- one "parallel pyramid" of Fig. 3 (light blue region): k parallel dilated
  3x3 convolutions, top-down aggregation, concatenation, spatial reweighting f * sigmoid(T(f)), and a
  3x3 fusion back to the block width.
* :class:`PHPBlock` -- the Parallel and Hierarchical context Pyramid: several parallel pyramids stacked
  with increasing dilation (Fig. 3, gray region), plus the network-design ablations of Table IV
  (``--php_mode``).
* :class:`ContrastAwarePooling` -- Eq. 2: C_a = sigmoid(f_d1(Y) - f_d2(Y)), Y_c = (1 - C_a) * Y,
  average-pooled (``--contrast_pooling``; Table IV's max-pooling ablation).

All layers are NHWC float32, work on any spatial size, and use 3x3 kernels (the paper: "3x3 kernel size
for all the convolutional operations except for the last convolution layer"), except f_d1 whose 1x1
kernel Eq. 2 fixes.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from keras import layers, ops

from erl_derain.nn.blocks import DilatedConv2D

PHP_MODES = ("php", "standard", "parallel_only", "hierarchical_only", "php_concat")
"""Table IV network ablations, the values of ``--php_mode``: "php" (Ours), "standard" (Standard
Convolution), "parallel_only" (Parallel Only), "hierarchical_only" (Hierarchical Only), "php_concat"
(PHP-concatenation)."""

CONTRAST_POOLING_MODES = ("contrast", "max", "none")
"""Values of ``--contrast_pooling``: "contrast" (Eq. 2, Ours), "max" (Table IV "Contrast-aware pooling ->
Max-pooling"), "none" (Table IV "w/o. Contrast-aware pooling", handled by the network: the layer is left
out). :class:`ContrastAwarePooling` itself accepts only the first two."""


def _conv3x3(filters: int, dilation: int = 1, activation=None, name: str | None = None) -> layers.Conv2D:
    return DilatedConv2D(filters, 3, padding="same", dilation_rate=dilation, activation=activation, name=name)


class ParallelPyramid(layers.Layer):
    """One parallel pyramid of the PHP block (Fig. 3, light blue region).

    * k = ``len(dilations)`` parallel 3x3 convolutions c_i of the same input, dilation ``dilations[i]``,
      ``width`` channels each, ReLU;
    * top-down aggregation (``aggregate``): f_1 = c_1(x), f_i = c_i(x) + f_{i-1} -- the features of the
      smaller receptive fields are added, cumulatively, into each larger one ("we aggregate the deraining
      features to other features of larger receptive fields"); without it f_i = c_i(x) (Table IV
      "PHP-concatenation");
    * concatenation f = [f_1, ..., f_k] (k * width channels);
    * spatial reweighting (``reweight``): f_out = f * sigmoid(T(f)), T = two rounds of (depthwise 3x3
      conv -> SELU), depth multiplier 1, with bias;
    * a 3x3 conv (k * width -> width, ReLU) fuses back to ``width``.

    Ours (the paper is silent): ReLU after each branch (before the aggregation), the depthwise kernel
    size 3x3 and the final 3x3 fusion conv with ReLU.

    ``call(x, return_branches=True)`` also returns the aggregated features [f_1, ..., f_k];
    :meth:`branch_features` and :meth:`reweight_features` expose the two stages separately.
    """

    def __init__(self, width: int, dilations: Sequence[int] = (1, 2, 3, 4), aggregate: bool = True,
                 reweight: bool = True, **kwargs):
        super().__init__(**kwargs)
        if not dilations:
            raise ValueError("ParallelPyramid needs at least one dilation rate.")
        self.width = int(width)
        self.dilations = tuple(int(d) for d in dilations)
        self.aggregate = bool(aggregate)
        self.reweight = bool(reweight)
        self.branches = [_conv3x3(self.width, d, "relu", name=f"branch{i}_d{d}")
                         for i, d in enumerate(self.dilations)]
        if self.reweight:
            self.t_convs = [layers.DepthwiseConv2D(3, padding="same", name=f"t_dwconv{i}") for i in range(2)]
            # T(f)'s SELUs and the sigmoid after them in float32 under a bfloat16 policy: TensorFlow's CPU
            # kernels for both are scalar in bfloat16 (42% of the op time at 512x512, benchmarks/
            # profile_ops.py), vectorised in float32. The depthwise convolutions stay in the policy's
            # dtype (in float32 they took twice as long). A no-op under a float32 policy.
            self.t_acts = [layers.Activation("selu", dtype="float32", name=f"t_selu{i}") for i in range(2)]
        else:
            self.t_convs, self.t_acts = [], []
        self.fuse = _conv3x3(self.width, 1, "relu", name="fuse")

    @property
    def k(self) -> int:
        return len(self.dilations)

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        for conv in self.branches:
            conv.build(input_shape)
        cat_shape = input_shape[:-1] + (self.k * self.width,)
        for conv in self.t_convs:
            conv.build(cat_shape)
        self.fuse.build(cat_shape)

    def branch_features(self, x) -> list:
        """The aggregated branch features [f_1, ..., f_k] (each ``width`` channels)."""
        feats = []
        for conv in self.branches:
            c = conv(x)
            feats.append(c + feats[-1] if (self.aggregate and feats) else c)
        return feats

    def attention_logits(self, f):
        """T(f): two rounds of depthwise 3x3 conv -> SELU on the concatenated features."""
        for conv, act in zip(self.t_convs, self.t_acts):
            f = act(conv(f))
        return f

    def reweight_features(self, f):
        """f_out = f * sigmoid(T(f)) (identity when ``reweight`` is off)."""
        if not self.reweight:
            return f
        return f * ops.cast(ops.sigmoid(self.attention_logits(f)), f.dtype)

    def call(self, x, return_branches: bool = False):
        feats = self.branch_features(x)
        f = feats[0] if len(feats) == 1 else ops.concatenate(feats, axis=-1)
        out = self.fuse(self.reweight_features(f))
        return (out, feats) if return_branches else out

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.width,)

    def get_config(self):
        return {**super().get_config(), "width": self.width, "dilations": list(self.dilations),
                "aggregate": self.aggregate, "reweight": self.reweight}


class PHPBlock(layers.Layer):
    """The Parallel and Hierarchical context Pyramid block (Fig. 3) and its Table IV ablations.

    Input and output have ``width`` channels; every mode ends the same way (ours): the outputs of its
    stages are concatenated, fused by a linear 3x3 conv to ``width`` and added to the block input
    (identity residual).

    ``mode`` (``--php_mode``; the paper's words are from Section IV.C, "Network design study"):

    * "php" (Ours): ``groups`` :class:`ParallelPyramid` s stacked in sequence with increasing dilation,
      group g (0-based) using dilations (g+1) * (1, ..., k) -- with k = 4, groups 3: (1,2,3,4),
      (2,4,6,8), (3,6,9,12) -- top-down aggregation and spatial reweighting on. (The paper gives k = 4
      but neither the number of groups nor their dilation rates: those are ours.)
    * "standard" (Standard Convolution, "a normal densely-connected network without considering both
      spatial and hierarchical information aggregation"): groups * k 3x3 convs (dilation 1, ReLU,
      ``width`` channels each; as many convs as the PHP block has dilated branches), densely connected
      as in DenseNet: conv i (1-based) sees the concatenation [x, h_1, ..., h_{i-1}] of the block input
      and every earlier conv's output (i * ``width`` channels); the outputs h_1..h_n are concatenated
      before the fuse. No dilation, no parallel branches, no aggregation, no reweighting.
    * "parallel_only" (Parallel Only, "only considers spatial-varying contextual information",
      the parallel dilated convolutions of earlier works): one :class:`ParallelPyramid` with
      dilations (1, ..., k) whose branches are only concatenated: no top-down aggregation, no spatial
      reweighting, no hierarchy.
    * "hierarchical_only" (Hierarchical Only, "only uses hierarchical dilation convolutions"):
      ``groups`` single 3x3 convs (ReLU) stacked with increasing dilation 1, 2, 4, ..., 2**(groups-1)
      (ours: the rates); no parallel branches.
    * "php_concat" (PHP-concatenation, "combines both spatial and hierarchical context aggregations,
      by simply concatenating features"): as "php" but the branches are only concatenated
      (aggregate=False, reweight=False): the Parallel Only pyramids stacked as the hierarchy.
    """

    def __init__(self, width: int, groups: int = 3, k: int = 4, mode: str = "php", **kwargs):
        super().__init__(**kwargs)
        if mode not in PHP_MODES:
            raise ValueError(f"--php_mode must be one of {'|'.join(PHP_MODES)}, got {mode!r}.")
        if groups < 1 or k < 1:
            raise ValueError(f"PHPBlock needs groups >= 1 and k >= 1, got groups={groups}, k={k}.")
        self.width = int(width)
        self.groups = int(groups)
        self.k = int(k)
        self.mode = mode
        base = tuple(range(1, self.k + 1))
        self.stages: list = []
        if mode in ("php", "php_concat"):
            on = mode == "php"
            self.group_dilations = [tuple((g + 1) * d for d in base) for g in range(self.groups)]
            self.stages = [ParallelPyramid(self.width, dil, aggregate=on, reweight=on, name=f"pyramid{g}")
                           for g, dil in enumerate(self.group_dilations)]
        elif mode == "parallel_only":
            self.group_dilations = [base]
            self.stages = [ParallelPyramid(self.width, base, aggregate=False, reweight=False, name="pyramid0")]
        elif mode == "hierarchical_only":
            self.group_dilations = [(2 ** g,) for g in range(self.groups)]
            self.stages = [_conv3x3(self.width, 2 ** g, "relu", name=f"conv{g}_d{2 ** g}")
                           for g in range(self.groups)]
        else:  # standard
            self.group_dilations = [(1,)] * (self.groups * self.k)
            self.stages = [_conv3x3(self.width, 1, "relu", name=f"conv{i}") for i in range(self.groups * self.k)]
        self.fuse = _conv3x3(self.width, 1, None, name="fuse")

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if input_shape[-1] is not None and int(input_shape[-1]) != self.width:
            raise ValueError(f"PHPBlock(width={self.width}) needs {self.width} input channels for its identity "
                             f"residual, got {input_shape[-1]}.")
        for i, stage in enumerate(self.stages):  # "standard": conv i sees the input and i earlier outputs
            stage.build(input_shape[:-1] + (self.width * (i + 1 if self.mode == "standard" else 1),))
        self.fuse.build(input_shape[:-1] + (len(self.stages) * self.width,))

    def call(self, x):
        h, outs = x, []
        for stage in self.stages:
            if self.mode == "standard":  # dense connectivity: [x, h_1, ..., h_{i-1}]
                h = stage(ops.concatenate([x] + outs, axis=-1) if outs else x)
            else:
                h = stage(h)
            outs.append(h)
        cat = outs[0] if len(outs) == 1 else ops.concatenate(outs, axis=-1)
        return x + self.fuse(cat)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "width": self.width, "groups": self.groups, "k": self.k,
                "mode": self.mode}


def _replicate_pad(x, pad: int):
    """Edge-replicate ``pad`` pixels on each side of H and W (works for any size >= 1, dynamic shapes)."""
    top, bottom = x[:, :1], x[:, -1:]
    x = ops.concatenate([top] * pad + [x] + [bottom] * pad, axis=1)
    left, right = x[:, :, :1], x[:, :, -1:]
    return ops.concatenate([left] * pad + [x] + [right] * pad, axis=2)


class ContrastAwarePooling(layers.Layer):
    """Contrast-aware pooling (Sec. III.B, Eq. 2) on the input image Y; ``mode`` is ``--contrast_pooling``.

    "contrast": f_d1 = conv kernel 1 dilation 1, f_d2 = conv kernel 3 dilation 2 (C -> C channels, C the
    image channels, with bias); C_a = sigmoid(f_d1(Y) - f_d2(Y)); Y_c = (1 - C_a) * Y; returns Y_c
    average-pooled ``pool_size`` x ``pool_size``, stride 1, 'same' (the network concatenates it with its
    first conv's features). "max" (Table IV "Contrast-aware pooling -> Max-pooling"): max pooling of Y,
    ``pool_size``, stride 1, 'same'. ("none" -- Table IV "w/o. Contrast-aware pooling" -- is the
    network's business: it leaves the layer out.)

    Ours (the paper is silent):

    * initialisation: f_d1 kernel = 10 * identity, bias -4; f_d2 kernel = 10/9 on each of its 3x3 taps
      from the same channel, 0 across channels, bias 0. At initialisation f_d1(Y) - f_d2(Y) =
      10 * (Y - local mean of Y at dilation 2) - 4, so a pixel brighter than its surroundings (a streak)
      gets C_a near 1 and flat background C_a = sigmoid(-4) ~ 0.018 (kept in Y_c). Both convs train.
    * f_d2 pads by edge replication (then a 'valid' conv; output size unchanged), so that image borders
      are not mistaken for bright contrast against zero padding.
    * the pool size (3).

    :meth:`attention` returns C_a and :meth:`select_background` returns Y_c (before pooling).
    """

    LAYER_MODES = ("contrast", "max")

    def __init__(self, mode: str = "contrast", pool_size: int = 3, **kwargs):
        super().__init__(**kwargs)
        if mode not in self.LAYER_MODES:
            raise ValueError(f"--contrast_pooling must be one of {'|'.join(self.LAYER_MODES)} for "
                             f"ContrastAwarePooling ('none' leaves the layer out), got {mode!r}.")
        self.mode = mode
        self.pool_size = int(pool_size)
        if mode == "contrast":
            self.f_d1 = self.f_d2 = None  # created in build: their width is the image's channel count
            self.pool = layers.AveragePooling2D(self.pool_size, strides=1, padding="same", name="avg_pool")
        else:
            self.pool = layers.MaxPooling2D(self.pool_size, strides=1, padding="same", name="max_pool")

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if self.mode == "contrast":
            c = int(input_shape[-1])
            self.f_d1 = layers.Conv2D(c, 1, name="f_d1")
            self.f_d2 = DilatedConv2D(c, 3, dilation_rate=2, padding="valid", name="f_d2")
            self.f_d1.build(input_shape)
            self.f_d2.build(input_shape)
            eye = np.eye(c, dtype="float32")
            self.f_d1.kernel.assign(10.0 * eye[None, None])
            self.f_d1.bias.assign(np.full((c,), -4.0, "float32"))
            self.f_d2.kernel.assign(np.broadcast_to(10.0 / 9.0 * eye, (3, 3, c, c)).astype("float32"))
            self.f_d2.bias.assign(np.zeros((c,), "float32"))
        self.pool.build(input_shape)

    def attention(self, y):
        """C_a = sigmoid(f_d1(Y) - f_d2(Y)) (Eq. 2), same shape as Y."""
        if self.mode != "contrast":
            raise ValueError("ContrastAwarePooling.attention needs mode='contrast'.")
        if not self.built:
            self.build(tuple(y.shape))
            self.built = True
        return ops.sigmoid(self.f_d1(y) - self.f_d2(_replicate_pad(y, 2)))

    def select_background(self, y):
        """Y_c = (1 - C_a) * Y, before pooling."""
        return (1.0 - self.attention(y)) * y

    def call(self, y):
        if self.mode == "max":
            return self.pool(y)
        return self.pool(self.select_background(y))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "pool_size": self.pool_size}
