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

import dataclasses
import math
from dataclasses import dataclass

import keras
import tensorflow as tf
from keras import layers

from erl_derain import losses as losses_lib
from erl_derain import weighting
from erl_derain.config import option
from erl_derain.distribute import as_float32, for_gradients, optimizer
from erl_derain.methods import MethodSpec, register
from erl_derain.methods import base as method_base

TASKS = ("p", "e", "t")

# TF1 tf.train.AdamOptimizer's epsilon, which the authors' code uses (Keras' default is 1e-7). Both
# add it to sqrt(v) (not to the bias-corrected sqrt(v_hat)), so the steps agree.
ADAM_EPSILON = 1e-8

VALUE_RANGE_FLAG = "--menet_value_range"


PREFIX = "menet_"


@dataclass(frozen=True)
class MENETConfig:
    """MENET's settings (flags ``--menet_<field>``; the old names are accepted)."""
    blocks: int = option(8, "Residual blocks: 8 (MENET), 16 (MENET-deep).")
    channel_attention: bool = option(True, "The channel-attention (CA) block.", flag="menet_ca")
    width: int = option(64, "Trunk width (the paper: 64); 4 x --menet_skip_width.")
    skip_width: int = option(16, "First level width (the paper: 16).")
    value_range: float = option(1.0, "The network and its task losses see images scaled to [0, this] (255: the "
                                "authors' code, whose tables the flags/menet files reproduce; 1: [0, 1]); inputs and "
                                "outputs of the library stay in [0, 1].")
    tasks: tuple[str, ...] = option(TASKS, "Tasks: p = MSE (L_p), e = edge-aware Sobel (L_e), t = texture (L_t).",
                                    aliases=("tasks",))
    task_weighting: str = option("gb", "Task weighting: fixed (--menet_task_weights), GB (gradient balance, "
                                 "Algorithm 1) or LB (loss balance, Algorithm 2).", choices=weighting.MODES,
                                 aliases=("task_weighting",))
    task_weights: tuple[float, ...] | None = option(None, "Fixed weights, one per --menet_tasks entry (default 1 "
                                                    "each; the paper's L_p + L_e fixed: 1,0.01).",
                                                    aliases=("task_weights",))
    texture_reduction: str = option("frobenius", "L_t: the paper's squared Frobenius norm of the Gram difference "
                                    "(Eq. 7) or the authors' code's squared difference of the Gram means (mean: what "
                                    "produced Tables I-II).", choices=losses_lib.TEXTURE_REDUCTIONS,
                                    aliases=("texture_reduction",))
    gb_arithmetic: str = option("authors", "GB / LB weights: the authors' 1 - v_t / S in float32 (a dominant "
                                "task's weight rounds to 0, as in their runs) or the other tasks' sum over S.",
                                choices=weighting.ARITHMETICS, aliases=("gb_arithmetic",))

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


class MENETTrainer(method_base.Trainer):
    """One stage: the network trained on the weighted sum of its task losses (custom ``train_step``
    with ``tf.GradientTape``; GB takes the per-task gradient norms at the last convolution's kernel).
    The task losses are computed on images in [0, ``cfg.value_range``], as the network sees them."""

    stages = (method_base.Stage("train", ("menet",)),)

    def __init__(self, cfg: MENETConfig = MENETConfig(), learning_rate: float = 1e-3, **overrides):
        super().__init__()
        if overrides:
            overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
            cfg = dataclasses.replace(cfg, **overrides)
        tasks = losses_lib.parse_tasks(",".join(cfg.tasks), flag="--menet_tasks")
        self.cfg = cfg
        self.tasks = tasks
        self.texture_reduction = cfg.texture_reduction
        fixed = None
        if cfg.task_weights:
            if len(cfg.task_weights) != len(tasks):
                raise ValueError(f"--menet_task_weights has {len(cfg.task_weights)} value(s) for {len(tasks)} "
                                 f"task(s) --menet_tasks={','.join(tasks)}")
            fixed = {t: float(w) for t, w in zip(tasks, cfg.task_weights)}
        self.weighting = weighting.TaskWeighting(cfg.task_weighting, fixed, tasks=tasks, arithmetic=cfg.gb_arithmetic,
                                                 flag_prefix=PREFIX)
        self.net = MENET(cfg, name="menet")
        self.optimizers = {"0": optimizer(keras.optimizers.Adam, learning_rate, epsilon=ADAM_EPSILON, name="adam")}

    @property
    def optimizer_(self):
        return self.optimizers["0"]

    # -- the trainer contract ------------------------------------------------------------------------
    @property
    def pad_multiple(self) -> int:
        return self.cfg.pad_multiple

    def networks(self) -> dict:
        return {"net": self.net}

    def sub_networks(self) -> dict:
        return {"menet": self.net}

    def inference_network(self):
        return self.net  # called with training=False: BN uses its moving averages

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


def config_from_dict(d: dict) -> MENETConfig:
    """MENET's settings from a flat dict of flag names (old style; a run saved before
    --menet_value_range existed trained on [0, 1] images: the default)."""
    from erl_derain import config as cfglib

    names = cfglib.key_names(MENETConfig, PREFIX)
    return cfglib.from_dict(MENETConfig, {k: v for k, v in d.items() if k in names}, prefix=PREFIX)


def trainer_from_config(config: dict) -> MENETTrainer:
    """The trainer of a flat dict of settings (old style)."""
    from erl_derain.methods import make_trainer

    return make_trainer({"method": "menet", **config})


register(MethodSpec(
    name="menet", description="MENET: desubpixel U-Net with CA, L_p/L_e/L_t tasks, fixed/GB/LB weighting",
    config_class=MENETConfig, flag_prefix=PREFIX, default_lr=1e-3,
    build=lambda cfg, record: MENETTrainer(cfg, learning_rate=record.lr),
    tiny={"blocks": 1, "width": 16, "skip_width": 4}, tiny_crop=32, display_name="MENET",
    paper_batch=(224, 20, "MENET Sec. IV.B: batches of 20 224x224 crops")))
