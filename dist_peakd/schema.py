"""How an option is declared: once, in the section (a small dataclass) it belongs to.

Every option is a dataclass field made by :func:`option`: its default, its ``--help`` line, its
``--help`` group, whether it changes a stage's result, and its constraints (bounds, choices)::

    temperature: float = option(10.0, help="KD softmax temperature", gt=0)
    eval_batch_size: int = option(128, help="global evaluation batch size", result=False, ge=1)

A command's options class is the sections it uses, composed by inheritance (``dist_peakd.config``); a
class that only changes a default (``lr: float = 5e-5``) keeps the help, group, result flag and
constraints of the section that declared the option (:func:`option_meta` looks them up along the MRO).
``--help``, the "same options?" check of a stage folder, a sweep's ``--resume`` and the validation
(:mod:`dist_peakd.validation`) all read this metadata.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import field, fields
from pathlib import Path
from typing import Any

from .errors import ConfigError

#: Sections of ``--help`` besides the general options: group name -> heading.
OPTION_GROUPS: dict[str, str] = {
    "data": "Data options (a GLUE task, or your own files / hub dataset; docs/OWN_DATA.md)",
    "engine": "Engine options (DeepSpeed config, precision, optimizer, batches)",
    "loop": "Training loop options (epochs, evaluation, logging, checkpoints)",
}

#: Constraint keys of :func:`option` (checked by :mod:`dist_peakd.validation`).
CONSTRAINTS = ("ge", "gt", "le", "lt", "choices")


def option(default: Any = dataclasses.MISSING, *, help: str, result: bool = True, group: str | None = None,
           ge: float | None = None, gt: float | None = None, le: float | None = None, lt: float | None = None,
           choices: tuple[Any, ...] | None = None) -> Any:
    """A dataclass field with its ``--help`` line and whether its value changes a stage's result.

    ``result=False`` marks options that only change how a run goes, not what it produces (logging,
    checkpoint cadence, where caches live, resources): a stage folder or a sweep made with other
    values of them is still the same run and is resumed or reused. ``group`` puts the option in its
    own section of ``--help`` (one of :data:`OPTION_GROUPS`; ``None``: the general options).
    ``ge``/``gt``/``le``/``lt``: the range of a number; ``choices``: the values allowed (None is exempt
    from both where the type allows it).
    """
    constraints = {k: v for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt), ("choices", choices))
                   if v is not None}
    metadata: dict[str, Any] = {"help": help, "result": result, **constraints}
    if group is not None:
        metadata["group"] = group
    return field(default=default, metadata=metadata)


def declaring_class(cls: type, name: str) -> type | None:
    """The nearest class along ``cls``'s MRO that declares option ``name`` with :func:`option`."""
    for klass in cls.__mro__:
        f = klass.__dict__.get("__dataclass_fields__", {}).get(name)
        if f is not None and "help" in f.metadata and name in klass.__dict__.get("__annotations__", {}):
            return klass
    return None


def option_meta(cls: type, name: str) -> dict[str, Any]:
    """``{"help", "result", "group", constraints...}`` of option ``name`` of ``cls``, from the nearest class
    that declared it (``group``: ``None`` for the general options)."""
    for klass in cls.__mro__:
        f = getattr(klass, "__dataclass_fields__", {}).get(name)
        if f is not None and "help" in f.metadata:
            return {"help": "", "result": True, "group": None, **f.metadata}
    return {"help": "", "result": True, "group": None}


def non_result_options(cls: type) -> frozenset[str]:
    """Names of the options of ``cls`` that do not change a result (``option(..., result=False)``)."""
    return frozenset(f.name for f in fields(cls) if not option_meta(cls, f.name)["result"])


def option_names(cls: type) -> list[str]:
    """The options of ``cls`` in declaration order."""
    return [f.name for f in fields(cls)]


