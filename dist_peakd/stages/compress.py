"""``dist-peakd compress``: the most accurate student that fits a latency / size budget, found by a Ray Tune
search on the shared teacher cache, measured as it will be deployed.

::

    dist-peakd compress --task mrpc --max_metric_drop 3 --max_latency_ms 8 --objective latency
    dist-peakd compress --task mrpc --shapes sps-k2-shuffle,plain-d2-alternate --num_samples 12 \\
        --space '{"temperature": [2, 5, 10], "alpha": {"uniform": [0.3, 0.9]}}' --time_budget_s 3600

The search is a ``dist-peakd sweep`` (same teacher, cache, PTP encoders, trials, ASHA, ``--resume``) whose
space adds the student ``shape`` (:mod:`.compress_trial`: SPS k/variant, plain depth/layer map) to the
distillation options of ``--space`` (default: temperature and alpha). After the search every trial that
ran to its end is exported to ONNX by the product's export (fp32, and int8 with ``--precisions`` holding
it), and each graph is one candidate: its dev metrics measured **on the graph** with onnxruntime, its
median latency at ``--latency_shape`` on this machine with ``--latency_threads`` threads, its file size.
The candidates' Pareto front, the one the budget and ``--objective`` choose (or, when none fits, the one
missing the budget least) and the chosen student's ONNX and HF folders (carded with the front) go into
``<output_dir>/<task>/sweep-compress-<name>/``: ``front.{md,json,png}``, ``chosen/{onnx,hf}``.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from dataclasses import dataclass
from typing import Any

from ..config import option
from ..errors import ConfigError
from ..sweep.front import OBJECTIVES
from .compress_trial import PRECISIONS, SHAPE_HELP, CompressTrialOptions, parse_shape, parse_shapes
from .distill import DistillOptions
from .sweep import SEARCHES, SweepOptions

DEFAULT_SHAPES = "sps-k2-shuffle,sps-k3-shuffle,plain-d2-alternate,plain-d3-alternate"
DEFAULT_SPACE = {"temperature": [2, 5, 10], "alpha": {"uniform": [0.3, 0.9]}}
#: Options a shape sets: not to be given (or swept) beside ``--shapes``.
SHAPE_OPTIONS = ("k", "variant", "student", "depth", "layer_map")
_LATENCY_SHAPE = re.compile(r"^\s*batch\s*=\s*(\d+)\s*,\s*seq\s*=\s*(\d+)\s*$")


@dataclass
class CompressOptions(SweepOptions):
    """The sweep's options, the student shapes and precisions, how latency is measured, the budget."""

    search: str = option("random", help="random (default: samples shapes and the space) | grid | optuna",
                         choices=SEARCHES)
    num_samples: int | None = option(None, help="random/optuna: number of trials (default 8); grid: repeats of the "
                                                "grid (default 1)", ge=1)
    shapes: str = option(DEFAULT_SHAPES, help=SHAPE_HELP)
    precisions: str = option("fp32,int8", help="exported graphs each trained student is measured as: fp32, int8 or "
                                                "both (comma separated); each graph is one candidate", result=False)
    latency_shape: str = option("batch=1,seq=128", help="input shape the latency is measured at (batch=B,seq=S)",
                                result=False)
    latency_threads: int | None = option(None, help="onnxruntime intra-op threads for the latency (default: the "
                                                    "machine's CPUs, at most 4)", result=False, ge=1)
    latency_runs: int = option(20, help="timed runs per graph (the median is reported)", result=False, ge=1)
    latency_warmup: int = option(5, help="untimed runs per graph before timing", result=False, ge=0)
    max_metric_drop: float | None = option(None, help="budget: the chosen student's dev main metric (on its graph) at "
                                                      "most this many points (0.01 = 1 point) below the teacher's",
                                           result=False, ge=0)
    max_latency_ms: float | None = option(None, help="budget: median latency (ms) at --latency_shape", result=False,
                                          gt=0)
    max_size_mb: float | None = option(None, help="budget: size of the exported graph file (MB, 1e6 bytes)",
                                       result=False, gt=0)
    objective: str = option("latency", help="among the candidates meeting every budget: latency (fastest) | size "
                                            "(smallest) | metric (most accurate)", result=False, choices=OBJECTIVES)
    time_budget_s: float | None = option(None, help="stop the search after this many seconds (trials running then "
                                                    "are not measured)", result=False, gt=0)

    def validate(self) -> None:
        self._check_student()
        parse_shapes(self.shapes)
        self.precision_list()
        self.latency_dims()
        super().validate()

    def _check_student(self) -> None:
        given = {"student": self.student != "sps", "depth": self.depth is not None,
                 "layer_map": self.layer_map != "bottom", "k": str(self.k) != "auto"}
        for name, is_given in given.items():
            if is_given:
                raise ConfigError(f"option {name}: {getattr(self, name)!r}: compress takes the student's kind and "
                                  "size from --shapes (e.g. --shapes sps-k2-shuffle,plain-d3-alternate)")

    def trial_options_type(self) -> type:
        return CompressTrialOptions

    def dimensions(self) -> dict[str, Any]:
        """``shape`` (a choice, or a grid axis with ``--search grid``) followed by the ``--space`` dimensions."""
        from ..sweep.space import load_space, parse_space

        raw = load_space(self.space, self.space_file) if (self.space or self.space_file) else dict(DEFAULT_SPACE)
        for name in (*SHAPE_OPTIONS, "shape", "use_ptp", "precision"):
            if name in raw:
                raise ConfigError(f"option space: {name!r} cannot be swept by compress: the student shapes come from "
                                  "--shapes, the precisions from --precisions, PTP from --use_ptp")
        valid = {f.name for f in dataclasses.fields(DistillOptions)} | {"shape"}
        return parse_space({"shape": parse_shapes(self.shapes), **raw}, valid, self.search)

    def precision_list(self) -> tuple[str, ...]:
        items = [p.strip() for p in str(self.precisions).split(",") if p.strip()]
        if not items or any(p not in PRECISIONS for p in items) or len(set(items)) != len(items):
            raise ConfigError(f"option precisions: {self.precisions!r} must be fp32, int8 or fp32,int8")
        return tuple(items)

    def latency_dims(self) -> tuple[int, int]:
        m = _LATENCY_SHAPE.match(str(self.latency_shape))
        if not m or int(m[1]) < 1 or int(m[2]) < 1:
            raise ConfigError(f"option latency_shape: {self.latency_shape!r} must be batch=B,seq=S with B, S >= 1 "
                              "(e.g. batch=1,seq=128)")
        return int(m[1]), int(m[2])

    def budget(self) -> Any:
        from ..sweep.front import Budget

        return Budget(self.max_metric_drop, self.max_latency_ms, self.max_size_mb, self.objective)

    def tuner_spec(self, max_t: int, expected_trials: int, swept: tuple[str, ...], task: Any = None) -> Any:
        spec = super().tuner_spec(max_t, expected_trials, swept, task)
        return dataclasses.replace(spec, time_budget_s=self.time_budget_s)


