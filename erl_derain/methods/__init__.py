"""The method registry: ``--method=<name>`` -> a :class:`MethodSpec`; one module per paper.

A method is one module of this package that calls :func:`register` with its :class:`MethodSpec`:
its configuration dataclass (the one source of its defaults, its flags ``--<prefix><field>`` and its
part of ``config.json``), how to build its trainer (a :class:`erl_derain.methods.base.Trainer`), the
extra input streams it trains on, the dataset features its paired stream carries, a tiny
configuration for tests and any verb of its own. Modules are discovered: adding a method adds a
module, nothing else.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Callable, Mapping

from erl_derain.methods.base import MethodError, Stage, Trainer  # noqa: F401  (the contract's names)


@dataclass(frozen=True)
class StreamSpec:
    """An input stream a method trains on besides the paired one, merged into each batch under
    ``key`` (its tensors) and ``<key>_name`` (file names). ``build(method_config, run_record, start_index=...,
    batch_size=..., cache_limit_bytes=..., rows=...)`` returns batches of ``{key: [B, H, W, 3] float32, key + "_name": [B] string}``,
    deterministic and resumable at example ``start_index``; it raises a clear error for a bad source.
    ``rows`` (None, or a ``data.streams.Rows``: one worker's shard of a multi-worker run) goes to the
    stream functions of ``erl_derain.data``, which then batch that worker's rows of each global batch."""
    key: str
    build: Callable
    description: str = ""
    source_setting: str = ""  # the config field naming the stream's source (a test points it at a folder)


@dataclass(frozen=True)
class VerbSpec:
    """A command of a method's own (``erl-derain <name>``): ``run(flags)`` returns the exit status;
    ``flags`` names the flags it reads (shown by ``erl-derain <name> --help``)."""
    name: str
    help: str
    run: Callable
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class MethodSpec:
    name: str
    description: str
    config_class: type
    build: Callable  # (method_config, run_record) -> Trainer
    flag_prefix: str
    default_lr: float = 4e-4
    schedule_flag: str = ""  # the flag choosing the stages (named when --stage_steps has the wrong length)
    tiny: Mapping[str, object] = field(default_factory=dict)  # config fields of a tiny network (tests, smoke runs)
    tiny_crop: int = 32
    streams: tuple[StreamSpec, ...] = ()
    paired_features: tuple[str, ...] = ()  # per-pixel dataset features the paired stream carries when present
    verbs: tuple[VerbSpec, ...] = ()
    normalize: Callable = staticmethod(lambda cfg: cfg)  # fixes settings the method implies (MEMD: no REN)
    display_name: str = ""  # in tables (benchmarks); default: the name
    paper_batch: tuple = ()  # (crop, batch, where the paper says so): what benchmarks time a step with
    heavy: bool = False  # too slow for the largest benchmark sizes on a CPU (skipped there by default)
    legacy_keys: frozenset = frozenset()  # old flat config.json keys of this method that are no longer settings


METHODS: dict[str, MethodSpec] = {}
_discovered = False


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name in METHODS and METHODS[spec.name] is not spec:
        raise MethodError(f"method {spec.name!r} is registered twice")
    METHODS[spec.name] = spec
    return spec


def discover() -> dict[str, MethodSpec]:
    """Import every method module of this package (each registers itself); returns the registry."""
    global _discovered
    if not _discovered:
        _discovered = True
        for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
            if not info.name.startswith("_") and info.name != "base":
                importlib.import_module(f"{__name__}.{info.name}")
    return METHODS


def get_method(name: str) -> MethodSpec:
    methods = discover()
    if name not in methods:
        raise ValueError(f"unknown --method={name!r}; available: {', '.join(sorted(methods))}")
    return methods[name]


def config_classes() -> dict[type, MethodSpec]:
    """Each configuration class once, with the first method that uses it (MEMD shares ERL-Net's)."""
    out: dict[type, MethodSpec] = {}
    for spec in discover().values():
        out.setdefault(spec.config_class, spec)
    return out


def make_trainer(record) -> Trainer:
    """The trainer of a run: a :class:`erl_derain.run_config.RunRecord`, or a flat dict of settings
    (old-style ``{"method": ..., <flag name>: value}``, converted the way old config.json files are)."""
    if isinstance(record, dict):
        from erl_derain.run_config import record_from_dict

        record = record_from_dict(record, where="settings")
    spec = get_method(record.method)
    try:
        return spec.build(record.method_config, record)
    except MethodError:
        raise
    except ValueError as e:
        raise MethodError(str(e)) from e
