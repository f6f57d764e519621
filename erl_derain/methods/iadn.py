"""Intensity-aware deraining network: Xu, Tian, Yang, Yin & Lau, "Intensity-Aware Single-Image
Deraining with Semantic and Color Regularization" (IEEE TIP 2021). No public code: the paper is the
specification (Section III); where it is silent the choices are ours, marked "ours" here and in
``erl_derain.nn.php``, most of them flags.

Network (Section III.B, Fig. 2):

* sub-network 1 turns the rainy image Y into X^c (rain removed, structures and colours): a first 3x3
  convolution, contrast-aware pooling of Y (Eq. 2, ``erl_derain.nn.php.ContrastAwarePooling``)
  concatenated with those low-level features, a 3x3 fusion convolution, ``--iadn_blocks`` PHP blocks
  (parallel pyramids with top-down aggregation and reweighting, stacked with increasing dilation into a
  hierarchical pyramid), a final 1x1 convolution to a residual added to Y;
* sub-network 2 refines X^c into X (details): the same trunk without contrast-aware pooling,
  ``--iadn_refine_blocks`` PHP blocks, residual added to X^c;
* the segmentation network Phi has the structure of the whole deraining network (Section III.D: "We
  share the same network structure of the segmentation network to our deraining network"): a copy of
  sub-network 1 (3 channels, residual) followed by a copy of sub-network 2 whose last 1x1 convolution
  gives the 19 class logits (no residual); it follows the deraining network's ablations (without
  sub-network 2, Phi is sub-network 1 with 19 outputs). ``--iadn_seg_net=sub1`` keeps the structure of
  runs made before Phi had both sub-networks (sub-network 1 only), and a config.json without the
  "iadn_seg_net" setting (written before it existed) loads as ``sub1``. Phi is used only in training,
  for L_seg on X^c, and only when the dataset has labels.

Loss (Section III.C, Eq. 5): lambda_1 L_acc(X^c, X_f^gt) + lambda_2 L_acc(X, X^gt) + lambda_3
L_col(X^c, X^gt) + lambda_4 L_seg(Phi(X^c), S^gt) with L_acc the Charbonnier distance (Eq. 3), L_col
the per-pixel RGB cosine (Eq. 4), X_f^gt the clean image low-pass filtered by a Gaussian of
``--gaussian_kernel`` (3, 5, 7 or 9; default 5) and weights 1, 1, 0.1, 0.05 (a weight left unset takes
its term's default). Training (Section III.D): Adam 3e-4 divided by 10 at epochs 150 and 200, 250
epochs, batch 1, scale/crop/flip/rotation augmentation (``--crop_mode=scale_rotate --flip``).

Table IV's ablations (Section IV.C) are flags: ``--php_mode`` (standard | parallel_only |
hierarchical_only | php_concat | php), ``--contrast_pooling`` (contrast | max | none),
``--noiadn_filtered_gt`` (X_f^gt -> X^gt), ``--noiadn_refinement`` (w/o X) and
``--exclude_rain_sizes`` (w/o S, M, L: training examples of cityscapes_rain dropped by their
``rain_radius``); Table III's are ``--lambda_col=0`` and ``--lambda_seg=0``. Not implemented: "PHP ->
Non-local" and "X^c -> SPANet".
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import keras
import tensorflow as tf
from keras import layers

from erl_derain import losses as losses_lib
from erl_derain.config import option
from erl_derain.distribute import as_float32, for_gradients, optimizer
from erl_derain.methods import MethodSpec, register
from erl_derain.methods import base as method_base
from erl_derain.nn.php import CONTRAST_POOLING_MODES, PHP_MODES, ContrastAwarePooling, PHPBlock

SEG_NETS = ("deraining", "sub1")
"""Values of ``--iadn_seg_net``: "deraining" (Phi has the deraining network's structure, both
sub-networks; the paper) or "sub1" (sub-network 1 only, with 19 outputs: the structure of earlier runs,
whose checkpoints it loads)."""

LAMBDA_DEFAULTS = {"lambda_acc_c": 1.0, "lambda_acc": 1.0, "lambda_col": 0.1, "lambda_seg": 0.05}
"""Eq. 5's weights lambda_1..lambda_4 (Section III.C, "Sensitivity on hyper-parameters"): 1, 1, 0.1, 0.05."""


PREFIX = "iadn_"


