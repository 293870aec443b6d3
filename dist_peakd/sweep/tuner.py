"""The Ray Tune wiring of a sweep: the tuner (search, scheduler, callbacks), resources, running it.

Ray is imported only inside these functions. What to search and how to run a trial come from the
caller (:class:`TunerSpec`, :class:`~dist_peakd.sweep.trainable.TrialSettings`); nothing here knows a stage.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import console
from ..errors import ConfigError
from .plan import ASHA_MAX_T


@dataclass(frozen=True)
class TunerSpec:
    """How to search: the sweep options that shape the Tune run."""

    metric: str
    mode: str = "max"
    search: str = "grid"               # grid | random | optuna
    scheduler: str = "asha"            # asha | fifo
    num_samples: int = 1
    grace_period: int = 1
    reduction_factor: float = 2.0
    max_concurrent_trials: int | None = None
    max_failures: int = 1
    seed: int = 0
    resume_errored: bool = False
    max_t: int = ASHA_MAX_T            # ASHA: evaluations of a trial that runs to its end
    expected_trials: int = 0           # for the progress lines (trial i/N)
    swept: tuple[str, ...] = ()        # the options the space varies (shown in the progress lines)
    time_budget_s: float | None = None  # stop starting/running trials after this many seconds (None: no limit)


@contextlib.contextmanager
def tune_environment() -> Iterator[None]:
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


def _search_and_scheduler(spec: TunerSpec, sweep_dir: Path) -> tuple[Any, int | None, Any]:
    from ray.tune.schedulers import FIFOScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from .callbacks import RecordingASHA

    if spec.search == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        search_alg, max_concurrent = OptunaSearch(seed=spec.seed), spec.max_concurrent_trials
    else:  # Tune ignores max_concurrent_trials for a generator instance: give it to the generator
        search_alg = BasicVariantGenerator(max_concurrent=spec.max_concurrent_trials or 0, random_state=spec.seed)
        max_concurrent = None
    scheduler = (RecordingASHA(str(sweep_dir), time_attr="training_iteration", max_t=max(1, spec.max_t),
                               grace_period=min(spec.grace_period, max(1, spec.max_t)),
                               reduction_factor=spec.reduction_factor)
                 if spec.scheduler == "asha" else FIFOScheduler())
    return search_alg, max_concurrent, scheduler


def make_tuner(spec: TunerSpec, trainable: Any, dims: dict[str, Any], sweep_dir: Path, restore: bool) -> Any:
    """A new ``tune.Tuner`` over ``dims`` storing its state in ``sweep_dir/tune``, or the restored one."""
    from ray import tune
    from ray.tune.logger import CSVLoggerCallback, JsonLoggerCallback

    from .callbacks import StopAfterTrials, TrialProgress
    from .space import to_tune
    from .trainable import trial_dirname

    tune_dir = sweep_dir / "tune"
    if restore:
        return tune.Tuner.restore(str(tune_dir), trainable, resume_unfinished=True, resume_errored=False,
                                  restart_errored=spec.resume_errored)
    search_alg, max_concurrent, scheduler = _search_and_scheduler(spec, sweep_dir)
    return tune.Tuner(
        trainable,
        param_space=to_tune(dims),
        tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, search_alg=search_alg, scheduler=scheduler,
                                    num_samples=spec.num_samples, max_concurrent_trials=max_concurrent,
                                    reuse_actors=True, trial_dirname_creator=trial_dirname,
                                    time_budget_s=spec.time_budget_s),
        run_config=tune.RunConfig(name=tune_dir.name, storage_path=str(sweep_dir),
                                  failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                                  callbacks=[CSVLoggerCallback(), JsonLoggerCallback(), StopAfterTrials(),
                                             TrialProgress(str(sweep_dir), spec.metric, spec.expected_trials,
                                                           spec.swept)],
                                  verbose=0),  # our own lines: the budget first, then one per ended trial
    )


def run_tuner(tuner: Any, stop_after_trials: int | None) -> None:
    """``tuner.fit()`` with SIGTERM as Ctrl+C and the ``stop_after_trials`` limit in force."""
    from .callbacks import RUNTIME

    RUNTIME["stop_after_trials"] = stop_after_trials
    try:
        with tune_environment():
            tuner.fit()
    finally:
        RUNTIME["stop_after_trials"] = None


def check_resources(settings: Any, local: bool) -> None:
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
        console.info(f"warning: {error} (trials wait until the cluster grows)")
