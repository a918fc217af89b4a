"""Strict construction of frozen dataclasses from YAML, and the `KEY=VALUE` overrides over them.

A value must have its field's type (an integer is not a string, `true` is not a number), and a key
that names no field is an error naming the key and the section's known keys: a misspelt setting
must not be silently ignored. Used for run configs (violet_core.config) and grid files.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message names the key and the reason."""



def read_yaml_mapping(path: Path, what: str, error: type[ValueError]) -> dict[str, Any]:
    """A YAML file that must hold a mapping; `error` carries a one-line message naming the file."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise error(f"{path}: no such {what} file") from None
    except yaml.YAMLError as problem:
        raise error(f"{path}: not valid YAML ({str(problem).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise error(f"{path}: a {what} must be a mapping, got {type(raw).__name__}")
    return raw


def parse_overrides(pairs: list[str] | tuple[str, ...], option: str = "--set") -> dict[str, Any]:
    """`KEY=VALUE` strings (as given to `option`), values parsed as YAML: `mvm.targets=[sif]`, `mask.ratio=0.5`.

    The one parser of overrides, shared by the trainer's and the `ablate` command lines.
    """
    parsed: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{option} '{pair}' is not KEY=VALUE")
        try:
            parsed[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as problem:
            raise ConfigError(f"{option} '{pair}': the value is not valid YAML "
                              f"({str(problem).splitlines()[0]})") from None
    return parsed


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of `raw` with each dotted key set; intermediate mappings are created."""
    merged = json.loads(json.dumps(raw))
    for dotted, value in overrides.items():
        node = merged
        *parents, leaf = dotted.split(".")
        for part in parents:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"'{dotted}': '{part}' is a value, not a section")
            node = child
        node[leaf] = value
    return merged


def build_dataclass(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"'{where.rstrip('.') or 'config'}' must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown key '{where}{unknown[0]}' (known in this section: {', '.join(sorted(known))})")
    values = {}
    for name, value in raw.items():
        values[name] = _coerce(hints[name], value, f"{where}{name}")
    return cls(**values)


def _coerce(kind: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(kind):
        return build_dataclass(kind, value, f"{key}.")
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if kind is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(inner[0], value, key)
        mapping = next((a for a in inner if typing.get_origin(a) is dict), None)
        if isinstance(value, dict) and mapping is not None:  # its own message names the bad entry
            return _coerce(mapping, value, key)
        for alternative in inner:  # e.g. `str | dict[str, str]`: a value for all, or one per name
            try:
                return _coerce(alternative, value, key)
            except ConfigError:
                continue
        kinds = " or ".join(_KIND_NAMES.get(typing.get_origin(a) or a, str(a)) for a in inner)
        raise ConfigError(f"'{key}' must be {kinds}, got {value!r}")
    if origin is tuple:
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{key}' must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, key) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"'{key}' must have {len(args)} items, got {value!r}")
        return tuple(_coerce(a, v, key) for a, v in zip(args, value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{key}' must be a mapping, got {value!r}")
        return {str(k): _coerce(args[1], v, key) for k, v in value.items()}
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"'{key}' must be true or false, got {value!r}")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"'{key}' must be an integer, got {value!r}")
        return value
    if kind is float:
        if isinstance(value, str):
            value = _yaml11_float(value)  # PyYAML reads `1e-3` (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"'{key}' must be a number, got {value!r}")
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"'{key}' must be a string, got {value!r}")
        return value
    raise ConfigError(f"'{key}': unsupported field type {kind}")


_KIND_NAMES = {str: "a string", dict: "a mapping", tuple: "a list", int: "an integer", float: "a number",
               bool: "true or false"}


def _yaml11_float(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text
