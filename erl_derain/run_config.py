"""A training run's settings: the shared :class:`RunConfig`, the method's configuration, and the
``config.json`` / ``flags.txt`` of a ``--model_dir``.

``config.json`` (format 2)::

    {"format": 2, "method": "<name>", "run": {<RunConfig fields>}, "method_config": {<the method's config fields>}}

``flags.txt`` holds the same as flags (``erl-derain train --flagfile=<model_dir>/flags.txt`` repeats
the run). Run folders written before format 2 hold one flat object with every flag of that release,
for every method; :func:`record_from_dict` converts them: shared settings and the method's own (by
their old flag names) are kept, the other methods' are dropped, and a setting the file lacks takes
its ``legacy`` value (what the code did before the setting existed). An unknown key is an error
naming it.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace

from erl_derain import config as cfglib
from erl_derain.config import ConfigError, option

FORMAT = 2

CROP_MODES = ("random", "ten_crop", "scale_rotate")
JIT_MODES = ("auto", "true", "false")
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


@dataclass(frozen=True)
class RunConfig:
    """The settings every method's run has: data, schedule, precision, distribution."""
    dataset: str = option("synthetic_rain", "TFDS name (e.g. synthetic_rain) or folder:/path with rainy/ and clean/.")
    clean_dir: str | None = option(None, "synthesize: folder of clean images; train/evaluate with "
                                   "--dataset=synthetic_rain: synthesise the dataset on these photos instead of "
                                   "scikit-image's.")
    clean_exclude: tuple[str, ...] = option((), "With --clean_dir: folders of images (the clean images of the sets "
                                            "you will score on) whose photographs are left out of the dataset.")
    data_dir: str | None = option(None, "TFDS data_dir (default: TFDS's, ~/tensorflow_datasets).")
    manual_dir: str | None = option(None, "Folder holding a benchmark's files (rain100h, ddn, did, agan, ...), read "
                                    "when its TFDS dataset is prepared (default: <data_dir>/downloads/manual).")
    seed: int = option(0, "Seed for initialisation, shuffling and crops.")
    batch_size: int = option(1, "Batch size per replica (ERL-Net paper: 1).")
    crop_size: int = option(320, "Random training crop, pixels (ERL-Net paper: 320).")
    flip: bool = option(False, "Random horizontal flips (ERL-Net trains 'without any data augmentation').")
    channel_shuffle: bool = option(False, "Permute the RGB channels of each training pair alike (one of 6 at random): "
                                   "colour variety for achromatic synthetic rain. Not in the papers; off by default.")
    rain_free_fraction: float = option(0.0, "Turn this fraction of the training pairs into rain-free ones (the "
                                       "rainy image replaced by its clean one, drawn per example), so that the network "
                                       "also learns to leave rain-free content alone. Not in the papers; 0 by default.")
    crop_mode: str = option("random", "Training crops: a random window per example; MENET's ten crops of every "
                            "image (corners + centre of it and of its mirror; 10 examples per image); or the "
                            "intensity-aware paper's random scale (0.5-1) + crop + flip + rotation by 0/180 degrees.",
                            choices=CROP_MODES)
    exclude_rain_sizes: tuple[str, ...] | None = option(
        None, "Training data: leave out the examples with streaks of these sizes, by the dataset's rain_radius "
        "feature (cityscapes_rain): small (radius 0.2), medium (0.4, 0.6), large (0.8, 1.0); intensity-aware "
        "paper, Table IV w/o S / M / L. Epochs count the kept examples.")
    init_from: str | None = option(None, "train: start a new run from the network weights of another run (its "
                                   "--model_dir; same method and sizes; pretrained[:NAME]: a bundled model's de-raining network); the "
                                   "optimisers start afresh. With "
                                   "--stage_steps=0,0,N only the last stage trains: a fine-tune.")
    stage_steps: tuple[int, ...] | None = option(None, "Training steps of each stage of the method's schedule, e.g. "
                                                 "2000,1000,1000 for ERL-Net's MA_D.")
    stage_epochs: tuple[float, ...] | None = option(None, "Alternative to --stage_steps: epochs of the training "
                                                    "split per stage.")
    lr: float | None = option(None, "Initial learning rate of every stage (default: the method's; ERL-Net 4e-4, "
                              "MENET 1e-3).")
    lr_decay_epochs: tuple[float, ...] | None = option(None, "Multiply the learning rate by --lr_decay_factor after "
                                                       "these epochs of each stage (MENET: 40,80); replaces the "
                                                       "plateau rule.")
    lr_decay_steps: tuple[int, ...] | None = option(None, "Same as --lr_decay_epochs in steps.")
    lr_decay_factor: float = option(0.1, "Factor of --lr_decay_epochs / --lr_decay_steps.")
    lr_linear_decay_epochs: tuple[float, ...] | None = option(
        None, "N,D: the learning rate of each stage's epoch e (1-based) is lr * (1 - max(0, e + 1 - N) / (D + 1)): "
        "N - 1 epochs at lr, then a linear decay reaching 0 at epoch N + D (the pix2pix/CycleGAN 'linear' policy "
        "as the JRGR code's train.py applies it; its defaults: 100,100). Replaces the plateau rule.")
    lr_plateau_window: int = option(500, "Steps averaged into one loss value for the plateau rule (0: off).")
    lr_plateau_patience: int = option(5, "Windows without improvement before lr is divided.")
    lr_plateau_factor: float = option(0.1, "Learning-rate factor on a plateau (paper: divided by 10).")
    min_lr: float = option(1e-7, "Lower bound of the plateau rule.")
    jit_compile: str = option("auto", "XLA for the training and inference steps (also under --strategy): auto = on "
                              "GPU only.", choices=JIT_MODES)
    mixed_precision: bool = option(False, "Mixed precision: mixed_float16 on GPU (dynamic loss scaling), "
                                   "mixed_bfloat16 on CPU/TPU; variables and network outputs stay float32.")
    strategy: str = option("default", "tf.distribute strategy: default (one device), mirrored (all local GPUs), "
                           "multi_worker (MultiWorkerMirroredStrategy from TF_CONFIG), tpu (--tpu). --batch_size is "
                           "per replica: the global batch is batch_size x replicas.", choices=STRATEGIES)
    sync_batchnorm: bool = option(False, "BatchNorm statistics over the global batch, all replicas together "
                                  "(Keras BatchNormalization(synchronized=True)), instead of each replica's "
                                  "slice; no effect on one replica or on networks without BatchNorm.")


