"""Export a trained engine's model as a plain Hugging Face folder (fp32 weights + tokenizer + manifest)."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..artifacts import publish_dir, write_error, write_export_manifest
from .distributed import barrier

if TYPE_CHECKING:
    from .engine import Engine


@contextlib.contextmanager
def _full_parameters(engine: Engine) -> Iterator[None]:
    """Under ZeRO-3 every rank gathers the partitioned parameters; otherwise nothing to do."""
    if engine.ds.zero_optimization_stage() != 3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(engine.module.parameters()), modifier_rank=None):
        yield


def _write_folder(module: Any, tmp: Path, tokenizer: Any, extra_json: dict[str, Any] | None) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
    state = {k: v.detach().float().cpu() for k, v in module.state_dict().items()}
    module.save_pretrained(str(tmp), state_dict=state)
    if tokenizer is not None:
        tokenizer.save_pretrained(str(tmp))
    for name, obj in (extra_json or {}).items():
        (tmp / name).write_text(json.dumps(obj, indent=2, default=str))
    write_export_manifest(tmp)


def export_pretrained(engine: Engine, out_dir: str | Path, tokenizer: Any = None,
                      extra_json: dict[str, Any] | None = None) -> Path:
    """Export the model in HF format (fp32 weights) with its tokenizer; rank 0 writes. Collective.

    Written to ``.tmp-<name>``, with ``dist_peakd_files.json`` (size + sha256 of every file)
    last, then published over ``out_dir`` without a gap. A failed write raises
    :class:`ArtifactWriteError` naming the path and leaves the previous export in place.
    """
    out_dir = Path(out_dir)
    with _full_parameters(engine):
        if engine.dist.is_main:
            tmp = out_dir.with_name(f".tmp-{out_dir.name}")
            try:
                _write_folder(engine.module, tmp, tokenizer, extra_json)
                publish_dir(tmp, out_dir)
            except Exception as e:  # OSError, or the serializer's own error type on ENOSPC
                error = write_error(e, out_dir, "export", "the previous export (if any) is untouched")
                shutil.rmtree(tmp, ignore_errors=True)
                raise error from e
    barrier()
    return out_dir
