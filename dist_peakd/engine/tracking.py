"""TensorBoard tracking on rank 0 only (other ranks get a no-op tracker).

What a run's event files hold:

* scalars ``train/*`` (every ``log_every_steps``), ``eval/*`` (every dev evaluation: the task's metrics,
  and ``eval/loss`` when the stage computes it, see :func:`with_eval_loss`), ``best/<main metric>`` (the
  best dev value so far, written with every evaluation) and, on student runs, ``reference/teacher_<metric>``
  (the teacher's dev metrics: a flat line from the first to the last step);
* the run's config as text;
* HParams plugin data: an *experiment* (hparam infos and metric infos: the HParams tab's columns), the
  *session start* (this run's hparams) and, when the run ends, the *session end* (its status). A metric
  column shows the last value of its scalar: ``eval/<m>`` is the final dev metric, ``best/<m>`` the best.

TensorBoard names a run by its folder relative to ``--logdir``: log into :func:`tensorboard_dir` of the
stage folder (the folder itself), so runs are called like their stages (``distill-k2-shuffle``) and sweep
trials like their folders (:func:`dist_peakd.sweep.naming.trial_dirname`, which carries the swept values).
TensorBoard uses one experiment per ``--logdir`` (the HParams plugin takes the first it finds): every run
declares the same hparam names (:data:`HPARAM_TYPES`) and the task's metric columns, so in a sweep or a
task folder the columns do not depend on which run it picked.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: HParams of every run (when its config has them), with their TensorBoard type: the columns of the tab.
HPARAM_TYPES: dict[str, str] = {
    "stage": "string", "task": "string", "k": "number", "variant": "string", "use_ptp": "bool",
    "temperature": "number", "alpha": "number", "beta": "number", "lr": "number", "epochs": "number",
    "batch_size": "number", "seed": "number", "max_length": "number", "world_size": "number",
    "precision_resolved": "string",
}
#: Prefix of the teacher's reference scalars on student runs.
REFERENCE_PREFIX = "reference/teacher_"
#: Metrics of the PTP stage (its dev set is scored on the PTP labels, not the task's).
PTP_METRICS = ("ptp_loss", "ptp_accuracy")


_DEFAULTS: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar("dist_peakd_tracking",
                                                                                    default=None)


@contextlib.contextmanager
def defaults(**options: Any) -> Iterator[None]:
    """Default keyword arguments of :meth:`Tracker.config` for the runs started inside (this thread/context).

    A caller that starts a stage sets what the stage itself cannot know, e.g. a sweep trial::

        with tracking.defaults(varied=["temperature", "alpha"], reference=teacher_dev_metrics):
            distill.run(opts, on_eval=reporter)

    Arguments given to :meth:`Tracker.config` directly win.
    """
    unknown = set(options) - {"main_metric", "mode", "metric_names", "varied", "hparams", "reference", "experiment"}
    if unknown:
        raise TypeError(f"tracking.defaults: unknown option(s) {sorted(unknown)}")
    token = _DEFAULTS.set({**(_DEFAULTS.get() or {}), **options})
    try:
        yield
    finally:
        _DEFAULTS.reset(token)


def tensorboard_dir(stage_dir: str | Path) -> Path:
    """Where a stage logs: the stage folder itself, so that TensorBoard's run name is the folder's name."""
    return Path(stage_dir)


@dataclass(frozen=True)
class RunMetrics:
    """What a run evaluates: its dev metrics (main first), whether higher is better, the task's metrics."""

    main: str
    names: tuple[str, ...]
    mode: str = "max"
    task_names: tuple[str, ...] = ()
    has_loss: bool = False

    def better(self, value: float, best: float | None) -> bool:
        return best is None or (value > best if self.mode == "max" else value < best)


