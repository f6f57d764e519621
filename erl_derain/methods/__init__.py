"""Method registry: ``--method=<name>`` maps to a trainer builder; one module per paper.

A trainer is a ``keras.Model`` with a custom ``train_step`` and the small interface that
``erl_derain.training`` drives: ``stages`` (objects with ``.name``), ``set_stage(i)``,
``stage_variables(i)``, ``build_networks(shape)``, ``checkpoint_items()``, ``inference_model()``
and ``pad_multiple``. Adding a paper means one module plus an entry here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str
    make_trainer: Callable[[dict], object]
    default_lr: float = 4e-4  # used when --lr is not given


def _erlnet_trainer(config: dict):
    from erl_derain.methods import erlnet

    return erlnet.ERLNetTrainer(erlnet.config_from_dict(config), strategy=config.get("erl_strategy", "ma_d"),
                                lambda_fre=config.get("lambda_fre", 0.01), learning_rate=config.get("lr") or 4e-4)


def _memd_trainer(config: dict):
    return _erlnet_trainer({**config, "entanglement": "none", "erl_strategy": "memd"})


def _menet_trainer(config: dict):
    from erl_derain.methods import menet

    return menet.trainer_from_config(config)


def _iadn_trainer(config: dict):
    from erl_derain.methods import iadn

    return iadn.trainer_from_config(config)


def _jrgr_trainer(config: dict):
    from erl_derain.methods import jrgr

    return jrgr.trainer_from_config(config)


METHODS: dict[str, MethodSpec] = {
    "erlnet": MethodSpec("erlnet", "ERL-Net (ICCV 2019): MEMD + residual encoder, MA_A..MA_D / DT", _erlnet_trainer),
    "memd": MethodSpec("memd", "ERL-Net's basic MEMD / MEMD- / MEMD-- (no residual encoder)", _memd_trainer),
    "menet": MethodSpec("menet", "MENET: desubpixel U-Net with CA, L_p/L_e/L_t tasks, fixed/GB/LB weighting",
                        _menet_trainer, default_lr=1e-3),
    "iadn": MethodSpec("iadn", "Intensity-aware deraining (TIP 2021): PHP blocks, contrast-aware pooling, two "
                       "sub-networks, colour and semantic regularisation", _iadn_trainer, default_lr=3e-4),
    "jrgr": MethodSpec("jrgr", "JRGR (CVPR 2021): joint rain generation and removal, disentangled translation on "
                       "rain layers (needs --real_dataset)", _jrgr_trainer, default_lr=1e-4),
}


def get_method(name: str) -> MethodSpec:
    if name not in METHODS:
        raise ValueError(f"unknown --method={name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name]


def make_trainer(config: dict):
    return get_method(config["method"]).make_trainer(config)