def check_shapes(opts: CompressOptions) -> None:
    """Every shape within the backbone's layers (read from its config), before anything trains."""
    from .student_kind import backbone_layers, layer_indices

    layers = backbone_layers(opts)
    for shape in parse_shapes(opts.shapes):
        fields = parse_shape(shape)
        need = fields["k"] if fields["student"] == "sps" else fields["depth"]
        if need > layers:
            raise ConfigError(f"option shapes: {shape!r} needs {need} layers; the backbone ({opts.backbone}) has "
                              f"{layers}")
        if fields["student"] == "plain":
            layer_indices(fields["layer_map"], need, layers)


def run(opts: CompressOptions) -> dict[str, Any]:
    """Search, measure, choose, export: see the module docstring. A run whose budget nothing meets ends
    normally (exit 0) with the closest candidate named and nothing exported."""
    from ..sweep.cluster import init_ray, probe_address, shutdown_ray
    from .common import quiet_environment
    from .compress_search import run_compress
    from .preflight import check_models
    from .stage_folder import releases_locks

    t_start = time.perf_counter()
    quiet_environment()
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "30")
    from ..env import env_int

    if env_int("WORLD_SIZE", 1, minimum=1) > 1:
        raise ConfigError("run compress as one process (not under deepspeed/torchrun)")
    check_models(opts, "sweep")  # backbone, a given teacher: before anything is built
    check_shapes(opts)
    probe_address(opts.address)
    started = init_ray(opts.address, opts.num_cpus)
    try:
        return releases_locks(run_compress)(opts, t_start)
    finally:
        shutdown_ray(started)
