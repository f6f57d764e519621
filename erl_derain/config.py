"""Configurations as dataclasses: one class is the single source of a component's defaults, of its
command-line flags and of its part of a run's ``config.json``.

A configuration is a frozen dataclass whose fields are declared with :func:`option` (a default, a
help text, optional choices, the flag's name when it is not ``<prefix><field>``, and old flag names
still accepted). From the class:

* :func:`define_flags` defines one absl flag per field (``--<prefix><field>``; old names as aliases,
  so old flagfiles keep working; :func:`deprecated_aliases_used` names the old spellings a command
  line used, for a warning);
* :func:`from_flags` builds the configuration from parsed flags;
* :func:`to_dict` / :func:`from_dict` write and read it as JSON (tuples as lists); an unknown key is
  a :class:`ConfigError` naming it; values are converted to the field's type (old runs stored some
  numbers as strings);
* :func:`flag_lines` writes it back as flagfile lines (``flags.txt``).

Field types understood: ``bool``, ``int``, ``float``, ``str`` and their ``X | None`` forms, and
tuples ``tuple[int, ...]``, ``tuple[float, ...]``, ``tuple[str, ...]`` (comma-separated on the
command line; ``None`` allowed when the type says so).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Iterable

from absl import flags


class ConfigError(ValueError):
    """A configuration value or key that cannot be used; the message names it and what was expected."""


_NO_LEGACY = object()


def option(default: Any, help: str, *, choices: Iterable[str] | None = None, flag: str | None = None,
           aliases: Iterable[str] = (), cli: bool = True, legacy: Any = _NO_LEGACY) -> Any:
    """A dataclass field with the metadata the flag and JSON machinery read.

    ``flag``: the flag's full name (default ``<prefix><field name>``); ``aliases``: old flag names
    (and old ``config.json`` keys) accepted for it; ``cli=False``: no flag (set in code only);
    ``legacy``: the value a stored configuration that lacks the setting gets (what the code did
    before the setting existed), when it differs from the default for new runs."""
    metadata = {"help": help, "choices": tuple(choices) if choices is not None else None, "flag": flag,
                "aliases": tuple(aliases), "cli": cli, "legacy": legacy}
    if isinstance(default, list):
        default = tuple(default)
    return dataclasses.field(default=default, metadata=metadata)


# -- types ------------------------------------------------------------------------------------------

def _unwrap_optional(tp):
    """(inner type, optional?) of ``X | None`` / ``Optional[X]``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _field_kind(tp) -> tuple[str, type | None, bool]:
    """("scalar" | "tuple", element type, optional)."""
    inner, optional = _unwrap_optional(tp)
    if typing.get_origin(inner) is tuple:
        args = typing.get_args(inner)
        return "tuple", (args[0] if args else str), optional
    return "scalar", inner, optional


def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def fields_of(cls) -> list[dataclasses.Field]:
    return list(dataclasses.fields(cls))


def _convert_scalar(value, tp, where: str):
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
        if isinstance(value, int) and value in (0, 1):
            return bool(value)
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if number != int(number):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(number)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported field type {tp}")


def convert(cls, field: dataclasses.Field, value, where: str):
    """``value`` (from JSON or a flag) as the field's type; ConfigError naming ``where`` otherwise."""
    kind, tp, optional = _field_kind(_hints(cls)[field.name])
    if value is None:
        if optional or field.default is None:
            return None
        raise ConfigError(f"{where}: a value is required")
    if kind == "tuple":
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_convert_scalar(v, tp, where) for v in value)
    value = _convert_scalar(value, tp, where)
    choices = field.metadata.get("choices")
    if choices and value not in choices:
        raise ConfigError(f"{where}: must be one of {', '.join(choices)}, got {value!r}")
    return value


# -- flags -------------------------------------------------------------------------------------------

def flag_name(field: dataclasses.Field, prefix: str = "") -> str:
    return field.metadata.get("flag") or f"{prefix}{field.name}"


def flag_names(cls, prefix: str = "") -> dict[str, str]:
    """``{field name: flag name}`` of the fields that have a flag."""
    return {f.name: flag_name(f, prefix) for f in fields_of(cls) if f.metadata.get("cli", True)}


