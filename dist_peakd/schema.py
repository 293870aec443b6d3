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
from dataclasses import field, fields
from typing import Any

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

