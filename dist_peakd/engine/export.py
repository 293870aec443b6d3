"""Export a trained engine's model as a compact HF folder through :mod:`dist_peakd.export` (the one
export implementation): fp32 weights, label names, tokenizer without machine keys, model card, the
stage's record and the verified file manifest, built beside the target and published atomically."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from torch import nn

from ..artifacts import write_error
from ..export import ExportError, export_compact, export_plain
from ..models.cross_student import exported_model  # a student's [CLS] width map is never exported
from .distributed import DistInfo, barrier


class Engine(Protocol):
    """What an export needs of :class:`~dist_peakd.engine.engine.Engine` (a protocol: no import of it, no cycle)."""

    ds: Any  # the DeepSpeed engine
    dist: DistInfo

    @property
    def module(self) -> nn.Module: ...


@contextlib.contextmanager
def _full_parameters(engine: Engine) -> Iterator[None]:
    """Under ZeRO-3 every rank gathers the partitioned parameters; otherwise nothing to do."""
    if engine.ds.zero_optimization_stage() != 3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
        yield


def export_pretrained(engine: Engine, out_dir: str | Path, tokenizer: Any = None,
                      extra_json: dict[str, Any] | None = None, label_names: Sequence[str] | None = None,
                      card: str | None = None, plain: bool = False) -> Path:
    """Export the model with :func:`dist_peakd.export.export_compact` (``plain``: :func:`~dist_peakd.export.export_plain`,
    a standard ``bert`` folder without custom code); rank 0 writes. Collective.

    ``extra_json`` (file name -> object) and ``card`` (README.md) go into the folder; ``label_names``
    set ``id2label``/``label2id``. Written to ``.tmp-<name>``, with ``dist_peakd_files.json`` (size +
    sha256 of every file) last, then published over ``out_dir`` without a gap. A failed write raises
    :class:`ArtifactWriteError` naming the path and leaves the previous export in place.
    """
    out_dir = Path(out_dir)
    with _full_parameters(engine):
        if engine.dist.is_main:
            try:
                write = export_plain if plain else export_compact
                write(exported_model(engine.module), out_dir, tokenizer, label_names=label_names, card=card, extra_files=extra_json)
            except ExportError:
                raise
            except Exception as e:  # OSError, or the serializer's own error type on ENOSPC
                raise write_error(e, out_dir, "export", "the previous export (if any) is untouched") from e
    barrier()
    return out_dir
