"""What a sweep trial runs: the stage's trial function, in the trial's process or on Ray Train workers.

The stage hands over its trial function and options type in :class:`TrialSettings` (the sweep of
``dist-peakd sweep`` passes :func:`dist_peakd.stages.distill.run` and ``DistillOptions``); nothing here
imports a stage.

* ``backend="function"``: the Tune trial itself calls ``trial_fn(options, on_eval=...)`` (a world of
  one DeepSpeed engine in the trial's actor).
* ``backend="ray_train"``: the trial is a driver that fits a ``TorchTrainer``; each of its workers
  calls ``trial_fn`` and the project's ``init_distributed`` picks up the process group Ray Train
  created (gloo on CPU, NCCL on GPU). Rank 0's metrics reach Tune through ``TuneReportCallback``.

Either way the trial reports ``{dev metrics, step, best_<metric>, total_steps, world_size}`` after every
dev evaluation (the loop's ``on_eval`` hook; ``rungs`` evaluations per epoch by default, see
:mod:`.plan`), so a scheduler such as ASHA can stop it early. Each trial writes into
``<output_dir>/<task>/sweep-<name>/trial-<id>-<swept values>/`` (:mod:`.naming`; also its TensorBoard
run name): the distillation run (event files, ``summary.json``, ``best/``, ...) and ``trial.json``
(config, attempts, errors, steps, an early stop). A trial restarted (retry or ``--resume``) without a
distillation checkpoint starts from a clean folder; with one, the run resumes from it; a run that
already ended (``summary.json``) is never run again: its evaluations are reported to Tune from the summary.

Early stops: when ASHA decides to stop a trial, the sweep driver writes ``stopped.json`` (step, by) into
the trial's folder before Tune acts (:class:`~dist_peakd.sweep.callbacks.RecordingASHA`); Tune then
ends the trial's ``report`` call with ``SystemExit``. The trial's reporter sees the record and raises
:class:`~dist_peakd.errors.EarlyStopped` instead, so the run keeps ``best/`` and writes its summary
marked ``"stopped"``; the trial's process waits for that before it exits. Without a record (the sweep
itself is ending) the ``SystemExit`` goes on: the trial stays unfinished and ``--resume`` continues it.
"""

from __future__ import annotations

import atexit
import dataclasses
import datetime
import json
import os
import shutil
import threading
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..artifacts import atomic_write_json
from ..errors import EarlyStopped
from ..layout import CHECKPOINTS, SUMMARY
from .cluster import RENDEZVOUS_VARS
from .naming import trial_dirname as named_trial_dir
from .plan import trial_plan

TRIAL_RECORD = "trial.json"
#: Written by the sweep driver into a trial's folder when its scheduler stops it (``{"step", "by", ...}``).
STOP_RECORD = "stopped.json"
#: How long a trial's process waits, on exit, for a stopped run to write its summary.
STOP_GRACE_S = 120.0


