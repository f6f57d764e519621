"""MENET: Fan, Chen & Li, "Multi-Task Learning Enhanced Single Image De-Raining".

The de-raining network (Section III.C, details from the authors' TF1 code, SumiHui/MENET
``heavy/template/menet_shallow_new_ca.py`` and ``net_base.py``):

* encoder: desubpixel (space_to_depth 2) -> conv3x3 16 -> BN (= skip 1) -> ReLU; desubpixel ->
  conv3x3 64 -> BN (= skip 2) -> ReLU;
* optional channel attention (CA): s2d(2) -> 1x1 conv -> BN -> ReLU -> 3x3 conv -> BN -> ReLU, twice,
  then 3x3 conv -> BN -> global average pool -> sigmoid = w; out = x + x * w;
* 8 residual blocks (16 for "deep") of conv3-BN-ReLU-conv3-BN + identity, ReLU after the add except
  in the last block;
* decoder: conv3x3 64 on (skip 2 + trunk) -> BN -> subpixel (depth_to_space 2); conv3x3 16 on
  (skip 1 + that) -> BN; conv3x3 12 -> subpixel = the residual; output = clip(input + residual, 0, V);
* every convolution is bias-free with LeCun-normal (variance scaling, fan-in, truncated normal)
  initialisation; BN is TF1's ``tf.layers.batch_normalization`` (momentum 0.99, epsilon 1e-3), batch
  statistics in training and its moving averages at test time. Sides must be multiples of 16 (two
  desubpixels in the trunk and two more inside CA), so inference pads and crops back.

Value range (``MENETConfig.value_range``, ``--menet_value_range``): the authors feed images in
[0, 255] (their h5 files hold uint8 pixel values) and clip the output to [0, 255]. Nothing in the
network is scale-free: the residual head adds a BN-normalised feature map to the input, BN's epsilon
is compared with the activations' variance (and so the channel attention's sigmoid sees other
values), and every task loss grows with a power of the scale. ``value_range=V`` runs the network and
the task losses on images scaled to [0, V]; the library's inputs and outputs stay in [0, 1] (``call``
multiplies by V and divides the clipped output back). V = 255 is the authors' arithmetic (the
flagfiles that reproduce Tables I-II use it); V = 1 (the default) keeps the runs trained before the
option existed.

Mixed precision: the last convolution (``layer5``) and the residual head compute in float32, so GB's
gradients with respect to its kernel never pass through float16 (whose range a [0, 255] texture
gradient, about 4e9, overflows), and the output keeps float32 resolution; the network does not
auto-cast its input either, so ``x * V`` is exact.

Training (Section III.B, IV.B): tasks L_p (MSE), L_e (edge-aware, Sobel) and L_t (patch-Gram texture)
from :mod:`erl_derain.losses`, combined by :mod:`erl_derain.weighting` (fixed, GB: gradient norms at the
last convolution's kernel -- the layer every task shares last, as the authors' ``derain/layer5`` --
or LB), Adam 1e-3 (TF1's ``AdamOptimizer``: epsilon 1e-8) divided by 10 at epochs 40 and 80 (their
staircase decay every 40 epochs), 100 epochs, batch 20 of 224x224 crops (the four corners and the
centre of each image and of its mirror).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import keras
import tensorflow as tf
from keras import layers

from erl_derain import losses as losses_lib
from erl_derain import weighting
from erl_derain.distribute import as_float32, for_gradients, optimizer

TASKS = ("p", "e", "t")

# TF1 tf.train.AdamOptimizer's epsilon, which the authors' code uses (Keras' default is 1e-7). Both
# add it to sqrt(v) (not to the bias-corrected sqrt(v_hat)), so the steps agree.
ADAM_EPSILON = 1e-8

VALUE_RANGE_FLAG = "--menet_value_range"


@dataclass(frozen=True)
class MENETConfig:
    blocks: int = 8            # residual blocks: 8 (MENET), 16 (MENET-deep)
    channel_attention: bool = True
    width: int = 64            # trunk width (the paper: 64)
    skip_width: int = 16       # first level width (the paper: 16)
    value_range: float = 1.0   # the network and the task losses see images in [0, value_range] (authors: 255)

    def __post_init__(self):
        v = self.value_range
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
            raise ValueError(f"{VALUE_RANGE_FLAG} must be a positive number (255: the authors' [0, 255] images; "
                             f"1: images in [0, 1]), got {v!r}")
        if self.width != 4 * self.skip_width:  # the sub-pixel step from the trunk lands on the first level
            raise ValueError(f"--menet_width ({self.width}) must be 4 x --menet_skip_width ({self.skip_width}): "
                             "the decoder's depth_to_space(2) turns the trunk's width into the first level's")
        if self.blocks < 1:
            raise ValueError(f"--menet_blocks must be >= 1, got {self.blocks}")

    @property
    def pad_multiple(self) -> int:
        return 16 if self.channel_attention else 4


def _conv(filters: int, kernel: int, name: str, dtype=None) -> layers.Conv2D:
    return layers.Conv2D(filters, kernel, padding="same", use_bias=False, name=name, dtype=dtype,
                         kernel_initializer=keras.initializers.VarianceScaling(1.0, "fan_in", "truncated_normal"))


def _bn(name: str) -> layers.BatchNormalization:
    # TF1 tf.layers.batch_normalization defaults, as the authors' code: momentum 0.99, epsilon 1e-3.
    return layers.BatchNormalization(momentum=0.99, epsilon=1e-3, name=name)


class ChannelAttention(layers.Layer):
    """MENET's CA block: a two-level desubpixel pyramid squeezed to per-channel weights w in (0, 1);
    returns x + x * w."""

    def __init__(self, width: int, **kwargs):
        super().__init__(**kwargs)
        self.squeeze_1, self.bn_s1 = _conv(width, 1, "squeeze_1"), _bn("bn_squeeze_1")
        self.layer_1, self.bn_1 = _conv(width, 3, "layer_1"), _bn("bn_layer_1")
        self.squeeze_2, self.bn_s2 = _conv(width, 1, "squeeze_2"), _bn("bn_squeeze_2")
        self.layer_2, self.bn_2 = _conv(width, 3, "layer_2"), _bn("bn_layer_2")
        self.excitation, self.bn_e = _conv(width, 3, "excitation"), _bn("bn_excitation")

    def call(self, x, training=False):
        y = tf.nn.relu(self.bn_s1(self.squeeze_1(tf.nn.space_to_depth(x, 2)), training=training))
        y = tf.nn.relu(self.bn_1(self.layer_1(y), training=training))
        y = tf.nn.relu(self.bn_s2(self.squeeze_2(tf.nn.space_to_depth(y, 2)), training=training))
        y = tf.nn.relu(self.bn_2(self.layer_2(y), training=training))
        y = self.bn_e(self.excitation(y), training=training)
        w = tf.sigmoid(tf.reduce_mean(y, axis=[1, 2], keepdims=True))
        return x + x * w


class ResidualBlock(layers.Layer):
    def __init__(self, width: int, last: bool, **kwargs):
        super().__init__(**kwargs)
        self.last = last
        self.conv_a, self.bn_a = _conv(width, 3, "conv_a"), _bn("bn_a")
        self.conv_b, self.bn_b = _conv(width, 3, "conv_b"), _bn("bn_b")

    def call(self, x, training=False):
        y = tf.nn.relu(self.bn_a(self.conv_a(x), training=training))
        y = self.bn_b(self.conv_b(y), training=training) + x
        return y if self.last else tf.nn.relu(y)


class MENET(keras.Model):
    """The de-raining network f_w: rainy NHWC in [0, 1] (sides multiples of ``pad_multiple``) ->
    de-rained image in [0, 1]. Inside, images are scaled to [0, ``cfg.value_range``]
    (:meth:`derain_scaled` is the network on that scale)."""

    def __init__(self, cfg: MENETConfig = MENETConfig(), **kwargs):
        kwargs.setdefault("autocast", False)  # x * value_range in float32; each layer casts for itself
        super().__init__(**kwargs)
        self.cfg = cfg
        self.layer1, self.bn1 = _conv(cfg.skip_width, 3, "layer1"), _bn("bn_layer1")
        self.layer2, self.bn2 = _conv(cfg.width, 3, "layer2"), _bn("bn_layer2")
        self.ca = ChannelAttention(cfg.width, name="ca") if cfg.channel_attention else None
        self.res_blocks = [ResidualBlock(cfg.width, last=i == cfg.blocks - 1, name=f"res_{i}")
                           for i in range(cfg.blocks)]
        self.layer3, self.bn3 = _conv(cfg.width, 3, "layer3"), _bn("bn_layer3")
        self.layer4, self.bn4 = _conv(cfg.skip_width, 3, "layer4"), _bn("bn_layer4")
        # The last convolution: the layer every task shares last (GB's gradient norms are taken at its
        # kernel). float32 under mixed precision, with the residual head after it (see the module doc).
        self.layer5 = _conv(12, 3, "layer5", dtype="float32")

    @property
    def shared_kernel(self):
        return self.layer5.kernel

    def derain_scaled(self, x, training=False):
        """The authors' graph on images in [0, V] (V = ``cfg.value_range``): rainy [B, H, W, 3] in
        [0, V] -> float32 ``clip(x + residual, 0, V)``."""
        x = tf.cast(x, tf.float32)
        skip1 = self.bn1(self.layer1(tf.nn.space_to_depth(x, 2)), training=training)
        skip2 = self.bn2(self.layer2(tf.nn.space_to_depth(tf.nn.relu(skip1), 2)), training=training)
        net = tf.nn.relu(skip2)
        if self.ca is not None:
            net = self.ca(net, training=training)
        for block in self.res_blocks:
            net = block(net, training=training)
        net = tf.nn.depth_to_space(self.bn3(self.layer3(skip2 + net), training=training), 2)
        net = self.bn4(self.layer4(skip1 + net), training=training)
        residual = as_float32(tf.nn.depth_to_space(self.layer5(net), 2))
        return tf.clip_by_value(x + residual, 0.0, float(self.cfg.value_range))

    def call(self, x, training=False):
        v = float(self.cfg.value_range)
        x = tf.cast(x, tf.float32)
        if v == 1.0:
            return self.derain_scaled(x, training=training)
        return self.derain_scaled(x * v, training=training) / v


@dataclass(frozen=True)
class Stage:
    name: str
    train: tuple


class MENETTrainer(keras.Model):
    """One stage: the network trained on the weighted sum of its task losses (custom ``train_step``
    with ``tf.GradientTape``; GB takes the per-task gradient norms at the last convolution's kernel).
    The task losses are computed on images in [0, ``cfg.value_range``], as the network sees them."""

    def __init__(self, cfg: MENETConfig, *, tasks=TASKS, task_weighting: str = "gb", task_weights=None,
                 texture_reduction: str = "frobenius", learning_rate: float = 1e-3,
                 gb_arithmetic: str = "authors", **kwargs):
        super().__init__(**kwargs)
        tasks = losses_lib.parse_tasks(",".join(tasks))
        self.cfg = cfg
        self.tasks = tasks
        if texture_reduction not in losses_lib.TEXTURE_REDUCTIONS:
            raise ValueError(f"--texture_reduction must be one of {'|'.join(losses_lib.TEXTURE_REDUCTIONS)}, "
                             f"got {texture_reduction!r}")
        self.texture_reduction = texture_reduction
        fixed = None
        if task_weights:
            if len(task_weights) != len(tasks):
                raise ValueError(f"--task_weights has {len(task_weights)} value(s) for {len(tasks)} task(s) "
                                 f"--tasks={','.join(tasks)}")
            fixed = {t: float(w) for t, w in zip(tasks, task_weights)}
        self.weighting = weighting.TaskWeighting(task_weighting, fixed, tasks=tasks, arithmetic=gb_arithmetic)
        self.net = MENET(cfg, name="menet")
        self.stages = (Stage("train", ("menet",)),)
        self.optimizer_ = optimizer(keras.optimizers.Adam, learning_rate, epsilon=ADAM_EPSILON, name="adam")

    # -- the generic trainer interface used by erl_derain.training -------------------------------
    @property
    def pad_multiple(self) -> int:
        return self.cfg.pad_multiple

    def build_networks(self, image_shape=(1, 32, 32, 3)):
        self.net(tf.zeros(image_shape))
        self.optimizer_.build(self.net.trainable_variables)

    def stage_variables(self, index=None) -> list:
        return list(self.net.trainable_variables)

    def set_stage(self, index: int):
        if int(index) != 0:
            raise ValueError(f"MENET has one stage, got stage {index}")

    @property
    def current_optimizer(self):
        return self.optimizer_

    def checkpoint_items(self) -> dict:
        return {"net": self.net, "optimizer_0": self.optimizer_}

    def inference_model(self) -> keras.Model:
        return self.net  # Keras calls it with training=False: BN uses its moving averages

    # -- losses and the step -----------------------------------------------------------------------
    def scale(self, images):
        """[0, 1] images -> the network's scale [0, ``cfg.value_range``] (float32)."""
        images = tf.cast(images, tf.float32)
        v = float(self.cfg.value_range)
        return images if v == 1.0 else images * v

    def task_losses(self, clean, output) -> dict:
        """The task losses of ``output`` against ``clean``, both on the network's scale [0, V]."""
        return losses_lib.task_losses(self.tasks, clean, output, texture_reduction=self.texture_reduction)

    def forward(self, data, training=True):
        """(task losses, output on [0, V]) of a batch ``{"rainy", "clean"}`` in [0, 1]."""
        output = self.net.derain_scaled(self.scale(data["rainy"]), training=training)
        return self.task_losses(self.scale(data["clean"]), output), output

    def train_step(self, data):
        variables = self.stage_variables()
        with tf.GradientTape(persistent=self.weighting.needs_persistent_tape) as tape:
            task_losses, _ = self.forward(data, training=True)
        w = self.weighting.weights(task_losses, tape=tape, shared=self.net.shared_kernel)
        # w is the same on every replica (averaged); the seeds carry the replica and loss scaling.
        seeds = {t: for_gradients(v, self.optimizer_) for t, v in w.items()}
        grads = weighting.apply_weighted_gradients(tape, task_losses, seeds, variables)
        del tape
        self.optimizer_.apply(grads, variables)
        logs = {"loss": weighting.weighted_total(task_losses, w)}
        logs.update({f"l_{t}": v for t, v in task_losses.items()})
        if len(self.tasks) > 1:
            logs.update({f"w_{t}": v for t, v in w.items()})
        return logs

    def call(self, x, training=False):
        return self.net(x, training=training)


def config_from_dict(d: dict) -> MENETConfig:
    # A run saved before --menet_value_range existed trained on [0, 1] images.
    value_range = d.get("menet_value_range")
    return MENETConfig(blocks=int(d.get("menet_blocks", 8)), channel_attention=bool(d.get("menet_ca", True)),
                       width=int(d.get("menet_width", 64)), skip_width=int(d.get("menet_skip_width", 16)),
                       value_range=1.0 if value_range is None else float(value_range))


def trainer_from_config(config: dict) -> MENETTrainer:
    weights = config.get("task_weights")
    return MENETTrainer(config_from_dict(config), tasks=tuple(config.get("tasks") or TASKS),
                        task_weighting=config.get("task_weighting", "gb"),
                        task_weights=[float(w) for w in weights] if weights else None,
                        texture_reduction=config.get("texture_reduction", "frobenius"),
                        learning_rate=float(config.get("lr", 1e-3)),
                        gb_arithmetic=config.get("gb_arithmetic") or "authors")
