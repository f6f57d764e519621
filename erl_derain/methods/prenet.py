"""PReNet and PRN: Ren, Zuo, Hu, Zhu & Meng, "Progressive Image Deraining Networks: A Better and
Simpler Baseline" (CVPR 2019), ``--method=prenet``. Details the paper leaves open follow the authors'
public PyTorch code (csdwren/PReNet: ``networks.py``, ``SSIM.py``, ``train_PReNet.py``,
``DerainDataset.py``); where the two differ the code's choice is the default and the other is a flag.

Network (Section 3: the progressive ResNet PRN and the progressive recurrent network PReNet): T stages
(``--prenet_stages``, the paper's T = 6) that share every weight. Stage t takes the rainy image y and
the previous stage's result x^{t-1} (x^0 = y) and computes

* f_in: a 3x3 convolution with ReLU on the concatenation [y, x^{t-1}] (6 channels; ``--prenet_stage_input=
  previous`` feeds x^{t-1} alone, the ablation "PReNet_x");
* f_recurrent: a convolutional LSTM (``--prenet_recurrent=lstm``): the gates are 3x3 convolutions of
  [features, h^{t-1}] -- input i, forget f, output o with sigmoid, candidate g with tanh --, then
  c^t = f * c^{t-1} + i * g and h^t = o * tanh(c^t), with h^0 = c^0 = 0. ``gru`` is the ConvGRU of
  the authors' ablation code (update z and reset r from [features, h], candidate tanh(conv([r * h,
  features])), h = (1 - z) h + z candidate); ``none`` removes the unit: PRN;
* f_res: ``--prenet_blocks`` (5) ResBlocks, 3x3 convolutions of ``--prenet_width`` (32) channels. The
  authors' block (``--prenet_resblock=authors``) is x -> relu(relu(conv(relu(conv(x)))) + x): a ReLU
  after *both* convolutions, before the addition, and one after it; ``he`` is the usual block of He et
  al. (no ReLU between the second convolution and the addition). ``--prenet_recursive_blocks`` applies
  one ResBlock ``--prenet_blocks`` times (intra-stage recursion: PReNet_r, PRN_r);
* f_out: a 3x3 convolution to 3 channels, added to y (the abstract: "finally output the prediction of
  residual image"; ``--prenet_output=image`` outputs f_out directly, as the networks of the authors'
  ablation code ``PReNet_LSTM``, ``PReNet_GRU`` and ``PReNet_x`` do).

The result is the last stage's x^T; :meth:`PReNet.stage_outputs` gives every stage's. Every
convolution is 3x3, stride 1, zero padding 1, with bias, so any image size works (``pad_multiple`` 1).
Initialisation (``--prenet_init=pytorch``): PyTorch's default for ``nn.Conv2d``, weights and biases
uniform in +-1/sqrt(fan_in) (fan_in = input channels x 9); ``glorot`` is Keras' default (Glorot-uniform
weights, zero biases). The LSTM's four gate convolutions are one convolution of 4 x width outputs
(blocks [i | f | g | o] in that order, the order of the authors' conv_i, conv_f, conv_g, conv_o): the
same function, parameters and initial distribution (each gate's fan_in is the same), one call.

Parameters at the paper's widths (T does not change them): f_in 6*9*32 + 32 = 1,760; ConvLSTM
4 * (64*9*32 + 32) = 73,856; a ResBlock 2 * (32*9*32 + 32) = 18,496, five of them 92,480; f_out
32*9*3 + 3 = 867. PReNet 168,963, PRN 95,107, PReNet_r 94,979, PRN_r 21,123 (ConvGRU instead of the
LSTM: 150,499; PReNet_x, f_in on 3 channels: 168,099).

Loss (Section 3, a single loss on the final stage): the negative SSIM of the last stage's output against
the clean image, -SSIM(x^T, x_gt), computed as the authors' ``SSIM.py``: an 11x11 Gaussian window with
sigma 1.5 (normalised to sum 1) applied per RGB channel, C1 = 0.01^2, C2 = 0.03^2 (images in [0, 1]),
the mean of the SSIM map over every pixel, channel and image, and the local statistics taken with
*zero* padding of 5 ('same' size map; ``--prenet_ssim_padding=zeros``): near the border the Gaussian
sees zeros, so the border pixels' means and variances are those of a black-framed image. scikit-image's
``structural_similarity`` (gaussian_weights, sigma 1.5, use_sample_covariance=False) and the Wang et al.
reference code average the map only where the window lies inside the image ('valid'; ``--prenet_ssim_
padding=valid``): the same map's interior, without the border band of 5 pixels, which on 100x100
patches is 19% of the pixels. ``--prenet_stage_loss_weights`` (one weight per stage) gives the
recursive supervision of the paper's ablation, -sum_t lambda_t SSIM(x^t, x_gt) (the authors, issue
#19 of their repository: lambda_1..5 = 0.5, lambda_6 = 1.5); ``--prenet_loss=mse`` the MSE loss (a
mean over the elements; the authors' script has a summed ``nn.MSELoss(size_average=False)`` commented
out).

Training (Section 4): Adam at 1e-3 (PyTorch's, eps 1e-8 added to the bias-corrected sqrt(v_hat):
:class:`erl_derain.methods.jrgr.TorchAdam`) multiplied by 0.2 at epochs 30, 50 and 80 of 100, batch
18 of 100x100 patches: shared run settings (``--lr_decay_epochs``, ``--lr_decay_factor``,
``--stage_epochs``, ``--batch_size``, ``--crop_size``); ``flags/prenet/`` sets them and explains how the
authors' epoch (every 100x100 patch at a fixed stride) relates to ours (one random crop per pair).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf
from keras import layers

from erl_derain.config import option
from erl_derain.distribute import as_float32, for_gradients, optimizer
from erl_derain.methods import MethodSpec, register
from erl_derain.methods import base as method_base
from erl_derain.methods.jrgr import TorchAdam

PREFIX = "prenet_"

RECURRENT_UNITS = ("lstm", "gru", "none")
STAGE_INPUTS = ("both", "previous")
OUTPUTS = ("residual", "image")
RESBLOCKS = ("authors", "he")
LOSSES = ("ssim", "mse")
SSIM_PADDINGS = ("zeros", "valid")
INITS = ("pytorch", "glorot")

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = 0.01 ** 2
SSIM_C2 = 0.03 ** 2

# PyTorch's Adam epsilon (torch.optim.Adam's default, which train_PReNet.py keeps).
ADAM_EPSILON = 1e-8


@dataclass(frozen=True)
class PReNetConfig:
    """PReNet's network and loss settings (flags ``--prenet_<field>``)."""
    stages: int = option(6, "T: stages of the progressive network, all sharing their weights (the paper: 6).")
    width: int = option(32, "Channels of f_in, the recurrent unit and the ResBlocks (the paper: 32).")
    blocks: int = option(5, "ResBlocks in f_res (the paper: 5); with --prenet_recursive_blocks: how many times "
                         "the one ResBlock is applied.")
    recurrent: str = option("lstm", "The recurrent unit f_recurrent: ConvLSTM (PReNet), ConvGRU (the authors' "
                            "ablation) or none (PRN).", choices=RECURRENT_UNITS)
    recursive_blocks: bool = option(False, "Intra-stage recursion: one ResBlock applied --prenet_blocks times "
                                    "(PReNet_r / PRN_r).")
    stage_input: str = option("both", "What f_in sees: the rainy image and the previous stage's result "
                              "concatenated (the paper), or the previous result only (ablation PReNet_x).",
                              choices=STAGE_INPUTS)
    output: str = option("residual", "Stage output: f_out added to the rainy image (the paper; the authors' "
                         "final models) or f_out itself (the networks of the authors' ablation code).",
                         choices=OUTPUTS)
    resblock: str = option("authors", "ResBlock: relu(relu(conv(relu(conv(x)))) + x) as the authors' code, or "
                           "He et al.'s relu(conv(relu(conv(x))) + x).", choices=RESBLOCKS)
    loss: str = option("ssim", "Training loss: negative SSIM (the paper's choice) or MSE.", choices=LOSSES)
    ssim_padding: str = option("zeros", "SSIM loss: local statistics with zero padding averaged over the whole "
                               "map (the authors' SSIM.py) or only where the 11x11 window fits inside the image "
                               "('valid', as scikit-image and Wang et al.'s code).", choices=SSIM_PADDINGS)
    stage_loss_weights: tuple[float, ...] | None = option(
        None, "Recursive supervision: one weight per stage, loss = sum_t w_t * loss(x^t) (the paper's ablation: "
        "0.5,0.5,0.5,0.5,0.5,1.5); unset: the last stage's loss only (the paper's final choice).")
    init: str = option("pytorch", "Initialisation: PyTorch's Conv2d default (weights and biases uniform in "
                       "+-1/sqrt(fan_in); the authors' code) or Keras' (Glorot-uniform, zero biases).",
                       choices=INITS)

    def __post_init__(self):
        for name in ("stages", "width", "blocks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"--{PREFIX}{name} must be an integer >= 1, got {value!r}")
        for name, choices in (("recurrent", RECURRENT_UNITS), ("stage_input", STAGE_INPUTS), ("output", OUTPUTS),
                              ("resblock", RESBLOCKS), ("loss", LOSSES), ("ssim_padding", SSIM_PADDINGS),
                              ("init", INITS)):
            if getattr(self, name) not in choices:
                raise ValueError(f"--{PREFIX}{name} must be one of {'|'.join(choices)}, got {getattr(self, name)!r}")
        weights = self.stage_loss_weights
        if weights is not None:
            if len(weights) != self.stages:
                raise ValueError(f"--{PREFIX}stage_loss_weights has {len(weights)} value(s) for "
                                 f"--{PREFIX}stages={self.stages}: give one weight per stage")
            if any(not math.isfinite(w) or w < 0 for w in weights) or not any(w > 0 for w in weights):
                raise ValueError(f"--{PREFIX}stage_loss_weights must be >= 0 with at least one > 0, got {weights}")


# -- layers ------------------------------------------------------------------------------------------

def _conv(filters: int, in_channels: int, init: str, name: str, activation=None) -> layers.Conv2D:
    """A 3x3, stride 1, zero-padded convolution with bias (PyTorch ``nn.Conv2d(c, filters, 3, 1, 1)``)."""
    if init == "pytorch":
        # kaiming_uniform_(a=sqrt(5)) = U(+-sqrt(6 / ((1 + 5) fan_in))) = U(+-1/sqrt(fan_in)); bias the same.
        bound = 1.0 / math.sqrt(in_channels * 9)
        kernel = keras.initializers.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")
        bias = keras.initializers.RandomUniform(-bound, bound)
    else:
        kernel, bias = "glorot_uniform", "zeros"
    return layers.Conv2D(filters, 3, padding="same", activation=activation, kernel_initializer=kernel,
                         bias_initializer=bias, name=name)


class ConvLSTM(layers.Layer):
    """One step of the convolutional LSTM: ``(x, (h, c)) -> (h', c')``. The gates are one 3x3
    convolution of [x, h] with 4 x width outputs, blocks [i | f | g | o]. The state (h, c) is kept in
    float32 (it accumulates over the stages; the layer does not auto-cast its inputs); the new ``h``
    is also returned in the dtype of ``x``."""

    def __init__(self, width: int, init: str = "pytorch", **kwargs):
        kwargs.setdefault("autocast", False)  # the float32 state must not be cast to the compute dtype
        super().__init__(**kwargs)
        self.width = width
        self.gates = _conv(4 * width, 2 * width, init, "gates")

    def build(self, input_shape):
        self.gates.build((None, None, None, 2 * self.width))

    def initial_state(self, x):
        return tf.zeros_like(x), tf.zeros(tf.shape(x), tf.float32)

    def call(self, x, state):
        h, c = state
        c = tf.cast(c, tf.float32)
        z = as_float32(self.gates(tf.concat([x, tf.cast(h, x.dtype)], axis=-1)))
        i, f, g, o = tf.split(z, 4, axis=-1)
        c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
        h = tf.sigmoid(o) * tf.tanh(c)
        return tf.cast(h, x.dtype), (h, c)


class ConvGRU(layers.Layer):
    """One step of the authors' ablation ConvGRU (``networks.py`` ``PReNet_GRU``): update z and reset r
    from one 3x3 convolution of [x, h] (blocks [z | r]), candidate tanh(conv([r * h, x])),
    h' = (1 - z) h + z candidate."""

    def __init__(self, width: int, init: str = "pytorch", **kwargs):
        kwargs.setdefault("autocast", False)  # the float32 state must not be cast to the compute dtype
        super().__init__(**kwargs)
        self.width = width
        self.update_reset = _conv(2 * width, 2 * width, init, "update_reset")
        self.candidate = _conv(width, 2 * width, init, "candidate")

    def build(self, input_shape):
        self.update_reset.build((None, None, None, 2 * self.width))
        self.candidate.build((None, None, None, 2 * self.width))

    def initial_state(self, x):
        return tf.zeros(tf.shape(x), tf.float32)

    def call(self, x, h):
        h = tf.cast(h, tf.float32)
        zr = as_float32(self.update_reset(tf.concat([x, tf.cast(h, x.dtype)], axis=-1)))
        z, r = tf.split(tf.sigmoid(zr), 2, axis=-1)
        g = tf.tanh(as_float32(self.candidate(tf.concat([tf.cast(r * h, x.dtype), x], axis=-1))))
        h = (1.0 - z) * h + z * g
        return tf.cast(h, x.dtype), h


class ResBlock(layers.Layer):
    """Two 3x3 convolutions and an identity shortcut (see the module docstring for the ReLUs)."""

    def __init__(self, width: int, mode: str = "authors", init: str = "pytorch", **kwargs):
        super().__init__(**kwargs)
        self.mode, self.width = mode, width
        self.conv_a = _conv(width, width, init, "conv_a", activation="relu")
        self.conv_b = _conv(width, width, init, "conv_b")

    def build(self, input_shape):
        self.conv_a.build((None, None, None, self.width))
        self.conv_b.build((None, None, None, self.width))

    def call(self, x):
        y = self.conv_b(self.conv_a(x))
        if self.mode == "authors":
            y = tf.nn.relu(y)
        return tf.nn.relu(y + x)


class PReNet(keras.Model):
    """The progressive network: rainy NHWC in [0, 1] (any size) -> the last stage's output (float32,
    unclipped; the inference model clips)."""

    def __init__(self, cfg: PReNetConfig = PReNetConfig(), **kwargs):
        kwargs.setdefault("autocast", False)  # y stays float32 for the residual sum; each layer casts for itself
        super().__init__(**kwargs)
        self.cfg = cfg
        w, init = cfg.width, cfg.init
        self.f_in = _conv(w, 6 if cfg.stage_input == "both" else 3, init, "f_in", activation="relu")
        if cfg.recurrent == "lstm":
            self.f_recurrent = ConvLSTM(w, init, name="f_recurrent")
        elif cfg.recurrent == "gru":
            self.f_recurrent = ConvGRU(w, init, name="f_recurrent")
        else:
            self.f_recurrent = None
        self.res_blocks = [ResBlock(w, cfg.resblock, init, name=f"res_{i}")
                           for i in range(1 if cfg.recursive_blocks else cfg.blocks)]
        self.f_out = _conv(3, w, init, "f_out")

    def build(self, input_shape):
        # Explicit (Keras would otherwise trace the whole unrolled network symbolically to build it).
        # stage_outputs called before __call__ builds the layers as they are first used: skip those.
        w = self.cfg.width
        parts = [(self.f_in, 6 if self.cfg.stage_input == "both" else 3), (self.f_out, w)]
        parts += [(layer, w) for layer in [self.f_recurrent, *self.res_blocks] if layer is not None]
        for layer, channels in parts:
            if not layer.built:
                layer.build((None, None, None, channels))
        self.built = True

    def f_res(self, x):
        if self.cfg.recursive_blocks:
            for _ in range(self.cfg.blocks):
                x = self.res_blocks[0](x)
            return x
        for block in self.res_blocks:
            x = block(x)
        return x

    def stage_outputs(self, y, training=False) -> list:
        """x^1, ..., x^T (float32) of a rainy batch ``y``."""
        y = tf.cast(y, tf.float32)
        x, state, outputs = y, None, []
        for _ in range(self.cfg.stages):
            features = self.f_in(tf.concat([y, x], axis=-1) if self.cfg.stage_input == "both" else x)
            if self.f_recurrent is not None:
                if state is None:
                    state = self.f_recurrent.initial_state(features)
                features, state = self.f_recurrent(features, state)
            out = as_float32(self.f_out(self.f_res(features)))
            x = out + y if self.cfg.output == "residual" else out
            outputs.append(x)
        return outputs

    def call(self, y, training=False):
        return self.stage_outputs(y, training=training)[-1]


# -- the SSIM loss ----------------------------------------------------------------------------------

def gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> np.ndarray:
    """The 1-D Gaussian of the SSIM window, exp(-(k - size // 2)^2 / (2 sigma^2)) normalised to sum 1."""
    k = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-k ** 2 / (2.0 * sigma ** 2))
    return g / g.sum()