@dataclass(frozen=True)
class RunRecord:
    """What a ``--model_dir``'s ``config.json`` holds: the method, the shared settings and the method's."""
    method: str
    run: RunConfig = field(default_factory=RunConfig)
    method_config: object = None

    @property
    def spec(self):
        from erl_derain.methods import get_method

        return get_method(self.method)

    @property
    def lr(self) -> float:
        """The run's learning rate: ``--lr`` or the method's default."""
        return self.run.lr if self.run.lr is not None else self.spec.default_lr

    def to_dict(self) -> dict:
        return {"format": FORMAT, "method": self.method, "run": cfglib.to_dict(self.run),
                "method_config": cfglib.to_dict(self.method_config)}

    def flat(self) -> dict:
        """``{flag name: value}`` of every setting (and ``method``): the run's as one flat mapping."""
        out = {"method": self.method}
        out.update({name: getattr(self.run, f) for f, name in cfglib.flag_names(RunConfig).items()})
        prefix = self.spec.flag_prefix
        out.update({cfglib.flag_name(f, prefix): getattr(self.method_config, f.name)
                    for f in cfglib.fields_of(type(self.method_config))})
        return out

    def flag_lines(self) -> list[str]:
        return [f"--method={self.method}", *cfglib.flag_lines(self.run),
                *cfglib.flag_lines(self.method_config, self.spec.flag_prefix)]

    def with_run(self, **changes) -> "RunRecord":
        return replace(self, run=replace(self.run, **changes))

    def differences(self, other: "RunRecord") -> dict:
        """``{setting: (self's, other's)}`` of the settings that differ (``run.`` / method prefixes)."""
        a, b = self.to_dict(), other.to_dict()
        out = {}
        if a["method"] != b["method"]:
            out["method"] = (a["method"], b["method"])
        for section in ("run", "method_config"):
            for k in sorted(set(a[section]) | set(b[section])):
                if a[section].get(k) != b[section].get(k):
                    out[f"{section}.{k}"] = (a[section].get(k), b[section].get(k))
        return out


