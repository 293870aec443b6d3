"""ONNX export of student and teacher: dynamic axes, onnxruntime round trip, int8, folder contents."""

from __future__ import annotations

import json
from pathlib import Path

import onnx  # the [deploy] extra (launchers/setup_env.sh installs it)
import pytest
import torch
from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

from dist_peakd.export import ExportError, OnnxLogits, export_onnx, verify_onnx
from dist_peakd.export.onnx import ONNX_FILE, ONNX_INT8_FILE
from dist_peakd.models import build_student

SENTENCES = [("The cat sat on the mat.", "A cat was sitting on the mat."),
             ("Stocks fell sharply on Monday, traders said.", "It rained."),
             ("Yes.", "No, definitely not, and here is a much longer second sentence to pad against.")]


def _batches(tok) -> list[dict[str, torch.Tensor]]:
    """Real tokenized rows: batch 3 (padded), batch 1, and a longer sequence than the trace used."""
    enc = tok([a for a, _ in SENTENCES], [b for _, b in SENTENCES], padding=True, return_tensors="pt")
    one = tok(SENTENCES[0][0], SENTENCES[0][1], return_tensors="pt")
    long = tok(" ".join(["word"] * 60), return_tensors="pt")
    return [dict(enc), dict(one), dict(long)]


@pytest.fixture(scope="module")
def tok(tiny_bert: Path):
    return AutoTokenizer.from_pretrained(str(tiny_bert))


@pytest.fixture(scope="module")
def student_onnx(tmp_path_factory, tiny_bert: Path, tok):
    torch.manual_seed(0)
    student = build_student(tiny_bert, k=2, variant="shuffle", num_labels=2).eval()
    out = tmp_path_factory.mktemp("onnx") / "student-onnx"
    result = export_onnx(student, out, tokenizer=tok, label_names=["no", "yes"], quantize="int8",
                         verify_batches=_batches(tok), card="# card\n")
    return student, result


def test_student_onnx_round_trip_and_folder(student_onnx, tok) -> None:
    student, result = student_onnx
    out = result["out_dir"]
    assert {ONNX_FILE, ONNX_INT8_FILE, "config.json", "tokenizer.json", "README.md",
            "dist_peakd_files.json"} <= set(result["files"])
    assert result["max_abs_diff"] is not None and result["max_abs_diff"] <= 1e-4
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "bert" and cfg["num_hidden_layers"] == 4  # the unrolled graph's description
    assert cfg["id2label"] == {"0": "no", "1": "yes"}
    runner = OnnxLogits(out / ONNX_FILE)
    graph_inputs = onnx.load(str(out / ONNX_FILE)).graph.input
    for inp in graph_inputs:  # batch and sequence are symbolic, not the traced sizes
        dims = inp.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims] == ["batch", "sequence"], inp.name
    # A re-run on other rows agrees too (independent of the export-time check).
    assert verify_onnx(out / ONNX_FILE, student, _batches(tok)[::-1]) <= 1e-4
    assert runner(_batches(tok)[1]).shape == (1, 2)


def test_int8_model_is_quantized_smaller_and_close(student_onnx, tok) -> None:
    student, result = student_onnx
    out = result["out_dir"]
    ops = {n.op_type for n in onnx.load(str(out / ONNX_INT8_FILE)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}
    assert (out / ONNX_INT8_FILE).stat().st_size < (out / ONNX_FILE).stat().st_size
    diff = result["max_abs_diff_int8"]
    assert diff is not None and 0 < diff < 0.5  # quantization error exists and stays bounded


def test_teacher_onnx_round_trip(tmp_path: Path, tok) -> None:
    torch.manual_seed(1)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, num_labels=3)
    teacher = BertForSequenceClassification(cfg).eval()
    result = export_onnx(teacher, tmp_path / "teacher-onnx", tokenizer=tok, verify_batches=_batches(tok))
    assert result["max_abs_diff"] <= 1e-4 and result["max_abs_diff_int8"] is None
    assert ONNX_INT8_FILE not in result["files"]


def test_verify_reports_a_wrong_model_and_refuses(student_onnx, tiny_bert: Path, tok) -> None:
    _, result = student_onnx
    torch.manual_seed(9)
    other = build_student(tiny_bert, k=2, variant="shuffle", num_labels=2).eval()
    with pytest.raises(ExportError, match="differ from PyTorch by"):
        verify_onnx(result["out_dir"] / ONNX_FILE, other, _batches(tok))


def test_bad_quantize_option_writes_nothing(tmp_path: Path, tiny_bert: Path) -> None:
    student = build_student(tiny_bert, k=1, variant="shuffle")
    with pytest.raises(ExportError, match="quantize"):
        export_onnx(student, tmp_path / "x", quantize="int4")
    assert not any(tmp_path.iterdir())


def _op_types(path: Path) -> dict[str, set[str]]:
    """Op types per domain ('' = standard ONNX) of a graph."""
    ops: dict[str, set[str]] = {}
    for node in onnx.load(str(path)).graph.node:
        ops.setdefault(node.domain or "", set()).add(node.op_type)
    return ops


def test_default_graph_is_fused_and_optimize_false_keeps_standard_ops(student_onnx, tmp_path: Path, tok) -> None:
    student, result = student_onnx
    fused = _op_types(result["out_dir"] / ONNX_FILE)
    assert {"SkipLayerNormalization", "BiasGelu"} <= fused.get("com.microsoft", set())
    assert "com.microsoft" in _op_types(result["out_dir"] / ONNX_INT8_FILE)  # int8 is quantized from the fused graph
    plain = export_onnx(student, tmp_path / "plain-onnx", verify_batches=_batches(tok), optimize=False)
    assert set(_op_types(plain["out_dir"] / ONNX_FILE)) == {""}  # standard ONNX ops only
    assert plain["max_abs_diff"] <= 1e-4
    a = OnnxLogits(result["out_dir"] / ONNX_FILE)(_batches(tok)[0])
    b = OnnxLogits(plain["out_dir"] / ONNX_FILE)(_batches(tok)[0])
    assert abs(a - b).max() <= 1e-5  # fusion changes the ops, not the function


def test_onnx_export_leaves_the_model_on_its_attention_implementation(tiny_bert: Path, tmp_path: Path) -> None:
    from dist_peakd.export.onnx import export_onnx_file

    student = build_student(tiny_bert, k=1, variant="shuffle", num_labels=2).eval()
    before = student.config._attn_implementation
    export_onnx_file(student, tmp_path / "m.onnx")
    assert student.config._attn_implementation == before  # eager attention is set on the exported copy only
