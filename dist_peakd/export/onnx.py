"""ONNX export (torch.onnx, dynamic batch and sequence axes), onnxruntime verification, int8.

Needs the ``[deploy]`` extra (onnx, onnxscript, onnxruntime); imported lazily so the rest of the
package works without it. An ONNX folder holds ``model.onnx`` (fp32; ``model_int8.onnx`` too when
quantized), ``config.json`` (a plain config describing the graph: the unrolled ``bert`` one for an
SPS BERT student, the unrolled family one for an ``sps-family`` student, which is traced unrolled), the tokenizer files, ``README.md`` and ``dist_peakd_files.json``.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..errors import ConfigError
from .folder import (
    RECORD_FILE,
    ExportError,
    is_family_sps_config,
    is_sps_config,
    save_tokenizer,
    set_label_names,
    trained_max_length,
    write_card,
    write_folder,
    write_json_files,
)

ONNX_FILE = "model.onnx"
ONNX_INT8_FILE = "model_int8.onnx"
INPUT_NAMES: tuple[str, ...] = ("input_ids", "attention_mask", "token_type_ids")
#: The opsets an export can be written in: torch.onnx writes 18 and up and converts down to 17 at the lowest
#: (a BERT graph's LayerNormalization has no earlier version: below 17 it silently kept 18); onnxruntime
#: 1.32 runs graphs up to 25 (26+ are refused when loaded). Checked with torch 2.13, onnx 1.23.
OPSET_RANGE: tuple[int, int] = (17, 25)


def _require(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ExportError(f"ONNX export needs {module!r}: pip install 'dist-peakd[deploy]' ({e})") from e


def input_names(model: nn.Module) -> tuple[str, ...]:
    """The graph inputs of ``model``: :data:`INPUT_NAMES` less ``token_type_ids`` when its forward has no
    such argument (MPNet, DistilBERT, ModernBERT)."""
    takes_types = "token_type_ids" in inspect.signature(model.forward).parameters
    return INPUT_NAMES if takes_types else INPUT_NAMES[:2]


def fusion_type(config: Any) -> str | None:
    """The ``model_type`` onnxruntime's transformer optimizer fuses a model of ``config`` as (None: no fusion
    for its family; the graph stays plain)."""
    from ..models.configuration_sps_family import FAMILIES

    model_type = getattr(config, "base_model_type", None) if is_family_sps_config(config) else config.model_type
    if model_type == "sps-bert":
        return "bert"
    spec = FAMILIES.get(model_type)
    return spec.onnx_optimizer if spec is not None else "bert"


class _LogitsOnly(nn.Module):
    """``(input_ids, attention_mask, token_type_ids) -> logits`` of a HF-style classifier."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.names = INPUT_NAMES

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor) -> Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                          return_dict=True).logits