def make_record(method: str, run: RunConfig | None = None, method_config=None, **method_settings) -> RunRecord:
    """A record for ``method`` (its config from ``method_config`` or its defaults, with
    ``method_settings`` replaced), normalised by the method (e.g. MEMD's fixed entanglement)."""
    from erl_derain.methods import get_method

    spec = get_method(method)
    cfg = method_config if method_config is not None else spec.config_class()
    if method_settings:
        names = cfglib.key_names(spec.config_class, spec.flag_prefix)
        unknown = [k for k in method_settings if k not in names]
        if unknown:
            raise ConfigError(f"{method}: unknown setting(s) {unknown}")
        cfg = replace(cfg, **{names[k]: cfglib.convert(spec.config_class, _field(spec.config_class, names[k]), v,
                                                       k) for k, v in method_settings.items()})
    return RunRecord(method, run or RunConfig(), spec.normalize(cfg))


def _field(cls, name):
    return next(f for f in cfglib.fields_of(cls) if f.name == name)


def record_from_dict(data: dict, where: str = "config.json") -> RunRecord:
    """A :class:`RunRecord` from a ``config.json`` of format 2 or of an earlier (flat) release."""
    from erl_derain.methods import METHODS, get_method

    if not isinstance(data, dict) or "method" not in data:
        raise ConfigError(f"{where}: expected an object with a 'method', got {str(data)[:100]}")
    try:
        spec = get_method(data["method"])
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from e
    if data.get("format") == FORMAT:
        unknown = sorted(set(data) - {"format", "method", "run", "method_config"})
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {unknown} (expected format, method, run, method_config)")
        run = cfglib.from_dict(RunConfig, data.get("run", {}), where=f"{where}: run")
        cfg = cfglib.from_dict(spec.config_class, data.get("method_config", {}), where=f"{where}: method_config",
                               prefix=spec.flag_prefix)
        return RunRecord(spec.name, run, spec.normalize(cfg))
    if "format" in data:
        raise ConfigError(f"{where}: format {data['format']!r} is not one this release reads (2, or none for "
                          "the flat files of earlier releases)")
    # A flat file of an earlier release: every flag of that release, for every method.
    run_keys = cfglib.key_names(RunConfig)
    own = cfglib.key_names(spec.config_class, spec.flag_prefix)
    others = set()
    for other in METHODS.values():
        if other.config_class is not spec.config_class:
            others |= set(cfglib.key_names(other.config_class, other.flag_prefix))
    run_part, own_part = {}, {}
    for key, value in data.items():
        if key == "method":
            continue
        if key in own:
            own_part[key] = value
        elif key in run_keys:
            run_part[key] = value
        elif key in others or key in spec.legacy_keys:
            continue  # another method's setting, recorded with its default by the old flat format
        else:
            raise ConfigError(f"{where}: unknown setting {key!r} for method {spec.name}")
    run = cfglib.from_dict(RunConfig, run_part, where=where)
    cfg = cfglib.from_dict(spec.config_class, own_part, where=where, prefix=spec.flag_prefix)
    return RunRecord(spec.name, run, spec.normalize(cfg))


def read_record(model_dir: str) -> RunRecord:
    """The RunRecord of ``model_dir``'s config.json (a local folder or a file-system URL: ``fileio``)."""
    from erl_derain import fileio

    path = os.path.join(model_dir, "config.json")
    if not fileio.exists(path):
        raise FileNotFoundError(f"{path} not found: --model_dir={model_dir} does not hold a training run "
                                "of erl_derain (expected config.json and checkpoints/)")
    try:
        data = json.loads(fileio.read_text(path))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e})") from e
    return record_from_dict(data, where=path)


def write_record(model_dir: str, record: RunRecord) -> None:
    """config.json and flags.txt of ``model_dir``, each replaced atomically (``fileio``)."""
    from erl_derain.fileio import atomic_write_text

    atomic_write_text(os.path.join(model_dir, "config.json"),
                      json.dumps(record.to_dict(), indent=2, sort_keys=True) + "\n")
    atomic_write_text(os.path.join(model_dir, "flags.txt"), "\n".join(record.flag_lines()) + "\n")
