"""``--student_backbone PATH``: a student from another pretrained checkpoint than the teacher's.

The student is that checkpoint (any family a student backbone may be: :func:`dist_peakd.models.families.supported`),
its layers copied as a **plain** student (:mod:`.student_kind`): all of them by default (``--depth auto`` means
"all" here), or ``--depth d`` with ``--layer_map`` (bottom / alternate / a list), with a fresh task head. It is
distilled with KD + Patient-KD from the teacher cache, after PTP where the run uses it (the PTP stage builds the
same student: its labels come from the cache too).

- **Tokenizers may differ.** The teacher cache holds the teacher's outputs by example id; the student tokenizes
  every text itself with its own tokenizer (the tokenization cache is keyed by the tokenizer) and looks its rows'
  teacher outputs up by id. The cache is still checked to be this run's (task, data and slices, max length, row
  counts and every example id, the teacher's weights where its folder is known); only its tokenizer is not
  compared with the student's.
- **Widths may differ.** Patient-KD then maps the student's [CLS] states to the teacher's width with one learned
  linear map (:mod:`dist_peakd.models.cross_student`), trained with the student and never exported.
- **Labels.** Logit KD needs the teacher's classes to be the task's: the cache's class count and the teacher's
  ``id2label`` (where its folder is known) are checked against the task before anything trains.
- ``--backbone`` stays the checkpoint the teacher is fine-tuned from (``finetune-teacher``, the pipeline) and whose
  tokenizer the cache was built with; the student stages do not read it.
- Refused: ``--k`` and ``--variant`` other than none (an SPS schedule: this student runs each layer once),
  sweeps and ``compress`` (their search spaces are the backbone's student shapes). ``--student`` is ``plain``
  with this option (its default ``sps`` is read as ``plain``: the two cannot be told apart).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..layout import MODEL_CONFIG

OPTION = "student_backbone"
HELP = ("a student from another pretrained checkpoint (folder or hub id; 'minilm' = the embedded all-MiniLM-L6-v2): "
        "its layers as a plain student (all of them, or --depth d / --layer_map), its own tokenizer; Patient-KD "
        "through a learned map when its width differs from the teacher's (not exported)")


def is_cross(opts: Any) -> bool:
    """The run's student comes from ``--student_backbone``."""
    value = getattr(opts, OPTION, None)
    return value is not None and str(value) != ""


def student_source(opts: Any) -> str:
    """The checkpoint the run's student is built from: ``--student_backbone`` (resolved), else ``--backbone``."""
    from .common import resolve_backbone

    return resolve_backbone(str(getattr(opts, OPTION) if is_cross(opts) else opts.backbone))


def source_option(opts: Any) -> str:
    """The option that names the student's checkpoint (for refusals)."""
    return OPTION if is_cross(opts) else "backbone"


def fill_cross_defaults(opts: Any) -> None:
    """``__post_init__``: a cross student is a plain student; its depth defaults to ``auto`` (all its layers)."""
    if not is_cross(opts) or callable(getattr(opts, "dimensions", None)):  # sweep/compress: refused in validate
        return
    if getattr(opts, "student", "sps") == "sps":
        opts.student = "plain"
    if getattr(opts, "depth", None) is None:
        opts.depth = "auto"


def validate_cross_options(opts: Any) -> None:
    """Refuse what a student from another checkpoint cannot be combined with (one line, nothing read)."""
    if not is_cross(opts):
        return
    given = getattr(opts, OPTION)
    if callable(getattr(opts, "dimensions", None)):  # sweep and compress (SweepOptions and its subclasses)
        raise ConfigError(f"option {OPTION}: {given!r}: sweeps and compress search the student shapes of --backbone "
                          f"only; distil a student from another checkpoint with `dist-peakd distill` or "
                          f"`dist-peakd pipeline --{OPTION} ...`")
    if opts.student != "plain":
        raise ConfigError(f"option student: {opts.student!r} with --{OPTION}: the student is that checkpoint's "
                          "layers run once (plain); leave --student out")
    from .depth_rules import normalise_k

    k = normalise_k(opts.k)
    if k != "auto" and k != opts.depth:
        raise ConfigError(f"option k: {opts.k!r} with --{OPTION}: the SPS depth does not apply to a student from "
                          "another checkpoint; give its depth with --depth d (default: all its layers)")
    if opts.variant not in ("auto", "none"):
        raise ConfigError(f"option variant: {opts.variant!r} with --{OPTION}: an SPS schedule does not apply to a "
                          "student from another checkpoint (each of its layers runs once); leave --variant out")