def run_metrics(config: Mapping[str, Any], main_metric: str | None = None, mode: str | None = None,
                metric_names: Sequence[str] | None = None) -> RunMetrics | None:
    """The run's metrics: given explicitly, else from its config (``task``, ``stage``); None if unknown."""
    task_names: tuple[str, ...] = ()
    task_main = None
    try:
        from ..data import get_task

        task = get_task(str(config["task"]))
        task_names, task_main = tuple(task.metrics), task.main_metric
    except Exception:  # no task in the config, or one the registry does not know
        pass
    if config.get("stage") == "ptp":
        default_main, default_names, default_mode = "ptp_loss", PTP_METRICS, "min"
    else:
        default_main, default_names, default_mode = task_main, task_names, "max"
    main = main_metric or default_main
    if main is None:
        return None
    names = tuple(metric_names or default_names or (main,))
    names = (main, *(n for n in names if n not in (main, "loss")))
    has_loss = bool(metric_names) and "loss" in metric_names
    return RunMetrics(main=main, names=names, mode=mode or default_mode, task_names=task_names, has_loss=has_loss)


def hparam_values(config: Mapping[str, Any], keys: Iterable[str] = ()) -> dict[str, bool | float | str]:
    """The config's HParams: :data:`HPARAM_TYPES` plus ``keys``, as TensorBoard values (None left out)."""
    out: dict[str, bool | float | str] = {}
    for name in [*HPARAM_TYPES, *(k for k in keys if k not in HPARAM_TYPES)]:
        value = config.get(name)
        if value is None:
            continue
        if isinstance(value, bool | str):
            out[name] = value
        elif isinstance(value, int | float):
            out[name] = float(value)
        else:
            out[name] = json.dumps(value, default=str)
    return out


def _hparam_type(name: str, value: Any) -> str:
    if name in HPARAM_TYPES:
        return HPARAM_TYPES[name]
    if isinstance(value, bool):
        return "bool"
    return "number" if isinstance(value, int | float) else "string"


def metric_columns(metrics: RunMetrics, reference: bool = False) -> list[tuple[str, str]]:
    """(scalar tag, column title) of the HParams metric columns, main metric first.

    ``eval/<main>`` (final: its last value), ``best/<main>``, the other dev metrics, ``eval/loss`` (when the
    run logs it), the teacher's reference; on a PTP run also the task's metrics (the same columns as the
    task's other stages, so a task folder has one set of columns whichever experiment TensorBoard shows).
    """
    cols = [(f"eval/{metrics.main}", f"{metrics.main} (final)"), (f"best/{metrics.main}", f"{metrics.main} (best)")]
    cols += [(f"eval/{m}", f"{m} (final)") for m in metrics.names[1:]]
    if metrics.has_loss:
        cols.append(("eval/loss", "dev loss (final)"))
    if reference and metrics.main in metrics.task_names:
        cols.append((f"{REFERENCE_PREFIX}{metrics.main}", f"teacher {metrics.main}"))
    if metrics.main not in metrics.task_names:  # e.g. PTP
        cols += [(f"eval/{m}", f"{m} (final)") for m in metrics.task_names if f"eval/{m}" not in dict(cols)]
    return cols


def _summary(tag: str, **plugin_data: Any) -> Any:
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.hparams import metadata, plugin_data_pb2

    data = plugin_data_pb2.HParamsPluginData(**plugin_data)
    return Summary(value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data),
                                        tensor=metadata.NULL_TENSOR)])