def define_flags(cls, prefix: str = "", flag_values: flags.FlagValues = flags.FLAGS,
                 module_name: str | None = None) -> list[str]:
    """Define one absl flag per field of ``cls`` (and an alias per old name); returns the flag names.
    Names already defined are an error (two components must not share a flag)."""
    hints = _hints(cls)
    names = []
    for f in fields_of(cls):
        if not f.metadata.get("cli", True):
            continue
        name = flag_name(f, prefix)
        kind, tp, _ = _field_kind(hints[f.name])
        help_text = f.metadata.get("help") or f.name
        default = f.default
        kwargs = {"flag_values": flag_values}
        if module_name:
            kwargs["module_name"] = module_name
        if kind == "tuple":
            flags.DEFINE_list(name, None if default is None else [str(v) for v in default], help_text, **kwargs)
        elif tp is bool:
            flags.DEFINE_boolean(name, default, help_text, **kwargs)
        elif tp is int:
            flags.DEFINE_integer(name, default, help_text, **kwargs)
        elif tp is float:
            flags.DEFINE_float(name, default, help_text, **kwargs)
        elif f.metadata.get("choices"):
            flags.DEFINE_enum(name, default, list(f.metadata["choices"]), help_text, **kwargs)
        else:
            flags.DEFINE_string(name, default, help_text, **kwargs)
        for alias in f.metadata.get("aliases", ()):
            flags.DEFINE_alias(alias, name, flag_values=flag_values, **({"module_name": module_name}
                                                                        if module_name else {}))
        names.append(name)
    return names


def from_flags(cls, prefix: str = "", flag_values: flags.FlagValues = flags.FLAGS, **overrides):
    """An instance of ``cls`` from parsed flags (fields without a flag keep their default)."""
    values = {}
    for f in fields_of(cls):
        if f.name in overrides:
            values[f.name] = overrides[f.name]
        elif f.metadata.get("cli", True):
            name = flag_name(f, prefix)
            values[f.name] = convert(cls, f, flag_values[name].value, f"--{name}")
    return cls(**values)


def deprecated_aliases_used(cls, prefix: str = "", flag_values: flags.FlagValues = flags.FLAGS
                            ) -> list[tuple[str, str]]:
    """(old name, new name) of every alias of ``cls`` the command line set."""
    used = []
    for f in fields_of(cls):
        for alias in f.metadata.get("aliases", ()):
            if alias in flag_values and flag_values[alias].present:
                used.append((alias, flag_name(f, prefix)))
    return used


def flag_lines(instance, prefix: str = "") -> list[str]:
    """The configuration as flagfile lines (``--name=value``, ``--name`` / ``--noname``); None is left out."""
    lines = []
    for f in fields_of(type(instance)):
        if not f.metadata.get("cli", True):
            continue
        value = getattr(instance, f.name)
        name = flag_name(f, prefix)
        if value is None:
            continue
        if isinstance(value, bool):
            lines.append(f"--{name}" if value else f"--no{name}")
        elif isinstance(value, tuple):
            lines.append(f"--{name}={','.join(str(v) for v in value)}")
        else:
            lines.append(f"--{name}={value}")
    return lines


# -- JSON ----------------------------------------------------------------------------------------------

def to_dict(instance) -> dict:
    """JSON-ready dict of the fields (tuples as lists)."""
    out = {}
    for f in fields_of(type(instance)):
        value = getattr(instance, f.name)
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


def key_names(cls, prefix: str = "") -> dict[str, str]:
    """Every name a field is known by in JSON (field name, flag name, old aliases) -> field name."""
    names = {}
    for f in fields_of(cls):
        for key in (f.name, flag_name(f, prefix), *f.metadata.get("aliases", ())):
            names[key] = f.name
    return names


def from_dict(cls, data: dict, *, where: str = "config", prefix: str = ""):
    """An instance of ``cls`` from ``data`` (field names, flag names or old aliases as keys; a missing
    field takes its ``legacy`` value when it has one, else its default). An unknown key is a
    ConfigError naming it and ``where``."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object of settings, got {type(data).__name__}")
    names = key_names(cls, prefix)
    by_field = {f.name: f for f in fields_of(cls)}
    values = {}
    for key, value in data.items():
        if key not in names:
            known = ", ".join(sorted(by_field))
            raise ConfigError(f"{where}: unknown setting {key!r} (known: {known})")
        field = by_field[names[key]]
        if field.name in values and key != field.name:
            continue  # the field's own name wins over an old alias given as well
        if value is None and field.default is not None and not _field_kind(_hints(cls)[field.name])[2]:
            continue  # a setting left unset: its default (or legacy value)
        flag = flag_name(field, prefix)
        named = f"--{flag}" + (f" (given as {key})" if key not in (flag, field.name) else "")
        values[field.name] = convert(cls, field, value, f"{where}: {named}")
    for f in fields_of(cls):
        if f.name not in values and f.metadata.get("legacy", _NO_LEGACY) is not _NO_LEGACY:
            values[f.name] = f.metadata["legacy"]
    try:
        return cls(**values)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from e