def ssim_map(a, b, *, padding: str = "zeros", size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA):
    """The SSIM map of two NHWC batches in [0, 1] per channel, float32: ``[N, H, W, C]`` with zero
    padding (the authors' ``SSIM.py``), ``[N, H - size + 1, W - size + 1, C]`` with ``valid``."""
    if padding not in SSIM_PADDINGS:
        raise ValueError(f"SSIM padding must be one of {'|'.join(SSIM_PADDINGS)}, got {padding!r}")
    a, b = tf.cast(a, tf.float32), tf.cast(b, tf.float32)
    channels = a.shape[-1]
    g = tf.constant(gaussian_window(size, sigma), tf.float32)
    # The 2-D window is separable: a vertical then a horizontal pass (with zero padding each pass sees
    # zeros exactly where the 2-D window would). The five local moments share the passes.
    stack = tf.concat([a, b, a * a, b * b, a * b], axis=-1)
    n = 5 * channels
    pad = "SAME" if padding == "zeros" else "VALID"
    vertical = tf.tile(tf.reshape(g, [size, 1, 1, 1]), [1, 1, n, 1])
    horizontal = tf.tile(tf.reshape(g, [1, size, 1, 1]), [1, 1, n, 1])
    moments = tf.nn.depthwise_conv2d(stack, vertical, [1, 1, 1, 1], pad)
    moments = tf.nn.depthwise_conv2d(moments, horizontal, [1, 1, 1, 1], pad)
    mu_a, mu_b, e_aa, e_bb, e_ab = tf.split(moments, 5, axis=-1)
    var_a, var_b, cov = e_aa - mu_a * mu_a, e_bb - mu_b * mu_b, e_ab - mu_a * mu_b
    return ((2 * mu_a * mu_b + SSIM_C1) * (2 * cov + SSIM_C2)) / (
        (mu_a * mu_a + mu_b * mu_b + SSIM_C1) * (var_a + var_b + SSIM_C2))


