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
DeepSpeed workers; it evaluates ``rungs`` times per epoch (unless ``eval_every_steps`` is set) and reports
after every evaluation, so ASHA can stop it early: such a trial keeps its ``best/`` and a summary marked
"stopped at step N (ASHA)". The budget (trials x steps) is printed before the trials start and one line
as each trial ends.

Layout, under ``<output_dir>/<task>/sweep-<name>/``: ``trial-<id>-<swept values>/`` (one distillation run
each: event files, ``summary.json``, ``trial.json``, ``best/``; ``final/`` only for the best trial unless
``keep_trial_final``; ``tensorboard --logdir`` this folder shows all trials side by side, named like
their folders), ``tune/`` (Ray Tune's state, for ``--resume``), ``results.{csv,md,json}`` and the plots
(a heatmap for a 2-D grid, else ``<metric>_vs_<option>.png``).

A trial that raises is retried ``max_failures`` times, then reported as ``errored``; the sweep goes on.
Ctrl+C / SIGTERM (or ``stop_after_trials``) stops the sweep with its state saved: rerun the same
command with ``--resume`` to finish it; finished trials are not run again.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import itertools
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import console
from ..artifacts import atomic_write_text
from ..config import option, result_differences
from ..env import env_int
from ..errors import ConfigError
from ..layout import CACHE_MANIFEST
from . import distill
from .depth import AUTO, describe_resolution, normalise_k, resolve_k
from .distill import DistillOptions
from .pipeline import EarlierStagesOptions, run_teacher_stages
from .preflight import check_models
from .stage_folder import releases_locks

SEARCHES = ("grid", "random", "optuna")


@dataclass
class SweepOptions(EarlierStagesOptions):
    """Distillation options (fixed for every trial unless swept) plus the search, resources and cluster.

    Trials report after every dev evaluation: ``rungs`` per epoch by default (``eval_every_steps`` > 0
    sets the interval instead). Both apply to the trials only: the shared teacher and PTP stages evaluate
    once per epoch (as the pipeline does by default), so a sweep can reuse a pipeline's teacher, cache and
    PTP encoders.
    """

    # what to search
    space: Any = option(None, help="search space: JSON/YAML text or mapping (overrides space_file keys)")
    space_file: str | None = option(None, help="YAML/JSON file with the search space")
    num_samples: int | None = option(None, help="grid: repeats of the grid (default 1); random/optuna: number of "
                                                "trials (default 8)", ge=1)
    search: str = option("grid", help="grid | random | optuna (optuna must be installed)", choices=SEARCHES)
    scheduler: str = option("asha", help="asha | fifo", choices=("asha", "fifo"))
    mode: str = option("max", help="max | min", choices=("max", "min"))
    scope: str = option("last", help="rank trials by their final metric (last) or best-on-dev (all)",
                        choices=("last", "all"))
    grace_period: int = option(1, help="ASHA: evaluations before a trial can be stopped", ge=1)
    reduction_factor: float = option(2.0, help="ASHA: keep the top 1/reduction_factor at each rung", gt=1)
    rungs: int = option(3, help="dev evaluations per epoch of each trial when eval_every_steps is 0 (ASHA's "
                                "decision points; 1: at epoch ends only)", ge=1)
    keep_trial_final: bool = option(False, help="keep final/ of every trial (default: only the best trial's; "
                                                "every trial keeps best/)", result=False)
    # how each trial runs
    workers_per_trial: int = option(1, help="ranks (Ray Train workers) per trial", ge=1)
    cpus_per_worker: float = option(1.0, help="CPUs reserved per worker", gt=0)
    gpus_per_worker: float = option(0.0, help="GPUs reserved per worker", ge=0)
    trial_backend: str = option("auto", help="auto (function if workers_per_trial == 1 else ray_train) | function "
                                             "| ray_train", choices=("auto", "function", "ray_train"))
    max_concurrent_trials: int | None = option(None, help="default: as many as the resources allow", result=False,
                                               ge=1)
    max_failures: int = option(1, help="retries of a trial that raised", result=False, ge=0)
    # the cluster and the sweep's bookkeeping
    address: str | None = option(None, help="Ray cluster address (None: start a local Ray instance)", result=False)
    num_cpus: int | None = option(None, help="CPUs of a local Ray instance (default: all)", result=False, ge=1)
    sweep_name: str | None = option(None, help="sweep folder name (default: a timestamp; with --resume: the "
                                               "latest sweep of the task)", result=False)
    resume: bool = option(False, help="continue the interrupted sweep <sweep_name>", result=False)
    resume_errored: bool = option(False, help="with --resume: run errored trials again too", result=False)
    stop_after_trials: int | None = option(None, help="stop (resumably) once this many trials ended in this run",
                                           result=False, ge=1)

    def validate(self) -> None:
        super().validate()
        self._check_student()
        if self.trial_backend == "function" and self.workers_per_trial > 1:
            raise ConfigError("option trial_backend: 'function' runs one worker per trial; use ray_train (or auto) "
                              f"for workers_per_trial={self.workers_per_trial}")
        if self.sweep_name is not None and (not str(self.sweep_name) or "/" in str(self.sweep_name)):
            raise ConfigError(f"option sweep_name: {self.sweep_name!r} must be a non-empty name without '/'")
        if self.search == "optuna" and importlib.util.find_spec("optuna") is None:
            raise ConfigError("option search: 'optuna' needs the optuna package (pip install optuna); "
                              "or use search=random or search=grid")
        if self.data_options().is_glue:  # own data: load_data checks --metric against the problem
            self.resolved_metric()
        dims = self.dimensions()
        if "k" in dims and any(normalise_k(v) == AUTO for v in dims["k"].candidates()):
            raise ConfigError("option space: k values must be integers (auto is the default of the fixed --k, "
                              "not a value to sweep)")
        if self.ptp_dir and ({"k", "variant"} & set(dims)):
            raise ConfigError("option ptp_dir: one PTP encoder cannot serve several k/variant values; drop ptp_dir "
                              "(each (k, variant) gets its own, built before the trials)")
        from ..sweep.space import check_space_values

        trial_type = self.trial_options_type()
        fixed = {f.name: getattr(self, f.name) for f in dataclasses.fields(trial_type) if hasattr(self, f.name)}
        check_space_values(dims, trial_type, fixed)  # every swept value as a trial would check it

    def _check_student(self) -> None:
        if self.student != "sps":
            raise ConfigError(f"option student: {self.student!r}: sweeps train SPS students only (their space has no "
                              "student/depth dimensions; `dist-peakd compress --shapes` searches both kinds); run "
                              "`dist-peakd pipeline --student plain --depth d` per depth")

    def trial_options_type(self) -> type:
        """The options dataclass of one trial (every swept value is checked as it would check it)."""
        return DistillOptions

    def dimensions(self) -> dict[str, Any]:
        """The parsed search space (name -> :class:`dist_peakd.sweep.space.Dimension`)."""
        from ..sweep.space import load_space, parse_space

        valid = {f.name for f in dataclasses.fields(DistillOptions)}
        return parse_space(load_space(self.space, self.space_file), valid, self.search)

    def resolved_metric(self, task: Any = None) -> str:
        """The metric trials are ranked by: ``--metric``, else the task's main metric (``task``: the run's
        :class:`~dist_peakd.data.Task`, needed for own data; GLUE tasks are looked up)."""
        from ..data import glue_task

        return (task or glue_task(self)).main_metric

    def backend(self) -> str:
        if self.trial_backend != "auto":
            return self.trial_backend
        return "function" if self.workers_per_trial == 1 else "ray_train"

    def samples(self) -> int:
        return self.num_samples or (1 if self.search == "grid" else 8)


    def tuner_spec(self, max_t: int, expected_trials: int, swept: tuple[str, ...], task: Any = None) -> Any:
        from ..sweep.tuner import TunerSpec

        return TunerSpec(metric=self.resolved_metric(task), mode=self.mode, search=self.search, scheduler=self.scheduler,
                         num_samples=self.samples(), grace_period=self.grace_period,
                         reduction_factor=self.reduction_factor, max_concurrent_trials=self.max_concurrent_trials,
                         max_failures=self.max_failures, seed=self.seed, resume_errored=self.resume_errored,
                         max_t=max_t, expected_trials=expected_trials, swept=swept)


# ------------------------------------------------------------------------------------------- helpers
def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(d, default=str))


