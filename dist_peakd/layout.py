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

A stage asks its :class:`RunLayout` (``opts.layout()``) instead of joining paths itself, so the
writer of an artifact and its readers cannot disagree about where it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

TEACHER_STAGE = "teacher"
TEACHER_CACHE = "teacher_cache"
TOKEN_CACHE = ".token_cache"


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
    def of(cls, opts: Any) -> RunLayout:
        """The layout of an options object (any of ``teacher_dir``, ``teacher_cache_dir``, ``ptp_dir``,
        ``cache_dir`` it has override the defaults)."""
        from .data.options import DataOptions

        return cls(Path(opts.output_dir), DataOptions.from_options(opts).run_name(),
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
        return self.task_dir / "data.json"

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
        return Path(self.teacher_override) if self.teacher_override else self.teacher_stage / "best"

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
        return Path(self.ptp_override) if self.ptp_override else self.ptp_stage(k, variant, plain) / "best"

    # ---------------------------------------------------------------- sweeps and the pipeline
    def sweep_dir(self, name: str) -> Path:
        return self.task_dir / f"sweep-{name}"

    def sweep_states(self) -> list[Path]:
        """Every sweep's Tune state folder of this task, oldest first (``--resume`` picks the last)."""
        return sorted(self.task_dir.glob("sweep-*/tune"), key=lambda p: p.stat().st_mtime)

    def pipeline_summary(self, suffix: str) -> Path:
        return self.task_dir / f"pipeline_summary.{suffix}"