def cross_tag(opts: Any) -> str:
    """The student's part of the folder names: ``x<model type>-<6 hex of its path>`` (two checkpoints, two folders)."""
    source = student_source(opts)
    model_type = "model"
    try:
        model_type = json.loads((Path(source) / MODEL_CONFIG).read_text()).get("model_type") or model_type
    except (OSError, ValueError, AttributeError):
        pass
    where = str(Path(source).expanduser().resolve()) if Path(source).exists() else source
    slug = re.sub(r"[^a-z0-9]+", "", str(model_type).lower()) or "model"
    return f"x{slug}-{hashlib.sha256(where.encode()).hexdigest()[:6]}"


def cross_summary(opts: Any) -> dict[str, Any]:
    """What the summary and card record about a cross student (added to the plain student's)."""
    return {OPTION: student_source(opts)} if is_cross(opts) else {}


def depth_note(opts: Any, layers: int) -> dict[str, Any]:
    """How ``--depth auto`` was resolved for a cross student: all the checkpoint's layers."""
    return {"requested": "auto", "k": layers, "option": "depth",
            "text": f"--depth auto: depth={layers} (all layers of the student backbone {student_source(opts)})"}


# ------------------------------------------------------------------------------------------- pipeline
def student_batch(opts: Any, rows: int) -> dict[str, Any] | None:
    """The pipeline's latency batch for a cross student: the same dev rows tokenized by its own tokenizer
    (None when the student shares the backbone's)."""
    if not is_cross(opts):
        return None
    import dataclasses

    from ..config import RunOptions
    from .common import collator_for, load_tokenizer, prepare_data

    tokenizer = load_tokenizer(student_source(opts))
    names = {f.name for f in dataclasses.fields(RunOptions)}
    base = RunOptions(**{k: v for k, v in dataclasses.asdict(opts).items() if k in names})
    data = prepare_data(base, tokenizer, need_train=False)
    return collator_for(tokenizer)([data.dev[i] for i in range(min(rows, len(data.dev)))])


# ------------------------------------------------------------------------------------------- the width map
def width_mapped(model: Any, opts: Any, cache: Any) -> Any:
    """The module the engine trains: a cross student whose width differs from the teacher's (Patient-KD on,
    ``beta`` > 0) with its [CLS] map (:mod:`dist_peakd.models.cross_student`), else ``model`` itself."""
    if not is_cross(opts) or float(getattr(opts, "beta", 0) or 0) <= 0:
        return model
    from ..models.cross_student import model_width, with_width_map

    return with_width_map(model, model_width(model.config), int(cache.manifest["hidden_size"]))


class WidthMapRecord:
    """A trainer hook keeping the summary's ``width_map`` entry: the map's shape and how far its weight moved
    from where this process started (a map that trains moves; it is never exported)."""

    def __init__(self, module: Any) -> None:
        self.map = module.cls_map
        self.start = self.map.weight.detach().float().cpu().clone()

    def info(self) -> dict[str, Any]:
        weight = self.map.weight.detach().float().cpu()
        change = float((weight - self.start).norm()) if weight.shape == self.start.shape else None
        return {"student_width": int(self.map.in_features), "teacher_width": int(self.map.out_features),
                "parameters": sum(p.numel() for p in self.map.parameters()), "exported": False,
                "weight_change": change, "weight_norm_at_start": float(self.start.norm())}

    def on_step_end(self, trainer: Any) -> None:
        trainer.extra_summary["width_map"] = self.info()


def width_map_hooks(module: Any) -> list[Any]:
    """``[WidthMapRecord]`` when ``module`` carries a width map, else ``[]``."""
    return [WidthMapRecord(module)] if hasattr(module, "cls_map") else []
