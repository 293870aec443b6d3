"""``from_pretrained`` with the intended head re-initialisation stated in one line.

transformers prints a "LOAD REPORT" table for every missing, unexpected or mismatched key, which
reads like an error when a new task head is exactly what we asked for (a backbone without one, a
PTP encoder whose 4-way head is replaced). :func:`load_reporting` silences that table, says in one
line which head was initialised, and still reports every key that was *not* expected::

    [dist-peakd] teacher: new 2-label head (classifier.weight, classifier.bias) on the backbone /path
    [dist-peakd] warning: loading /path: 3 weight(s) newly initialised (missing from the checkpoint): ...
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from .. import console

#: The task head's parameters (the only keys a load may initialise without a warning).
HEAD_PREFIX = "classifier."
#: Every head prefix: DistilBERT's head has a ``pre_classifier`` too; the ``sps-family`` student holds its
#: family classifier under ``model.``.
HEAD_PREFIXES = tuple(f"{outer}{head}" for outer in ("", "model.") for head in (HEAD_PREFIX, "pre_classifier."))
#: Pre-training heads of a BERT checkpoint: dropped when a classifier is loaded from it.
PRETRAINING_PREFIXES = ("cls.predictions.", "cls.seq_relationship.")


#: The loggers of the load report (and of the tensor-parallel check transformers 5 runs when the first is
#: quieted: its "layers were not sharded" note is about tensor parallelism, which no stage uses).
_REPORT_LOGGERS = ("transformers.modeling_utils", "transformers.distributed.tensor_parallel")


@contextlib.contextmanager
def _report_silenced() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in _REPORT_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _keys(info: dict[str, Any], name: str) -> list[str]:
    keys = info.get(name) or ()
    return sorted(k[0] if isinstance(k, tuple | list) else str(k) for k in keys)


def _listed(keys: Iterable[str], limit: int = 6) -> str:
    keys = list(keys)
    more = f", ... ({len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def describe_load(info: dict[str, Any], source: str, what: str, num_labels: int) -> tuple[str | None, list[str]]:
    """(the head line or None, warnings) for a load's ``output_loading_info``.

    Expected: head keys missing or re-initialised for size, pre-training heads left unused. Anything
    else (missing encoder weights, unexpected keys) is a warning naming the keys.
    """
    missing, unexpected = _keys(info, "missing_keys"), _keys(info, "unexpected_keys")
    mismatched = _keys(info, "mismatched_keys")
    head = [k for k in [*missing, *mismatched] if k.startswith(HEAD_PREFIXES)]
    warnings = []
    other_missing = [k for k in missing if not k.startswith(HEAD_PREFIXES)]
    other_mismatched = [k for k in mismatched if not k.startswith(HEAD_PREFIXES)]
    other_unexpected = [k for k in unexpected if not k.startswith(PRETRAINING_PREFIXES)]
    if other_missing:
        warnings.append(f"loading {source}: {len(other_missing)} weight(s) newly initialised (missing from the "
                        f"checkpoint): {_listed(other_missing)}")
    if other_mismatched:
        warnings.append(f"loading {source}: {len(other_mismatched)} weight(s) re-initialised for another shape: "
                        f"{_listed(other_mismatched)}")
    if other_unexpected:
        warnings.append(f"loading {source}: {len(other_unexpected)} checkpoint weight(s) not used by the model: "
                        f"{_listed(other_unexpected)}")
    line = None
    if head:
        why = "replacing the saved head of another size" if any(k in mismatched for k in head) else "none saved"
        line = f"{what}: new {num_labels}-label head ({_listed(head)}; {why}) on {source}"
    return line, warnings


def head_refusal(info: dict[str, Any], source: str, what: str, num_labels: int) -> str | None:
    """Why a load that must keep a trained task head did not (None when it did): the head's weights are
    missing (a pretrained backbone) or have another number of outputs than ``num_labels``."""
    missing = [k for k in _keys(info, "missing_keys") if k.startswith(HEAD_PREFIXES)]
    mismatched = [k for k in _keys(info, "mismatched_keys") if k.startswith(HEAD_PREFIXES)]
    if missing:
        return (f"{what} {source} has no trained classification head ({_listed(missing)} missing from its weights: "
                "a pretrained backbone, not a fine-tuned classifier)")
    if mismatched:
        return (f"{what} {source} has a classification head of another size than this task's {num_labels} "
                f"output(s) ({_listed(mismatched)}): it was trained on other classes")
    return None


def load_reporting(load: Callable[..., Any], source: str, what: str, num_labels: int,
                   require_head: bool = False) -> Any:
    """``load(output_loading_info=True)`` without transformers' load report; prints the head line
    (rank 0) and a warning for every unexpected key; returns the model. ``require_head``: a new or
    re-initialised head is refused (:class:`ModelConfigError`), not reported."""
    with _report_silenced():
        model, info = load(output_loading_info=True)
    refusal = head_refusal(info, source, what, num_labels) if require_head else None
    if refusal:
        from .errors import ModelConfigError

        raise ModelConfigError(refusal)
    line, warnings = describe_load(info, source, what, num_labels)
    if line:
        console.info(line)
    for warning in warnings:
        console.warn(warning)
    return model