@dataclass(frozen=True)
class IADNConfig:
    """The intensity-aware network's settings (flags ``--iadn_<field>``; the old names are accepted).
    Where the paper is silent the defaults are ours (width, blocks, groups)."""
    width: int = option(32, "Trunk width (the paper gives none).")
    blocks: int = option(3, "PHP blocks in sub-network 1 (and in the segmentation network's copy of it).")
    refine_blocks: int = option(1, "PHP blocks in sub-network 2.")
    groups: int = option(3, "Parallel pyramids stacked per PHP block (hierarchical pyramid).", flag="iadn_php_groups",
                        aliases=("php_groups",))
    k: int = option(4, "Parallel dilated convolutions per pyramid (the paper: 4).", cli=False)
    php_mode: str = option("php", "The PHP block or a Table IV ablation.", choices=PHP_MODES, aliases=("php_mode",))
    contrast_pooling: str = option("contrast", "Contrast-aware pooling (Eq. 2), max pooling, or none (Table IV).",
                                   choices=CONTRAST_POOLING_MODES, aliases=("contrast_pooling",))
    refinement: bool = option(True, "Sub-network 2 (False: Table IV 'w/o X').")
    filtered_gt: bool = option(True, "Supervise X^c with the Gaussian-filtered clean image (False: Table IV "
                               "'X_f^gt -> X^gt').")
    gaussian_kernel: int = option(5, "Gaussian kernel of the low-frequency ground truth (3, 5, 7, 9).",
                                  aliases=("gaussian_kernel",))
    lambda_acc_c: float = option(1.0, "Weight of L_acc(X^c, X_f^gt) (Eq. 5 lambda_1).", aliases=("lambda_acc_c",))
    lambda_acc: float = option(1.0, "Weight of L_acc(X, X^gt) (lambda_2).", aliases=("lambda_acc",))
    lambda_col: float = option(0.1, "Weight of the colour alignment L_col (lambda_3; 0: Table III without it).",
                               aliases=("lambda_col",))
    lambda_seg: float = option(0.05, "Weight of the semantic regularisation L_seg (lambda_4; used only when the "
                               "dataset has segmentation labels).", aliases=("lambda_seg",))
    seg_net: str = option("deraining", "Structure of the segmentation network Phi: the deraining network's, both "
                          "sub-networks (the paper), or sub-network 1 only (runs made before this setting, whose "
                          "config.json lacks it, load as sub1).", choices=SEG_NETS, legacy="sub1")
    num_classes: int = option(19, "Segmentation classes (Cityscapes' training classes).", cli=False)
    charbonnier_eps: float = option(1e-3, "Charbonnier epsilon of L_acc (Eq. 3).", cli=False)

    @property
    def pad_multiple(self) -> int:
        return 1  # no down-sampling: any size as is

    @property
    def lambdas(self) -> tuple[float, float, float, float]:
        return (self.lambda_acc_c, self.lambda_acc, self.lambda_col, self.lambda_seg)


class SubNetwork(keras.Model):
    """conv3x3 -> [contrast-aware pooling of the input, concatenated] -> conv3x3 -> PHP blocks ->
    conv1x1 (-> + input when ``residual``)."""

    def __init__(self, cfg: IADNConfig, blocks: int, *, contrast_pooling: str, out_channels: int = 3,
                 residual: bool = True, **kwargs):
        super().__init__(**kwargs)
        if contrast_pooling not in CONTRAST_POOLING_MODES:
            raise ValueError(f"--iadn_contrast_pooling must be one of {'|'.join(CONTRAST_POOLING_MODES)}, "
                             f"got {contrast_pooling!r}")
        self.residual = residual
        self.first = layers.Conv2D(cfg.width, 3, padding="same", activation="relu", name="first")
        self.pooling = None if contrast_pooling == "none" else ContrastAwarePooling(mode=contrast_pooling,
                                                                                     name="contrast_pooling")
        self.fuse = layers.Conv2D(cfg.width, 3, padding="same", activation="relu", name="fuse")
        self.blocks = [PHPBlock(cfg.width, groups=cfg.groups, k=cfg.k, mode=cfg.php_mode, name=f"php_{i}")
                       for i in range(blocks)]
        self.last = layers.Conv2D(out_channels, 1, name="last")  # the only 1x1 convolution

    def call(self, x, training=False):
        f = self.first(x)
        if self.pooling is not None:
            f = tf.concat([f, self.pooling(x)], axis=-1)
        f = self.fuse(f)
        for block in self.blocks:
            f = block(f)
        out = self.last(f)
        return as_float32(x + out if self.residual else out)