# ------------------------------------------------------------------------------------------ validation
# One typing and checking path for option values from the command line (text), YAML/JSON files and
# presets (typed values), with pydantic: each options class gets a pydantic model of its fields (the field's
# annotation; ``ge``/``gt``/``le``/``lt`` as pydantic constraints; ``choices`` as an after-validator), built
# once. Text is read the way the command line spells it ("8" -> 8, "false" -> False, "1e-5" -> 1e-05, "none"
# -> None where None is allowed, "a,b" or "[a, b]" -> a list); typed values are checked (2.5 is not an
# integer, null is not a number, a YAML ``yes`` is not text, inf is not a finite number). pydantic's own
# messages never reach the user: :func:`_refusal` writes the project's one line
# ``option <name>: expected <what>, got <value>`` / ``option <name>: must be >= 1, got 0``.

_NONE_WORDS = {"none", "null", "~"}
_RANGE_ERRORS = {"greater_than", "greater_than_equal", "less_than", "less_than_equal"}
_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "text (quote it in a YAML file)",
          list: "a list", dict: "a mapping", type(None): "none"}


def _members(annotation: Any) -> tuple[Any, ...]:
    import types
    import typing

    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def _base(member: Any) -> Any:
    import typing

    return typing.get_origin(member) or member


def _before(annotation: Any) -> Any:
    """What pydantic's lax mode does not do as the command line means it: "none" for None, a bool refused
    as a number, a text list split; anything else goes to pydantic as it is."""
    members = [_base(m) for m in _members(annotation)]
    optional = type(None) in members

    def convert(value: Any) -> Any:
        if optional and isinstance(value, str) and value.strip().lower() in _NONE_WORDS:
            return None
        if isinstance(value, bool) and bool not in members and Any not in members:
            raise ValueError("a bool")  # a YAML yes is not the integer 1
        if list in members and isinstance(value, str):
            return _text_list(value)
        if dict in members and isinstance(value, str):
            import yaml

            return yaml.safe_load(value)
        return value

    return convert


def _text_list(value: str) -> list[Any]:
    """``a,b``, ``[a,b]`` (the README's spelling) or a JSON list ``["a", "b"]`` -> a list."""
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            text = text[1:-1]
    return [v.strip().strip("'\"") for v in text.split(",") if v.strip()]


def _constrained(annotation: Any, meta: dict[str, Any]) -> Any:
    """``annotation`` with the field's bounds on its numeric members (None and text members unbounded) and
    its choices checked after typing."""
    from functools import reduce
    from typing import Annotated

    from pydantic import AfterValidator, BeforeValidator, Field
    from pydantic_core import PydanticCustomError

    bounds = {k: meta[k] for k in ("ge", "gt", "le", "lt") if k in meta}
    members = [Annotated[m, Field(**bounds)] if bounds and m in (int, float) else m
               for m in _members(annotation) if m is not type(None)]
    typed = members[0]
    if len(members) > 1:  # int | str: "2" is the integer 2 (the members in their declared order)
        typed = Annotated[reduce(lambda a, b: a | b, members), Field(union_mode="left_to_right")]
    if type(None) in _members(annotation):
        typed = typed | None
    extra: list[Any] = [BeforeValidator(_before(annotation))]
    if "choices" in meta:
        choices = tuple(meta["choices"])

        def one_of(value: Any) -> Any:
            if value is not None and value not in choices:
                raise PydanticCustomError("choice", "not one of the choices", {"value": value})
            return value

        extra.append(AfterValidator(one_of))
    return Annotated[(typed, *extra)] if extra else typed


def _model(cls: type) -> Any:
    """The pydantic model of ``cls``'s options (built once per class)."""
    cached = _MODELS.get(cls)
    if cached is not None:
        return cached
    import typing

    from pydantic import ConfigDict, create_model

    hints = typing.get_type_hints(cls)
    specs = {f.name: (_constrained(hints[f.name], option_meta(cls, f.name)), None) for f in fields(cls)}
    model = create_model(f"{cls.__name__}Values",
                         __config__=ConfigDict(coerce_numbers_to_str=True, allow_inf_nan=False,
                                               arbitrary_types_allowed=True), **specs)
    _MODELS[cls] = (model, hints)
    return _MODELS[cls]


_MODELS: dict[type, Any] = {}


def _show(value: Any) -> str:
    return "null" if value is None else repr(value)


