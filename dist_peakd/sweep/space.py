"""The sweep's search space: a small JSON/YAML syntax, parsed, checked, and turned into Ray Tune objects.

Syntax (one entry per option of the distillation stage)::

    {"temperature": [2, 5, 10],                 # a list: grid axis (search=grid) or uniform choice
     "alpha": {"uniform": [0.3, 0.9]},          # float drawn uniformly from [a, b]
     "lr": {"loguniform": [1e-5, 1e-4]},        # float drawn log-uniformly from [a, b]
     "k": {"choice": [2, 3]},                   # uniform choice (never a grid axis)
     "seed": {"grid": [0, 1]},                  # grid axis whatever the search (not with optuna)
     "beta": {"randint": [0, 200]},             # integer drawn from [a, b)
     "variant": "shuffle"}                      # a plain value: fixed for every trial

``k`` and ``variant`` (and ``use_ptp``) must be discrete (a list, choice or grid): each (k, variant)
needs its own PTP encoder, built once before the trials. Options that change the data or where
things live (task, max_length, slices, backbone, paths) cannot be swept: the teacher cache must
serve every trial.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

KINDS = ("grid", "choice", "uniform", "loguniform", "randint")
SEARCHES = ("grid", "random", "optuna")
#: Options a trial may not vary (they define the shared teacher cache / PTP encoders or the layout).
FIXED_ONLY = frozenset({
    "task", "output_dir", "glue_dir", "hub_dataset", "cache_dir", "backbone", "max_length",
    "max_train_examples", "max_eval_examples", "run_name", "teacher_cache_dir", "teacher_dir", "ptp_dir",
    "stop_after_steps",
})
#: Options that must take a finite set of values (one PTP encoder per value).
DISCRETE_ONLY = frozenset({"k", "variant", "use_ptp"})


@dataclass(frozen=True)
class Dimension:
    """One swept option: ``kind`` is ``fixed`` or one of :data:`KINDS`; ``values`` the candidates or bounds."""

    name: str
    kind: str
    values: tuple[Any, ...]

    @property
    def discrete(self) -> bool:
        return self.kind in ("fixed", "grid", "choice")

    def candidates(self) -> list[Any]:
        """Every value this option can take (discrete dimensions only)."""
        if not self.discrete:
            raise ValueError(f"{self.name} is a {self.kind} range, not a finite set")
        return list(self.values)


def load_space(space: str | Mapping[str, Any] | None, space_file: str | None) -> dict[str, Any]:
    """The raw space: ``space_file`` (YAML/JSON) first, then ``space`` (a mapping or JSON/YAML text) on top."""
    raw: dict[str, Any] = {}
    if space_file:
        path = Path(space_file)
        if not path.is_file():
            raise ConfigError(f"option space_file: file {path} not found")
        raw.update(_parse_text(path.read_text(), f"option space_file ({path})"))
    if space is not None and space != "":
        if isinstance(space, Mapping):
            raw.update(dict(space))
        elif isinstance(space, str):
            raw.update(_parse_text(space, "option space"))
        else:
            raise ConfigError(f"option space: expected a JSON object, got {type(space).__name__} {space!r}")
    return raw


def _parse_text(text: str, where: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{where}: neither JSON nor YAML ({e})") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: must be a mapping of option names to values, got {data!r}")
    return data


def _number_pair(name: str, kind: str, spec: Any) -> tuple[float, float]:
    if (not isinstance(spec, list | tuple) or len(spec) != 2
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in spec)):
        raise ConfigError(f"option space: {name}: {{{kind!r}: [low, high]}} needs two numbers, got {spec!r}")
    low, high = spec
    if not low < high:
        raise ConfigError(f"option space: {name}: {kind} needs low < high, got {list(spec)}")
    if kind == "loguniform" and low <= 0:
        raise ConfigError(f"option space: {name}: loguniform needs low > 0, got {low}")
    if kind == "randint" and not (float(low).is_integer() and float(high).is_integer()):
        raise ConfigError(f"option space: {name}: randint needs integer bounds, got {list(spec)}")
    return low, high


def parse_dimension(name: str, spec: Any) -> Dimension:
    """One entry of the space -> a :class:`Dimension` (syntax errors name the option)."""
    if isinstance(spec, list | tuple):
        if not spec:
            raise ConfigError(f"option space: {name}: an empty list")
        return Dimension(name, "list", tuple(spec))
    if isinstance(spec, Mapping):
        if len(spec) != 1 or next(iter(spec)) not in KINDS:
            raise ConfigError(f"option space: {name}: {dict(spec)!r} is not one of "
                              + ", ".join(f"{{{k!r}: ...}}" for k in KINDS) + " (or a list / a plain value)")
        kind, arg = next(iter(spec.items()))
        if kind in ("grid", "choice"):
            if not isinstance(arg, list | tuple) or not arg:
                raise ConfigError(f"option space: {name}: {{{kind!r}: [...]}} needs a non-empty list, got {arg!r}")
            return Dimension(name, kind, tuple(arg))
        return Dimension(name, kind, _number_pair(name, kind, arg))
    return Dimension(name, "fixed", (spec,))


def parse_space(raw: Mapping[str, Any], valid_names: Collection[str], search: str) -> dict[str, Dimension]:
    """Check names and syntax; resolve plain lists to grid axes (``search=grid``) or choices (otherwise)."""
    if search not in SEARCHES:
        raise ConfigError(f"option search: {search!r} is not one of {list(SEARCHES)}")
    dims: dict[str, Dimension] = {}
    for name, spec in raw.items():
        if name in FIXED_ONLY:
            raise ConfigError(f"option space: {name!r} cannot be swept (it must be the same for every trial: "
                              "the teacher cache and PTP encoders are shared); set it as a plain option")
        if name not in valid_names:
            raise ConfigError(f"option space: {name!r} is not an option of the distillation stage; valid: "
                              f"{sorted(set(valid_names) - FIXED_ONLY)}")
        dim = parse_dimension(name, spec)
        if dim.kind == "list":
            dim = Dimension(name, "grid" if search == "grid" else "choice", dim.values)
        if dim.kind == "grid" and search == "optuna":
            raise ConfigError(f"option space: {name}: grid axes are not supported by search=optuna; use a list "
                              "or {'choice': [...]}")
        if name in DISCRETE_ONLY and not dim.discrete:
            raise ConfigError(f"option space: {name} must be a list, choice or grid (one PTP encoder per value), "
                              f"got {dim.kind}")
        dims[name] = dim
    return dims


def to_tune(dims: Mapping[str, Dimension]) -> dict[str, Any]:
    """The Ray Tune ``param_space`` for these dimensions."""
    from ray import tune

    out: dict[str, Any] = {}
    for name, d in dims.items():
        if d.kind == "fixed":
            out[name] = d.values[0]
        elif d.kind == "grid":
            out[name] = tune.grid_search(list(d.values))
        elif d.kind == "choice":
            out[name] = tune.choice(list(d.values))
        elif d.kind == "uniform":
            out[name] = tune.uniform(*d.values)
        elif d.kind == "loguniform":
            out[name] = tune.loguniform(*d.values)
        elif d.kind == "randint":
            out[name] = tune.randint(int(d.values[0]), int(d.values[1]))
        else:  # pragma: no cover - parse_dimension only makes the kinds above
            raise ValueError(d.kind)
    return out


def grid_size(dims: Mapping[str, Dimension]) -> int:
    """Number of grid points (1 without grid axes); Tune runs ``num_samples`` x this many trials."""
    n = 1
    for d in dims.values():
        if d.kind == "grid":
            n *= len(d.values)
    return n


def values_of(name: str, dims: Mapping[str, Dimension], fixed: Any) -> list[Any]:
    """The candidates of a discrete option: from the space when swept, else the fixed value."""
    return dims[name].candidates() if name in dims else [fixed]


def describe(dims: Mapping[str, Dimension]) -> dict[str, Any]:
    """A JSON-friendly echo of the parsed space (what was swept, how)."""
    return {name: {"kind": d.kind, "values": list(d.values)} for name, d in dims.items()}


def _checked_values(d: Dimension) -> list[Any]:
    """The values of a dimension to check: every candidate, or the ends of a range (randint's high is open)."""
    if d.discrete:
        return list(d.values)
    low, high = d.values
    return [low, int(high) - 1] if d.kind == "randint" else [low, high]


def check_space_values(dims: Mapping[str, Dimension], options_type: type, fixed: Mapping[str, Any]) -> None:
    """Refuse (ConfigError naming the option and the value) a swept value a trial would refuse: its type, the
    option's bounds (``option(..., ge=, gt=, le=)``) and ``options_type.validate()``, each value with the
    sweep's fixed values (``fixed``) for the other options; before anything is built."""
    from ..schema import validate_values

    for name, d in dims.items():
        for value in _checked_values(d):
            try:
                typed = validate_values(options_type, {name: value}, "the space")  # its type, bounds, choices
                opts = options_type(**{**fixed, **typed})
                opts.validate()
            except ConfigError as e:
                reason = str(e).removeprefix("the space: ")
                raise ConfigError(f"option space: {name} = {value!r} is refused: {reason}") from None
