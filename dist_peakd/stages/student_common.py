"""Pieces the student stages (PTP and distillation) share: cache identity, the shared preamble."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import RunOptions, option
from ..data import Task
from ..data.rows import column_array
from ..errors import ConfigError
from ..layout import RunLayout
from ..models import VARIANTS
from .common import TaskData
from .cross_student import HELP as CROSS_HELP
from .student_kind import DEPTH_HELP, LAYER_MAP_HELP, STUDENT_HELP


def expected_cache_identity(opts: RunOptions, data: TaskData, teacher_dir: str | Path | None = None,
                            tokenizer: Any = None) -> dict[str, Any]:
    """What a cache must match to serve this run: task, data (incl. slices), max length, row counts,
    the tokenizer and the teacher's weights when known; a cache built on the full splits also serves
    a subset of them by example id (``source_data_fingerprint`` + ``ids``, see cache.serves_subset)."""
    from ..integrity import model_fingerprint

    expected: dict[str, Any] = {
        "task": data.task.name,
        "data_fingerprint": data.fingerprint,
        "max_length": opts.max_length,
        "rows": {"train": len(data.train), data.dev_split: len(data.dev)},
        "source_data_fingerprint": data.source_fingerprint or None,
        "ids": {"train": column_array(data.train, "idx"), data.dev_split: column_array(data.dev, "idx")},
    }
    if getattr(data, "unlabeled", None) is not None:  # a run on the unlabeled pool: that pool's teacher outputs
        from ..cache import UNLABELED_SPLIT

        expected["unlabeled_fingerprint"] = data.unlabeled_fingerprint
        expected["rows"][UNLABELED_SPLIT] = len(data.unlabeled)
        expected["ids"][UNLABELED_SPLIT] = column_array(data.unlabeled, "idx")
    if tokenizer is not None:
        from ..data import tokenizer_fingerprint

        expected["tokenizer_fingerprint"] = tokenizer_fingerprint(tokenizer)
    if teacher_dir and Path(teacher_dir).is_dir():
        expected["teacher_fingerprint"] = model_fingerprint(teacher_dir)
    return expected


#: ``--help`` line of ``k`` (PTP, distill and the commands that run them).
K_HELP = ("SPS student depth (default auto): parameter layers taken from the backbone; auto = half the teacher's "
          "depth in effective layers, ceil(L/4) (none: ceil(L/2)): 2 for the 6-layer MiniLM, 3 for a 12-layer "
          "BERT-base")
VARIANT_HELP = ("SPS student: none | share | shuffle (Shuffled Parameter Sharing); auto (the default) = shuffle "
                "(a plain student: none)")


@dataclass
class StudentShapeOptions:
    """The student's kind and size (PTP, distill and the commands that run them)."""

    k: int | str = option("auto", help=K_HELP)
    variant: str = option("auto", help=VARIANT_HELP)
    student: str = option("sps", help=STUDENT_HELP)
    depth: int | str | None = option(None, help=DEPTH_HELP)
    layer_map: str = option("bottom", help=LAYER_MAP_HELP)
    student_backbone: str | None = option(None, help=CROSS_HELP)  # issue 23 item 4 (stages/cross_student.py)


@dataclass
class TeacherOptions:
    """Where the fine-tuned teacher and its cache are (the stages after finetune-teacher)."""

    teacher_dir: str | None = option(None, help="fine-tuned teacher folder (default <output_dir>/<task>/teacher/best)")
    teacher_cache_dir: str | None = option(None, help="teacher cache folder (default <output_dir>/<task>/teacher_cache)")


def validate_student_options(opts: Any) -> None:
    """Check the student kind and shape options; ``opts.k`` normalised (``"auto"`` or an int >= 1) for an
    SPS student; a plain student's ``--depth``/``--layer_map`` checked (:mod:`.student_kind`)."""
    from .cross_student import validate_cross_options
    from .depth import normalise_k
    from .student_kind import validate_student

    validate_cross_options(opts)  # issue 23 item 4: --student_backbone's refusals first
    validate_student(opts)
    if opts.student == "plain":
        return
    opts.k = normalise_k(opts.k)
    if opts.variant not in VARIANTS:
        raise ConfigError(f"option variant: {opts.variant!r} is not one of {list(VARIANTS)}")


def student_layers(opts: Any) -> list[int] | None:
    """The backbone layers a plain student copies (None: the SPS student's bottom ``k``)."""
    from .student_kind import backbone_layers, is_plain, layer_indices

    if not is_plain(opts):
        return None
    return layer_indices(opts.layer_map, opts.depth, backbone_layers(opts))


@dataclass
class StudentRun:
    """What both student stages (PTP, distill) start from; ``inputs``: the fingerprints of what they consume."""

    dist_info: Any
    backbone: str
    stage_dir: Path
    tokenizer: Any
    data: TaskData
    cache: Any
    inputs: dict[str, str]


def open_student_run(opts: Any, layout: RunLayout, stage: str,
                     check_task: Callable[[Task], None] | None = None, unlabeled: bool = False,
                     before_pool: Callable[[Task], None] | None = None) -> StudentRun:
    """The shared preamble of the student stages (``stage``: ptp or distill): init, seed, the data read and
    checked, then ``check_task(task)`` (may refuse the task) and the models (:func:`.preflight.check_models`:
    backbone, teacher, cache tokenizer, depth, PTP encoder), stage-folder claim, tokenized data, and the
    teacher cache verified against this run (identity, sizes and every file's sha256). A refusal writes nothing.
    ``unlabeled``: the run's unlabeled pool too (``data.unlabeled``; distill: PTP never reads it), after
    ``before_pool(task)`` (the stage's checks of the task for it)."""
    from ..cache import TeacherCache, cache_fingerprint
    from ..engine import init_distributed, seed_everything
    from .common import backbone_fingerprint, check_model_source, load_run_data, load_tokenizer, prepare_data
    from .preflight import check_models
    from .stage_folder import claim_stage_dir

    def before_record(task: Task) -> None:
        if check_task is not None:
            check_task(task)
        check_models(opts, stage, task)

    from .cross_student import is_cross, source_option, student_source  # issue 23 item 4

    if is_cross(opts):
        check_model_source(opts.backbone)  # the teacher's (its max_length and family are checked too)
    backbone = check_model_source(student_source(opts), source_option(opts))  # what the student is built from
    dist_info = init_distributed()
    seed_everything(opts.seed)
    loaded = load_run_data(opts, before_record=before_record, unlabeled=unlabeled, before_pool=before_pool)
    stage_dir = layout.stage_dir(opts.stage_name())
    claim_stage_dir(stage_dir, opts)
    tokenizer = load_tokenizer(backbone)  # the student's own (a cross student: its checkpoint's)
    data = prepare_data(opts, tokenizer, loaded=loaded, unlabeled=unlabeled)
    # a cross student reads the cache by example id with its own tokens: the cache's tokenizer is the teacher's
    identity = expected_cache_identity(opts, data, layout.teacher, None if is_cross(opts) else tokenizer)
    cache = TeacherCache.open(layout.teacher_cache, expected=identity, verify="checksum")
    inputs = {"data": data.fingerprint, "backbone": backbone_fingerprint(backbone),
              "teacher_cache": cache_fingerprint(cache.manifest)}
    return StudentRun(dist_info, backbone, stage_dir, tokenizer, data, cache, inputs)
