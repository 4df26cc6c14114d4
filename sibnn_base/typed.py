"""The one typed config reader: plain YAML/JSON data <-> frozen dataclasses.

Every configuration in sibnn (training schedules, build configs, board files) is read here:
:func:`load_mapping` reads a file, :func:`from_dict` checks keys and coerces each value to its
field's annotated type, :func:`to_dict` turns a config back into plain data. Unknown keys, missing
keys and values of the wrong type are one-line :class:`~sibnn_base.errors.ConfigError` s that
name the key (``where``), never a traceback.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from sibnn_base.errors import ConfigError


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def coerce(tp: Any, value: Any, where: str) -> Any:
    """``value`` as type ``tp`` (an annotation: scalars, Enums, dataclasses, unions, tuples,
    dicts); a :class:`ConfigError` naming ``where`` if it is not one."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        if value is None:
            raise ConfigError(f"{where} must not be null")
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(a, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_dict(tp, value, where)
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(value)
        except ValueError:
            valid = ", ".join(str(m.value) for m in tp)
            raise ConfigError(f"{where}: {value!r} is not one of {valid}") from None
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        return tuple(coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        if not args:
            return dict(value)
        return {coerce(args[0], k, where): coerce(args[1], v, f"{where}.{k}")
                for k, v in value.items()}
    if tp is Any:
        return value
    if value is None:
        raise ConfigError(f"{where} must not be null")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")


def check_keys(cls: type, data: Any, where: str, *, dotted: bool = False) -> None:
    """``data`` must be a mapping whose keys are all fields of dataclass ``cls``. The error names
    the keys as ``where.key`` (``dotted``, for nested config sections) or after ``where:`` (a file
    or "command line")."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        keys = ", ".join(f"{where}.{k}" if dotted else str(k) for k in unknown)
        head = f"unknown key(s) {keys}" if dotted else f"{where}: unknown key(s) {keys}"
        raise ConfigError(f"{head}; valid keys: {', '.join(names)}")


def from_dict(cls: type, data: dict, where: str = "config") -> Any:
    """Build dataclass ``cls`` from plain data; unknown or missing keys are :class:`ConfigError`."""
    check_keys(cls, data, where, dotted=True)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in data:
            kwargs[f.name] = coerce(hints[f.name], data[f.name], f"{where}.{f.name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{where}.{f.name} is required")
    return cls(**kwargs)


def to_dict(obj: Any) -> Any:
    """Plain data (dicts, lists, str, numbers) of a config, for YAML, JSON and checkpoints."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def load_mapping(path: str | Path) -> dict:
    """A YAML (or ``.json``) config file as a mapping; an empty file is ``{}``. A missing file,
    invalid syntax (with its line and column) or a non-mapping is one :class:`ConfigError`."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        why = getattr(err, "strerror", None) or "not a text file"
        raise ConfigError(f"cannot read config file {path}: {why}") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except json.JSONDecodeError as err:
        raise ConfigError(f"malformed config file {path}: not valid JSON at line {err.lineno}, "
                          f"column {err.colno}: {err.msg}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or type(err).__name__
        raise ConfigError(f"malformed config file {path}: not valid YAML{at}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of keys to values, not a "
                          f"{type(data).__name__} ({str(data)[:40]!r})")
    return data