def hparams_summaries(hparams: Mapping[str, bool | float | str], columns: Sequence[tuple[str, str]],
                      varied: Iterable[str] = (), group: str = "") -> tuple[Any, Any]:
    """The HParams plugin's experiment and session-start ``Summary`` protos.

    Declares every :data:`HPARAM_TYPES` name (and the run's other hparams); names in ``varied`` are marked
    as differing (TensorBoard lists them first).
    """
    from google.protobuf import struct_pb2
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    types = {"number": api_pb2.DATA_TYPE_FLOAT64, "string": api_pb2.DATA_TYPE_STRING, "bool": api_pb2.DATA_TYPE_BOOL}
    varied = set(varied)
    names = [*HPARAM_TYPES, *(n for n in hparams if n not in HPARAM_TYPES)]
    infos = [api_pb2.HParamInfo(name=n, type=types[_hparam_type(n, hparams.get(n))], differs=n in varied)
             for n in names]
    metric_infos = [api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), display_name=title,
                                       dataset_type=api_pb2.DATASET_VALIDATION) for tag, title in columns]
    experiment = api_pb2.Experiment(hparam_infos=infos, metric_infos=metric_infos, time_created_secs=time.time())
    start = plugin_data_pb2.SessionStartInfo(group_name=group, start_time_secs=time.time())
    for name, value in hparams.items():
        start.hparams[name].CopyFrom(struct_pb2.Value(bool_value=value) if isinstance(value, bool) else
                                     struct_pb2.Value(number_value=value) if isinstance(value, float) else
                                     struct_pb2.Value(string_value=str(value)))
    return (_summary(metadata.EXPERIMENT_TAG, experiment=experiment),
            _summary(metadata.SESSION_START_INFO_TAG, session_start_info=start))


def session_end_summary(status: str = "success") -> Any:
    """The HParams session-end ``Summary``: ``success``, ``failure``, ``running`` or ``unknown``."""
    from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

    code = {"success": api_pb2.STATUS_SUCCESS, "failure": api_pb2.STATUS_FAILURE,
            "running": api_pb2.STATUS_RUNNING, "unknown": api_pb2.STATUS_UNKNOWN}[status]
    return _summary(metadata.SESSION_END_INFO_TAG,
                    session_end_info=plugin_data_pb2.SessionEndInfo(status=code, end_time_secs=time.time()))


def with_eval_loss(metric_fn: Callable[[dict[str, Any]], dict[str, float]],
                   is_regression: bool) -> Callable[[dict[str, Any]], dict[str, float]]:
    """A metric function that adds ``loss`` (mean cross-entropy, or MSE for regression) on dev predictions.

    ``preds`` holds ``logits`` and ``labels`` (as the stages' ``logits_predict`` returns them); the loop
    logs every metric as ``eval/<name>``, so this gives ``eval/loss``.
    """
    import numpy as np

    def fn(preds: dict[str, Any]) -> dict[str, float]:
        out = dict(metric_fn(preds))
        logits = np.asarray(preds["logits"], dtype=np.float64)
        labels = np.asarray(preds["labels"])
        if is_regression:
            out["loss"] = float(np.mean((logits.reshape(-1) - labels.astype(np.float64)) ** 2))
        else:
            shifted = logits - logits.max(axis=-1, keepdims=True)
            log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
            out["loss"] = float(-np.mean(log_probs[np.arange(len(labels)), labels.astype(np.int64)]))
        return out

    return fn