class _LogitsOnlyNoTypes(_LogitsOnly):
    """``(input_ids, attention_mask) -> logits`` of a classifier without ``token_type_ids``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        self.names = INPUT_NAMES[:2]

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:  # type: ignore[override]
        return self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).logits


def example_inputs(vocab_size: int, batch: int = 2, seq: int = 16, seed: int = 0) -> dict[str, Tensor]:
    """A small padded batch to trace with (row 1 is padded after half the sequence)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab_size, (batch, seq), generator=g)
    mask = torch.ones_like(ids)
    mask[1:, seq // 2:] = 0
    types = torch.zeros_like(ids)
    types[:, seq // 4:] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def _eager_attention(model: nn.Module) -> None:
    """Trace attention as explicit matmul/softmax: onnxruntime fuses that pattern, not a decomposed SDPA."""
    setter = getattr(model, "set_attn_implementation", None)
    try:
        if callable(setter):
            setter("eager")
            return
    except (ValueError, TypeError, AttributeError):
        pass
    model.config._attn_implementation = "eager"


def export_onnx_file(model: nn.Module, path: str | Path, opset: int | None = None, optimize: bool = True) -> Path:
    """Export ``model``'s logits to one ``.onnx`` file (weights inside), batch and sequence dynamic.

    ``optimize``: the graph is then fused offline by onnxruntime's transformer optimizer
    (:func:`optimize_graph`); the logits stay those of the plain graph (fp32, checked by
    :func:`verify_onnx` where a folder is written).
    """
    _require("onnxscript")
    if is_family_sps_config(model.config):  # the weight-tied student: traced as its own family's E layers
        from .hf import unroll_student

        model = unroll_student(model)
    model = copy.deepcopy(model).float().cpu().eval()
    _eager_attention(model)
    wrapper = (_LogitsOnly if input_names(model) == INPUT_NAMES else _LogitsOnlyNoTypes)(model).eval()
    names = wrapper.names
    inputs = example_inputs(model.config.vocab_size)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    kwargs: dict[str, Any] = {"opset_version": opset} if opset is not None else {}
    with torch.no_grad():
        torch.onnx.export(wrapper, tuple(inputs[n] for n in names), str(path), input_names=list(names),
                          output_names=["logits"], dynamic_shapes=tuple({0: batch, 1: seq} for _ in names),
                          dynamo=True, external_data=False, verbose=False, **kwargs)
    if opset is not None:
        _check_opset(path, opset)
    fuse_as = fusion_type(model.config)
    if optimize and fuse_as is not None:
        optimize_graph(path, num_heads=model.config.num_attention_heads, hidden_size=model.config.hidden_size,
                       model_type=fuse_as)
    return Path(path)


def graph_opset(path: str | Path) -> int | None:
    """The default-domain opset a graph file was written in."""
    onnx = _require("onnx")
    model = onnx.load(str(path), load_external_data=False)
    return next((int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _check_opset(path: str | Path, opset: int) -> None:
    """Refuse a graph that the exporter wrote in another opset than the one asked for (its version
    conversion can fail and keep its own): the export is then not what ``--opset`` said."""
    written = graph_opset(path)
    if written != opset:
        low, high = OPSET_RANGE
        raise ConfigError(f"option opset: {opset} was asked, torch.onnx wrote opset {written} (it could not convert "
                          f"this model); use an opset in {low}..{high}")


def optimize_graph(path: str | Path, num_heads: int, hidden_size: int, model_type: str = "bert") -> dict[str, int]:
    """Fuse a BERT graph in place with ``onnxruntime.transformers.optimizer`` (LayerNorm + residual,
    bias + GELU, embeddings; attention where it matches); returns the fused-op counts.

    The fused graph runs on onnxruntime's CPU provider (its contrib ops); it is written beside the
    input and renamed over it only once it is complete.
    """
    optimizer = _require("onnxruntime.transformers.optimizer")
    path = Path(path)
    fused = optimizer.optimize_model(str(path), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size)
    tmp = path.with_name(path.name + ".fused")
    fused.save_model_to_file(str(tmp))
    tmp.replace(path)
    return {name: int(n) for name, n in fused.get_fused_operator_statistics().items() if n}


def quantize_int8(src: str | Path, dst: str | Path) -> Path:
    """onnxruntime dynamic quantization: int8 weights of the MatMul/Gemm ops, activations quantized at run time."""
    onnx = _require("onnx")
    quantization = _require("onnxruntime.quantization")
    # A fused graph has com.microsoft ops that shape inference cannot type: their outputs are fp32.
    quantization.quantize_dynamic(str(src), str(dst), weight_type=quantization.QuantType.QInt8,
                                  extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    return Path(dst)


class OnnxLogits:
    """An onnxruntime session of an exported classifier: ``__call__(batch) -> logits`` (numpy fp32)."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        ort = _require("onnxruntime")
        opts = ort.SessionOptions()
        if threads is not None:
            opts.intra_op_num_threads = threads
            opts.inter_op_num_threads = 1
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, batch: Mapping[str, Any]) -> np.ndarray:
        feed = {}
        for name in self.input_names:
            value = batch[name] if name in batch else np.zeros_like(np.asarray(_np(batch["input_ids"])))
            feed[name] = np.asarray(_np(value), dtype=np.int64)
        return self.session.run(["logits"], feed)[0]


def _np(value: Any) -> np.ndarray:
    return value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)


def onnx_logits(path: str | Path, batch: Mapping[str, Any]) -> np.ndarray:
    """Logits of one batch through a fresh onnxruntime session."""
    return OnnxLogits(path)(batch)


def verify_onnx(path: str | Path, model: nn.Module, batches: Iterable[Mapping[str, Tensor]],
                tolerance: float | None = 1e-4) -> float:
    """Max abs difference between onnxruntime and PyTorch (fp32, eval) logits over ``batches``.

    Raises ExportError when it exceeds ``tolerance`` (None: only return it).
    """
    runner = OnnxLogits(path)
    model = model.float().cpu().eval()
    worst = 0.0
    with torch.no_grad():
        for batch in batches:
            feed = {n: batch[n] for n in input_names(model) if n in batch}
            want = model(**feed, return_dict=True).logits.float().numpy()
            got = runner(feed)
            worst = max(worst, float(np.abs(got - want).max()))
    if tolerance is not None and worst > tolerance:
        raise ExportError(f"ONNX logits of {str(path)!r} differ from PyTorch by {worst:.3g} > {tolerance:g}")
    return worst


def export_onnx(
    model: nn.Module,
    out_dir: str | Path,
    tokenizer: Any = None,
    label_names: Sequence[str] | None = None,
    card: str | None = None,
    quantize: str | None = None,
    verify_batches: Sequence[Mapping[str, Tensor]] | None = None,
    opset: int | None = None,
    extra_files: Mapping[str, Any] | None = None,
    optimize: bool = True,
) -> dict[str, Any]:
    """Write an ONNX folder for ``model`` (SPS student or plain classifier); optionally int8 too.

    ``verify_batches`` (e.g. real dev rows) are run through onnxruntime and PyTorch before the
    folder is published; the fp32 graph must agree within 1e-4. Returns ``{"out_dir", "files",
    "max_abs_diff", "max_abs_diff_int8"}`` (diffs None when no batches were given). ``extra_files``
    (name -> JSON-able object) are written too; a ``dist_peakd.json`` record among them gets the
    check's figures in its ``export`` entry. ``optimize``: fuse the graph offline (:func:`optimize_graph`);
    int8 is quantized from that graph.
    """
    if quantize not in (None, "int8"):
        raise ExportError(f"quantize must be None or 'int8', got {quantize!r}")
    from .hf import plain_bert_config

    if is_family_sps_config(model.config):  # config.json describes the graph: the family's E layers
        from .hf import unroll_student

        config = unroll_student(model).config
    else:
        config = plain_bert_config(model.config) if is_sps_config(model.config) else copy.deepcopy(model.config)
    set_label_names(config, label_names)
    result: dict[str, Any] = {"max_abs_diff": None, "max_abs_diff_int8": None}

    def write(tmp: Path) -> None:
        export_onnx_file(model, tmp / ONNX_FILE, opset=opset, optimize=optimize)
        if verify_batches is not None:
            result["max_abs_diff"] = verify_onnx(tmp / ONNX_FILE, model, verify_batches)
        if quantize == "int8":
            quantize_int8(tmp / ONNX_FILE, tmp / ONNX_INT8_FILE)
            if verify_batches is not None:
                result["max_abs_diff_int8"] = verify_onnx(tmp / ONNX_INT8_FILE, model, verify_batches, None)
        config.save_pretrained(str(tmp))
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp, trained_max_length(extra_files))
        write_card(tmp, card)
        files = dict(extra_files or {})
        if RECORD_FILE in files:
            record = dict(files[RECORD_FILE])
            record["export"] = {**record.get("export", {}), "max_abs_diff": result["max_abs_diff"],
                                "max_abs_diff_int8": result["max_abs_diff_int8"]}
            files[RECORD_FILE] = record
        write_json_files(tmp, files)

    out = write_folder(out_dir, write)
    result["out_dir"] = out
    result["files"] = sorted(p.name for p in out.iterdir())
    return result