class IADN(keras.Model):
    """Y -> (X^c, X); X is X^c itself without the refinement sub-network."""

    def __init__(self, cfg: IADNConfig = IADNConfig(), **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.sub1 = SubNetwork(cfg, cfg.blocks, contrast_pooling=cfg.contrast_pooling, name="sub1")
        self.sub2 = SubNetwork(cfg, cfg.refine_blocks, contrast_pooling="none", name="sub2") if cfg.refinement else None

    def call(self, y, training=False):
        x_c = self.sub1(y, training=training)
        x = self.sub2(x_c, training=training) if self.sub2 is not None else x_c
        return x_c, x


class SegmentationNetwork(keras.Model):
    """Phi (Section III.D): the structure of the deraining network :class:`IADN` with ``num_classes``
    logits out. ``sub1`` is a copy of sub-network 1 (contrast-aware pooling, ``blocks`` PHP blocks,
    3 channels, residual), ``sub2`` a copy of sub-network 2 (``refine_blocks`` PHP blocks) whose last
    1x1 convolution gives the logits (no residual: classes are not an image). Without refinement
    (Table IV "w/o X") the deraining network is sub-network 1 alone, and so is Phi: ``sub1`` then gives
    the logits."""

    def __init__(self, cfg: IADNConfig, **kwargs):
        super().__init__(**kwargs)
        two = cfg.refinement
        self.sub1 = SubNetwork(cfg, cfg.blocks, contrast_pooling=cfg.contrast_pooling,
                               out_channels=3 if two else cfg.num_classes, residual=two, name="sub1")
        self.sub2 = SubNetwork(cfg, cfg.refine_blocks, contrast_pooling="none", out_channels=cfg.num_classes,
                               residual=False, name="sub2") if two else None

    def call(self, x, training=False):
        h = self.sub1(x, training=training)
        return self.sub2(h, training=training) if self.sub2 is not None else h


def segmentation_network(cfg: IADNConfig) -> keras.Model:
    """Phi of ``--iadn_seg_net``: :class:`SegmentationNetwork` ("deraining") or, for "sub1", the single
    sub-network 1 with ``num_classes`` outputs that runs made before had (same variable names)."""
    if cfg.seg_net not in SEG_NETS:
        raise ValueError(f"--iadn_seg_net must be one of {'|'.join(SEG_NETS)}, got {cfg.seg_net!r}")
    if cfg.seg_net == "sub1":
        return SubNetwork(cfg, cfg.blocks, contrast_pooling=cfg.contrast_pooling, out_channels=cfg.num_classes,
                          residual=False, name="segmentation")
    return SegmentationNetwork(cfg, name="segmentation")


class DerainingOutput(keras.Model):
    """The deraining network's result X alone: Y -> X (the inference model pads and clips)."""

    def __init__(self, net: IADN, **kwargs):
        super().__init__(**kwargs)
        self.net = net

    def call(self, y, training=False):
        return self.net(y, training=training)[1]


@dataclass(frozen=True)
class Stage:
    name: str
    train: tuple


class IADNTrainer(method_base.Trainer):
    """One stage: deraining network and segmentation network trained together on Eq. 5 (custom
    ``train_step``); without labels in the batch L_seg is off and Phi is not run."""

    stages = (method_base.Stage("train", ("iadn", "segmentation")),)

    def __init__(self, cfg: IADNConfig = IADNConfig(), learning_rate: float = 3e-4, **overrides):
        super().__init__()
        if "lambdas" in overrides:
            lambdas = tuple(overrides.pop("lambdas"))
            if len(lambdas) != 4:
                raise ValueError(f"four loss weights expected (--iadn_lambda_acc_c, --iadn_lambda_acc, "
                                 f"--iadn_lambda_col, --iadn_lambda_seg: Eq. 5's lambda_1..lambda_4), got {lambdas}")
            overrides.update(zip(("lambda_acc_c", "lambda_acc", "lambda_col", "lambda_seg"), lambdas))
        cfg = dataclasses.replace(cfg, **overrides) if overrides else cfg
        if cfg.gaussian_kernel not in (3, 5, 7, 9):
            raise ValueError(f"--iadn_gaussian_kernel must be 3, 5, 7 or 9 (the paper's sizes), "
                             f"got {cfg.gaussian_kernel}")
        for name, value in zip(("lambda_acc_c", "lambda_acc", "lambda_col", "lambda_seg"), cfg.lambdas):
            if not value >= 0:
                raise ValueError(f"--iadn_{name} must be >= 0 (Eq. 5's weights), got {value}")
        self.cfg = cfg
        self.lambdas = tuple(float(v) for v in cfg.lambdas)
        self.gaussian_kernel = int(cfg.gaussian_kernel)
        self.filtered_gt = bool(cfg.filtered_gt)
        self.eps = float(cfg.charbonnier_eps)
        self.net = IADN(cfg, name="iadn")
        self.seg_net = segmentation_network(cfg)
        self.optimizers = {"0": optimizer(keras.optimizers.Adam, learning_rate, name="adam")}

    @property
    def optimizer_(self):
        return self.optimizers["0"]

    # -- the trainer contract ------------------------------------------------------------------------
    @property
    def pad_multiple(self) -> int:
        return self.cfg.pad_multiple

    def networks(self) -> dict:
        return {"net": self.net, "segmentation": self.seg_net}

    def sub_networks(self) -> dict:
        return {"iadn": self.net, "segmentation": self.seg_net}

    def inference_network(self):
        """The deraining network only (no segmentation network): Y -> X."""
        return DerainingOutput(self.net, name="iadn_inference")

    # -- losses and the step -----------------------------------------------------------------------
    def compute_losses(self, rainy, clean, segmentation=None, training=True) -> dict:
        l1, l2, l3, l4 = self.lambdas
        x_c, x = self.net(rainy, training=training)
        target_c = losses_lib.gaussian_lowpass(clean, self.gaussian_kernel) if self.filtered_gt else clean
        out = {"l_acc_c": losses_lib.charbonnier(target_c, x_c, eps=self.eps)}
        total = l1 * out["l_acc_c"]
        if self.cfg.refinement:
            out["l_acc"] = losses_lib.charbonnier(clean, x, eps=self.eps)
            total += l2 * out["l_acc"]
        if l3 > 0:
            out["l_col"] = losses_lib.colour_cosine(clean, x_c)
            total += l3 * out["l_col"]
        if segmentation is not None and l4 > 0:
            out["l_seg"] = losses_lib.segmentation_ce(segmentation, self.seg_net(x_c, training=training))
            total += l4 * out["l_seg"]
        out["loss"] = total
        return out

    def train_step(self, data):
        variables = self.stage_variables()
        with tf.GradientTape() as tape:
            logs = self.compute_losses(data["rainy"], data["clean"], data.get("segmentation"))
            scaled = for_gradients(logs["loss"], self.optimizer_)
        grads = tape.gradient(scaled, variables)
        # Without labels Phi is not run: its variables get no gradient and are left untouched.
        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        self.optimizer_.apply([g for g, _ in pairs], [v for _, v in pairs])
        return logs


def config_from_dict(d: dict) -> IADNConfig:
    """The settings from a flat dict of flag names (old style; missing or None settings take their
    defaults, a missing iadn_seg_net the structure of the runs made before it: sub1)."""
    from erl_derain import config as cfglib

    names = cfglib.key_names(IADNConfig, PREFIX)
    return cfglib.from_dict(IADNConfig, {k: v for k, v in d.items() if k in names}, prefix=PREFIX)


def trainer_from_config(config: dict) -> IADNTrainer:
    """The trainer of a flat dict of settings (old style)."""
    from erl_derain.methods import make_trainer

    return make_trainer({"method": "iadn", **config})


register(MethodSpec(
    name="iadn", description="Intensity-aware deraining (TIP 2021): PHP blocks, contrast-aware pooling, two "
    "sub-networks, colour and semantic regularisation", config_class=IADNConfig, flag_prefix=PREFIX,
    default_lr=3e-4, build=lambda cfg, record: IADNTrainer(cfg, learning_rate=record.lr),
    tiny={"width": 4, "blocks": 1, "refine_blocks": 1, "groups": 1}, tiny_crop=16,
    paired_features=("segmentation",), display_name="intensity-aware",
    paper_batch=(256, 1, "intensity-aware paper: batch 1, crop not given (our default 256)")))