def _sweep_name(opts: SweepOptions) -> str:
    if opts.sweep_name:
        return str(opts.sweep_name)
    if opts.resume:
        states = opts.layout().sweep_states()
        if not states:
            raise ConfigError(f"option resume: no sweep to resume under {opts.task_dir()} (give --sweep_name)")
        return states[-1].parent.name.removeprefix("sweep-")
    return time.strftime("%Y%m%d-%H%M%S")


def _check_sweep_state(opts: SweepOptions, sweep_dir: Path, dims: dict[str, Any]) -> bool:
    """Refuse to mix two sweeps in one folder; on resume, refuse changed options. True: restore Tune state."""
    from ..sweep.space import describe

    saved_path = sweep_dir / "sweep.json"
    now = {"options": _jsonable(dataclasses.asdict(opts)), "space": _jsonable(describe(dims))}
    exists = (sweep_dir / "tune" / "tuner.pkl").is_file()
    if exists and not opts.resume:
        raise ConfigError(f"sweep {sweep_dir} exists: pass --resume to continue it, or choose another --sweep_name")
    if exists and saved_path.is_file():
        before = json.loads(saved_path.read_text())
        changes = result_differences(before["options"], opts, ignore=frozenset({"space", "space_file"}))
        if before["space"] != now["space"]:
            changes.append(f"space: {before['space']} -> {now['space']}")
        if changes:
            raise ConfigError(f"sweep {sweep_dir} was started with other options ({'; '.join(changes)}); "
                              "rerun the original command with --resume")
    if not exists:
        if opts.resume:
            console.info(f"nothing to resume in {sweep_dir}: starting the sweep")
        sweep_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(saved_path, json.dumps(now, indent=2))
    return exists


