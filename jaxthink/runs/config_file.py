"""YAML files into typed dataclasses, with `key=value` overrides from the command line.

A config file is a YAML mapping whose keys are the fields of a dataclass. A nested dataclass is a
nested mapping, or a string naming another YAML file that holds it (`model: models/demo.yaml`,
looked up next to the including file first, then from the working directory). Rules:

- an unknown key is an error that lists the valid keys of that section;
- every value is checked against its field's type; a string is parsed as that type, so YAML's
  `1e-3` (a string to YAML) is a float where a float is expected;
- overrides are `dotted.key=value`, parsed by the type of the field they reach: bool as
  true/false/yes/no/1/0, lists as `[1, 2]` or `1,2`, `null` for an optional field.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


class ConfigError(ValueError):
    """A config file or override that does not fit the config's dataclass."""


def load_config(cls: type, path: str | Path | None = None, overrides: Sequence[str] = ()):
    """An instance of dataclass `cls` from a YAML file (or the defaults) plus `overrides`."""
    data: dict = {}
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        data = read_yaml(path)
        base = path.parent
    data = resolve_includes(cls, data, base, where="")
    for item in overrides:
        apply_override(cls, data, item)
    return build(cls, data)


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {path}: no such file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path}: expected a mapping of keys, got {type(data).__name__}"
        )
    return data


def field_types(cls: type) -> dict[str, Any]:
    """{field name: resolved type} of a dataclass (string annotations resolved)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _include(text: str, base: Path, where: str) -> dict:
    for candidate in (base / text, Path.cwd() / text):
        if candidate.is_file():
            return read_yaml(candidate)
    raise ConfigError(
        f"{where}: {text!r} is not a mapping nor a YAML file found in {base} or {Path.cwd()}"
    )


def resolve_includes(cls: type, data: dict, base: Path, where: str) -> dict:
    """`data` with every nested-dataclass value given as a file name replaced by its mapping."""
    types_ = field_types(cls)
    out = dict(data)
    for key, value in data.items():
        tp = types_.get(key)
        if tp is None or not dataclasses.is_dataclass(tp):
            continue
        name = f"{where}{key}"
        if isinstance(value, str):
            value = _include(value, base, name)
        if isinstance(value, dict):
            out[key] = resolve_includes(tp, value, base, f"{name}.")
    return out


def _unknown_key(cls: type, key: str, where: str) -> ConfigError:
    valid = ", ".join(f.name for f in dataclasses.fields(cls))
    return ConfigError(f"unknown config key '{where}{key}'; valid keys here: {valid}")


def apply_override(cls: type, data: dict, item: str) -> None:
    """Sets `dotted.key=value` in the raw mapping `data` of dataclass `cls`."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r}: expected key=value (dotted keys for nested fields)")
    *parents, last = key.strip().split(".")
    node, node_cls, where = data, cls, ""
    for part in parents:
        tp = field_types(node_cls).get(part)
        if tp is None:
            raise _unknown_key(node_cls, part, where)
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"override {item!r}: {where}{part} is a {_name(tp)}, not a section")
        node = node.setdefault(part, {})
        node_cls, where = tp, f"{where}{part}."
    tp = field_types(node_cls).get(last)
    if tp is None:
        raise _unknown_key(node_cls, last, where)
    if dataclasses.is_dataclass(tp):
        node[last] = _include(text, Path.cwd(), f"{where}{last}")
        node[last] = resolve_includes(tp, node[last], Path.cwd(), f"{where}{last}.")
    else:
        node[last] = coerce(text, tp, f"{where}{last}")


def build(cls: type, data: dict, where: str = ""):
    """The dataclass instance of a mapping whose values are checked and coerced to the fields."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    types_ = field_types(cls)
    for key in data:
        if key not in types_:
            raise _unknown_key(cls, key, where)
    kwargs = {key: coerce(value, types_[key], f"{where}{key}") for key, value in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where.rstrip('.') or cls.__name__}: {e}") from None


def _name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(value, tp, where: str):
    """`value` as type `tp` (parsing strings), or a ConfigError naming `where` and the type."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        is_null = value is None or (isinstance(value, str) and value.lower() in ("null", "none"))
        if is_null and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return coerce(value, option, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(
            errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of {tp}"
        )
    if dataclasses.is_dataclass(tp):
        return build(tp, value, f"{where}.")
    if origin in (list, tuple):
        return _coerce_sequence(value, origin, args, where)
    return _coerce_scalar(value, tp, where)


def _coerce_sequence(value, origin, args, where):
    if isinstance(value, str):
        text = value.strip()
        value = yaml.safe_load(text) if text.startswith("[") else [v for v in text.split(",") if v]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{where}: expected a list, got {value!r}")
    item_type = args[0] if args else str
    items = [coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _coerce_scalar(value, tp, where):
    bad = ConfigError(f"{where}: expected {_name(tp)}, got {value!r}")
    if tp is Any:
        return value
    if tp is str:
        if isinstance(value, str):
            return value
        raise bad
    if isinstance(value, str):
        text = value.strip().lower()
        if tp is bool:
            if text in _TRUE + _FALSE:
                return text in _TRUE
            raise ConfigError(f"{where}: expected a bool (true/false), got {value!r}")
        try:
            return tp(float(text)) if tp is int and "e" in text else tp(text)
        except (TypeError, ValueError):
            raise bad from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise bad


def to_dict(config) -> dict:
    """The config as plain data (what `load_config` reads back), for saving next to a run."""
    return _plain(dataclasses.asdict(config))


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x
