"""What a training stage writes into every model folder it exports (``best/``, ``final/``) besides the
weights: the task's label names, the folder's record (``dist_peakd.json``) and a model card
(``README.md``, :func:`dist_peakd.export.render_model_card`) whose dev metrics are the checkpoint's.

The record keeps the card's inputs (``card``), so ``dist-peakd export`` re-renders the card for
another format, and what ``evaluate``/``predict`` need to score the folder as the stage did
(``task``, ``max_length``).
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..env import env_int
from ..export import read_folder_record as read_record
from ..layout import BEST, MODEL_CONFIG

#: The command line that started this process (set by the CLI; None when stages run from Python).
_COMMAND: list[str] | None = None
MINILM_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"


def set_command(argv: list[str]) -> None:
    """Remember the ``dist-peakd`` arguments of this process (the CLI calls it first)."""
    global _COMMAND
    _COMMAND = [a for a in argv if not a.startswith("--local_rank")]


def command_line(stage: str, opts: Any) -> str:
    """The exact command that made this run: the CLI's arguments (under a launcher, with its rank
    count), else a ``dist-peakd <stage>`` line of the options that differ from their defaults."""
    world = env_int("WORLD_SIZE", 1)
    prefix = f"deepspeed --num_gpus {world} --module dist_peakd.cli" if world > 1 else "dist-peakd"
    if _COMMAND:
        return f"{prefix} {shlex.join(_COMMAND)}"
    try:
        defaults = type(opts)()
    except Exception:  # an options class with required fields
        defaults = None
    args = [f"--{f.name}={getattr(opts, f.name)}" for f in dataclasses.fields(opts)
            if defaults is None or getattr(opts, f.name) != getattr(defaults, f.name)]
    return f"{prefix} {stage} {shlex.join(args)}  # (run from Python; options that differ from the defaults)"


def jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def task_card_info(task: Any, eval_rows: dict[str, Any] | None = None) -> dict[str, Any]:
    """The model-index ``dataset`` entry of a task (GLUE: the hub copy's id, config and dev split).

    ``eval_rows`` (a ``--max_eval_examples`` run: ``{"rows": N, "of": M}``): the metrics are of the first
    N dev rows, not of the split: the name says so and the split is ``validation[:N]``."""
    if getattr(task, "is_glue", False):
        split = {"dev": "validation"}.get(task.dev_splits[0], task.dev_splits[0].replace("dev", "validation"))
        info = {"name": task.name, "dataset_name": f"GLUE {task.folder}", "dataset_type": "nyu-mll/glue",
                "config": task.hub_config, "split": split}
    else:
        info = {"name": task.name, "dataset_name": task.name}
    if eval_rows:
        info["dataset_name"] += f" (dev subset: first {eval_rows['rows']:,} of {eval_rows['of']:,} rows)"
        if "split" in info:
            info["split"] = f"{info['split']}[:{eval_rows['rows']}]"
    return info


def eval_subset(dev_rows: tuple[int, int | None] | None) -> dict[str, int] | None:
    """``{"rows": N, "of": M}`` when the dev metrics are of the first N of M dev rows, else None."""
    if not dev_rows or dev_rows[1] is None or dev_rows[0] >= dev_rows[1]:
        return None
    return {"rows": int(dev_rows[0]), "of": int(dev_rows[1])}


def base_model_id(backbone: str) -> str | None:
    """The hub id of the backbone for the card's ``base_model`` (None for a local folder)."""
    if backbone == "minilm":
        return MINILM_HUB_ID
    return None if Path(backbone).exists() or "/" not in backbone else backbone


@dataclass
class ExportContext:
    """What a stage knows about the model it exports, for the card and the record."""

    stage: str                                   # teacher | ptp | distill
    task: Any                                    # the data Task
    opts: Any                                    # the resolved stage options
    stage_dir: Path
    method: dict[str, Any]                       # render_model_card's ``method``
    stats: dict[str, Any]                        # model_stats of the model
    label_names: list[str]
    teacher_metrics: dict[str, float] | None = None
    teacher_stats: dict[str, Any] | None = None
    dev_rows: tuple[int, int | None] | None = None  # TaskData.dev_rows: (scored, in the split)
    profile: Any = None                          # a MetricWarnings: its last_profile (baseline, class shares)

    def card_inputs(self, which: str, metrics: dict[str, float]) -> dict[str, Any]:
        """``render_model_card`` keyword arguments for the ``which`` (best | final) folder."""
        dev: dict[str, dict[str, float]] = {which: dict(metrics)}
        best = read_record(self.stage_dir / BEST).get("metrics") if which != "best" else None
        if best:
            dev["best"] = best
        if self.teacher_metrics:
            dev["teacher"] = dict(self.teacher_metrics)
        subset = eval_subset(self.dev_rows)
        profile = getattr(self.profile, "last_profile", None)
        return jsonable({
            "name": f"dist-peakd-{self.task.name}-{self.stage_dir.name}-{which}",
            "task": task_card_info(self.task, subset), "dev_metrics": dev, "method": self.method,
            "eval_rows": subset,
            "limitations": {**profile, "main_metric": self.task.main_metric} if profile else None,
            "stats": {**self.stats, "seq_len": self.opts.max_length},
            "command": command_line(self.stage, self.opts), "options": dataclasses.asdict(self.opts),
            "exported": which, "teacher_stats": self.teacher_stats,
            "base_model": base_model_id(str(self.opts.backbone)),
            **({"export_format": "plain"} if self.stage == "distill" and _plain(self.opts) else {}),
        })

    def record(self, which: str, metrics: dict[str, float]) -> dict[str, Any]:
        """The record's export fields: the card inputs, label names and how the stage scored the folder."""
        return {"label_names": self.label_names, "max_length": self.opts.max_length,
                "task_record": jsonable(self.task.describe()), "card": self.card_inputs(which, metrics)}


def teacher_method(opts: Any, model: Any = None) -> dict[str, Any]:
    """The teacher's card method: its backbone and, for a family other than BERT, ``family`` (its model type,
    as a student's record names it)."""
    backbone = str(opts.backbone)
    method = {"kind": "teacher", "backbone": base_model_id(backbone) or f"{Path(backbone).name} (a local folder)"}
    family = getattr(getattr(model, "config", None), "model_type", None)
    if family and family != "bert":
        method["family"] = str(family)
    return method


def teacher_identity(teacher: Path, cache_manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """How a student's card names its teacher: not a local path but its name (its own card's, e.g.
    ``dist-peakd-mrpc-teacher-best``; else the hub id its config records; else its folder's name), the
    model it was fine-tuned from, and its fingerprint (sha256 of ``config.json`` + weights, the teacher
    cache's key: the cache's value when given, i.e. the teacher the student was distilled from)."""
    from ..integrity import model_fingerprint

    card = read_record(teacher).get("card") or {}
    name = card.get("name")
    if not name:
        config = Path(teacher) / MODEL_CONFIG
        hub = json.loads(config.read_text()).get("_name_or_path", "") if config.is_file() else ""
        name = hub if hub and "/" in hub and not Path(hub).exists() else Path(teacher).name
    fingerprint = (cache_manifest or {}).get("teacher_fingerprint")
    if not fingerprint:
        try:
            fingerprint = model_fingerprint(teacher)
        except FileNotFoundError:
            fingerprint = None
    return {"teacher": name, "teacher_fingerprint": fingerprint, "teacher_base_model": card.get("base_model")}


def student_method(opts: Any, model: Any, teacher: Path, kind: str = "student",
                   cache_manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """The card's ``method`` of a PTP encoder (``kind="ptp"``) or a distilled student."""
    method = {"kind": kind, **teacher_identity(teacher, cache_manifest), "k": model.config.num_hidden_layers,
              "variant": model.config.sps_variant, "num_effective_layers": len(model.config.sps_schedule),
              "schedule": [list(map(_plain_value, e)) for e in model.config.sps_schedule], "backbone": str(opts.backbone)}
    family = getattr(model.config, "base_model_type", None)
    if family and family != "bert":  # a non-BERT student (a BERT student's record is unchanged)
        method["family"] = family
    if _plain(opts):
        from .student_kind import plain_summary

        method.update(plain_summary(opts))
    if kind == "student":
        method["ptp"] = bool(opts.use_ptp)
        method["distillation"] = (f"alpha {opts.alpha:g} x KD (T = {opts.temperature:g}) + (1 - alpha) x CE + "
                                  f"beta {opts.beta:g} x Patient-KD")
    return method


def _plain_value(value: Any) -> Any:
    return bool(value) if isinstance(value, bool) else int(value)


def _plain(opts: Any) -> bool:
    """A plain student (``--student plain``): its card says so and its distilled folders are plain ``bert``."""
    return getattr(opts, "student", "sps") == "plain"


def teacher_reference(teacher: Path, cache_manifest: dict[str, Any] | None) -> tuple[dict | None, dict | None]:
    """The teacher's dev metrics (its cache's, else its folder's record) and its model_stats (record)."""
    record = read_record(teacher)
    metrics = (cache_manifest or {}).get("teacher_dev_metrics") or record.get("metrics")
    return (dict(metrics) if metrics else None), record.get("model_stats")


def model_label_names(task: Any) -> list[str]:
    return [task.id2label()[i] for i in range(task.num_labels)]


def folder_task_fields(folder: str | Path) -> dict[str, Any]:
    """``task`` and ``max_length`` a stage recorded in ``folder`` (for evaluate/predict/export defaults)."""
    record = read_record(folder)
    out = {}
    for key in ("task", "max_length"):
        if record.get(key) is not None:
            out[key] = record[key]
    return out


def folder_data_options(folder: str | Path) -> dict[str, Any]:
    """The own-data options (files or hub dataset, columns, labels, ...) of the run that wrote ``folder``,
    from its record, so evaluate / predict / export of an own-data model need only ``--model_dir``.
    Empty for a GLUE task or a folder without a record."""
    from ..data import DataOptions

    record = read_record(folder)
    options = (record.get("card") or {}).get("options") or record.get("options") or {}
    names = [f.name for f in dataclasses.fields(DataOptions) if f.name not in ("task", "glue_dir")]
    if DataOptions.from_options(_Namespace(options)).is_glue:
        return {}
    return {n: options[n] for n in names if options.get(n) is not None}


class _Namespace:
    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)