def _trial_base(opts: SweepOptions, use_ptp: bool) -> dict[str, Any]:
    """Fixed DistillOptions values for every trial, with absolute paths (Tune runs trials in other folders)."""
    from ..data.readers import default_glue_dir

    names = [f.name for f in dataclasses.fields(DistillOptions) if f.name != "run_name"]
    base = {n: getattr(opts, n) for n in names}
    base["use_ptp"] = use_ptp
    for name in ("output_dir", "glue_dir", "cache_dir", "teacher_cache_dir", "teacher_dir", "ptp_dir",
                 "train_file", "dev_file", "test_file"):
        if base.get(name):
            base[name] = str(Path(base[name]).resolve())
    if base["hub_dataset"] and Path(base["hub_dataset"]).exists():  # a local dataset folder
        base["hub_dataset"] = str(Path(base["hub_dataset"]).resolve())
    if opts.data_options().is_glue and base["glue_dir"] is None and base["hub_dataset"] is None:
        base["glue_dir"] = str(default_glue_dir().resolve())
    for name in ("backbone", "ds_config"):
        if Path(base[name]).exists():
            base[name] = str(Path(base[name]).resolve())
    return base


def prepare_shared_stages(opts: SweepOptions, dims: dict[str, Any], task: Any) -> tuple[list[str], bool]:
    """Teacher fine-tune, teacher cache and one PTP encoder per (k, variant): each run once, else reused.

    Returns the stage log and whether trials use PTP (never on regression tasks).
    """
    from ..sweep.space import values_of
    from . import ptp
    from .pipeline import _run_stage, _subset

    layout = opts.layout()
    log: list[str] = []
    if opts.teacher_cache_dir:
        log.append(f"teacher + cache: given ({opts.teacher_cache_dir})")
    else:
        run_teacher_stages(opts, log, eval_every_steps=0)
    use_ptp = any(values_of("use_ptp", dims, opts.use_ptp)) and not task.is_regression
    if use_ptp and not opts.ptp_dir:
        for k, variant in itertools.product(values_of("k", dims, opts.k), values_of("variant", dims, opts.variant)):
            ptp_opts = _subset(opts, ptp.PTPOptions, k=k, variant=variant, epochs=opts.ptp_epochs, lr=opts.ptp_lr,
                               eval_every_steps=0)
            _run_stage(f"ptp k={k} {variant}", layout.ptp_stage(k, variant), ptp_opts, ptp.run, log)
    return log, use_ptp


def _shared_stage_count(opts: SweepOptions, dims: dict[str, Any], task: Any) -> int:
    """The stages run before the trials (each gets a banner): teacher, cache, one PTP encoder per shape."""
    from ..sweep.space import values_of

    count = 0 if opts.teacher_cache_dir else 1 + (not opts.layout().teacher_is_given)
    if any(values_of("use_ptp", dims, opts.use_ptp)) and not task.is_regression and not opts.ptp_dir:
        count += len(values_of("k", dims, opts.k)) * len(values_of("variant", dims, opts.variant))
    return count


