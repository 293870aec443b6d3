"""Where every stage reads and writes: one object owns every path of a run.

::

    <output_dir>/.token_cache/                  tokenized splits (``--cache_dir`` moves it); hf_datasets/: own files parsed
    <output_dir>/<task>/data.json               what the run's data are (sources, checksums, labels): every stage checks it
    <output_dir>/<task>/teacher/{best,final}/   finetune-teacher   (``--teacher_dir``: another teacher)
    <output_dir>/<task>/teacher_cache/          cache-teacher      (``--teacher_cache_dir``: elsewhere)
    <output_dir>/<task>/ptp-k<k>-<variant>/best ptp                (``--ptp_dir``: another encoder)
    <output_dir>/<task>/ptp-plain-d<d>-<map>/   ptp of a plain student (``--student plain``)
    <output_dir>/<task>/distill-.../            distill            (``--run_name``: another name)
    <output_dir>/<task>/sweep-<name>/           sweep (trial-<id>/, tune/, results.*)
    <output_dir>/<task>/pipeline_summary.{json,md}

Inside a stage folder::

    stage_options.json   the resolved options it was made with (``config.json`` before; still read)
    inputs.json          fingerprints of what it consumed
    summary.json         the run's result (its presence: the stage finished)
    train_log.jsonl      one line per log window
    checkpoints/         exact resume
    best/, final/        HF model folders: config.json (the MODEL's config), weights, tokenizer,
                         dist_peakd.json (the export record), dist_peakd_files.json (the file manifest)

A stage asks its :class:`RunLayout` (``opts.layout()``) instead of joining paths itself, and every file
name is a constant here, so the writer of an artifact and its readers cannot disagree about where it is.
This module imports nothing from the package (layer 0): every layer may name a file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

TEACHER_STAGE = "teacher"
TEACHER_CACHE = "teacher_cache"
TOKEN_CACHE = ".token_cache"

# ------------------------------------------------------------------ file names
#: A stage folder's resolved options (what ``--config`` and the command line made of them).
STAGE_OPTIONS = "stage_options.json"
#: The name the stage options had before (a run folder of an older version): read, never written.
LEGACY_STAGE_OPTIONS = "config.json"
#: An HF model folder's config (``best/``, ``final/``, exports, ``--teacher_dir``): never a stage's options.
MODEL_CONFIG = "config.json"
#: What the stage consumed (fingerprints), checked before it trains.
INPUTS = "inputs.json"
#: The run's data record (``<task>/data.json``).
DATA_RECORD = "data.json"
#: A finished run's result.
SUMMARY = "summary.json"
#: The training log (one JSON line per window).
TRAIN_LOG = "train_log.jsonl"
#: The checkpoints folder of a training stage.
CHECKPOINTS = "checkpoints"
#: The exported models of a training stage.
BEST, FINAL = "best", "final"
#: An export's record (what made it: stage, step, metrics, card).
EXPORT_RECORD = "dist_peakd.json"
#: The file manifest of an export folder (and of the own-data parse cache): file -> size + sha256.
FILE_MANIFEST = "dist_peakd_files.json"
#: The teacher cache's manifest (identity, splits, shards with their file sizes and sha256).
CACHE_MANIFEST = "manifest.json"
#: The pipeline's comparison (``pipeline_summary.json`` / ``.md``).
PIPELINE_SUMMARY = "pipeline_summary"
#: What a stage folder holds once a run produced something (vs. only its options / lock / inputs).
WORK_ENTRIES = (SUMMARY, CHECKPOINTS, BEST, FINAL)


def stage_options_file(stage_dir: str | Path) -> Path | None:
    """The saved options of a stage folder: ``stage_options.json``, else the ``config.json`` an older version
    wrote there (a stage folder's own ``config.json``, never the model config inside ``best/`` or
    ``final/``; one holding a ``model_type`` is a model folder's and is not taken); None when it has none."""
    folder = Path(stage_dir)
    if (folder / STAGE_OPTIONS).is_file():
        return folder / STAGE_OPTIONS
    legacy = folder / LEGACY_STAGE_OPTIONS
    if legacy.is_file() and not _is_model_config(legacy):
        return legacy
    return None


def _is_model_config(path: Path) -> bool:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "model_type" in data


def ptp_stage_name(k: int, variant: str, plain: str | None = None) -> str:
    """The PTP stage folder of a student shape (one encoder per (k, variant), shared by distill runs); a plain
    student's: ``ptp-<plain>`` (``plain``: its ``plain-d<d>-<layer map>`` tag)."""
    return f"ptp-{plain}" if plain else f"ptp-k{k}-{variant}"


@dataclass(frozen=True)
class RunLayout:
    """The paths of one task's run under ``output_dir``; the ``*_override`` fields are the path options."""

    output_dir: Path
    task: str
    teacher_override: str | None = None
    teacher_cache_override: str | None = None
    ptp_override: str | None = None
    token_cache_override: str | None = None

    @classmethod
    def of(cls, opts: Any, task: str) -> RunLayout:
        """The layout of an options object whose run folder is ``task`` (the data's run name); any of
        ``teacher_dir``, ``teacher_cache_dir``, ``ptp_dir``, ``cache_dir`` it has override the defaults."""
        return cls(Path(opts.output_dir), task,
                   teacher_override=getattr(opts, "teacher_dir", None),
                   teacher_cache_override=getattr(opts, "teacher_cache_dir", None),
                   ptp_override=getattr(opts, "ptp_dir", None),
                   token_cache_override=getattr(opts, "cache_dir", None))

    @property
    def task_dir(self) -> Path:
        return self.output_dir / self.task

    @property
    def token_cache(self) -> Path:
        return Path(self.token_cache_override) if self.token_cache_override else self.output_dir / TOKEN_CACHE

    @property
    def datasets_cache(self) -> Path:
        """HF ``datasets``' cache of own data files / hub datasets (beside the tokenization cache)."""
        return self.token_cache / "hf_datasets"

    @property
    def data_record(self) -> Path:
        """``data.json``: the run's data (sources, checksums, labels, carved dev split), checked by every stage."""
        return self.task_dir / DATA_RECORD

    def stage_dir(self, name: str) -> Path:
        """The folder of the stage run called ``name`` (``teacher``, ``ptp-k3-shuffle``, a distill run, ...)."""
        return self.task_dir / name

    # ---------------------------------------------------------------- the teacher and its cache
    @property
    def teacher_stage(self) -> Path:
        """Where finetune-teacher writes (``best/``, ``final/``, checkpoints, summary)."""
        return self.stage_dir(TEACHER_STAGE)

    @property
    def teacher(self) -> Path:
        """The teacher the later stages use: ``--teacher_dir``, else the fine-tuned ``teacher/best``."""
        return Path(self.teacher_override) if self.teacher_override else self.teacher_stage / BEST

    @property
    def teacher_is_given(self) -> bool:
        return bool(self.teacher_override)

    @property
    def teacher_cache(self) -> Path:
        """The teacher cache cache-teacher writes and the student stages read."""
        return Path(self.teacher_cache_override) if self.teacher_cache_override else self.task_dir / TEACHER_CACHE

    # ---------------------------------------------------------------- students
    def ptp_stage(self, k: int, variant: str, plain: str | None = None) -> Path:
        return self.stage_dir(ptp_stage_name(k, variant, plain))

    def ptp_encoder(self, k: int, variant: str, plain: str | None = None) -> Path:
        """The PTP encoder a distillation of this shape starts from: ``--ptp_dir``, else ``ptp-k<k>-<v>/best``
        (a plain student: ``ptp-plain-d<d>-<map>/best``)."""
        return Path(self.ptp_override) if self.ptp_override else self.ptp_stage(k, variant, plain) / BEST

    # ---------------------------------------------------------------- sweeps and the pipeline
    def sweep_dir(self, name: str) -> Path:
        return self.task_dir / f"sweep-{name}"

    def sweep_states(self) -> list[Path]:
        """Every sweep's Tune state folder of this task, oldest first (``--resume`` picks the last)."""
        return sorted(self.task_dir.glob("sweep-*/tune"), key=lambda p: p.stat().st_mtime)

    def pipeline_summary(self, suffix: str) -> Path:
        return self.task_dir / f"{PIPELINE_SUMMARY}.{suffix}"