def _expected(annotation: Any, value: Any) -> str:
    words = [_WORDS.get(_base(m), "a valid value") for m in _members(annotation) if m is not Any]
    finite = float in [_base(m) for m in _members(annotation)]
    if finite and not isinstance(value, bool):
        try:
            import math

            if not math.isfinite(float(value)):
                words = ["a finite number" if w == "a number" else w for w in words]
        except (TypeError, ValueError):
            pass
    none = [w for w in words if w == "none"]
    return " or ".join(dict.fromkeys([w for w in words if w != "none"] + none))


def _range_words(meta: dict[str, Any], optional: bool) -> str:
    low = ("ge", ">=", "[") if "ge" in meta else ("gt", ">", "(") if "gt" in meta else None
    high = ("le", "<=", "]") if "le" in meta else ("lt", "<", ")") if "lt" in meta else None
    if low and high:
        words = f"in {low[2]}{meta[low[0]]:g}, {meta[high[0]]:g}{high[2]}"
    else:
        key, sign, _ = low or high  # type: ignore[misc]
        words = f"{sign} {meta[key]:g}"
    return words + (" when given" if optional else "")


def _typed(annotation: Any, value: Any) -> Any:
    """``value`` as the unconstrained type reads it (for the message), else as it was given."""
    from pydantic import TypeAdapter

    try:
        return TypeAdapter(Any if annotation is Any else annotation).validate_python(_before(annotation)(value))
    except Exception:  # noqa: BLE001 - only a nicer spelling of the value in a message
        return value


def _refusal(cls: type, name: str, annotation: Any, value: Any, errors: list[dict[str, Any]], source: str) -> str:
    """The one-line refusal of option ``name`` (``errors``: pydantic's, for this field only)."""
    meta = option_meta(cls, name)
    kinds = {e["type"] for e in errors}
    where = f"{source}: " if source.startswith("config file") else ""
    if "choice" in kinds:
        return f"{where}option {name}: {_typed(annotation, value)!r} is not one of {list(meta['choices'])}"
    if kinds & _RANGE_ERRORS:
        optional = type(None) in _members(annotation)
        return f"{where}option {name}: must be {_range_words(meta, optional)}, got {_typed(annotation, value)}"
    return f"{source}: option {name}: expected {_expected(annotation, value)}, got {_show(value)}"


def validate_values(cls: type, values: dict[str, Any], source: str) -> dict[str, Any]:
    """``values`` (option name -> value, from ``source``: "the command line", "config file x.yaml", "preset
    p", ...) typed and checked as the options class ``cls`` declares them: its type, bounds and choices.
    Names that are not options of ``cls`` are returned untouched. :class:`~dist_peakd.errors.ConfigError`
    naming the option, what was expected and the value otherwise (the first field in declaration order)."""
    from pydantic import ValidationError

    model, hints = _model(cls)
    mine = {k: v for k, v in values.items() if k in hints}
    try:
        checked = model.model_validate(mine)
    except ValidationError as e:
        by_field: dict[str, list[dict[str, Any]]] = {}
        for error in e.errors():
            by_field.setdefault(str(error["loc"][0]), []).append(error)
        name = next(f.name for f in fields(cls) if f.name in by_field)
        raise ConfigError(_refusal(cls, name, hints[name], mine[name], by_field[name], source)) from None
    return {**values, **{k: getattr(checked, k) for k in mine}}


def check_bounds(opts: Any) -> None:
    """Refuse (ConfigError) a value of the options object ``opts`` outside its option's bounds or choices (a
    sweep's sampled trial values; values built from text were checked by :func:`validate_values`)."""
    from pydantic import ValidationError

    cls = type(opts)
    model, hints = _model(cls)
    values = {f.name: getattr(opts, f.name) for f in fields(cls)}
    try:
        model.model_validate(values)
    except ValidationError as e:
        for f in fields(cls):
            errors = [x for x in e.errors() if str(x["loc"][0]) == f.name]
            if {x["type"] for x in errors} & (_RANGE_ERRORS | {"choice"}):
                raise ConfigError(_refusal(cls, f.name, hints[f.name], values[f.name], errors, "")) from None


# ------------------------------------------------------------------------------------ option files
# A YAML/JSON file of options, read strictly: syntax errors with their line, duplicate keys, non-mapping contents.
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
