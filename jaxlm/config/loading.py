"""Reading a config: JSON files and `--set key=value` overrides, each value checked against its
field's type, into a validated `Config` (one-line `ConfigError`s naming the key)."""

from __future__ import annotations

import difflib
import json
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

from jaxlm.config.checks import validate
from jaxlm.config.fields import FIELDS, RUN_METADATA_KEYS, Config
from jaxlm.errors import ConfigError, file_problem

_HINTS = typing.get_type_hints(Config)


def _unwrap_optional(hint: Any) -> tuple[Any, bool]:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return hint, False


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


MAX_INT = 2**31 - 1  # steps, counts and seeds reach JAX as int32 (a larger one fails inside jit)


def _in_int32(key: str, value: int) -> int:
    if abs(value) > MAX_INT:
        raise ConfigError(f"config key '{key}': at most {MAX_INT:,} in size, got {value:.3g}")
    return value


def _coerce(key: str, value: Any) -> Any:
    """Check `value` against the field's type; ints are accepted for floats."""
    hint, optional = _unwrap_optional(_HINTS[key])
    if value is None:
        if optional:
            return None
        raise ConfigError(f"config key '{key}': must not be null")
    if typing.get_origin(hint) is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            raise ConfigError(f"config key '{key}': {value!r} is not one of {', '.join(map(repr, choices))}")
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if _is_int(value):
            return _in_int32(key, value)
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"config key '{key}': {value} is not a finite number")
            return float(value)
    elif hint is str:
        if isinstance(value, str):
            return value
    elif typing.get_args(hint) == (int, int):  # tuple[int, int]: a JSON list of two integers
        if isinstance(value, (list, tuple)) and len(value) == 2 and all(_is_int(v) for v in value):
            return tuple(_in_int32(key, int(v)) for v in value)
        raise ConfigError(f"config key '{key}': expected a list of two integers, got {value!r}")
    elif typing.get_origin(hint) is tuple:  # tuple[str, ...]: a JSON list of strings
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise ConfigError(f"config key '{key}': expected a list of strings, got {value!r}")
    else:  # pragma: no cover - a new field type nobody taught _coerce
        raise AssertionError(f"unsupported field type {hint} for {key}")
    raise ConfigError(f"config key '{key}': expected {hint.__name__}, got {type(value).__name__} {value!r}")


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` from the CLI; the value is typed by the field (JSON where it parses)."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    _check_known(key)
    hint, _ = _unwrap_optional(_HINTS[key])
    if raw in ("null", "None"):
        return key, None
    if hint is str or (typing.get_origin(hint) is Literal and all(isinstance(c, str) for c in typing.get_args(hint))):
        return key, raw
    if hint is bool and raw.lower() in ("true", "false", "1", "0", "yes", "no"):
        return key, raw.lower() in ("true", "1", "yes")
    try:
        return key, loads_strict(raw)
    except ValueError:
        raise ConfigError(f"config key '{key}': cannot parse {raw!r} as {getattr(hint, '__name__', hint)}") from None


def _check_known(key: str) -> None:
    if key not in FIELDS:
        near = difflib.get_close_matches(key, FIELDS, n=1)
        raise ConfigError(f"config key '{key}': unknown key" + (f" (did you mean '{near[0]}'?)" if near else ""))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a config JSON file into a dict, with one-line errors for the usual mistakes."""
    path = Path(path)
    if problem := file_problem(path):
        raise ConfigError(f"config file '{path}': {problem}")
    try:
        raw = loads_strict(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file '{path}': not UTF-8 text (byte {e.start}: {e.reason})") from None
    except OSError as e:
        raise ConfigError(f"config file '{path}': cannot read it ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"config file '{path}': invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except ValueError as e:
        raise ConfigError(f"config file '{path}': {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file '{path}': expected a JSON object at the top level")
    return config_values(raw)


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows (write a finite number)")


def loads_strict(text: str) -> Any:
    """json.loads without Python's NaN/Infinity extension: a config holds finite numbers only."""
    try:
        return json.loads(text, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("JSON nested too deeply to read") from None


def config_values(stored: dict[str, Any]) -> dict[str, Any]:
    """The Config keys of a stored config.json (a run's metadata keys, such as `name`, left out)."""
    return {k: v for k, v in stored.items() if k not in RUN_METADATA_KEYS}


def build_config(values: dict[str, Any], overrides: dict[str, Any] | None = None) -> Config:
    """Typed, validated Config from a dict of keys and a dict of overrides."""
    merged = {**values, **(overrides or {})}
    kwargs = {}
    for key, value in merged.items():
        _check_known(key)
        kwargs[key] = _coerce(key, value)
    config = Config(**kwargs)
    validate(config)
    return config


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Config file + `--set key=value` strings -> validated Config."""
    parsed = dict(parse_override(o) for o in overrides or [])
    return build_config(read_config_file(path), parsed)