def ssim(a, b, *, padding: str = "zeros"):
    """The mean of :func:`ssim_map` over every pixel, channel and image (a scalar)."""
    return tf.reduce_mean(ssim_map(a, b, padding=padding))


# -- the trainer -------------------------------------------------------------------------------------

class PReNetTrainer(method_base.Trainer):
    """One training stage (the network's T stages are its recurrence, not a schedule): the whole
    network on the negative SSIM of its last stage (or the weighted stages) with one Adam."""

    stages = (method_base.Stage("train", ("prenet",)),)

    def __init__(self, cfg: PReNetConfig = PReNetConfig(), learning_rate: float = 1e-3, **overrides):
        super().__init__()
        if overrides:
            overrides = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
            cfg = dataclasses.replace(cfg, **overrides)
        self.cfg = cfg
        self.net = PReNet(cfg, name="prenet")
        weights = cfg.stage_loss_weights
        self.stage_weights = tuple(float(w) for w in weights) if weights else (0.0,) * (cfg.stages - 1) + (1.0,)
        self.optimizers = {"0": optimizer(TorchAdam, learning_rate, epsilon=ADAM_EPSILON, name="adam")}

    @property
    def optimizer_(self):
        return self.optimizers["0"]

    # -- the trainer contract ------------------------------------------------------------------------
    @property
    def pad_multiple(self) -> int:
        return 1

    def networks(self) -> dict:
        return {"net": self.net}

    def sub_networks(self) -> dict:
        return {"prenet": self.net}

    def inference_network(self):
        return self.net

    # -- losses and the step -----------------------------------------------------------------------
    def stage_loss(self, clean, output):
        """(loss, SSIM or MSE) of one stage's output."""
        if self.cfg.loss == "mse":
            mse = tf.reduce_mean(tf.square(tf.cast(output, tf.float32) - tf.cast(clean, tf.float32)))
            return mse, mse
        value = ssim(clean, output, padding=self.cfg.ssim_padding)
        return -value, value

    def compute_losses(self, rainy, clean, training=True) -> dict:
        outputs = self.net.stage_outputs(rainy, training=training)
        total, logs = 0.0, {}
        for t, (weight, output) in enumerate(zip(self.stage_weights, outputs)):
            if weight == 0 and t < len(outputs) - 1:
                continue
            loss, value = self.stage_loss(clean, output)
            total += weight * loss
            if t == len(outputs) - 1:
                logs[self.cfg.loss] = value
        logs["loss"] = total
        return logs

    def train_step(self, data):
        variables = self.stage_variables()
        with tf.GradientTape() as tape:
            logs = self.compute_losses(data["rainy"], data["clean"])
            scaled = for_gradients(logs["loss"], self.optimizer_)
        grads = tape.gradient(scaled, variables)
        self.optimizer_.apply(grads, variables)
        return logs


register(MethodSpec(
    name="prenet", description="PReNet / PRN (CVPR 2019): T weight-shared stages, ConvLSTM, ResBlocks, negative "
    "SSIM", config_class=PReNetConfig, flag_prefix=PREFIX, default_lr=1e-3,
    build=lambda cfg, record: PReNetTrainer(cfg, learning_rate=record.lr),
    tiny={"stages": 2, "width": 4, "blocks": 1}, tiny_crop=16))
