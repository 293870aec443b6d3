"""One typing path for option values from the command line, YAML and JSON files and presets.

:func:`coerce_value` turns a value into the type an options field declares (its annotation, read with
``typing.get_type_hints``, so ``int | None``, ``int | str``, ``Literal[...]`` and ``list[str]`` work):
text is parsed the way the command line spells it (``"8"`` -> 8, ``"false"`` -> False, ``"1e-5"`` ->
1e-05, ``"none"`` -> None where None is allowed), values a file already typed are checked (``2.5`` is
not an integer, ``null`` is not a number, a YAML ``yes`` is not text). Anything else raises
:class:`~dist_peakd.errors.ConfigError` naming where the value came from, the option and what was
expected. :func:`read_options_file` reads a YAML/JSON file of options strictly (syntax errors with
their line, duplicate keys, non-mapping contents).
"""

from __future__ import annotations

import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Any

from .errors import ConfigError

_TRUE, _FALSE = {"true", "yes", "on", "1"}, {"false", "no", "off", "0"}
_NONE = {"none", "null", "~"}
_INT = re.compile(r"[+-]?\d+")
_FLOAT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


class _Refused(ValueError):
    """A value that does not fit one type (the message says what was expected)."""


def _show(value: Any) -> str:
    return "null" if value is None else repr(value)


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise _Refused("true or false")


def _as_int(value: Any) -> int:
    if isinstance(value, bool):
        raise _Refused("an integer")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT.fullmatch(value.strip()):
        return int(value.strip())
    raise _Refused("an integer")


def _as_float(value: Any) -> float:
    if isinstance(value, bool):
        raise _Refused("a number")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        number = float(value.strip())
    else:
        raise _Refused("a number")
    if not math.isfinite(number):
        raise _Refused("a finite number")
    return number


def _as_str(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise _Refused("text (quote it in a YAML file)")


def _as_sequence(value: Any, item: Any) -> list[Any]:
    if isinstance(value, str):
        text = value.strip()
        value = json.loads(text) if text.startswith("[") else [v.strip() for v in text.split(",") if v.strip()]
    if not isinstance(value, list | tuple):
        raise _Refused("a list")
    return [_coerce(item, v) for v in value]


def _as_mapping(value: Any) -> dict[str, Any]:
    if isinstance(value, str):
        import yaml

        value = yaml.safe_load(value)
    if not isinstance(value, dict):
        raise _Refused("a mapping")
    return value


def _coerce(annotation: Any, value: Any) -> Any:
    """``value`` as ``annotation``; raises :class:`_Refused` saying what was expected."""
    if annotation is Any or annotation is object:
        return value
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        return _coerce_union(args, value)
    if origin is typing.Literal:
        for choice in args:
            try:
                candidate = _coerce(type(choice), value)
            except _Refused:
                continue
            if candidate == choice:
                return choice
        raise _Refused("one of " + ", ".join(map(repr, args)))
    if origin in (list, tuple) or annotation in (list, tuple):
        item = args[0] if args else Any
        out = _as_sequence(value, item)
        return tuple(out) if (origin or annotation) is tuple else out
    if origin is dict or annotation is dict:
        return _as_mapping(value)
    simple = {bool: _as_bool, int: _as_int, float: _as_float, str: _as_str}
    if annotation in simple:
        if value is None:
            raise _Refused({bool: "true or false", int: "an integer", float: "a number", str: "text"}[annotation])
        return simple[annotation](value)
    if annotation is type(None):
        if value is None or (isinstance(value, str) and value.strip().lower() in _NONE):
            return None
        raise _Refused("none")
    return value  # a type this module does not know: the options class validates it


def _coerce_union(members: tuple[Any, ...], value: Any) -> Any:
    optional = type(None) in members
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in _NONE):
        if optional:
            return None
    expected = []
    for member in (m for m in members if m is not type(None)):
        try:
            return _coerce(member, value)
        except _Refused as e:
            expected.append(str(e))
    if optional:
        expected.append("none")
    raise _Refused(" or ".join(dict.fromkeys(expected)))


def coerce_value(name: str, annotation: Any, value: Any, source: str) -> Any:
    """``value`` of option ``name`` (from ``source``: "the command line", "config file x.yaml", ...)
    as its declared type; :class:`ConfigError` naming source, option, expectation and value otherwise."""
    try:
        return _coerce(annotation, value)
    except (_Refused, ValueError) as e:
        expected = str(e) if isinstance(e, _Refused) else f"a valid value ({e})"
        raise ConfigError(f"{source}: option {name}: expected {expected}, got {_show(value)}") from None


def coerce_options(cls: type, values: dict[str, Any], source: str) -> dict[str, Any]:
    """Every entry of ``values`` whose name is an option of the dataclass ``cls``, typed (others kept)."""
    hints = typing.get_type_hints(cls)
    return {k: coerce_value(k, hints[k], v, source) if k in hints else v for k, v in values.items()}


# ------------------------------------------------------------------------------------ option files
def _no_duplicates(path: Path) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        seen: dict[str, Any] = {}
        for key, value in pairs:
            if key in seen:
                raise ConfigError(f"config file {path}: option {key} is given twice")
            seen[key] = value
        return seen

    return hook


def _read_yaml(path: Path, text: str) -> Any:
    import yaml

    class StrictLoader(yaml.SafeLoader):
        pass

    def mapping(loader: Any, node: Any, deep: bool = False) -> dict[Any, Any]:
        keys = [loader.construct_object(k, deep=deep) for k, _ in node.value]
        dup = next((k for i, k in enumerate(keys) if k in keys[:i]), None)
        if dup is not None:
            raise ConfigError(f"config file {path}: option {dup} is given twice (line {node.start_mark.line + 1})")
        return loader.construct_mapping(node, deep=deep)

    StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config file {path}: not valid YAML{where} ({problem})") from None


def read_options_file(path: str | Path) -> dict[str, Any]:
    """A YAML (``.yaml``/``.yml``) or JSON file holding a flat mapping of option names to values."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"option config: file {path} not found")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"option config: cannot read {path} ({e})") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        data = _read_yaml(path, text)
    else:
        try:
            data = json.loads(text, object_pairs_hook=_no_duplicates(path)) if text.strip() else None
        except json.JSONDecodeError as e:
            raise ConfigError(f"config file {path}: not valid JSON at line {e.lineno}, column {e.colno} "
                              f"({e.msg})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: must hold a mapping of option names to values, "
                          f"not a {type(data).__name__}")
    bad = [k for k in data if not isinstance(k, str)]
    if bad:
        raise ConfigError(f"config file {path}: option names must be text, got {bad[0]!r}")
    return data
