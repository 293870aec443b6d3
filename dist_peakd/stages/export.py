"""``dist-peakd export``: any model folder a stage wrote, in a shippable format.

::

    dist-peakd export --model_dir runs/mrpc/distill-.../final --format plain --out ship/plain
    dist-peakd export --model_dir runs/mrpc/distill-.../final --format onnx --quantize int8 --out ship/onnx
    dist-peakd export --model_dir runs/mrpc/teacher/best --format onnx --out ship/teacher-onnx

``hf``: the compact folder (SPS code + ``auto_map``; a teacher as itself); ``plain``: a standard ``bert``
folder of the effective layers (no custom code); ``onnx``: ``model.onnx`` (dynamic batch and sequence)
checked with onnxruntime against the PyTorch logits on ``--verify_rows`` real dev rows of the model's
task (max abs difference reported; above 1e-4 the export is refused), plus ``model_int8.onnx`` with
``--quantize int8`` (its max difference reported; its dev metrics: ``dist-peakd evaluate --model_dir
OUT --onnx_file model_int8.onnx``). Every output has the model card re-rendered for its format and
the source's record (task, max length), so ``evaluate``/``predict`` take it as they take the source.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import console
from ..config import option
from ..data.rows import column_array, fetch_rows
from ..engine import decide_on_rank0, init_distributed
from ..errors import ConfigError
from ..export import (
    RECORD_FILE,
    export_compact,
    export_onnx,
    export_plain,
    is_sps_config,
    load_model_folder,
    read_folder_record,
    render_model_card,
    unroll_student,
)
from ..export.onnx import OPSET_RANGE
from .common import collator_for, prepare_data
from .evaluate import ModelDirOptions
from .inference import eval_batches
from .outputs import check_export_folder, command_inputs

FORMATS = {"hf": "compact", "plain": "plain", "onnx": "onnx"}
VERIFY_BATCH_SIZE = 16


@dataclass
class ExportOptions(ModelDirOptions):
    """The format, where it goes, int8, how many dev rows check an ONNX graph."""

    format: str = option("hf", help="hf (compact, custom code) | plain (standard bert, no custom code) | onnx",
                         choices=tuple(FORMATS))
    out: str | None = option(None, help="output folder (required): a new folder, or one a previous export of the "
                                        "same --format wrote (replaced atomically); anything else is refused")
    quantize: str | None = option(None, help="onnx: also write model_int8.onnx (onnxruntime dynamic int8)",
                                  choices=("int8",))
    verify_rows: int = option(64, help="onnx: dev rows of the model's task run through both runtimes", ge=1)
    opset: int | None = option(None, help=f"onnx: opset, {OPSET_RANGE[0]}..{OPSET_RANGE[1]} (default: torch.onnx's, "
                                          "20 here)")
    optimize: bool = option(True, help="onnx: fuse the graph offline with onnxruntime's transformer optimizer "
                                       "(LayerNorm, GELU, embeddings; faster on CPU, same logits within 1e-4); "
                                       "False: the plain torch.onnx graph, standard ONNX ops only")

    def validate(self) -> None:
        super().validate()
        if not self.out:
            raise ConfigError("option out: required (the folder to write)")
        self._check_opset()
        if self.quantize and self.format != "onnx":
            raise ConfigError("option quantize: int8 applies to --format onnx")
        check_export_folder("out", self.out, self.format, command_inputs(self))

    def _check_opset(self) -> None:
        if self.opset is None:
            return
        if self.format != "onnx":
            raise ConfigError(f"option opset: applies to --format onnx, not {self.format}")
        low, high = OPSET_RANGE
        if not low <= self.opset <= high:
            raise ConfigError(f"option opset: {self.opset} is outside the supported range {low}..{high} (torch.onnx "
                              f"converts down to {low} at the lowest; onnxruntime runs up to {high})")


def _card(record: dict[str, Any], fmt: str, stats: dict[str, Any] | None) -> tuple[str | None, dict[str, Any]]:
    """The source's card re-rendered for ``fmt`` (None when the source records none) and the new record."""
    record = dict(record)
    if "card" not in record:
        return None, record
    inputs = {**record["card"], "export_format": fmt, "name": f"{record['card']['name']}-{fmt}"}
    if stats is not None:
        inputs["stats"] = {**inputs["stats"], **stats}
    record["card"] = inputs
    return render_model_card(**inputs), record


def verify_batches(opts: ExportOptions, tokenizer: Any) -> list[dict[str, Any]]:
    """``verify_rows`` dev rows of the model's task, in padded batches of up to 16 (the ONNX check)."""
    data = prepare_data(opts, tokenizer, need_train=False, check_run=False, eval_rows=opts.verify_rows)
    collate = collator_for(tokenizer)
    return [collate(fetch_rows(data.dev, b)) for b in eval_batches(column_array(data.dev, "length").tolist(), VERIFY_BATCH_SIZE)]


def export_folder(opts: ExportOptions) -> dict[str, Any]:
    """Write the export (one process); returns what was written and the ONNX check's figures."""
    from ..models import model_stats

    model, tokenizer = load_model_folder(opts.model_dir, opts.trust_unverified)
    record = read_folder_record(opts.model_dir)
    labels = record.get("label_names")
    fmt = FORMATS[opts.format]
    stats = None
    if fmt != "compact" and is_sps_config(model.config):  # the unrolled graph: E layers of weights
        stats = {k: v for k, v in model_stats(unroll_student(model), seq_len=opts.max_length).items()
                 if k in ("parameters", "encoder_parameters", "num_parameter_layers")}
    card, new_record = _card(record, fmt, stats)
    info: dict[str, Any] = {"format": opts.format, "source": str(Path(opts.model_dir).resolve())}
    if fmt == "onnx":
        info.update(verify_rows=opts.verify_rows, optimized=opts.optimize)
        result = export_onnx(model, opts.out, tokenizer, label_names=labels, card=card, quantize=opts.quantize,
                             verify_batches=verify_batches(opts, tokenizer), opset=opts.opset, optimize=opts.optimize,
                             extra_files={RECORD_FILE: {**new_record, "export": dict(info)}})
        info.update(max_abs_diff=result["max_abs_diff"], max_abs_diff_int8=result["max_abs_diff_int8"],
                    quantize=opts.quantize)
        if opts.quantize:  # the card gets each graph's measured dev metrics next to PyTorch's
            from .export_metrics import add_onnx_metrics

            info["dev_metrics"] = add_onnx_metrics(opts, Path(opts.out))
    else:
        writer = export_compact if fmt == "compact" else export_plain
        writer(model, opts.out, tokenizer, label_names=labels, card=card,
               extra_files={RECORD_FILE: {**new_record, "export": info}})
    out = Path(opts.out)
    return {**info, "out": str(out), "files": sorted(p.name for p in out.iterdir()),
            "bytes": sum(p.stat().st_size for p in out.iterdir() if p.is_file())}


def run(opts: ExportOptions) -> dict[str, Any]:
    """Rank 0 writes the export; under a launcher the other ranks wait and return the same result (or
    raise the same error).

    The console gets the banner and the outcome line only: the libraries' warnings about their own
    internals and the check's small tokenization bar are kept off it (errors still surface)."""
    init_distributed()
    return decide_on_rank0(_export_quietly, opts)


def _export_quietly(opts: ExportOptions) -> dict[str, Any]:
    with console.library_warnings_off(), console.datasets_bars_off():
        return export_folder(opts)