def _train_rows(opts: SweepOptions) -> int | None:
    """Training examples every trial sees (the teacher cache's train split, cut to ``max_train_examples``)."""
    manifest = opts.layout().teacher_cache / CACHE_MANIFEST
    try:
        rows = int(json.loads(manifest.read_text())["splits"]["train"]["rows"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return min(rows, opts.max_train_examples) if opts.max_train_examples else rows


def _report(opts: SweepOptions, dims: dict[str, Any], task: Any) -> Any:
    from ..sweep.report import SweepReport
    from ..sweep.space import grid_size

    return SweepReport(task=task.name, task_metrics=list(task.metrics), metric=task.main_metric, mode=opts.mode,
                       scope=opts.scope, search=opts.search, scheduler=opts.scheduler,
                       expected_trials=opts.samples() * grid_size(dims), fixed=dataclasses.asdict(opts),
                       keep_trial_final=opts.keep_trial_final)


@releases_locks
def run(opts: SweepOptions) -> dict[str, Any]:
    """Build the shared stages, run the Tune sweep (resuming if asked), write the results; returns the summary.

    Ray is started or joined (a dead ``--address`` refused in seconds) and the trial's resources checked
    before anything is written: a refused sweep leaves no folder."""
    from ..sweep.cluster import init_ray, probe_address, shutdown_ray
    from .common import quiet_environment

    t_start = time.perf_counter()
    quiet_environment()
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "30")  # a stopped trial's summary before actor reuse
    if env_int("WORLD_SIZE", 1, minimum=1) > 1:
        raise ConfigError("run the sweep as one process (not under deepspeed/torchrun); "
                          "each trial gets its own ranks with --workers_per_trial")
    check_models(opts, "sweep")  # backbone, given teacher, every swept k: before anything is built
    probe_address(opts.address)
    started = init_ray(opts.address, opts.num_cpus)
    try:
        return _run_sweep(opts, t_start)
    finally:
        shutdown_ray(started)


def _run_sweep(opts: SweepOptions, t_start: float) -> dict[str, Any]:
    from ..sweep.plan import trial_budget
    from ..sweep.report import write_results
    from ..sweep.space import grid_size
    from ..sweep.trainable import TrialSettings, make_trainable
    from ..sweep.tuner import check_resources, make_tuner, run_tuner
    from .common import run_task
    from .stage_folder import lock_for_job

    settings = TrialSettings(base={}, sweep_name="", sweep_dir="", metric="", mode=opts.mode,
                             backend=opts.backend(), workers=opts.workers_per_trial,
                             cpus_per_worker=opts.cpus_per_worker, gpus_per_worker=opts.gpus_per_worker,
                             options_type=DistillOptions, trial_fn=distill.run)
    check_resources(settings, local=opts.address is None)
    opts, k_auto = resolve_k(opts)  # the fixed k of the trials; the folders and sweep.json hold the integer
    if k_auto is not None:
        console.info(describe_resolution(k_auto))
    dims, name = opts.dimensions(), _sweep_name(opts)
    sweep_dir = opts.layout().sweep_dir(name).resolve()
    task = run_task(opts)  # own data: read and checked (and --metric against its problem) before anything
    lock_for_job(sweep_dir, "sweep folder")
    restore = _check_sweep_state(opts, sweep_dir, dims)
    swept = tuple(n for n, d in dims.items() if d.kind != "fixed")
    with console.stage_plan(_shared_stage_count(opts, dims, task) + 1):
        log, use_ptp = prepare_shared_stages(opts, dims, task)
        base, train_rows = _trial_base(opts, use_ptp), _train_rows(opts)
        settings = dataclasses.replace(settings, base=base, train_rows=train_rows, rungs=opts.rungs, swept=swept,
                                       sweep_name=name, sweep_dir=str(sweep_dir), metric=task.main_metric)
        max_t, budget = trial_budget(opts, dims, base, train_rows)
        console.banner("sweep", f"{'resuming ' if restore else ''}{budget} -> {sweep_dir}")
    console.info(f"trials: {settings.backend}, {opts.workers_per_trial} worker(s) each, {opts.search} search, "
                 f"{opts.scheduler}; shared stages: {'; '.join(log)}")
    spec = opts.tuner_spec(max_t, opts.samples() * grid_size(dims), swept, task)
    run_tuner(make_tuner(spec, make_trainable(settings), dims, sweep_dir, restore), opts.stop_after_trials)
    return write_results(_report(opts, dims, task), sweep_dir, dims, log, time.perf_counter() - t_start)
