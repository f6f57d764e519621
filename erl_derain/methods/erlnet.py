"""ERL-Net: Entangled Representation Learning for single image de-raining (Wang et al., ICCV 2019).

Paper: ../shared/seeds/000 (and its rebuttal, 001). What is implemented, with the paper's words:

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

Sizes the paper does not give (our defaults, DESIGN.md section 5, all flags): level widths 64/128/256
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

from erl_derain.distribute import as_float32, for_gradients, optimizer
from erl_derain.nn.blocks import DenseBlock, FeatureFusion, conv3x3, trainable_weights_of

BASES = ("memd", "memd-", "memd--")
ENTANGLEMENTS = ("mlgd", "clgd", "none")
ENTANGLE_AT = ("post_activation", "pre_activation")


@dataclass(frozen=True)
class ERLNetConfig:
    widths: tuple[int, ...] = (64, 128, 256)
    bottleneck_width: int = 256
    dense_layers: int = 4
    growth: int = 32
    base: str = "memd"              # memd | memd- (no FUS) | memd-- (no skips)
    entanglement: str = "mlgd"      # mlgd | clgd | none (plain MEMD)
    se_ratio: int = 16
    entangle_at: str = "post_activation"  # where R(x) is added: after (paper's Fig. 2 taps) or before the activation

    def __post_init__(self):
        if self.base not in BASES:
            raise ValueError(f"--base must be one of {BASES}, got {self.base!r}")
        if self.entanglement not in ENTANGLEMENTS:
            raise ValueError(f"--entanglement must be one of {ENTANGLEMENTS}, got {self.entanglement!r}")
        if self.entangle_at not in ENTANGLE_AT:
            raise ValueError(f"--erl_entangle_at must be one of {ENTANGLE_AT}, got {self.entangle_at!r}")
        if not self.widths or any(w <= 0 for w in self.widths):
            raise ValueError(f"--widths must be positive integers, got {self.widths}")

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
class Stage:
    name: str
    train: tuple[str, ...]   # sub-networks updated in this stage: men, ren, mde, ae
    loss: str                # "pre" (L_pre) or "erl" (L_pre + lambda L_fre) for the de-raining branch
    use_ren: bool            # whether REN is part of the forward pass
    derain: bool = True      # False: the stage trains only the clean autoencoder

STAGE_I = Stage("I", ("men", "mde", "ae"), "pre", use_ren=False)
STAGE_II_REN = Stage("II", ("ren",), "erl", use_ren=True)
STRATEGIES: dict[str, tuple[Stage, ...]] = {
    # Stage I trains the de-raining MEMD with L_pre and, alongside, the clean-to-clean MEMD that
    # provides Phi(x_c) for the later stages (Sec. 3.3).
    "ma_a": (STAGE_I, STAGE_II_REN),
    "ma_b": (STAGE_I, Stage("II", ("ren", "mde"), "erl", use_ren=True)),
    "ma_c": (STAGE_I, STAGE_II_REN, Stage("III", ("mde",), "pre", use_ren=True)),
    "ma_d": (STAGE_I, STAGE_II_REN, Stage("III", ("ren", "mde"), "pre", use_ren=True)),
    # DT: "one stage, L_ERL to train the overall network" from scratch; L_fre needs the clean
    # autoencoder's features, so it is trained first in a stage of its own.
    "dt": (Stage("AE", ("ae",), "pre", use_ren=False, derain=False),
           Stage("DT", ("men", "ren", "mde"), "erl", use_ren=True)),
    # The MEMD baseline (Table 2): one stage, no residual branch.
    "memd": (Stage("I", ("men", "mde"), "pre", use_ren=False),),
}


def l1(a, b):
    """Mean absolute difference, in float32 (features are float16/bfloat16 under mixed precision)."""
    return ops.mean(ops.abs(as_float32(a) - as_float32(b)))


class ERLNetTrainer(keras.Model):
    """Trainer for ERL-Net / MEMD: a keras.Model whose ``train_step`` takes one gradient step of the
    current stage with ``tf.GradientTape``, updating only that stage's sub-networks."""

    def __init__(self, cfg: ERLNetConfig, strategy: str = "ma_d", lambda_fre: float = 0.01,
                 learning_rate: float = 4e-4, **kwargs):
        super().__init__(**kwargs)
        if strategy not in STRATEGIES:
            raise ValueError(f"--erl_strategy must be one of {sorted(STRATEGIES)}, got {strategy!r}")
        if cfg.entanglement == "none" and strategy != "memd":
            raise ValueError("--entanglement=none is the plain MEMD: use --erl_strategy=memd (or --method=memd)")
        if strategy == "memd" and cfg.entanglement != "none":
            cfg = dataclasses.replace(cfg, entanglement="none")
        self.cfg = cfg
        self.strategy_name = strategy
        self.stages = STRATEGIES[strategy]
        self.lambda_fre = float(lambda_fre)
        self.net = ERLNet(cfg, name="erlnet")
        needs_ae = any("ae" in s.train for s in self.stages)
        self.clean_ae = MEMD(cfg, name="clean_ae") if needs_ae else None
        # One Adam per stage (the paper restarts each stage from lr 4e-4 with default Adam settings).
        self.stage_optimizers = [optimizer(keras.optimizers.Adam, learning_rate, name=f"adam_stage_{s.name}")
                                 for s in self.stages]
        self.stage_index = 0
        self.progress: tuple[int, int] | None = None  # (stage, step) of a restored checkpoint

    # -- the generic trainer interface used by erl_derain.training -------------------------------
    @property
    def pad_multiple(self) -> int:
        return self.cfg.pad_multiple

    def sub_networks(self) -> dict[str, keras.Model]:
        nets = {"men": self.net.men, "mde": self.net.mde}
        if self.net.ren is not None:
            nets["ren"] = self.net.ren
        if self.clean_ae is not None:
            nets["ae"] = self.clean_ae
        return nets

    def build_networks(self, image_shape=(1, 32, 32, 3)):
        x = tf.zeros(image_shape)
        self.net(x, use_ren=True)
        if self.clean_ae is not None:
            self.clean_ae(x)
        for i in range(len(self.stages)):
            self.stage_optimizers[i].build(self.stage_variables(i))

    def stage_variables(self, index: int | None = None) -> list:
        stage = self.stages[self.stage_index if index is None else index]
        nets = self.sub_networks()
        return trainable_weights_of(*(nets[k] for k in stage.train))

    def set_stage(self, index: int):
        self.stage_index = int(index)

    @property
    def stage(self) -> Stage:
        return self.stages[self.stage_index]

    @property
    def current_optimizer(self):
        return self.stage_optimizers[self.stage_index]

    def checkpoint_items(self) -> dict:
        items = {"net": self.net, **{f"optimizer_{i}": o for i, o in enumerate(self.stage_optimizers)}}
        if self.clean_ae is not None:
            items["clean_ae"] = self.clean_ae
        return items

    def set_progress(self, stage: int, step: int) -> None:
        """Where training has reached (the checkpoint's stage index and step within it): the inference
        network is the network as trained so far (see :meth:`inference_uses_ren`)."""
        self.progress = (int(stage), int(step))

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

    def inference_model(self) -> keras.Model:
        """The de-raining network only (no clean autoencoder), as trained so far."""
        return InferenceWrapper(self.net, self.inference_uses_ren(), name=f"erlnet_{self.strategy_name}")

    def evaluation_networks(self) -> dict:
        """What ``evaluate --network`` can score, each with the input it reads: the de-raining network
        (rainy images) and, when the strategy trains it, the clean-to-clean autoencoder (clean images):
        the introduction's experiment (the same structure translating clean images scores far higher
        than translating rainy ones: 49.51 against 31.67 dB on the raindrop data)."""
        nets = {"derain": (self.inference_model(), "rainy")}
        if self.clean_ae is not None:
            nets["clean_autoencoder"] = (self.clean_ae, "clean")
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

    def call(self, x):
        return self.net(x, use_ren=self.stage.use_ren)


class InferenceWrapper(keras.Model):
    def __init__(self, net: ERLNet, use_ren: bool, **kwargs):
        super().__init__(**kwargs)
        self.net = net
        self.use_ren = use_ren

    def call(self, x):
        return self.net(x, use_ren=self.use_ren)


def config_from_dict(d: dict) -> ERLNetConfig:
    return ERLNetConfig(
        widths=tuple(int(w) for w in d.get("widths", ERLNetConfig.widths)),
        bottleneck_width=int(d.get("bottleneck_width", 256)),
        dense_layers=int(d.get("dense_layers", 4)),
        growth=int(d.get("growth", 32)),
        base=d.get("base", "memd"),
        entanglement=d.get("entanglement", "mlgd"),
        se_ratio=int(d.get("se_ratio", 16)),
        entangle_at=d.get("erl_entangle_at") or "post_activation",  # runs written before the flag: post
    )
