"""What one ``dist-peakd compress`` candidate is: a student *shape* (trained by a Tune trial) and, after the
search, its exported graphs (one point per precision) measured on this machine.

Shapes (``--shapes``, comma separated): ``sps-k<k>-<variant>`` (the Pea-KD SPS student: ``k`` parameter
layers run as ``variant`` = none | share | shuffle) and ``plain-d<d>-<map>`` (a plain encoder of ``d``
of the backbone's layers, ``map`` = bottom | alternate). A trial's ``shape`` sets ``--student``, ``--k``,
``--variant``, ``--depth`` and ``--layer_map`` of its distillation run; everything else is the sweep's.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import option
from ..errors import ConfigError
from ..layout import MODEL_CONFIG
from . import distill
from .distill import DistillOptions

PRECISIONS = ("fp32", "int8")
GRAPH_FILES = {"fp32": "model.onnx", "int8": "model_int8.onnx"}
GRAPH_COLUMNS = {"fp32": "onnx fp32", "int8": "onnx int8"}
_SHAPE = re.compile(r"^(?:sps-k(?P<k>\d+)-(?P<variant>none|share|shuffle)|plain-d(?P<d>\d+)-(?P<map>bottom|alternate))$")
SHAPE_HELP = ("student shapes to search, comma separated: sps-k<k>-<none|share|shuffle> (SPS student) and "
              "plain-d<d>-<bottom|alternate> (plain encoder of d layers)")


def parse_shape(text: str) -> dict[str, Any]:
    """``sps-k2-shuffle`` -> the distillation options it sets (ConfigError naming ``shapes`` otherwise)."""
    m = _SHAPE.match(str(text).strip())
    if not m:
        raise ConfigError(f"option shapes: {text!r} is not sps-k<k>-<none|share|shuffle> nor "
                          "plain-d<d>-<bottom|alternate> (e.g. sps-k2-shuffle, plain-d3-alternate)")
    if m["k"] is not None:
        if int(m["k"]) < 1:
            raise ConfigError(f"option shapes: {text!r}: k must be >= 1")
        return {"student": "sps", "k": int(m["k"]), "variant": m["variant"], "depth": None, "layer_map": "bottom"}
    if int(m["d"]) < 1:
        raise ConfigError(f"option shapes: {text!r}: d must be >= 1")
    return {"student": "plain", "k": "auto", "variant": "auto", "depth": int(m["d"]), "layer_map": m["map"]}


def parse_shapes(value: Any) -> list[str]:
    """The ``--shapes`` list (a comma string or a list), each checked, duplicates refused."""
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    shapes = [str(s).strip() for s in items if str(s).strip()]
    if not shapes:
        raise ConfigError(f"option shapes: {value!r} names no student shape")
    for s in shapes:
        parse_shape(s)
    if len(set(shapes)) != len(shapes):
        raise ConfigError(f"option shapes: {value!r} repeats a shape")
    return shapes


def shape_layers(shape: str) -> int:
    """The backbone layers a shape needs (its k or d)."""
    fields = parse_shape(shape)
    return int(fields["k"] if fields["student"] == "sps" else fields["depth"])


@dataclass
class CompressTrialOptions(DistillOptions):
    """A compress trial: the distillation options with its ``shape`` applied (the Tune space's ``shape``)."""

    shape: str = option("", help=SHAPE_HELP)

    def validate(self) -> None:
        if self.shape:
            for name, value in parse_shape(self.shape).items():
                setattr(self, name, value)
        super().validate()

    def distill_options(self) -> DistillOptions:
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(DistillOptions)}
        opts = DistillOptions(**values)
        opts.validate()
        return opts


def run_trial(opts: CompressTrialOptions, on_eval: Callable[[int, dict[str, float]], None] | None = None
              ) -> dict[str, Any]:
    """A Tune trial of ``compress``: the distillation run of its shape (measured after the search)."""
    return distill.run(opts.distill_options(), on_eval=on_eval)


# ------------------------------------------------------------------------------- measuring a trial
@dataclass(frozen=True)
class Measure:
    """How the graphs are measured: precisions, the user's latency shape, threads, repeats; the data options
    (``data``: output/glue/cache folders etc.) the dev rows are read with."""

    precisions: tuple[str, ...]
    batch: int
    seq: int
    threads: int
    warmup: int
    runs: int
    data: dict[str, Any]


def default_threads() -> int:
    """onnxruntime threads when ``--latency_threads`` is not given: the CPUs, at most 4."""
    import os

    return max(1, min(4, os.cpu_count() or 1))


def measure_options(opts: Any) -> Measure:
    """How ``compress``'s options say the graphs are measured."""
    batch, seq = opts.latency_dims()
    data = {name: getattr(opts, name) for name in ("output_dir", "glue_dir", "cache_dir", "hub_dataset",
                                                    "eval_batch_size") if getattr(opts, name) is not None}
    return Measure(precisions=opts.precision_list(), batch=batch, seq=seq,
                   threads=opts.latency_threads or default_threads(), warmup=opts.latency_warmup,
                   runs=opts.latency_runs, data=data)


def export_options(model_dir: Path, out: Path, measure: Measure, quantize: bool) -> Any:
    """``dist-peakd export --format onnx [--quantize int8]`` of ``model_dir`` into ``out``."""
    from ..config import build_options
    from .export import ExportOptions

    return build_options(ExportOptions, model_dir=str(model_dir), format="onnx", out=str(out),
                         quantize="int8" if quantize else None, **measure.data)


def measure_trial(model_dir: Path, work: Path, measure: Measure) -> list[dict[str, Any]]:
    """Export ``model_dir`` to ONNX in ``work`` (the product's export: verified against PyTorch), then per
    precision: the dev metrics of that graph (onnxruntime), its median latency at the user's shape and its
    file size. ``work`` is removed afterwards (the chosen student is exported again, with its card)."""
    from ..export.latency import onnx_latency
    from .export import export_folder
    from .export_metrics import graph_dev_metrics

    shutil.rmtree(work, ignore_errors=True)
    opts = export_options(model_dir, work, measure, "int8" in measure.precisions)
    info = export_folder(opts)
    measured = info.get("dev_metrics") or {}
    vocab = _vocab_size(work)
    out = []
    try:
        for precision in measure.precisions:
            graph = work / GRAPH_FILES[precision]
            metrics = measured.get(GRAPH_COLUMNS[precision]) or graph_dev_metrics(opts, work, graph.name)
            timing = onnx_latency(graph, vocab, measure.batch, measure.seq, measure.threads, measure.warmup,
                                  measure.runs)
            out.append({"precision": precision, "metrics": {k: float(v) for k, v in metrics.items()},
                        "latency": timing, "latency_ms": round(timing["median_ms"], 4),
                        "size_mb": round(graph.stat().st_size / 1e6, 4)})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _vocab_size(folder: Path) -> int:
    import json

    return int(json.loads((folder / MODEL_CONFIG).read_text())["vocab_size"])