class Tracker:
    """Writes scalars, text and HParams data to ``log_dir`` when ``enabled`` (rank 0); silent otherwise."""

    def __init__(self, log_dir: str | Path, enabled: bool = True, purge_step: int | None = None) -> None:
        """``purge_step``: a resumed run's first new step; TensorBoard then hides the events an interrupted
        run of this folder wrote at that step or later (``SummaryWriter(purge_step=...)``)."""
        self.enabled = enabled
        self.log_dir = Path(log_dir)
        self._writer = None
        self.metrics: RunMetrics | None = None
        self.best: float | None = None
        self._session_open = False
        if enabled:
            from torch.utils.tensorboard import SummaryWriter

            self.log_dir.mkdir(parents=True, exist_ok=True)
            self._writer = SummaryWriter(str(self.log_dir), purge_step=purge_step)

    def scalars(self, values: dict[str, float], step: int) -> None:
        """Scalars at ``step``; ``eval/*`` values are an evaluation (see :meth:`evaluation`)."""
        if self._writer is None:
            return
        evals = {k.removeprefix("eval/"): v for k, v in values.items() if k.startswith("eval/")}
        for key, value in values.items():
            if not key.startswith("eval/"):
                self._writer.add_scalar(key, float(value), step)
        if evals:
            self.evaluation(step, evals)

    def evaluation(self, step: int, metrics: Mapping[str, float], best: float | None = None) -> None:
        """One dev evaluation: ``eval/<name>`` per metric and ``best/<main>`` (``best``: the loop's own best,
        e.g. carried over a resume; else the best this tracker has seen)."""
        if self._writer is None:
            return
        for name, value in metrics.items():
            self._writer.add_scalar(f"eval/{name}", float(value), step)
        main = self.metrics.main if self.metrics else None
        if main is None or main not in metrics or not math.isfinite(float(metrics[main])):
            return
        value = float(metrics[main])
        if best is not None:
            self.best = float(best)
        elif self.metrics.better(value, self.best):
            self.best = value
        self._writer.add_scalar(f"best/{main}", self.best, step)

    def text(self, tag: str, body: str, step: int = 0) -> None:
        if self._writer is not None:
            self._writer.add_text(tag, body, step)

    def config(self, config: dict[str, Any], metrics: dict[str, float] | None = None, *,
               main_metric: str | None = None, mode: str | None = None, metric_names: Sequence[str] | None = None,
               varied: Iterable[str] | None = None, hparams: Iterable[str] | None = None,
               reference: Mapping[str, float] | None = None, experiment: bool | None = None) -> None:
        """Record the config (text) and open the HParams session (experiment + session start).

        ``main_metric``/``mode``/``metric_names``: the run's dev metrics (default: the task's, or PTP's on
        a ``stage: ptp`` config; include ``"loss"`` when the stage logs ``eval/loss``). ``varied``: swept
        options (listed first); ``hparams``: more config keys to show. ``reference``: the teacher's dev
        metrics, logged as ``reference/teacher_<m>`` at step 0 and ``config["total_steps"]``. ``metrics``:
        values known now, logged at step 0 as they are named. ``experiment=False`` writes the session only.
        Arguments left out come from :func:`defaults` when set there.
        """
        if self._writer is None:
            return
        given = {"main_metric": main_metric, "mode": mode, "metric_names": metric_names, "varied": varied,
                 "hparams": hparams, "reference": reference, "experiment": experiment}
        opts = {**(_DEFAULTS.get() or {}), **{k: v for k, v in given.items() if v is not None}}
        main_metric, mode, metric_names = opts.get("main_metric"), opts.get("mode"), opts.get("metric_names")
        varied, hparams = list(opts.get("varied") or ()), list(opts.get("hparams") or ())
        reference, experiment = opts.get("reference"), opts.get("experiment", True)
        self._writer.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```", 0)
        self.metrics = run_metrics(config, main_metric, mode, metric_names)
        columns = metric_columns(self.metrics, reference=reference is not None) if self.metrics else []
        columns += [(tag, tag) for tag in (metrics or {}) if tag not in dict(columns)]
        values = hparam_values(config, [*varied, *hparams])
        exp, start = hparams_summaries(values, columns, varied)
        writer = self._writer._get_file_writer()
        if experiment:
            writer.add_summary(exp)
        writer.add_summary(start)
        self._session_open = True
        for tag, value in (metrics or {}).items():
            self._writer.add_scalar(tag, float(value), 0)
        if reference:
            self.reference(reference, (0, int(config.get("total_steps") or 0)))

    def reference(self, metrics: Mapping[str, float], steps: Sequence[int]) -> None:
        """The teacher's dev metrics as flat ``reference/teacher_<m>`` lines over ``steps``."""
        if self._writer is None:
            return
        for name, value in metrics.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                for step in sorted(set(steps)):
                    self._writer.add_scalar(f"{REFERENCE_PREFIX}{name}", float(value), step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self, status: str | None = "success") -> None:
        """End the HParams session (``status``: success, failure, ...; None: leave it open, the run goes on
        later) and close the event file."""
        if self._writer is not None:
            if self._session_open and status is not None:
                self._writer._get_file_writer().add_summary(session_end_summary(status))
            self._writer.close()
            self._writer = None
