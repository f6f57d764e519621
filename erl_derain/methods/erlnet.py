"""ERL-Net: Entangled Representation Learning for single image de-raining (Wang et al., ICCV 2019).

Paper and its rebuttal letter (no public code). What is implemented, with the paper's words:

* MEMD (Sec. 3.2, Table 2): a U-Net of dense blocks; "Down layer" = average pooling and "Up layer" =
  transposed convolution (rebuttal, Sec. 2); a feature fusion layer FUS (Fig. 2c) right after each
  skip concatenation. MEMD- = no FUS, MEMD-- = no skip connections.
* ERL-Net (Fig. 2): a residual encoder REN with exactly the structure of the main encoder MEN; its
  outputs are added to MEN's ("entanglement", Eq. 2: M Phi(x_r) = Phi(x_r) + R(x_r)). CLGD adds them
  at the connection layer (bottleneck) only, MLGD at the bottleneck and every skip level.
* A clean-to-clean autoencoder of the same structure gives the feature targets Phi(x_c).
* Losses: L_pre = ||I_DR - I_clean||_1 (Eq. 3; the paper writes I_R, a typo for the clean target),
  L_fre = sum over the entangled taps of ||MEN(x_r) + REN(x_r) - Phi(x_c)||_1 (Eq. 4),
  L_ERL = L_pre + 0.01 L_fre (Eq. 5). Norms are taken as means (per element), as TF's L1 losses do.
* Training strategies (Table 1): MA_A, MA_B, MA_C, MA_D (module assembly: stage-wise) and DT (direct).

Sizes the paper does not give (our defaults, all flags): level widths 64/128/256
with a 256-wide bottleneck (three down steps: 320x320 -> 40x40, as the paper's feature-map figure),
dense blocks of 4 conv3x3 layers with growth 32 and a 1x1 transition, LeakyReLU(0.1), a 3x3 head
convolution, 4x4 stride-2 transposed convolutions, and a linear 3x3 output convolution (no global
residual: the clean-to-clean autoencoder must encode the image, not pass it around its encoder).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

import keras
import tensorflow as tf
from keras import layers, ops

from erl_derain.config import option
from erl_derain.distribute import as_float32, for_gradients, optimizer
from erl_derain.methods import MethodSpec, register
from erl_derain.methods import base as method_base
from erl_derain.nn.blocks import DenseBlock, FeatureFusion, conv3x3

BASES = ("memd", "memd-", "memd--")
ENTANGLEMENTS = ("mlgd", "clgd", "none")
ENTANGLE_AT = ("post_activation", "pre_activation")


SCHEDULES = ("ma_a", "ma_b", "ma_c", "ma_d", "dt", "memd")
PREFIX = "erl_"


@dataclass(frozen=True)
class ERLNetConfig:
    """ERL-Net's settings (flags ``--erl_<field>``; the old names are accepted)."""
    widths: tuple[int, ...] = option((64, 128, 256), "ERL-Net level widths (one per down step).", aliases=("widths",))
    bottleneck_width: int = option(256, "ERL-Net bottleneck width.", aliases=("bottleneck_width",))
    dense_layers: int = option(4, "Conv layers per dense block.", aliases=("dense_layers",))
    growth: int = option(32, "Dense block growth rate.", aliases=("growth",))
    base: str = option("memd", "Base network: MEMD, MEMD- (no FUS), MEMD-- (no skips).", choices=BASES,
                       aliases=("base",))
    entanglement: str = option("mlgd", "CLGD: bottleneck only; MLGD: every level; none: the plain MEMD.",
                               choices=ENTANGLEMENTS, aliases=("entanglement",))
    schedule: str = option("ma_d", "Training schedule (Table 1): module assembly MA_A..MA_D, direct DT, or the "
                           "MEMD baseline.", choices=SCHEDULES, aliases=("erl_strategy",))
    se_ratio: int = option(16, "Squeeze-excitation reduction ratio inside FUS.", aliases=("se_ratio",))
    lambda_fre: float = option(0.01, "Weight of L_fre in L_ERL (Eq. 5).", aliases=("lambda_fre",))
    entangle_at: str = option("post_activation", "Add REN's taps to MEN's after each dense block's activation "
                              "(Fig. 2's taps) or before it, the activation then applied to the sum (so R(x) can "
                              "subtract; the rebuttal's Fig. R1 shows pre-ReLU activations); L_fre compares in the "
                              "same space. docs/fidelity.md gives the measured comparison.", choices=ENTANGLE_AT)

    def __post_init__(self):
        if self.base not in BASES:
            raise ValueError(f"--erl_base must be one of {BASES}, got {self.base!r}")
        if self.entanglement not in ENTANGLEMENTS:
            raise ValueError(f"--erl_entanglement must be one of {ENTANGLEMENTS}, got {self.entanglement!r}")
        if self.entangle_at not in ENTANGLE_AT:
            raise ValueError(f"--erl_entangle_at must be one of {ENTANGLE_AT}, got {self.entangle_at!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"--erl_schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if not self.widths or any(w <= 0 for w in self.widths):
            raise ValueError(f"--erl_widths must be positive integers, got {self.widths}")
        for name in ("bottleneck_width", "dense_layers", "growth", "se_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"--erl_{name} must be >= 1, got {getattr(self, name)}")

    @property
    def pad_multiple(self) -> int:
        return 2 ** len(self.widths)

    @property
    def skips(self) -> bool:
        return self.base != "memd--"

    @property
    def fus(self) -> bool:
        return self.base == "memd"

    def entangled_levels(self) -> tuple[int, ...]:
        """Indices of the encoder taps where REN is added (the bottleneck is the last tap)."""
        n = len(self.widths) + 1
        if self.entanglement == "mlgd":
            # Every skip level and the bottleneck; without skips only the bottleneck reaches the decoder.
            return tuple(range(n)) if self.skips else (n - 1,)
        if self.entanglement == "clgd":
            return (n - 1,)
        return ()


class Encoder(keras.Model):
    """MEN / REN / the autoencoder's encoder: head conv, dense block per level with average pooling
    between levels, dense-block bottleneck. Returns the list of taps [level_1, ..., level_n, bottleneck]."""

    def __init__(self, cfg: ERLNetConfig, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.head = conv3x3(cfg.widths[0], name="head")
        self.head_act = layers.LeakyReLU(0.1)
        self.levels = [DenseBlock(w, cfg.dense_layers, cfg.growth, name=f"level{i + 1}")
                       for i, w in enumerate(cfg.widths)]
        self.pools = [layers.AveragePooling2D(2, name=f"down{i + 1}") for i in range(len(cfg.widths))]
        self.bottleneck = DenseBlock(cfg.bottleneck_width, cfg.dense_layers, cfg.growth, name="bottleneck")

    def call(self, x, return_preactivation: bool = False):
        """The taps; with ``return_preactivation`` the pair (taps before their last activation, taps)."""
        x = self.head_act(self.head(x))
        pre, taps = [], []
        for block, pool in zip(self.levels, self.pools):
            p, x = block(x, return_preactivation=True)
            pre.append(p)
            taps.append(x)
            x = pool(x)
        p, x = self.bottleneck(x, return_preactivation=True)
        pre.append(p)
        taps.append(x)
        return (pre, taps) if return_preactivation else taps


class Decoder(keras.Model):
    """MDE: transposed-conv up step, skip concatenation (+ FUS), dense block, per level; 3x3 output."""

    def __init__(self, cfg: ERLNetConfig, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        n = len(cfg.widths)
        self.ups = [layers.Conv2DTranspose(cfg.widths[i], 4, strides=2, padding="same", name=f"up{i + 1}")
                    for i in range(n)]
        self.up_acts = [layers.LeakyReLU(0.1) for _ in range(n)]
        self.fus = [FeatureFusion(cfg.widths[i], cfg.se_ratio, name=f"fus{i + 1}") for i in range(n)] if cfg.fus else []
        self.blocks = [DenseBlock(cfg.widths[i], cfg.dense_layers, cfg.growth, name=f"dec{i + 1}") for i in range(n)]
        self.out_conv = conv3x3(3, name="output")

    def call(self, taps):
        x = taps[-1]
        for i in reversed(range(len(self.cfg.widths))):
            x = self.up_acts[i](self.ups[i](x))
            if self.cfg.skips:
                x = self.fus[i](x, taps[i]) if self.cfg.fus else ops.concatenate([x, taps[i]], axis=-1)
            x = self.blocks[i](x)
        return as_float32(self.out_conv(x))


class MEMD(keras.Model):
    """The basic encoder-decoder (MEN + MDE); also the clean-to-clean autoencoder."""

    def __init__(self, cfg: ERLNetConfig, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.men = Encoder(cfg, name="men")
        self.mde = Decoder(cfg, name="mde")

    def call(self, x):
        return self.mde(self.men(x))


class ERLNet(keras.Model):
    """MEN + REN + MDE. ``use_ren=False`` runs the plain MEMD path (stage I of the MA strategies)."""

    def __init__(self, cfg: ERLNetConfig, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.men = Encoder(cfg, name="men")
        self.ren = Encoder(cfg, name="ren") if cfg.entanglement != "none" else None
        self.mde = Decoder(cfg, name="mde")

    def encode(self, x, use_ren: bool = True) -> "Encoding":
        """MEN's and REN's taps and their entanglement (Eq. 2, M Phi(x) = Phi(x) + R(x)) at
        ``cfg.entangled_levels()``; the decoder reads ``entangled`` (MEN's taps elsewhere).

        ``cfg.entangle_at``: "post_activation" adds the two encoders' tap outputs (after each dense
        block's LeakyReLU); "pre_activation" adds them before that activation and applies it to the
        sum, so R(x) can subtract as well as add (the rebuttal's Fig. R1 shows the branches'
        activations before the ReLU). ``main`` and ``residual`` are in the space where they are added,
        ``sums`` their sum there (what L_fre compares with the clean autoencoder's taps in that space)."""
        pre = self.cfg.entangle_at == "pre_activation"
        main_pre, main = self.men(x, return_preactivation=True)
        if not use_ren or self.ren is None:
            return Encoding(main_pre if pre else main, None, None, list(main))
        residual_pre, residual = self.ren(x, return_preactivation=True)
        levels = set(self.cfg.entangled_levels())
        m_space, r_space = (main_pre, residual_pre) if pre else (main, residual)
        sums = [m + r if i in levels else None for i, (m, r) in enumerate(zip(m_space, r_space))]
        act = self.men.levels[0].out_act  # every dense block ends with the same LeakyReLU
        entangled = [main[i] if s is None else (act(s) if pre else s) for i, s in enumerate(sums)]
        return Encoding(m_space, r_space, sums, entangled)

    def call(self, x, use_ren: bool = True):
        return self.mde(self.encode(x, use_ren).entangled)


class Encoding(NamedTuple):
    main: list        # MEN's taps (before the activation with entangle_at="pre_activation")
    residual: list | None  # REN's taps, in the same space (None without REN)
    sums: list | None      # main + residual at the entangled levels (None elsewhere / without REN)
    entangled: list   # what the decoder reads (after the activation)


# --------------------------------------------------------------------------------------------------
# Training strategies (Table 1)
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Stage(method_base.Stage):
    """A stage of Table 1: ``train`` names sub-networks (men, ren, mde, ae)."""
    loss: str = "pre"        # "pre" (L_pre) or "erl" (L_pre + lambda L_fre) for the de-raining branch
    use_ren: bool = False    # whether REN is part of the forward pass
    derain: bool = True      # False: the stage trains only the clean autoencoder

STAGE_I = Stage("I", ("men", "mde", "ae"), loss="pre", use_ren=False)
STAGE_II_REN = Stage("II", ("ren",), loss="erl", use_ren=True)
STRATEGIES: dict[str, tuple[Stage, ...]] = {
    # Stage I trains the de-raining MEMD with L_pre and, alongside, the clean-to-clean MEMD that
    # provides Phi(x_c) for the later stages (Sec. 3.3).
    "ma_a": (STAGE_I, STAGE_II_REN),
    "ma_b": (STAGE_I, Stage("II", ("ren", "mde"), loss="erl", use_ren=True)),
    "ma_c": (STAGE_I, STAGE_II_REN, Stage("III", ("mde",), loss="pre", use_ren=True)),
    "ma_d": (STAGE_I, STAGE_II_REN, Stage("III", ("ren", "mde"), loss="pre", use_ren=True)),
    # DT: "one stage, L_ERL to train the overall network" from scratch; L_fre needs the clean
    # autoencoder's features, so it is trained first in a stage of its own.
    "dt": (Stage("AE", ("ae",), loss="pre", use_ren=False, derain=False),
           Stage("DT", ("men", "ren", "mde"), loss="erl", use_ren=True)),
    # The MEMD baseline (Table 2): one stage, no residual branch.
    "memd": (Stage("I", ("men", "mde"), loss="pre", use_ren=False),),
}


def l1(a, b):
    """Mean absolute difference, in float32 (features are float16/bfloat16 under mixed precision)."""
    return ops.mean(ops.abs(as_float32(a) - as_float32(b)))


class ERLNetTrainer(method_base.Trainer):
    """Trainer for ERL-Net / MEMD: ``train_step`` takes one gradient step of the current stage with
    ``tf.GradientTape``, updating only that stage's sub-networks."""

    schedule_flag = "--erl_schedule"

    def __init__(self, cfg: ERLNetConfig = ERLNetConfig(), learning_rate: float = 4e-4, **overrides):
        super().__init__()
        if "strategy" in overrides:  # the old keyword
            overrides["schedule"] = overrides.pop("strategy")
        cfg = dataclasses.replace(cfg, **overrides) if overrides else cfg
        if cfg.entanglement == "none" and cfg.schedule != "memd":
            raise ValueError("--erl_entanglement=none is the plain MEMD: use --erl_schedule=memd (or --method=memd)")
        if cfg.schedule == "memd" and cfg.entanglement != "none":
            cfg = dataclasses.replace(cfg, entanglement="none")
        self.cfg = cfg
        self.strategy_name = cfg.schedule
        self.stages = STRATEGIES[cfg.schedule]
        self.lambda_fre = float(cfg.lambda_fre)
        self.net = ERLNet(cfg, name="erlnet")
        needs_ae = any("ae" in s.train for s in self.stages)
        self.clean_ae = MEMD(cfg, name="clean_ae") if needs_ae else None
        # One Adam per stage (the paper restarts each stage from lr 4e-4 with default Adam settings).
        self.optimizers = {str(i): optimizer(keras.optimizers.Adam, learning_rate, name=f"adam_stage_{s.name}")
                           for i, s in enumerate(self.stages)}

    # -- the trainer contract ------------------------------------------------------------------------
    @property
    def pad_multiple(self) -> int:
        return self.cfg.pad_multiple

    def networks(self) -> dict:
        nets = {"net": self.net}
        if self.clean_ae is not None:
            nets["clean_ae"] = self.clean_ae
        return nets

    def sub_networks(self) -> dict[str, keras.Model]:
        nets = {"men": self.net.men, "mde": self.net.mde}
        if self.net.ren is not None:
            nets["ren"] = self.net.ren
        if self.clean_ae is not None:
            nets["ae"] = self.clean_ae
        return nets

    def build_networks(self, image_shape=None):
        x = tf.zeros(image_shape or self.sample_shape())
        self.net(x, use_ren=True)
        if self.clean_ae is not None:
            self.clean_ae(x)
        for key, opt in self.optimizers.items():
            opt.build(self.optimizer_variables(key))

    def inference_uses_ren(self) -> bool:
        """Whether the network as trained so far runs REN: a finished run follows its last stage; a run
        stopped earlier uses REN only once a stage that trains with REN has taken a step (MA_x stopped
        in stage I is the plain MEMD of stage I, not MEMD plus an untrained REN)."""
        if self.progress is None:
            return self.stages[-1].use_ren
        stage, step = self.progress
        if stage >= len(self.stages):
            return self.stages[-1].use_ren
        reached = list(self.stages[:stage]) + ([self.stages[stage]] if step > 0 else [])
        derain = [s for s in reached if s.derain]
        return bool(derain) and derain[-1].use_ren

    def inference_network(self):
        """The de-raining network only (no clean autoencoder), as trained so far."""
        return InferenceWrapper(self.net, self.inference_uses_ren(), name=f"erlnet_{self.strategy_name}")

    def evaluation_networks(self) -> dict:
        """What ``evaluate --network`` can score, each with the input it reads: the de-raining network
        (rainy images) and, when the strategy trains it, the clean-to-clean autoencoder (clean images):
        the introduction's experiment (the same structure translating clean images scores far higher
        than translating rainy ones: 49.51 against 31.67 dB on the raindrop data)."""
        from erl_derain.inference import InferenceModel

        nets = {"derain": (self.inference_model(), "rainy")}
        if self.clean_ae is not None:
            nets["clean_autoencoder"] = (InferenceModel(self.clean_ae, self.pad_multiple, name="clean_autoencoder"),
                                         "clean")
        return nets

    # -- losses and the step -----------------------------------------------------------------------
    def compute_losses(self, rainy, clean) -> dict:
        stage = self.stage
        losses = {}
        total = 0.0
        if stage.derain:
            enc = self.net.encode(rainy, use_ren=stage.use_ren)
            output = self.net.mde(enc.entangled)
            losses["l_pre"] = l1(output, clean)
            total = total + losses["l_pre"]
            if stage.loss == "erl":
                pre, post = self.clean_ae.men(clean, return_preactivation=True)
                targets = pre if self.cfg.entangle_at == "pre_activation" else post
                targets = [ops.stop_gradient(t) for t in targets]
                l_fre = ops.sum(ops.stack([l1(enc.sums[i], targets[i]) for i in self.cfg.entangled_levels()]))
                losses["l_fre"] = l_fre
                total = total + self.lambda_fre * l_fre
        if "ae" in stage.train:
            losses["l_ae"] = l1(self.clean_ae(clean), clean)
            total = total + losses["l_ae"]
        losses["loss"] = total
        return losses

    def train_step(self, data):
        rainy, clean = data["rainy"], data["clean"]
        variables = self.stage_variables()
        opt = self.current_optimizer
        with tf.GradientTape() as tape:
            losses = self.compute_losses(rainy, clean)
            scaled = for_gradients(losses["loss"], opt)
        grads = tape.gradient(scaled, variables)
        opt.apply(grads, variables)
        return losses


class InferenceWrapper(keras.Model):
    def __init__(self, net: ERLNet, use_ren: bool, **kwargs):
        super().__init__(**kwargs)
        self.net = net
        self.use_ren = use_ren

    def call(self, x):
        return self.net(x, use_ren=self.use_ren)


def config_from_dict(d: dict) -> ERLNetConfig:
    """ERL-Net's settings from a flat dict of flag names (old style)."""
    from erl_derain import config as cfglib

    names = cfglib.key_names(ERLNetConfig, PREFIX)
    return cfglib.from_dict(ERLNetConfig, {k: v for k, v in d.items() if k in names}, prefix=PREFIX)


def _memd(cfg: ERLNetConfig) -> ERLNetConfig:
    return dataclasses.replace(cfg, entanglement="none", schedule="memd")


TINY = {"widths": (8, 16), "bottleneck_width": 16, "dense_layers": 2, "growth": 8, "se_ratio": 2}

register(MethodSpec(
    name="erlnet", description="ERL-Net (ICCV 2019): MEMD + residual encoder, MA_A..MA_D / DT schedules",
    config_class=ERLNetConfig, flag_prefix=PREFIX, default_lr=4e-4, schedule_flag="--erl_schedule",
    build=lambda cfg, record: ERLNetTrainer(cfg, learning_rate=record.lr), tiny=TINY, tiny_crop=16,
    display_name="ERL-Net (MA_D)", paper_batch=(320, 1, "ERL-Net Sec. 4.1: random 320x320 crops, batch 1")))
register(MethodSpec(
    name="memd", description="ERL-Net's basic MEMD / MEMD- / MEMD-- (no residual encoder; --erl_base)",
    config_class=ERLNetConfig, flag_prefix=PREFIX, default_lr=4e-4, schedule_flag="--erl_schedule",
    build=lambda cfg, record: ERLNetTrainer(cfg, learning_rate=record.lr), tiny=TINY, tiny_crop=16,
    normalize=_memd, display_name="MEMD", paper_batch=(320, 1, "ERL-Net Sec. 4.1: random 320x320 crops, batch 1")))
