"""``dist-peakd evaluate``: the task's dev metrics of any model folder, as the stage that wrote it scored it.

::

    dist-peakd evaluate --model_dir runs/mrpc/distill-.../final                  # task, max_length from the folder
    dist-peakd evaluate --model_dir exported/onnx --onnx_file model_int8.onnx --out int8.json
    deepspeed --num_gpus 2 --module dist_peakd.cli evaluate --model_dir ...      # N ranks, same numbers

The folder may be a stage's ``best/``/``final/`` (teacher or student), a plain export, or an
ONNX folder (onnxruntime). Rows are read through the stages' data path (``prepare_data``: the same data
options, slices and tokenization cache) and batched as the stages' dev evaluation batches them
(:mod:`.inference`), so the metrics of a stage's folder equal the ones in its ``summary.json`` (fp32
stages; a bf16 stage evaluated its bf16 weights, this command their fp32 export), the dev ``loss``
(cross-entropy / MSE on the gold labels) included.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..artifacts import atomic_write_json
from ..config import (
    CommandOptions,
    DataSourceOptions,
    EvalBatchOption,
    EvalSliceOption,
    OutputOptions,
    TrustOption,
    option,
)
from ..data import is_glue_name
from ..engine import init_distributed
from ..engine.tracking import with_eval_loss
from ..errors import ConfigError
from ..metrics import baseline_warning
from .cards import folder_data_options, folder_task_fields
from .common import MetricWarnings, collator_for, prepare_data
from .finetune_teacher import metrics_from_logits
from .inference import (
    ModelFolder,
    has_labels,
    match_task_labels,
    open_model_folder,
    rows_logits,
    trained_task_note,
)
from .outputs import check_output_file, command_inputs

DEFAULT_MAX_LENGTH = 128


@dataclass
class ModelDirOptions(TrustOption, EvalBatchOption, DataSourceOptions, OutputOptions, CommandOptions):
    """Options of the commands that read a model folder (evaluate, predict, export): the folder, and the
    task and sequence length it was trained with (read from the folder unless given), the data the task's
    rows come from, the evaluation batch (no backbone, engine or training options: nothing trains)."""

    task: str = option("", help="task of the model ('': the task its folder records)", group="data")
    max_length: int = option(0, help="truncate sequences to this many tokens (0: the length the model was trained "
                                     "with, recorded in its folder)", ge=0)
    model_dir: str | None = option(None, help="model folder a stage wrote (<stage>/best, <stage>/final, teacher "
                                              "or student) or `dist-peakd export` wrote")

    def validate(self) -> None:
        if not self.model_dir:
            raise ConfigError("option model_dir: required (a model folder, e.g. runs/mrpc/teacher/best)")
        if not Path(self.model_dir).is_dir():
            raise ConfigError(f"option model_dir: {self.model_dir!r} is not a folder")
        recorded = folder_task_fields(self.model_dir)
        if not self.task:
            if "task" not in recorded:
                raise ConfigError(f"option task: required ({self.model_dir} records no task)")
            self.task = recorded["task"]
        if not self.max_length:
            self.max_length = int(recorded.get("max_length", DEFAULT_MAX_LENGTH))
        self._fill_data_options()
        super().validate()

    def _fill_data_options(self) -> None:
        """Own data: the files / hub dataset, columns and labels the folder's run recorded, unless the
        command line gives a data source of its own (then all of its data options are the user's)."""
        if is_glue_name(self.task) or self.train_file or self.dev_file or self.test_file or self.hub_dataset:
            return
        recorded = folder_data_options(self.model_dir)
        if recorded and folder_task_fields(self.model_dir).get("task") == self.task:
            names = {f.name for f in dataclasses.fields(self)}
            for name, value in recorded.items():  # (the unlabeled pool a run recorded is not read here)
                if name in names and getattr(self, name) == _default(type(self), name):
                    setattr(self, name, value)


@dataclass
class OnnxFileOption:
    onnx_file: str | None = option(None, help="ONNX folders: the graph to run (model.onnx | model_int8.onnx; "
                                              "default model.onnx)")


@dataclass
class EvaluateOptions(OnnxFileOption, EvalSliceOption, ModelDirOptions):
    """Which split to score, which ONNX graph (ONNX folders), where the metrics JSON goes."""

    split: str = option("dev", help="split to score: dev (the task's dev split) or another labelled split name")
    out: str | None = option(None, help="also write the result (metrics and what was scored) to this JSON file")

    def validate(self) -> None:
        super().validate()
        check_split(self.task, self.split, allow_test=False)
        if self.out:
            check_output_file("out", self.out, command_inputs(self))


def _default(cls: type, name: str) -> Any:
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    return field.default if field.default is not dataclasses.MISSING else None


def check_split(task: str, split: str, allow_test: bool) -> None:
    """Refuse a split name the (GLUE) task does not have; ``test`` only where it is allowed."""
    if not is_glue_name(task):
        return
    from ..data import get_task

    glue = get_task(task)
    names = [n for n in glue.splits if allow_test or n not in glue.test_splits]
    roles = ("dev", "test") if allow_test else ("dev",)
    if split not in roles and split not in names:
        hint = "" if allow_test else "; test splits have no labels: `dist-peakd predict` predicts them"
        raise ConfigError(f"option split: {split!r} is not a {'' if allow_test else 'labelled '}split of "
                          f"{glue.name} ({list(roles)} or one of {names}){hint}")


def check_outputs(model: ModelFolder, task: Any) -> None:
    if model.config.num_labels != task.num_labels:
        raise ConfigError(f"option task: {model.folder} has {model.config.num_labels} outputs, {task.name} has "
                          f"{task.num_labels} (a PTP encoder is not a task classifier: evaluate distill/*)")


def check_model_task(model: ModelFolder, task: Any) -> dict[str, Any]:
    """The model folder fits ``task`` (:func:`~.inference.trained_task_note`, then its output count); returns
    what the result says about a model of another task with the same classes."""
    note = trained_task_note(model, task)
    check_outputs(model, task)
    labels = match_task_labels(model, task)  # a folder of another tool: its classes matched by name
    return {**note, "warnings": [*note.get("warnings", []), *labels.get("warnings", [])]} if labels else note


def check_glue_model_task(model: ModelFolder, task_name: str) -> None:
    """Before any data is read or cached: the checks of :func:`check_model_task` for a GLUE task (own data:
    after its files are read)."""
    if is_glue_name(task_name):
        from ..data import get_task

        check_model_task(model, get_task(task_name))


def recorded_teacher_metrics(opts: EvaluateOptions) -> dict[str, float] | None:
    """The teacher's dev metrics the folder's card records (a student's), for the share of the teacher's
    gain kept; None for another split or a folder without them."""
    from ..export import read_folder_record

    if opts.split != "dev":
        return None
    teacher = ((read_folder_record(opts.model_dir).get("card") or {}).get("dev_metrics") or {}).get("teacher")
    return dict(teacher) if teacher else None


def run(opts: EvaluateOptions) -> dict[str, Any]:
    """Score ``model_dir`` on the split; every rank returns the result, rank 0 writes ``--out``."""
    dist_info = init_distributed()
    model = open_model_folder(opts.model_dir, opts.onnx_file, dist_info.device, opts.trust_unverified)
    check_glue_model_task(model, opts.task)  # before anything is read or cached
    data = prepare_data(opts, model.tokenizer, need_train=False, eval_split=opts.split, check_run=False)
    other_task = check_model_task(model, data.task)  # another task's classes: refused; the same: said plainly
    outputs = rows_logits(model, data.dev, collator_for(model.tokenizer), opts.eval_batch_size, dist_info)
    if not has_labels(outputs["labels"], data.task.is_regression):
        raise ConfigError(f"option split: {data.dev_split} of {data.task.name} has no labels; "
                          "`dist-peakd predict` writes its predictions")
    warnings = MetricWarnings(teacher=recorded_teacher_metrics(opts))
    result = {**model.describe(), "task": data.task.name, "split": data.dev_split,
              "rows": int(len(outputs["example_ids"])), "max_length": opts.max_length,
              "eval_batch_size": opts.eval_batch_size, "world_size": dist_info.world_size,
              "metrics": with_eval_loss(metrics_from_logits(data.task, warnings), data.task.is_regression)(outputs),
              "baseline": warnings.baseline, **other_task}
    below = baseline_warning(data.task.name, warnings.baseline)
    if below:
        result["warnings"] = [*result.get("warnings", []), below]
    if opts.out and dist_info.is_main:
        Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(opts.out, result)
    return result
