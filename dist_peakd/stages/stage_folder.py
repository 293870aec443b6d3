"""The stage folder: claimed under an exclusive lock (:mod:`dist_peakd.locking`), bound to the
result-relevant options it was made with (``stage_options.json``; ``config.json`` in a folder an older
version made) and to the fingerprints of what it consumed
(``inputs.json``). A folder holding work made with other options or inputs is refused, never mixed; one
that holds no work yet (a run refused late, before training) never blocks the corrected rerun.
"""

from __future__ import annotations

import functools
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import console, locking
from ..config import result_differences, save_resolved_config
from ..data.options import UNLABELED_OPTIONS
from ..engine import decide_on_rank0
from ..errors import ConfigError, InputsChangedError
from ..layout import INPUTS, LEGACY_STAGE_OPTIONS, STAGE_OPTIONS, SUMMARY, WORK_ENTRIES, stage_options_file


def has_work(stage_dir: Path) -> bool:
    """True when ``stage_dir`` holds something a run produced (checkpoints, exports, a summary)."""
    return any((stage_dir / name).exists() for name in WORK_ENTRIES)


def options_differences(stage_dir: Path, opts: Any) -> list[str]:
    """Result-relevant options whose value differs from the ones saved in ``stage_dir/stage_options.json``
    (an older folder's ``config.json``); the
    unlabeled pool's options count only for a stage that reads the pool (its options class has
    ``uses_unlabeled = True``: distill), so adding ``--unlabeled_file`` to a run keeps its teacher and PTP encoder."""
    saved = stage_options_file(stage_dir)
    if saved is None:
        return []
    try:
        before = json.loads(saved.read_text())
    except (OSError, ValueError):
        before = None
    if not isinstance(before, dict):
        return [f"{saved} is unreadable"]
    ignore = frozenset() if getattr(opts, "uses_unlabeled", False) else UNLABELED_OPTIONS
    return result_differences(before, opts, ignore=ignore)


def _claim_on_rank0(stage_dir: Path, opts: Any) -> None:
    """Rank 0: lock the folder, compare the options of its work, record this run's options."""
    locking.lock_folder(stage_dir)
    diffs = options_differences(stage_dir, opts) if has_work(stage_dir) else []
    if diffs:
        raise ConfigError(f"{stage_dir} was made with other options ({', '.join(diffs)}); use another "
                          "--output_dir / --run_name, or delete that folder to redo the stage")
    legacy = stage_options_file(stage_dir)
    save_resolved_config(opts, stage_dir / STAGE_OPTIONS)
    if legacy is not None and legacy.name == LEGACY_STAGE_OPTIONS:  # an older folder: the options renamed
        legacy.unlink()


def claim_stage_dir(stage_dir: Path, opts: Any) -> None:
    """Lock a stage folder for this job and refuse one whose work was made with other options.

    Decided on rank 0 and shared with every rank, before any expensive work: another job holding the
    folder is refused naming it (exit 2), a matching folder is resumed (or reused) as is, and a folder
    without work (e.g. left by a run refused before training) is taken over with this run's options.
    """
    decide_on_rank0(_claim_on_rank0, stage_dir, opts)


def lock_for_job(folder: Path, what: str = "stage folder") -> None:
    """Rank 0 takes the lock of ``folder`` for this job; every rank raises if another job holds it."""
    decide_on_rank0(locking.lock_folder, folder, what)


def releases_locks(run: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a stage's ``run``: the folder locks it took are released when it returns or fails."""

    @functools.wraps(run)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        before = set(locking.held_locks())
        try:
            return run(*args, **kwargs)
        finally:
            locking.release([p for p in locking.held_locks() if p not in before])

    return wrapper


def _clear_work(stage_dir: Path) -> None:
    """Delete everything in ``stage_dir`` but its ``stage_options.json`` (``--force`` after changed inputs)."""
    for child in stage_dir.iterdir():
        if child.name != STAGE_OPTIONS:
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()


def _inputs_on_rank0(stage_dir: Path, inputs: dict[str, str], force: bool) -> Any:
    path = stage_dir / INPUTS
    saved = json.loads(path.read_text()) if path.is_file() else None
    if saved != inputs and has_work(stage_dir):
        if not force:
            what = ("no record of its inputs (made by an older version)" if not isinstance(saved, dict) else
                    "other inputs: " + ", ".join(f"{k} {str(saved.get(k))[:12]} -> {str(v)[:12]}"
                                                 for k, v in sorted(inputs.items()) if saved.get(k) != v))
            raise InputsChangedError(f"{stage_dir} was made from {what}; rerun with --force to redo this "
                                     "stage (and the ones that use it), or use another --output_dir")
        _clear_work(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    from ..artifacts import atomic_write_text

    atomic_write_text(path, json.dumps(inputs, indent=2, sort_keys=True))
    summary = stage_dir / SUMMARY
    return json.loads(summary.read_text()) if summary.is_file() else None


def check_inputs(stage_dir: Path, inputs: dict[str, str], force: bool = False) -> dict[str, Any] | None:
    """Bind ``stage_dir`` to the fingerprints of what this run consumes; returns its summary when the
    stage already finished with the same options and inputs (the caller reuses it), else None.

    Work made from other inputs (a retrained teacher, a rebuilt cache, another PTP encoder or data) is
    refused (:class:`InputsChangedError`, exit 2), or with ``force`` deleted so the stage starts over.
    Rank 0 decides; every rank gets the same answer.
    """
    answer = decide_on_rank0(_inputs_on_rank0, stage_dir, inputs, force)
    if answer is not None:
        answer = {**answer, "reused": True}
        console.info(f"{stage_dir} finished earlier with the same options and inputs: reused")
    return answer
