"""Ray Tune sweep of distillation trials (temperature, alpha, student depth, ...) sharing one teacher cache.

::

    dist-peakd sweep --task mrpc --space '{"temperature": [2, 5, 10], "alpha": {"uniform": [0.3, 0.9]}, "k": [2, 3]}'
    dist-peakd sweep --task mrpc --space_file space.yaml --search random --num_samples 12 --scheduler asha
    dist-peakd sweep --task mrpc --space_file space.yaml --workers_per_trial 2 --cpus_per_worker 0.5
    dist-peakd sweep --task mrpc --space_file space.yaml --address auto        # join `ray start --head`
    dist-peakd sweep ... --sweep_name lr-T --resume                           # continue an interrupted sweep

Space syntax (:mod:`dist_peakd.sweep.space`): a list is a grid axis (``--search grid``, the default) or a
uniform choice (``random``/``optuna``); ``{"uniform": [a, b]}``, ``{"loguniform": [a, b]}``,
``{"randint": [a, b]}``, ``{"choice": [...]}``, ``{"grid": [...]}``; a plain value is fixed. Every other
distillation option is the same fixed value for all trials.

Before the trials start, the driver (this process) runs what every trial shares, skipping what exists
(as the pipeline does): the teacher fine-tune, the teacher cache, and one PTP encoder per (k, variant)
in the space. No trial runs the teacher. Each trial is one distillation run (``distill.run``) in its
Tune actor (``workers_per_trial=1``) or on a Ray Train ``TorchTrainer`` of ``workers_per_trial``
DeepSpeed workers; it reports the dev metrics after every evaluation, so ASHA can stop it early.

Layout, under ``<output_dir>/<task>/sweep-<name>/``: ``trial-<id>/`` (one distillation run each: ``tb/``,
``summary.json``, ``trial.json``; ``tensorboard --logdir`` this folder shows all trials side by side),
``tune/`` (Ray Tune's state, for ``--resume``), ``results.{csv,md,json}``, ``<metric>_vs_<option>.png``.

A trial that raises is retried ``max_failures`` times, then reported as ``errored``; the sweep goes on.
Ctrl+C / SIGTERM (or ``stop_after_trials``) stops the sweep with its state saved: rerun the same
command with ``--resume`` to finish it; finished trials are not run again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import itertools
import json
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine import ConfigError
from ..engine.engine import atomic_write_text
from .distill import DistillOptions
from .pipeline import EarlierStagesOptions

#: ASHA's cap on evaluations per trial: never reached in practice (a run stops when its epochs end).
ASHA_MAX_T = 10_000
#: Options that may change between a sweep and its ``--resume`` (they do not change any trial's result).
NON_RESULT_OPTIONS = frozenset({
    "resume", "resume_errored", "address", "num_cpus", "max_concurrent_trials", "stop_after_trials",
    "max_failures", "log_every_steps", "eval_batch_size", "cache_dir", "output_dir", "preset", "sweep_name",
})


@dataclass
class SweepOptions(EarlierStagesOptions):
    """Distillation options (fixed for every trial unless swept) plus the search, resources and cluster.

    Trials report after every dev evaluation: ``eval_every_steps`` > 0 gives ASHA more than one rung per epoch.
    It applies to the trials only: the shared teacher and PTP stages evaluate once per epoch (as the
    pipeline does by default), so a sweep can reuse a pipeline's teacher, cache and PTP encoders.
    """

    # what to search
    space: Any = None                  # JSON/YAML text or mapping (syntax above); overrides space_file keys
    space_file: str | None = None      # YAML/JSON file with the space
    num_samples: int | None = None     # grid: repeats of the grid (default 1); random/optuna: trials (default 8)
    search: str = "grid"               # grid | random | optuna (optuna must be installed)
    scheduler: str = "asha"            # asha | fifo
    metric: str | None = None          # default: the task's main metric (MRPC: f1)
    mode: str = "max"                  # max | min
    scope: str = "last"                # best trial by its final metric (last) or best-on-dev (all)
    grace_period: int = 1              # ASHA: evaluations before a trial can be stopped
    reduction_factor: float = 2.0      # ASHA: keep the top 1/reduction_factor at each rung
    # how each trial runs
    workers_per_trial: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    trial_backend: str = "auto"        # auto (function if workers_per_trial == 1 else ray_train) | function | ray_train
    max_concurrent_trials: int | None = None  # default: as many as the resources allow
    max_failures: int = 1              # retries of a trial that raised
    # the cluster and the sweep's bookkeeping
    address: str | None = None         # Ray address; None: start a local instance (see dist_peakd.sweep.cluster)
    num_cpus: int | None = None        # CPUs of a local instance (default: all)
    sweep_name: str | None = None      # default: a timestamp (with --resume: the latest sweep of the task)
    resume: bool = False               # continue the interrupted sweep <sweep_name>
    resume_errored: bool = False       # with --resume: run errored trials again too
    stop_after_trials: int | None = None  # stop (resumably) once this many trials ended in this run

    def validate(self) -> None:
        super().validate()
        from ..data import get_task

        choices = {"search": ("grid", "random", "optuna"), "scheduler": ("asha", "fifo"), "mode": ("max", "min"),
                   "scope": ("last", "all"), "trial_backend": ("auto", "function", "ray_train")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"option {name}: {getattr(self, name)!r} is not one of {list(allowed)}")
        for name in ("num_samples", "workers_per_trial", "grace_period", "max_concurrent_trials", "num_cpus",
                     "stop_after_trials"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"option {name}: must be >= 1, got {value}")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise ConfigError(f"options cpus_per_worker/gpus_per_worker: need > 0 CPUs and >= 0 GPUs, got "
                              f"{self.cpus_per_worker}/{self.gpus_per_worker}")
        if self.max_failures < 0:
            raise ConfigError(f"option max_failures: must be >= 0, got {self.max_failures}")
        if self.reduction_factor <= 1:
            raise ConfigError(f"option reduction_factor: must be > 1, got {self.reduction_factor}")
        if self.trial_backend == "function" and self.workers_per_trial > 1:
            raise ConfigError("option trial_backend: 'function' runs one worker per trial; use ray_train (or auto) "
                              f"for workers_per_trial={self.workers_per_trial}")
        if self.sweep_name is not None and (not str(self.sweep_name) or "/" in str(self.sweep_name)):
            raise ConfigError(f"option sweep_name: {self.sweep_name!r} must be a non-empty name without '/'")
        if self.search == "optuna" and importlib.util.find_spec("optuna") is None:
            raise ConfigError("option search: 'optuna' needs the optuna package (pip install optuna); "
                              "or use search=random or search=grid")
        task = get_task(self.task)
        if self.resolved_metric() not in task.metrics:
            raise ConfigError(f"option metric: {self.metric!r} is not a dev metric of {task.name} "
                              f"({list(task.metrics)})")
        dims = self.dimensions()
        if self.ptp_dir and ({"k", "variant"} & set(dims)):
            raise ConfigError("option ptp_dir: one PTP encoder cannot serve several k/variant values; drop ptp_dir "
                              "(each (k, variant) gets its own, built before the trials)")

    def dimensions(self) -> dict[str, Any]:
        """The parsed search space (name -> :class:`dist_peakd.sweep.space.Dimension`)."""
        from ..sweep.space import load_space, parse_space

        valid = {f.name for f in dataclasses.fields(DistillOptions)}
        return parse_space(load_space(self.space, self.space_file), valid, self.search)

    def resolved_metric(self) -> str:
        from ..data import get_task

        return self.metric or get_task(self.task).main_metric

    def backend(self) -> str:
        if self.trial_backend != "auto":
            return self.trial_backend
        return "function" if self.workers_per_trial == 1 else "ray_train"

    def samples(self) -> int:
        return self.num_samples or (1 if self.search == "grid" else 8)


# ------------------------------------------------------------------------------------------- helpers
def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


def _sweep_name(opts: SweepOptions) -> str:
    if opts.sweep_name:
        return str(opts.sweep_name)
    if opts.resume:
        states = sorted(opts.task_dir().glob("sweep-*/tune"), key=lambda p: p.stat().st_mtime)
        if not states:
            raise ConfigError(f"option resume: no sweep to resume under {opts.task_dir()} (give --sweep_name)")
        return states[-1].parent.name.removeprefix("sweep-")
    return time.strftime("%Y%m%d-%H%M%S")


def _check_sweep_state(opts: SweepOptions, sweep_dir: Path, tune_dir: Path, dims: dict[str, Any]) -> bool:
    """Refuse to mix two sweeps in one folder; on resume, refuse changed options. True: restore Tune state."""
    from ..sweep.space import describe

    saved_path = sweep_dir / "sweep.json"
    now = {"options": _jsonable(dataclasses.asdict(opts)), "space": _jsonable(describe(dims))}
    exists = (tune_dir / "tuner.pkl").is_file()
    if exists and not opts.resume:
        raise ConfigError(f"sweep {sweep_dir} exists: pass --resume to continue it, or choose another --sweep_name")
    if exists and saved_path.is_file():
        before = json.loads(saved_path.read_text())
        keys = sorted((set(before["options"]) | set(now["options"])) - NON_RESULT_OPTIONS - {"space", "space_file"})
        changes = [f"{k}: {before['options'].get(k)!r} -> {now['options'].get(k)!r}" for k in keys
                   if before["options"].get(k) != now["options"].get(k)]
        if before["space"] != now["space"]:
            changes.append(f"space: {before['space']} -> {now['space']}")
        if changes:
            raise ConfigError(f"sweep {sweep_dir} was started with other options ({'; '.join(changes)}); "
                              "rerun the original command with --resume")
    if not exists:
        if opts.resume:
            print(f"[dist-peakd] nothing to resume in {sweep_dir}: starting the sweep", flush=True)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(saved_path, json.dumps(now, indent=2))
    return exists


def _trial_base(opts: SweepOptions, use_ptp: bool) -> dict[str, Any]:
    """Fixed DistillOptions values for every trial, with absolute paths (Tune runs trials in other folders)."""
    from ..data.readers import default_glue_dir

    names = [f.name for f in dataclasses.fields(DistillOptions) if f.name != "run_name"]
    base = {n: getattr(opts, n) for n in names}
    base["use_ptp"] = use_ptp
    for name in ("output_dir", "glue_dir", "cache_dir", "teacher_cache_dir", "teacher_dir", "ptp_dir"):
        if base.get(name):
            base[name] = str(Path(base[name]).resolve())
    if base["glue_dir"] is None and base["hub_dataset"] is None:
        base["glue_dir"] = str(default_glue_dir().resolve())
    for name in ("backbone", "ds_config"):
        if Path(base[name]).exists():
            base[name] = str(Path(base[name]).resolve())
    return base


def prepare_shared_stages(opts: SweepOptions, dims: dict[str, Any]) -> tuple[list[str], bool]:
    """Teacher fine-tune, teacher cache and one PTP encoder per (k, variant): each run once, else reused.

    Returns the stage log and whether trials use PTP (never on regression tasks).
    """
    from ..data import get_task
    from ..sweep.space import values_of
    from . import cache_teacher, finetune_teacher, ptp
    from .pipeline import _run_stage, _subset

    task = get_task(opts.task)
    task_dir = opts.task_dir()
    log: list[str] = []
    if opts.teacher_cache_dir:
        log.append(f"teacher + cache: given ({opts.teacher_cache_dir})")
    else:
        if opts.teacher_dir:
            log.append(f"teacher: given ({opts.teacher_dir})")
        else:
            teacher_opts = _subset(opts, finetune_teacher.FinetuneTeacherOptions, epochs=opts.teacher_epochs,
                                   lr=opts.teacher_lr, eval_every_steps=0)
            _run_stage("teacher", task_dir / finetune_teacher.STAGE, teacher_opts, finetune_teacher.run, log)
        t0 = time.perf_counter()
        summary = cache_teacher.run(_subset(opts, cache_teacher.CacheTeacherOptions))
        log.append(f"cache: {'reused' if summary.get('skipped') else 'built'} in {time.perf_counter() - t0:.1f} s")
    ptp_flags = values_of("use_ptp", dims, opts.use_ptp)
    use_ptp = any(ptp_flags) and not task.is_regression
    if use_ptp and not opts.ptp_dir:
        for k, variant in itertools.product(values_of("k", dims, opts.k), values_of("variant", dims, opts.variant)):
            ptp_opts = _subset(opts, ptp.PTPOptions, k=k, variant=variant, epochs=opts.ptp_epochs, lr=opts.ptp_lr,
                               eval_every_steps=0)
            _run_stage(f"ptp k={k} {variant}", task_dir / ptp_opts.stage_name(), ptp_opts, ptp.run, log)
    return log, use_ptp


@contextlib.contextmanager
def _tune_environment() -> Iterator[None]:
    """During ``fit``: SIGTERM acts as Ctrl+C (Tune saves its state and returns); no Tune TensorBoard logs."""
    import threading

    previous = os.environ.get("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS")
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    old_term = None
    if threading.current_thread() is threading.main_thread():
        old_term = signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    try:
        yield
    finally:
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)
        if previous is None:
            os.environ.pop("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", None)
        else:
            os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = previous


def _make_tuner(opts: SweepOptions, trainable: Any, dims: dict[str, Any], metric: str, sweep_dir: Path,
                restore: bool) -> Any:
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from ..sweep.callbacks import StopAfterTrials
    from ..sweep.space import to_tune
    from ..sweep.trainable import trial_dirname

    tune_dir = sweep_dir / "tune"
    if restore:
        return tune.Tuner.restore(str(tune_dir), trainable, resume_unfinished=True, resume_errored=False,
                                  restart_errored=opts.resume_errored)
    if opts.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg, max_concurrent = OptunaSearch(seed=opts.seed), opts.max_concurrent_trials
    else:  # Tune ignores max_concurrent_trials for a generator instance: give it to the generator
        search_alg = BasicVariantGenerator(max_concurrent=opts.max_concurrent_trials or 0, random_state=opts.seed)
        max_concurrent = None
    scheduler = (ASHAScheduler(time_attr="training_iteration", max_t=ASHA_MAX_T, grace_period=opts.grace_period,
                               reduction_factor=opts.reduction_factor)
                 if opts.scheduler == "asha" else FIFOScheduler())
    return tune.Tuner(
        trainable,
        param_space=to_tune(dims),
        tune_config=tune.TuneConfig(metric=metric, mode=opts.mode, search_alg=search_alg, scheduler=scheduler,
                                    num_samples=opts.samples(), max_concurrent_trials=max_concurrent,
                                    reuse_actors=True, trial_dirname_creator=trial_dirname),
        run_config=tune.RunConfig(name=tune_dir.name, storage_path=str(sweep_dir),
                                  failure_config=tune.FailureConfig(max_failures=opts.max_failures),
                                  callbacks=[CSVLoggerCallback(), JsonLoggerCallback(), StopAfterTrials()],
                                  verbose=1),
    )


def _check_resources(settings: Any, local: bool) -> None:
    """Refuse a trial that can never fit a local instance (on a joined cluster, which may autoscale: warn)."""
    import ray

    total = ray.cluster_resources()
    cpus, gpus = settings.cpus_per_trial(), settings.workers * settings.gpus_per_worker
    if cpus > total.get("CPU", 0) or gpus > total.get("GPU", 0):
        error = ConfigError(f"one trial needs {cpus:g} CPUs and {gpus:g} GPUs (workers_per_trial={settings.workers}, "
                          f"cpus_per_worker={settings.cpus_per_worker:g}, gpus_per_worker={settings.gpus_per_worker:g}"
                          f"{', plus its driver' if settings.backend == 'ray_train' else ''}) but the Ray cluster has "
                          f"{total.get('CPU', 0):g} CPUs and {total.get('GPU', 0):g} GPUs; lower cpus_per_worker "
                          "(fractions are fine, e.g. 0.5) or workers_per_trial")
        if local:
            raise error
        print(f"[dist-peakd] warning: {error} (trials wait until the cluster grows)", flush=True)


def _trial_states(tune_dir: Path) -> list[Any]:
    from ray.tune import ExperimentAnalysis

    from ..sweep.results import TrialState

    analysis = ExperimentAnalysis(str(tune_dir))
    return [TrialState(trial_id=t.trial_id, status=t.status, config=dict(t.config), last_result=dict(t.last_result))
            for t in analysis.trials]


def write_results(opts: SweepOptions, sweep_dir: Path, dims: dict[str, Any], metric: str, log: list[str],
                  wall_s: float) -> dict[str, Any]:
    """results.{csv,md,json} and the plots in the sweep folder; returns the result summary."""
    from ..data import get_task
    from ..sweep.results import best_row, collect_rows, plot_results, to_csv, to_markdown
    from ..sweep.space import grid_size

    task = get_task(opts.task)
    swept = list(dims)
    rows = collect_rows(sweep_dir, _trial_states(sweep_dir / "tune"), dataclasses.asdict(opts), swept, metric,
                        list(task.metrics))
    counts = {s: sum(r["status"] == s for r in rows) for s in ("completed", "stopped", "errored", "unfinished")}
    expected = opts.samples() * grid_size(dims)
    not_started = max(0, expected - len(rows))
    best = best_row(rows, metric, opts.mode, opts.scope)
    best_info = None
    if best is not None:
        best_info = {"trial": best["trial"], "config": {k: best[k] for k in swept},
                     f"{metric}_final": best[f"{metric}_final"], f"{metric}_best": best[f"{metric}_best"],
                     "run_dir": best["run_dir"]}
    header = (f"## dist-peakd sweep {sweep_dir.name.removeprefix('sweep-')} ({task.name}, {opts.search} search, {opts.scheduler}; "
              f"{len(rows)} trials: " + ", ".join(f"{v} {k}" for k, v in counts.items() if v)
              + (f"; {not_started} not started yet" if not_started else "") + ")")
    md = to_markdown(rows, header)
    atomic_write_text(sweep_dir / "results.csv", to_csv(rows))
    atomic_write_text(sweep_dir / "results.md", md)
    loguniform = [n for n, d in dims.items() if d.kind == "loguniform"]
    plots = plot_results(rows, sweep_dir, metric, swept, log_scale=loguniform)
    result = {
        "sweep_dir": str(sweep_dir), "task": task.name, "metric": metric, "mode": opts.mode, "scope": opts.scope,
        "best": best_info, "num_trials": len(rows), "status_counts": counts, "not_started": not_started,
        "interrupted": counts["unfinished"] > 0 or not_started > 0, "stages": log, "wall_time_s": round(wall_s, 1),
        "results": {ext: str(sweep_dir / f"results.{ext}") for ext in ("csv", "md", "json")},
        "plots": [str(p) for p in plots],
    }
    atomic_write_text(sweep_dir / "results.json", json.dumps({**result, "rows": rows}, indent=2, default=str))
    print(md, flush=True)
    if best_info:
        value = best_info[f"{metric}_{'final' if opts.scope == 'last' else 'best'}"]
        print(f"[dist-peakd] best trial {best_info['trial']}: {metric} = {value:.4f} "
              f"({'final' if opts.scope == 'last' else 'best on dev'}) with {json.dumps(best_info['config'])}",
              flush=True)
    if result["interrupted"]:
        name = sweep_dir.name.removeprefix("sweep-")
        print(f"[dist-peakd] the sweep was interrupted ({counts['unfinished']} trial(s) unfinished, {not_started} "
              f"not started): rerun the same command with --resume --sweep_name {name}", flush=True)
    return result


def run(opts: SweepOptions) -> dict[str, Any]:
    """Build the shared stages, run the Tune sweep (resuming if asked), write the results; returns the summary."""
    from ..sweep.callbacks import RUNTIME
    from ..sweep.cluster import init_ray, shutdown_ray
    from ..sweep.space import values_of
    from ..sweep.trainable import TrialSettings, make_trainable
    from .common import quiet_environment, resolve_backbone
    from .student_common import check_k_against_backbone

    t_start = time.perf_counter()
    quiet_environment()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("run the sweep as one process (not under deepspeed/torchrun); "
                          "each trial gets its own ranks with --workers_per_trial")
    dims = opts.dimensions()
    metric = opts.resolved_metric()
    name = _sweep_name(opts)
    sweep_dir = (opts.task_dir() / f"sweep-{name}").resolve()
    backbone = resolve_backbone(opts.backbone)
    for k in values_of("k", dims, opts.k):
        check_k_against_backbone(int(k), backbone)
    restore = _check_sweep_state(opts, sweep_dir, sweep_dir / "tune", dims)
    started = init_ray(opts.address, opts.num_cpus)
    try:
        backend = opts.backend()
        probe = TrialSettings(base={}, sweep_name=name, sweep_dir=str(sweep_dir), metric=metric, backend=backend,
                              workers=opts.workers_per_trial, cpus_per_worker=opts.cpus_per_worker,
                              gpus_per_worker=opts.gpus_per_worker)
        _check_resources(probe, local=opts.address is None)
        log, use_ptp = prepare_shared_stages(opts, dims)
        settings = dataclasses.replace(probe, base=_trial_base(opts, use_ptp), mode=opts.mode)
        print(f"[dist-peakd] sweep {sweep_dir}: {'resuming' if restore else 'starting'}; trials: {backend}, "
              f"{opts.workers_per_trial} worker(s) each; shared stages: {'; '.join(log)}", flush=True)
        RUNTIME["stop_after_trials"] = opts.stop_after_trials
        tuner = _make_tuner(opts, make_trainable(settings), dims, metric, sweep_dir, restore)
        with _tune_environment():
            tuner.fit()
        return write_results(opts, sweep_dir, dims, metric, log, time.perf_counter() - t_start)
    finally:
        RUNTIME["stop_after_trials"] = None
        shutdown_ray(started)
