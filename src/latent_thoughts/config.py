"""Typed configuration shared by every stage: YAML files plus ``key=value`` overrides.

Each stage defines its options as a subclass of :class:`StageConfig` (a pydantic model that forbids
unknown keys) in its own module. :func:`load_config` builds one from an optional YAML file and a list
of command-line overrides such as ``optim.lr=3e-4`` and turns every validation problem into a
one-line :class:`ConfigError` that names the key and, for a misspelt key, suggests the closest one.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from latent_thoughts.errors import LatentThoughtsError

ConfigT = TypeVar("ConfigT", bound="StageConfig")


class ConfigError(LatentThoughtsError):
    """An unknown key, a mistyped value or an unreadable configuration file."""


class StageConfig(BaseModel):
    """Base class of every stage's options: unknown keys, NaN and infinities are errors; assignments
    are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=x"]`` into the nested mapping ``{"a": {"b": 1}, "c": "x"}``.

    Values are parsed as YAML scalars, so ``1e-4`` is a float, ``true`` a bool and ``[1, 2]`` a list.
    """
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {item!r} is not of the form key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except (yaml.YAMLError, RecursionError):
            value = raw
        if _count_values(value, MAX_CONFIG_VALUES) > MAX_CONFIG_VALUES:
            raise ConfigError(
                f"override {key.strip()!r}: more than {MAX_CONFIG_VALUES:,} values; refusing it"
            )
        value = _as_number(value)
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r} sets a key below the non-mapping {part!r}")
            node = child
        node[parts[-1]] = value
    return nested


_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _as_number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` as a string; read such exponent literals as floats."""
    return float(value) if isinstance(value, str) and _FLOAT.match(value.strip()) else value


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """Return ``base`` with ``update`` merged in, recursively for nested mappings."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


MAX_CONFIG_VALUES = 100_000
"""Values a configuration may hold once its aliases are expanded: YAML anchors nested a few levels
deep (a "billion laughs" file) would otherwise take seconds and gigabytes to validate."""


def _count_values(data: Any, limit: int) -> int:
    """Values in ``data`` with shared (aliased) parts counted each time they appear, up to ``limit + 1``."""
    count, stack = 0, [data]
    while stack and count <= limit:
        item = stack.pop()
        count += 1
        if isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return count


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping from ``path``; an unreadable or non-mapping file is a ConfigError.

    A folder, a binary file or a file whose aliases expand past :data:`MAX_CONFIG_VALUES` values is
    refused with a one-line error too.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, expected a YAML configuration file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a text file (invalid UTF-8 at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration ({exc.strerror or exc})") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML (nested too deeply)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of options, got {type(data).__name__}")
    if _count_values(data, MAX_CONFIG_VALUES) > MAX_CONFIG_VALUES:
        raise ConfigError(
            f"{path}: more than {MAX_CONFIG_VALUES:,} values once its aliases are expanded; "
            "refusing it (nested YAML anchors?)"
        )
    return data


def load_config(
    cls: type[ConfigT],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    defaults: Mapping[str, Any] | None = None,
) -> ConfigT:
    """Build a ``cls`` from defaults, then the YAML file at ``path``, then ``key=value`` overrides.

    Raises :class:`ConfigError` with one line naming the first bad key (and the closest valid key when
    the key is unknown).
    """
    values: dict[str, Any] = dict(defaults or {})
    source = "overrides"
    if path is not None:
        values = deep_merge(values, read_yaml(path))
        source = str(path)
    values = deep_merge(values, parse_overrides(overrides))
    return validate_config(cls, with_default_submodels(cls, values), source)


def with_default_submodels(cls: type[BaseModel], values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with each nested section that a field's default sets filled from that default.

    A field such as ``world: TestbedConfig = Field(default_factory=lambda: TestbedConfig(documents=2000))``
    keeps its ``documents=2000`` when a file or an override sets only ``world.seed``: without this,
    the partial section would be validated alone and fall back to the nested class's own defaults.
    """
    out = dict(values)
    for name, field in cls.model_fields.items():
        given = out.get(name)
        annotation = field.annotation
        if not isinstance(given, Mapping) or not (
            isinstance(annotation, type) and issubclass(annotation, BaseModel)
        ):
            continue
        default = None if field.is_required() else field.get_default(call_default_factory=True)
        base = default.model_dump(exclude_unset=True) if isinstance(default, BaseModel) else {}
        out[name] = with_default_submodels(annotation, deep_merge(base, dict(given)))
    return out


def validate_config(cls: type[ConfigT], values: Mapping[str, Any], source: str = "config") -> ConfigT:
    """Validate ``values`` as a ``cls``; the first problem becomes a one-line ConfigError."""
    try:
        return cls.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe_validation_error(cls, exc)}") from None


def describe_validation_error(cls: type[BaseModel], exc: ValidationError) -> str:
    """Describe the first error of ``exc`` in one line, suggesting a valid key for an unknown one."""
    error = exc.errors()[0]
    location = [str(part) for part in error["loc"]]
    dotted = ".".join(location)
    if error["type"] == "extra_forbidden":
        valid = _valid_keys(cls, location[:-1])
        close = difflib.get_close_matches(location[-1], valid, n=1, cutoff=0.5)
        hint = f"; did you mean {'.'.join([*location[:-1], close[0]])!r}?" if close else ""
        options = f" (valid keys: {', '.join(sorted(valid))})" if not close and valid else ""
        return f"unknown key {dotted!r}{hint}{options}"
    value = repr(error.get("input"))
    if len(value) > 80:  # a huge value (an expanded alias, a long list) stays one short line
        value = value[:77] + "..."
    return f"{dotted or 'config'}: {error['msg']} (got {value})"


def _valid_keys(cls: type[BaseModel], path: Sequence[str]) -> list[str]:
    """The field names valid at ``path`` inside the model ``cls`` (following nested models)."""
    model = cls
    for part in path:
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def dump_config(config: BaseModel) -> str:
    """The configuration as YAML, suitable for saving next to a run's outputs."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
