"""Typed configuration: dataclasses read from YAML, checked before anything is built.

Every section of a config file is a dataclass. `from_mapping` turns a plain mapping (from YAML) into
that dataclass, checking keys and types on the way, so that a mistake is reported with the file and
the dotted key at fault (``configs/x.yaml: model.num_heads: expected int, got 'sixteen'``) instead
of surfacing later as a shape error inside a compiled graph.
"""
from __future__ import annotations

import dataclasses
import reprlib
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Union

import yaml


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or inconsistent.

    `key` is the dotted path of the offending entry (``model.num_heads``); `source` the file.
    """

    def __init__(self, key: str, message: str | None = None, source: str | None = None):
        if message is None:  # re-raised by libraries as type(err)(text)
            key, message = "", key
        self.key = key
        self.message = message
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}{key}: {message}" if key else f"{where}{message}")

    def within(self, prefix: str = "", source: str | None = None) -> "ConfigError":
        key = f"{prefix}.{self.key}" if prefix and self.key else (prefix or self.key)
        return ConfigError(key, self.message, source or self.source)


MAX_YAML_DEPTH = 64  # nesting levels of a config file; real configs use 3


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader, refusing nesting deeper than MAX_YAML_DEPTH (PyYAML composes recursively)."""

    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigError("", f"line {mark.line + 1}: nested more than {MAX_YAML_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def safe_load(text: str):
    """`yaml.safe_load` with nesting bounded to MAX_YAML_DEPTH levels."""
    return yaml.load(text, Loader=_BoundedLoader)


def brief(value: Any, limit: int = 60) -> str:
    """A short repr of `value` for error messages: never expands deep or aliased structures."""
    text = _BRIEF.repr(value)
    return text if len(text) <= limit else text[:limit - 1] + "…"


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping with the safe loader; errors name the file (and line)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("", "config file not found", str(path))
    try:
        data = safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError("", f"not UTF-8 text (byte {err.start}: {err.reason})", str(path)) from None
    except ConfigError as err:
        raise err.within(source=str(path)) from None
    except yaml.YAMLError as err:
        raise ConfigError("", f"not valid YAML: {err}", str(path)) from None
    except ValueError as err:  # e.g. an integer literal longer than Python converts
        raise ConfigError("", f"not valid YAML: {brief(str(err), 120)}", str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("", f"expected a mapping at the top level, got {type(data).__name__}", str(path))
    return data


_BRIEF = reprlib.Repr()  # at most 2 levels of 4 items each, so the cost is bounded whatever the value
_BRIEF.maxlevel, _BRIEF.maxstring, _BRIEF.maxlong, _BRIEF.maxother = 2, 48, 24, 48
for _name in ("maxtuple", "maxlist", "maxarray", "maxdict", "maxset", "maxfrozenset", "maxdeque"):
    setattr(_BRIEF, _name, 4)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it (converted where lossless)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        choices = [arg for arg in args if arg is not type(None)]
        if len(choices) == 1:  # Optional[X]: X's own error, with its dotted key (multi_round.rate)
            return _coerce(value, choices[0], key)
        errors = []
        for arg in choices:
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(err.message)
        raise ConfigError(key, "; ".join(errors))
    if origin is Literal:
        if value not in args:
            raise ConfigError(key, f"expected one of {list(args)}, got {brief(value)}")
        return value
    if dataclasses.is_dataclass(tp):
        return from_mapping(tp, value, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"expected a list, got {brief(value)}")
        item = args[0] if args else Any
        items = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"expected a mapping, got {brief(value)}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected true or false, got {brief(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(key, f"expected an integer, got {brief(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-5` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(key, f"expected a number, got {brief(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(key, f"expected a string, got {brief(value)}")
    raise ConfigError(key, f"unsupported annotation {_type_name(tp)}")


def from_mapping(cls, data: Mapping | None, key: str = ""):
    """Build dataclass `cls` from `data`, rejecting unknown keys and wrong types, then `validate()`."""
    if data is None:
        data = {}
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(key, f"expected a mapping, got {brief(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    values = {}
    for name, value in data.items():
        shown = name if isinstance(name, str) and len(name) <= 40 else brief(name, 40)
        sub = f"{key}.{shown}" if key else shown
        if name not in fields:
            raise ConfigError(sub, f"unknown key (known keys: {', '.join(sorted(fields))})")
        values[name] = _coerce(value, hints[name], sub)
    for name, field in fields.items():
        if name not in values and field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{key}.{name}" if key else name, "required key is missing")
    try:
        obj = cls(**values)
    except ConfigError as err:
        raise err.within(key) from None
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except ConfigError as err:
            raise err.within(key) from None
    return obj


def to_mapping(obj) -> dict:
    """A dataclass as plain YAML-ready data (tuples become lists)."""
    def plain(v):
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(obj)


def apply_overrides(data: dict, overrides: list[str] | None) -> dict:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a raw config mapping."""
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(item, "override must look like section.key=value")
        dotted, raw = item.split("=", 1)
        parts = dotted.strip().split(".")
        node = data
        for part in parts[:-1]:
            if node.get(part) is None:  # absent or `section: null` (an optional section left out)
                node[part] = {}
            node = node[part]
            if not isinstance(node, dict):
                raise ConfigError(dotted, f"'{part}' is not a section")
        node[parts[-1]] = yaml.safe_load(raw)
    return data


def override_key(item: str) -> str:
    """The dotted key of an override ``section.key=value``."""
    return item.split("=", 1)[0].strip()


def blame_override(err: ConfigError, overrides: list[str] | None, source: str) -> ConfigError:
    """`err`, raised reading `source` with `overrides`, blamed on the command-line override that set its
    key (the last one, as it won), or on `source` when no override did."""
    for item in reversed(overrides or []):
        dotted = override_key(item)
        if err.key and (err.key == dotted or err.key.startswith(dotted + ".")):
            return ConfigError(err.key, err.message, f"command-line override {item!r} (on {source})")
    return err.within(source=source)


def require(condition: bool, key: str, message: str) -> None:
    """Raise a ConfigError for `key` unless `condition` holds (used by the sections' validate())."""
    if not condition:
        raise ConfigError(key, message)