@dataclass(frozen=True)
class TrialSettings:
    """Everything a trial needs besides its sampled config (picklable, sent to every trial)."""

    base: dict[str, Any]          # fixed values of options_type (absolute paths), run_name excluded
    sweep_name: str
    sweep_dir: str                # absolute: <output_dir>/<task>/sweep-<name>
    metric: str
    mode: str = "max"
    backend: str = "function"     # "function" | "ray_train"
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    options_type: type | None = None   # the trial's options dataclass (validated before the run)
    trial_fn: Callable[..., dict[str, Any]] | None = None  # trial_fn(options, on_eval=fn) -> summary
    train_rows: int | None = None      # training examples (the teacher cache's): each trial's plan
    rungs: int = 1                     # dev evaluations per epoch when eval_every_steps is 0
    swept: tuple[str, ...] | None = None  # the options the space varies (folder names); None: every sampled one

    def options(self, values: dict[str, Any]) -> Any:
        """The trial's validated options (a bad sampled config fails here, naming the option)."""
        from ..schema import check_bounds

        opts = self.options_type(**values)
        check_bounds(opts)
        opts.validate()
        return opts

    def swept_values(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The trial's values of the options the space varies (its fixed entries left out)."""
        return {k: v for k, v in config.items() if self.swept is None or k in self.swept}

    def run_name(self, trial_id: str, config: Mapping[str, Any]) -> str:
        return f"sweep-{self.sweep_name}/{named_trial_dir(trial_id, self.swept_values(config))}"

    def run_dir(self, trial_id: str, config: Mapping[str, Any]) -> Path:
        """``<sweep>/trial-<id>-<swept values>``: the run folder, its TensorBoard run name."""
        return Path(self.sweep_dir) / named_trial_dir(trial_id, self.swept_values(config))

    def resources(self) -> dict[str, float]:
        """Resources of the Tune trial itself (the run for ``function``, the driver for ``ray_train``)."""
        if self.backend == "function":
            return {"CPU": self.cpus_per_worker, "GPU": self.gpus_per_worker}
        return {"CPU": min(1.0, self.cpus_per_worker), "GPU": 0.0}

    def cpus_per_trial(self) -> float:
        if self.backend == "function":
            return self.cpus_per_worker
        return self.resources()["CPU"] + self.workers * self.cpus_per_worker


def trial_dirname(trial: Any) -> str:
    """Tune's ``trial_dirname_creator`` (its own records, under ``tune/``): ``trial-<trial id>``."""
    return named_trial_dir(trial.trial_id)


def coerce_config(config: Mapping[str, Any], options_type: type | None = None) -> dict[str, Any]:
    """Sampled values -> plain Python values of the option's type (numpy scalars, 2.0 for an int, ...)."""
    types = {f.name: str(f.type) for f in dataclasses.fields(options_type)} if options_type else {}
    out: dict[str, Any] = {}
    for name, value in config.items():
        if hasattr(value, "item") and not isinstance(value, str | bytes):
            value = value.item()
        t = types.get(name, "")
        if t.startswith("int") and isinstance(value, float) and value.is_integer():
            value = int(value)
        elif t.startswith("float") and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        out[name] = value
    return out


def trial_values(settings: TrialSettings, config: Mapping[str, Any], trial_id: str) -> dict[str, Any]:
    """The trial's DistillOptions values: the fixed ones, its sampled config on top, its run name, and
    ``eval_every_steps`` from its plan (``rungs`` evaluations per epoch unless the sweep set it)."""
    values = {**settings.base, **coerce_config(config, settings.options_type),
              "run_name": settings.run_name(trial_id, config)}
    if settings.train_rows:
        values["eval_every_steps"] = trial_plan(values, settings.train_rows, settings.rungs).eval_every_steps
    return values


def read_stop_record(run_dir: Path) -> dict[str, Any] | None:
    """The scheduler's stop record of a trial (``stopped.json``), None when it was never stopped."""
    path = Path(run_dir) / STOP_RECORD
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def stopped_early(record: Mapping[str, Any] | None) -> bool:
    """Whether a stop record ends a trial before its last step (a stop at the last evaluation does not)."""
    if not record:
        return False
    step, total = record.get("step"), record.get("total_steps")
    return not (isinstance(step, int) and isinstance(total, int) and step >= total)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")


def begin_trial(run_dir: Path, trial_id: str, config: Mapping[str, Any], options_type: type | None = None
                ) -> dict[str, Any]:
    """Count the attempt in ``trial.json``; clear a previous attempt's files when nothing can resume."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record_path = run_dir / TRIAL_RECORD
    record = _read_json(record_path) if record_path.is_file() else {
        "trial_id": trial_id, "config": coerce_config(config, options_type), "attempts": 0, "errors": []}
    ckpt = run_dir / CHECKPOINTS
    if not (ckpt.is_dir() and any(ckpt.iterdir())):
        for child in run_dir.iterdir():
            if child.name != TRIAL_RECORD:
                shutil.rmtree(child) if child.is_dir() else child.unlink()
    record["attempts"] += 1
    record["started_at"] = _now()
    record.setdefault("first_started_at", record["started_at"])
    atomic_write_json(record_path, record)
    return record


def record_failure(run_dir: Path, record: dict[str, Any], exc: BaseException) -> None:
    """Append the error to ``trial.json`` and write the traceback to ``error.txt``."""
    message = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:500]
    record["errors"].append({"attempt": record["attempts"], "at": _now(), "error": message})
    atomic_write_json(run_dir / TRIAL_RECORD, record)
    (run_dir / "error.txt").write_text("".join(traceback.format_exception(exc)))


class EvalReporter:
    """The loop's ``on_eval`` hook: dev metrics + running best -> ``report_fn`` (Tune or Ray Train).

    With ``run_dir``, a ``SystemExit`` out of ``report_fn`` (Tune stopping the trial) becomes
    :class:`EarlyStopped` when the scheduler recorded the stop there (``on_stop`` is called first).
    """

    def __init__(self, metric: str, mode: str, report_fn: Callable[[dict[str, Any]], None],
                 extra: dict[str, Any] | None = None, run_dir: Path | None = None,
                 on_stop: Callable[[], None] | None = None) -> None:
        self.metric, self.mode, self.report_fn = metric, mode, report_fn
        self.extra = dict(extra or {})
        self.run_dir, self.on_stop = run_dir, on_stop
        self.best: float | None = None
        self.reports = 0
        self.stopped = False  # Tune stopped the trial (its report ended with SystemExit): end the same way

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        value = metrics.get(self.metric)
        if value is not None and (self.best is None or (value > self.best if self.mode == "max" else value < self.best)):
            self.best = float(value)
        self.reports += 1
        try:
            self.report_fn({**metrics, "step": int(step), f"best_{self.metric}": self.best, **self.extra})
        except SystemExit:
            record = read_stop_record(self.run_dir) if self.run_dir is not None else None
            if record is None:  # not the scheduler's decision: the sweep is ending
                raise
            self.stopped = True
            if self.on_stop is not None:
                self.on_stop()
            raise EarlyStopped(int(record.get("step", step)), str(record.get("by") or "scheduler")) from None

    def replay(self, summary: dict[str, Any]) -> None:
        """Report a finished run's evaluations again (a resumed sweep re-registers it without rerunning)."""
        for record in summary["history"]:
            self(int(record["step"]), {k: v for k, v in record.items() if k not in ("step", "epoch")})

    def finish(self, summary: dict[str, Any]) -> None:
        """Report the final metrics once if the run had nothing left to evaluate (it was already done)."""
        if self.reports == 0:
            final = {k: v for k, v in summary["final"].items() if k != "step"}
            self.best = summary["best"].get(self.metric)
            self.report_fn({**final, "step": int(summary["final"]["step"]), f"best_{self.metric}": self.best,
                            **self.extra})
            self.reports += 1


def finished_summary(run_dir: Path) -> dict[str, Any] | None:
    """The summary of a run that already ended (it is never run twice), else None."""
    path = run_dir / SUMMARY
    return _read_json(path) if path.is_file() else None


def _fresh_world_of_one() -> None:
    """Without a process group yet, forget inherited rendezvous variables: init picks a free port."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        for k in RENDEZVOUS_VARS:
            os.environ.pop(k, None)


def _wait_on_exit(done: threading.Event) -> None:
    """Keep the trial's process (Ray exits a stopped actor gracefully: atexit runs) until ``done`` is set."""
    atexit.register(done.wait, STOP_GRACE_S)


def record_outcome(run_dir: Path, record: dict[str, Any], summary: dict[str, Any]) -> None:
    """``trial.json``: the run's steps and, when the scheduler stopped it, ``"stopped": {"step", "by"}``."""
    record["total_steps"] = summary.get("total_steps")
    if summary.get("stopped"):
        record["stopped"] = summary["stopped"]
    atomic_write_json(run_dir / TRIAL_RECORD, record)


def function_trial(config: dict[str, Any], settings: TrialSettings) -> None:
    """A Tune function trainable: one run of the trial function in this process."""
    from ray import tune

    from ..engine import tracking

    trial_id = tune.get_context().get_trial_id()
    run_dir = settings.run_dir(trial_id, config)
    done = threading.Event()
    reporter = EvalReporter(settings.metric, settings.mode, tune.report,
                            {"world_size": 1, **_plan_extra(settings, config)}, run_dir, lambda: _wait_on_exit(done))
    summary = finished_summary(run_dir)
    if summary is not None:
        return reporter.replay(summary)
    record = begin_trial(run_dir, trial_id, config, settings.options_type)
    try:
        opts = settings.options(trial_values(settings, config, trial_id))
        _fresh_world_of_one()
        with tracking.defaults(varied=list(settings.swept_values(config))):
            summary = settings.trial_fn(opts, on_eval=reporter)
        record_outcome(run_dir, record, summary)
        reporter.finish(summary)
    except Exception as e:  # SystemExit (Tune ending the sweep) passes through
        record_failure(run_dir, record, e)
        raise
    finally:
        done.set()
    if reporter.stopped:  # Tune ended this trial: leave as its own stop does (returning would report again)
        raise SystemExit(0)


def _plan_extra(settings: TrialSettings, config: Mapping[str, Any]) -> dict[str, Any]:
    """``total_steps`` of the trial, reported with every evaluation (the driver tells a stop at the end apart)."""
    if not settings.train_rows:
        return {}
    values = {**settings.base, **coerce_config(config, settings.options_type)}
    return {"total_steps": trial_plan(values, settings.train_rows, settings.rungs).total_steps}


def train_worker(config: dict[str, Any]) -> None:
    """``train_loop_per_worker`` of a ``ray_train`` trial: one rank of the trial function's run."""
    import ray.train

    from ..engine import tracking

    settings: TrialSettings = config["settings"]
    ctx = ray.train.get_context()
    reporter = EvalReporter(settings.metric, settings.mode, ray.train.report,
                            {"world_size": ctx.get_world_size(), **config.get("report_extra", {})})
    with tracking.defaults(varied=list(config.get("swept", ()))):
        reporter.finish(settings.trial_fn(settings.options(config["values"]), on_eval=reporter))


def ray_train_trial(config: dict[str, Any], settings: TrialSettings) -> None:
    """A Tune trial that fits a ``TorchTrainer`` of ``settings.workers`` DeepSpeed workers."""
    import ray.train
    from ray import tune
    from ray.train.torch import TorchConfig, TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    trial_id = tune.get_context().get_trial_id()
    run_dir = settings.run_dir(trial_id, config)
    done = finished_summary(run_dir)
    if done is not None:
        return EvalReporter(settings.metric, settings.mode, tune.report,
                            {"world_size": settings.workers}).replay(done)
    record = begin_trial(run_dir, trial_id, config, settings.options_type)
    try:
        values = trial_values(settings, config, trial_id)
        settings.options(values)  # a bad config fails here, before any worker starts
        use_gpu = settings.gpus_per_worker > 0
        resources = {"CPU": settings.cpus_per_worker, **({"GPU": settings.gpus_per_worker} if use_gpu else {})}
        trainer = TorchTrainer(
            train_worker,
            train_loop_config={"values": values, "settings": settings, "swept": list(settings.swept_values(config)),
                               "report_extra": _plan_extra(settings, config)},
            scaling_config=ray.train.ScalingConfig(num_workers=settings.workers, use_gpu=use_gpu,
                                                   resources_per_worker=resources),
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            run_config=ray.train.RunConfig(
                name=f"trial-{trial_id}-attempt{record['attempts']}",
                storage_path=str(Path(settings.sweep_dir) / "ray_train"),
                callbacks=[TuneReportCallback()],
                failure_config=ray.train.FailureConfig(max_failures=0)),  # Tune retries the whole trial
        )
        trainer.fit()
        summary = finished_summary(run_dir)
        if summary is not None:
            record_outcome(run_dir, record, summary)
    except Exception as e:
        record_failure(run_dir, record, e)
        raise


def make_trainable(settings: TrialSettings) -> Any:
    """The Tune trainable for these settings, with its resources attached."""
    from ray import tune

    fn = function_trial if settings.backend == "function" else ray_train_trial
    return tune.with_resources(tune.with_parameters(fn, settings=settings), settings.resources())
